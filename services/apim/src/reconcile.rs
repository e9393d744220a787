//! Reconciles a [`DesiredState`] into one stage's API Manager.
//!
//! [`plan`] reads what API Manager holds and decides, without writing, what
//! to change; [`apply`] carries a plan out; [`reconcile`] does both. Every
//! change becomes an [`ApiChange`] naming the target (`api <name> <path>`,
//! `organization <name>`, `application <name>`), the action and the *names*
//! of the fields involved — never values, which may be secrets substituted
//! from `${VAR}`.
//!
//! # Order
//! Organizations (create missing, update differing fields in place), then
//! APIs, then applications (create missing in their organization, update),
//! then grants (client organizations and application subscriptions, per
//! API), then the proxies replaced by re-created APIs are retired or
//! deleted. Nothing changed means no write call at all: planning and applying
//! an unchanged state only read.
//!
//! # Finding an API (apim-cli `APIManagerAPIAdapter.getAPI`/`getUniqueAPI`)
//! Proxies on the config's `path` (`GET /proxies?field=path&op=eq&value=..`);
//! retired ones are ignored; when the config sets `vhost` or
//! `apiRoutingKey`, only proxies with that value match. Several left: the one
//! whose vhost and routing key equal the config's (unset = unset), then the
//! one with the config's `version`, then `name`, then a not deprecated one,
//! then the newest (`createdOn`) — apim-cli fails on such ambiguity; Gantry
//! picks and warns, because re-creation with a retirement date leaves the
//! replaced proxy on the same path.
//!
//! # What changed (apim-cli `APIChangeState`)
//! Only the fields the config sets are compared (see [`compare`] for how API
//! Manager's defaults and type echoes are tolerated): `name`, `version`,
//! `vhost`, `apiRoutingKey`, every [`DesiredApi::proxy_fields`] entry (policy
//! names in `outboundProfiles` are resolved to API Manager's policy keys via
//! `GET /policies?type=..`, as apim-cli's `APIManagerPoliciesAdapter` does),
//! `backendBasepath` as `serviceProfiles._default.basePath` (apim-cli's
//! `UpdateExistingAPI` handles it that way), the owning organization, and
//! the specification: the backend's original (`GET
//! /apirepo/{id}/download?original=true`, what apim-cli compares with) is
//! compared with the config's file as a parsed JSON/YAML document (byte-wise
//! for WSDL). No sha256 is stored anywhere: API Manager keeps the original
//! itself, and a hash in a description or custom property would be a second,
//! forgeable source of truth. When API Manager serves no original (a spec
//! imported from a URL), the specification is not compared and the plan
//! warns.
//!
//! # What to do (apim-cli `APIImportManager.applyChanges`)
//! With the field rules of [`rules`] (the `@APIPropertyAnnotation`s of
//! apim-cli's `API`):
//! - no proxy: **create** (`CreateNewAPI`): import the backend, create the
//!   proxy in the owning organization, `PUT` the config's fields, publish
//!   (with the vhost) and deprecate as the config's `state` asks; grants
//!   follow;
//! - a change is *breaking* when its field is breaking and the API has
//!   consumers (published or deprecated); so is unpublishing. Breaking
//!   changes need [`ReconcileOptions::allow_breaking`] (the stage's
//!   `breaking_changes`, apim-cli's `-force`); otherwise the whole
//!   reconciliation is refused before anything is written, with the fields
//!   ([`Error::Breaking`]);
//! - every changed field writable in the current state (`unpublished` when
//!   the config unpublishes): **update** in place (`UpdateExistingAPI`:
//!   unpublish first if asked, `PUT`, then the state changes);
//! - a field that needs a new API (specification, organization):
//!   **recreate** (`RecreateToUpdateAPI` → `CreateNewAPI` with re-creation):
//!   create the new API fully, then, when both old and new are published,
//!   `POST /proxies/upgrade/{old}` moves the organizations' access and the
//!   applications' subscriptions to the new proxy; at the end the old proxy
//!   is unpublished and deleted with its backend (apim-cli's way,
//!   [`ReplacedApi::Delete`]) or deprecated and retired on a date
//!   ([`ReplacedApi::Retire`]);
//! - otherwise (fields not writable while published): **republish**
//!   (`RepublishToUpdateAPI`): unpublish, `PUT`, publish again (deprecate
//!   again when deprecated); in add mode the organizations and applications
//!   that had access keep it.
//!
//! A state change (publish, unpublish, deprecate, undeprecate — apim-cli's
//! `APIStatusManager` transitions) is its own [`ApiChange`].
//!
//! Note: apim-cli's `API` model lets `tags`, `summary`, `customProperties`,
//! `name` and `version` change only while an API is unpublished, and calls
//! them not breaking. So on a published API they are applied by a
//! **republish** that needs no permission — it interrupts the API for a
//! moment and is reported as `republish`. `description*` fields change in
//! place in every state.
//!
//! Deviations from apim-cli, on purpose: an application whose organization
//! has no access to a published API is a configuration error (apim-cli logs
//! and skips it); several proxies matching one API are resolved by the rules
//! above (apim-cli fails); moving an API to another organization counts as
//! breaking (apim-cli needs `changeOrganization`); fields apim-cli does not
//! annotate count as breaking and writable only while unpublished.
//!
//! # Failures
//! Every write is journaled with its undo. When a write fails, the journal
//! is undone in reverse order — created proxies unpublished and deleted,
//! created backends, organizations and applications deleted, grants and
//! subscriptions the run added revoked (and removed ones restored), updated
//! objects put back, unpublished proxies published again (with the access
//! they had) — and [`Error::Apply`] says which step failed, what was undone
//! and what could not be. Deleting a replaced proxy cannot be undone: it
//! comes last, and once a replaced proxy is deleted the changes before it
//! are kept (undoing them would leave no API at all).
//!
//! # Not supported
//! Method-level inbound/outbound profiles (keys other than `_default`; they
//! need API Manager's method ids) are refused in the plan. Quotas, images,
//! API methods and retirement dates are not promoted (the config loader
//! drops them with warnings). APIs, organizations and applications missing
//! from the config are left alone.

mod access;
mod apply;
pub mod compare;
mod plan;
pub mod rules;

use std::fmt;
use std::time::Duration;

use gantry_pipeline::ApiManager;
use gantry_proto::events::ApiChange;
use serde_json::{Map, Value};

use crate::client::{self, ApiManagerClient};
use crate::desired::{DesiredApi, DesiredState};

pub use access::ALL_ORGS;
pub use rules::{Lifecycle, StateOp};

/// How a reconciliation may change things.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileOptions {
    /// Allow changes that break API consumers (the stage's
    /// `breaking_changes`; apim-cli's `-force`).
    pub allow_breaking: bool,
    /// What happens to a proxy replaced by a re-created API.
    pub replaced_api: ReplacedApi,
}

impl ReconcileOptions {
    /// The options a stage's `apimanager` settings ask for.
    pub fn for_stage(stage: &ApiManager) -> Self {
        ReconcileOptions {
            allow_breaking: stage.breaking_changes,
            replaced_api: ReplacedApi::default(),
        }
    }
}

/// What happens to the old proxy when an API is re-created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ReplacedApi {
    /// Unpublish and delete it and its backend right away (apim-cli's
    /// `RecreateToUpdateAPI`).
    #[default]
    Delete,
    /// Keep it, deprecated, and let API Manager retire it this long after the
    /// reconciliation (`upgrade` with `deprecate=true`, `retire=true`,
    /// `retirementDate`).
    Retire { after: Duration },
}

/// Create, update or leave an organization or application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntityAction {
    Create,
    Update,
    Unchanged,
}

impl EntityAction {
    fn as_str(self) -> &'static str {
        match self {
            EntityAction::Create => "create",
            EntityAction::Update => "update",
            EntityAction::Unchanged => "unchanged",
        }
    }
}

/// The planned change of one organization or application. `Debug` shows
/// names only: the objects may hold values substituted from secrets.
#[derive(Clone)]
pub struct EntityStep {
    pub name: String,
    pub action: EntityAction,
    /// Names of the fields set (create) or changed (update).
    pub fields: Vec<String>,
    /// The object to create or the whole object to put.
    pub(crate) body: Value,
    /// The object as API Manager holds it now.
    pub(crate) current: Option<Value>,
    /// Applications: the owning organization's name.
    pub(crate) organization: Option<String>,
}

/// What happens to one API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiAction {
    Create,
    /// Changed fields put in place.
    Update,
    /// Unpublish, update, publish again.
    Republish,
    /// A new API replaces the old one.
    Recreate,
    /// Only the lifecycle state changes.
    StateChange,
    Unchanged,
    /// Breaking changes the options do not allow.
    Refused,
}

impl ApiAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiAction::Create => "create",
            ApiAction::Update => "update",
            ApiAction::Republish => "republish",
            ApiAction::Recreate => "recreate",
            ApiAction::StateChange => "state",
            ApiAction::Unchanged => "unchanged",
            ApiAction::Refused => "refused",
        }
    }
}

/// The grants a plan expects to add and remove for one API (names).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrantPreview {
    pub grant_orgs: Vec<String>,
    pub revoke_orgs: Vec<String>,
    pub subscribe_apps: Vec<String>,
    pub unsubscribe_apps: Vec<String>,
}

impl GrantPreview {
    pub fn is_empty(&self) -> bool {
        self.grant_orgs.is_empty()
            && self.revoke_orgs.is_empty()
            && self.subscribe_apps.is_empty()
            && self.unsubscribe_apps.is_empty()
    }
}

/// The planned change of one API. `Debug` shows names only: the proxy
/// objects may hold values substituted from secrets.
#[derive(Clone)]
pub struct ApiStep {
    pub name: String,
    pub path: String,
    pub action: ApiAction,
    /// Names of the changed fields (for create: the fields the config sets).
    pub fields: Vec<String>,
    /// The changed fields that break consumers.
    pub breaking_fields: Vec<String>,
    /// The state the proxy is in now (`None`: no proxy yet).
    pub current_state: Option<Lifecycle>,
    /// State changes reported, relative to the current state.
    pub state_ops: Vec<StateOp>,
    /// Expected grant changes (recomputed from fresh reads when applying).
    pub grants: GrantPreview,
    pub(crate) index: usize,
    pub(crate) actual: Option<Value>,
    /// The config's proxy fields in API Manager's form (policy keys).
    pub(crate) desired_fields: Map<String, Value>,
}

impl ApiStep {
    pub fn target(&self) -> String {
        api_target(&self.name, &self.path)
    }
}

impl fmt::Debug for EntityStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntityStep")
            .field("name", &self.name)
            .field("action", &self.action)
            .field("fields", &self.fields)
            .field("organization", &self.organization)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for ApiStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiStep")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("action", &self.action)
            .field("fields", &self.fields)
            .field("breaking_fields", &self.breaking_fields)
            .field("current_state", &self.current_state)
            .field("state_ops", &self.state_ops)
            .field("grants", &self.grants)
            .field("proxy_id", &self.actual.as_ref().and_then(|p| p.get("id")))
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plan")
            .field("options", &self.options)
            .field("organizations", &self.organizations)
            .field("applications", &self.applications)
            .field("apis", &self.apis)
            .field("refused", &self.refused)
            .field("warnings", &self.warnings)
            .finish_non_exhaustive()
    }
}

/// Breaking changes of one target that the options do not allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakingChange {
    pub target: String,
    pub fields: Vec<String>,
}

/// What a reconciliation would change. Built by [`plan`], carried out by
/// [`apply`]. `Debug` shows names only.
#[derive(Clone)]
pub struct Plan {
    pub options: ReconcileOptions,
    pub organizations: Vec<EntityStep>,
    pub applications: Vec<EntityStep>,
    pub apis: Vec<ApiStep>,
    /// Breaking changes not allowed: [`apply`] refuses the plan.
    pub refused: Vec<BreakingChange>,
    pub warnings: Vec<String>,
    pub(crate) directory: access::Directory,
}

impl Plan {
    /// Whether applying would write nothing (grants included).
    pub fn is_noop(&self) -> bool {
        self.refused.is_empty()
            && self
                .organizations
                .iter()
                .chain(&self.applications)
                .all(|s| s.action == EntityAction::Unchanged)
            && self
                .apis
                .iter()
                .all(|a| a.action == ApiAction::Unchanged && a.grants.is_empty())
    }

    /// The changes applying is expected to report, in order.
    pub fn changes(&self) -> Vec<ApiChange> {
        let mut out = Vec::new();
        for org in &self.organizations {
            if org.action != EntityAction::Unchanged {
                out.push(change(
                    org_target(&org.name),
                    org.action.as_str(),
                    &org.fields,
                ));
            }
        }
        for api in &self.apis {
            let target = api.target();
            match api.action {
                ApiAction::Unchanged | ApiAction::Refused | ApiAction::StateChange => {}
                action => out.push(change(target.clone(), action.as_str(), &api.fields)),
            }
            if api.action != ApiAction::Refused {
                for op in &api.state_ops {
                    out.push(change(target.clone(), op.as_str(), &[]));
                }
            }
        }
        for app in &self.applications {
            if app.action != EntityAction::Unchanged {
                out.push(change(
                    app_target(&app.name),
                    app.action.as_str(),
                    &app.fields,
                ));
            }
        }
        for api in &self.apis {
            let target = api.target();
            let g = &api.grants;
            for (action, names) in [
                ("grant", &g.grant_orgs),
                ("revoke", &g.revoke_orgs),
                ("subscribe", &g.subscribe_apps),
                ("unsubscribe", &g.unsubscribe_apps),
            ] {
                if !names.is_empty() {
                    out.push(change(target.clone(), action, names));
                }
            }
        }
        out
    }

    /// Names of the breaking fields refused, without duplicates.
    pub fn breaking_fields(&self) -> Vec<String> {
        dedup_fields(&self.refused)
    }
}

/// Why a reconciliation did not happen or did not complete.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading API Manager failed; nothing was written.
    #[error("reading API Manager's state failed: {0}")]
    Read(#[source] client::Error),
    /// The configuration cannot be applied to this API Manager; nothing was
    /// written.
    #[error("the configuration cannot be applied: {}", .0.join("; "))]
    Invalid(Vec<String>),
    /// Breaking changes the stage does not allow; nothing was written.
    #[error("{}", breaking_reason(.0))]
    Breaking(Vec<BreakingChange>),
    /// A write failed; what the run had done was undone as far as possible.
    #[error("{0}")]
    Apply(Box<ApplyFailure>),
}

impl Error {
    /// The breaking fields (names, without duplicates) when the
    /// reconciliation was refused for them.
    pub fn breaking_fields(&self) -> Vec<String> {
        match self {
            Error::Breaking(changes) => dedup_fields(changes),
            _ => Vec::new(),
        }
    }
}

/// A write that failed mid-way, and what became of the earlier ones.
#[derive(Debug, Clone)]
pub struct ApplyFailure {
    /// The step that failed, e.g. `publish api Petstore /petstore/v1`.
    pub step: String,
    /// Why (API Manager's answer).
    pub cause: String,
    /// The HTTP status API Manager answered, if any.
    pub status: Option<u16>,
    /// The changes that had been made before (all undone unless listed in
    /// `not_undone`).
    pub applied: Vec<ApiChange>,
    /// What was undone, in the order it was undone.
    pub undone: Vec<String>,
    /// What could not be undone, with the reason.
    pub not_undone: Vec<String>,
}

impl fmt::Display for ApplyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "step `{}` failed: {}", self.step, self.cause)?;
        if self.undone.is_empty() && self.not_undone.is_empty() {
            write!(f, "; nothing had been changed before")?;
        }
        if !self.undone.is_empty() {
            write!(f, "; undone: {}", self.undone.join(", "))?;
        }
        if !self.not_undone.is_empty() {
            write!(f, "; could NOT be undone: {}", self.not_undone.join(", "))?;
        }
        Ok(())
    }
}

fn breaking_reason(changes: &[BreakingChange]) -> String {
    let list: Vec<String> = changes
        .iter()
        .map(|c| format!("{} ({})", c.target, c.fields.join(", ")))
        .collect();
    format!(
        "breaking changes are not allowed on this stage (set `breaking_changes: true` to allow them): {}",
        list.join("; ")
    )
}

fn dedup_fields(changes: &[BreakingChange]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for f in changes.iter().flat_map(|c| &c.fields) {
        if !out.contains(f) {
            out.push(f.clone());
        }
    }
    out
}

/// Reads API Manager and plans the changes; writes nothing.
pub async fn plan(
    client: &ApiManagerClient,
    desired: &DesiredState,
    options: &ReconcileOptions,
) -> Result<Plan, Error> {
    plan::plan(client, desired, options).await
}

/// Carries out a plan made from the same `desired` state. Refuses (writing
/// nothing) when the plan holds breaking changes its options do not allow.
pub async fn apply(
    client: &ApiManagerClient,
    desired: &DesiredState,
    plan: &Plan,
) -> Result<Vec<ApiChange>, Error> {
    apply::apply(client, desired, plan).await
}

/// Plans and applies.
pub async fn reconcile(
    client: &ApiManagerClient,
    desired: &DesiredState,
    options: &ReconcileOptions,
) -> Result<Vec<ApiChange>, Error> {
    let plan = plan::plan(client, desired, options).await?;
    apply::apply(client, desired, &plan).await
}

// ---------------------------------------------------------------------------
// Helpers shared by planning and applying

pub(crate) fn api_target(name: &str, path: &str) -> String {
    format!("api {name} {path}")
}

pub(crate) fn org_target(name: &str) -> String {
    format!("organization {name}")
}

pub(crate) fn app_target(name: &str) -> String {
    format!("application {name}")
}

pub(crate) fn change(target: String, action: &str, fields: &[String]) -> ApiChange {
    ApiChange {
        target,
        action: action.to_owned(),
        fields: fields.to_vec(),
    }
}

pub(crate) fn desired_api_target(api: &DesiredApi) -> String {
    api_target(&api.name, &api.path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_failure_says_what_failed_and_what_was_undone() {
        let failure = ApplyFailure {
            step: "publish api Petstore /petstore/v1".into(),
            cause: "POST /proxies/1/publish: API Manager answered 500: boom".into(),
            status: Some(500),
            applied: Vec::new(),
            undone: vec!["deleted created proxy 1 of api Petstore /petstore/v1".into()],
            not_undone: vec!["deleted the replaced proxy 0 (cannot be undone)".into()],
        };
        let text = Error::Apply(Box::new(failure)).to_string();
        assert!(text.starts_with("step `publish api Petstore /petstore/v1` failed: POST"));
        assert!(text.contains("; undone: deleted created proxy 1"));
        assert!(text.contains("; could NOT be undone: deleted the replaced proxy 0"));
    }

    #[test]
    fn breaking_error_lists_targets_and_deduplicated_fields() {
        let err = Error::Breaking(vec![
            BreakingChange {
                target: "api A /a".into(),
                fields: vec!["securityProfiles".into(), "state".into()],
            },
            BreakingChange {
                target: "api B /b".into(),
                fields: vec!["securityProfiles".into()],
            },
        ]);
        assert_eq!(err.breaking_fields(), vec!["securityProfiles", "state"]);
        let text = err.to_string();
        assert!(text.contains("`breaking_changes: true`"), "{text}");
        assert!(text.contains("api A /a (securityProfiles, state); api B /b (securityProfiles)"));
    }

    #[test]
    fn plan_debug_shows_no_values() {
        let step = ApiStep {
            name: "Petstore".into(),
            path: "/p".into(),
            action: ApiAction::Create,
            fields: vec!["authenticationProfiles".into()],
            breaking_fields: Vec::new(),
            current_state: None,
            state_ops: Vec::new(),
            grants: GrantPreview::default(),
            index: 0,
            actual: None,
            desired_fields: serde_json::json!({"authenticationProfiles": [{"parameters": {"password": "s3cret"}}]})
                .as_object()
                .cloned()
                .unwrap(),
        };
        let text = format!("{step:?}");
        assert!(
            text.contains("authenticationProfiles") && !text.contains("s3cret"),
            "{text}"
        );
    }
}
