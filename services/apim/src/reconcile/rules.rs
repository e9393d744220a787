//! Which proxy fields break consumers, in which lifecycle states API Manager
//! lets them change, and which need a new API.
//!
//! Taken from the `@APIPropertyAnnotation(isBreaking, writableStates,
//! isRecreate)` annotations on the fields of apim-cli's
//! `com.axway.apim.api.API` (module `apim-adapter`), read from the
//! repository:
//!
//! | field                                   | breaking | writable in            | recreate |
//! |-----------------------------------------|----------|------------------------|----------|
//! | `apiDefinition` (the specification)     | yes      | —                      | yes      |
//! | `organization`                          | (no)     | —                      | yes      |
//! | `path`                                  | yes      | —                      |          |
//! | `caCerts`                               | yes      | unpublished            |          |
//! | `securityProfiles`                      | yes      | unpublished            |          |
//! | `authenticationProfiles`                | yes      | unpublished            |          |
//! | `inboundProfiles`, `outboundProfiles`   | yes      | unpublished            |          |
//! | `serviceProfiles` (backend base path)   | yes      | unpublished            |          |
//! | `corsProfiles`                          | yes      | unpublished            |          |
//! | `apiRoutingKey`                         | yes      | unpublished            |          |
//! | `vhost`                                 | yes      | all states             |          |
//! | `tags`, `customProperties`, `name`, `version` | no | unpublished            |          |
//! | `summary`                               | no       | unpublished, deprecated|          |
//! | `descriptionType/Manual/Markdown/Url`   | no       | all states             |          |
//! | `state`, `clientOrganizations`, `applications`, `retirementDate`, quotas, `image` | no | all states | |
//!
//! apim-cli's `APIChangeState` counts a change as breaking only when the API
//! has consumers (its `isBreaking()` is false for `unpublished` and
//! `pending` APIs). Deviations, on purpose:
//! - `organization` counts as breaking here: moving an API to another
//!   organization recreates it and moves its consumers; apim-cli refuses it
//!   unless `changeOrganization` is set, Gantry unless breaking changes are
//!   allowed.
//! - A field apim-cli does not annotate is treated as breaking and writable
//!   only while unpublished: the safe guess for something unknown.
//!
//! Changing `state` from published or deprecated to unpublished is breaking
//! (apim-cli `APIStatusManager.StatusChangeRequiresEnforce`).

use crate::desired::ApiState;

/// The lifecycle state of an existing proxy, as apim-cli sees it
/// (`API.getState()`: deprecation is a flag on a published API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    Unpublished,
    /// Waiting for an administrator's approval.
    Pending,
    Published,
    Deprecated,
}

impl Lifecycle {
    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Unpublished => "unpublished",
            Lifecycle::Pending => "pending",
            Lifecycle::Published => "published",
            Lifecycle::Deprecated => "deprecated",
        }
    }

    /// Whether consumers may use it (changes then can break them).
    pub fn has_consumers(self) -> bool {
        matches!(self, Lifecycle::Published | Lifecycle::Deprecated)
    }

    pub fn from_desired(state: ApiState) -> Lifecycle {
        match state {
            ApiState::Unpublished => Lifecycle::Unpublished,
            ApiState::Published => Lifecycle::Published,
            ApiState::Deprecated => Lifecycle::Deprecated,
        }
    }
}

/// How a change of one field may be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldRule {
    pub breaking: bool,
    pub writable_unpublished: bool,
    pub writable_published: bool,
    pub writable_deprecated: bool,
    pub recreate: bool,
}

impl FieldRule {
    const fn new(breaking: bool, u: bool, p: bool, d: bool, recreate: bool) -> Self {
        FieldRule {
            breaking,
            writable_unpublished: u,
            writable_published: p,
            writable_deprecated: d,
            recreate,
        }
    }

    /// Whether API Manager lets the field change in this state. `pending`
    /// is in no annotation's list.
    pub fn writable_in(self, state: Lifecycle) -> bool {
        match state {
            Lifecycle::Unpublished => self.writable_unpublished,
            Lifecycle::Published => self.writable_published,
            Lifecycle::Deprecated => self.writable_deprecated,
            Lifecycle::Pending => false,
        }
    }
}

/// The name Gantry reports for a changed specification (apim-cli's config
/// key; its `API` field is `apiDefinition`).
pub const SPECIFICATION: &str = "apiSpecification";
/// The name Gantry reports for a changed owning organization.
pub const ORGANIZATION: &str = "organization";
/// The name Gantry reports for a breaking state change.
pub const STATE: &str = "state";

/// The rule of a proxy field (API Manager's name) or of
/// [`SPECIFICATION`] / [`ORGANIZATION`].
pub fn rule(field: &str) -> FieldRule {
    //                   breaking unpub  pub    depr   recreate
    match field {
        SPECIFICATION | "apiDefinition" => FieldRule::new(true, false, false, false, true),
        ORGANIZATION => FieldRule::new(true, false, false, false, true),
        "path" => FieldRule::new(true, false, false, false, false),
        "caCerts"
        | "securityProfiles"
        | "authenticationProfiles"
        | "outboundProfiles"
        | "serviceProfiles"
        | "inboundProfiles"
        | "corsProfiles"
        | "apiRoutingKey" => FieldRule::new(true, true, false, false, false),
        "vhost" => FieldRule::new(true, true, true, true, false),
        "tags" | "customProperties" | "name" | "version" | "apiMethods" => {
            FieldRule::new(false, true, false, false, false)
        }
        "summary" => FieldRule::new(false, true, false, true, false),
        "descriptionType"
        | "descriptionManual"
        | "descriptionMarkdown"
        | "descriptionUrl"
        | "image"
        | "retirementDate"
        | "applicationQuota"
        | "systemQuota" => FieldRule::new(false, true, true, true, false),
        _ => FieldRule::new(true, true, false, false, false),
    }
}

/// One state transition through API Manager's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateOp {
    Publish,
    Unpublish,
    Deprecate,
    Undeprecate,
}

impl StateOp {
    /// The `ApiChange` action and the endpoint's last path segment.
    pub fn as_str(self) -> &'static str {
        match self {
            StateOp::Publish => "publish",
            StateOp::Unpublish => "unpublish",
            StateOp::Deprecate => "deprecate",
            StateOp::Undeprecate => "undeprecate",
        }
    }
}

/// The calls that move a proxy from `from` to `to` (apim-cli
/// `APIStatusManager.StatusChangeMap`: unpublished→deprecated goes through
/// published; deprecated→published is `undeprecate`).
pub fn transition(from: Lifecycle, to: ApiState) -> Vec<StateOp> {
    use StateOp::*;
    match (from, to) {
        (Lifecycle::Unpublished | Lifecycle::Pending, ApiState::Unpublished) => vec![],
        (Lifecycle::Unpublished | Lifecycle::Pending, ApiState::Published) => vec![Publish],
        (Lifecycle::Unpublished | Lifecycle::Pending, ApiState::Deprecated) => {
            vec![Publish, Deprecate]
        }
        (Lifecycle::Published, ApiState::Unpublished) => vec![Unpublish],
        (Lifecycle::Published, ApiState::Published) => vec![],
        (Lifecycle::Published, ApiState::Deprecated) => vec![Deprecate],
        (Lifecycle::Deprecated, ApiState::Unpublished) => vec![Unpublish],
        (Lifecycle::Deprecated, ApiState::Published) => vec![Undeprecate],
        (Lifecycle::Deprecated, ApiState::Deprecated) => vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_follow_apim_cli_annotations() {
        assert!(rule("securityProfiles").breaking);
        assert!(!rule("securityProfiles").writable_in(Lifecycle::Published));
        assert!(rule("securityProfiles").writable_in(Lifecycle::Unpublished));
        assert!(!rule("tags").breaking);
        assert!(!rule("tags").writable_in(Lifecycle::Published));
        assert!(rule("summary").writable_in(Lifecycle::Deprecated));
        assert!(!rule("summary").writable_in(Lifecycle::Published));
        assert!(rule("descriptionMarkdown").writable_in(Lifecycle::Published));
        assert!(rule("vhost").breaking && rule("vhost").writable_in(Lifecycle::Published));
        assert!(rule(SPECIFICATION).recreate && rule(SPECIFICATION).breaking);
        assert!(!rule(SPECIFICATION).writable_in(Lifecycle::Unpublished));
        assert!(rule("somethingNew").breaking);
    }

    #[test]
    fn transitions() {
        use StateOp::*;
        assert_eq!(
            transition(Lifecycle::Unpublished, ApiState::Deprecated),
            vec![Publish, Deprecate]
        );
        assert_eq!(
            transition(Lifecycle::Deprecated, ApiState::Published),
            vec![Undeprecate]
        );
        assert_eq!(
            transition(Lifecycle::Published, ApiState::Unpublished),
            vec![Unpublish]
        );
        assert!(transition(Lifecycle::Published, ApiState::Published).is_empty());
    }
}
