//! Gantry's event contract (DESIGN.md 1.3).
//!
//! Every fact Gantry records is a [`CloudEvent`] whose `data` is one of the
//! payload structs in [`events`]. [`EventName`] lists them all, with the
//! CloudEvents `type` and the NATS subject each travels on. [`plan`] holds
//! a run's stage plan and the order of a stage's steps ([`Step::ORDER`]),
//! [`status`] the statuses of runs and stages.

#[macro_use]
mod wire_enum;

pub mod cdevents;
pub mod envelope;
pub mod events;
pub mod plan;
#[cfg(test)]
mod readme;
pub mod schema;
pub mod status;
pub mod subject;

pub use envelope::{CloudEvent, DecodeError};
pub use plan::{StagePlan, Step, Trigger};
pub use status::{RunStatus, StageStatus};
pub use subject::Subjects;
pub use wire_enum::UnknownValue;

use serde::{de::DeserializeOwned, Serialize};

/// A struct that is the `data` of one event type.
pub trait EventPayload: Serialize + DeserializeOwned + schemars::JsonSchema {
    const NAME: EventName;
}

macro_rules! event_names {
    ($($variant:ident = $name:literal => $ty:ty),+ $(,)?) => {
        /// Every event Gantry records.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum EventName { $($variant),+ }

        impl EventName {
            pub const ALL: &'static [EventName] = &[$(EventName::$variant),+];

            /// The short name, e.g. `package.built`.
            pub const fn as_str(self) -> &'static str {
                match self { $(EventName::$variant => $name),+ }
            }

            pub fn parse(name: &str) -> Option<Self> {
                match name { $($name => Some(EventName::$variant),)+ _ => None }
            }

            /// The JSON Schema of this event's `data`.
            pub fn data_schema(self) -> schemars::Schema {
                match self { $(EventName::$variant => schemars::schema_for!($ty)),+ }
            }
        }
    };
}

event_names! {
    CommitReceived = "commit.received" => events::CommitReceived,
    RunStarted = "run.started" => events::RunStarted,
    PackageBuilt = "package.built" => events::PackageBuilt,
    PackageFailed = "package.failed" => events::PackageFailed,
    ImagePushed = "image.pushed" => events::ImagePushed,
    ImageFailed = "image.failed" => events::ImageFailed,
    StageQueued = "stage.queued" => events::StageQueued,
    StageStarted = "stage.started" => events::StageStarted,
    DeployCompleted = "deploy.completed" => events::DeployCompleted,
    DeployFailed = "deploy.failed" => events::DeployFailed,
    ApisPromoted = "apis.promoted" => events::ApisPromoted,
    ApisFailed = "apis.failed" => events::ApisFailed,
    SmokePassed = "smoke.passed" => events::SmokePassed,
    SmokeFailed = "smoke.failed" => events::SmokeFailed,
    PerfPassed = "perf.passed" => events::PerfPassed,
    PerfFailed = "perf.failed" => events::PerfFailed,
    ApprovalRequested = "approval.requested" => events::ApprovalRequested,
    ApprovalGranted = "approval.granted" => events::ApprovalGranted,
    ApprovalRejected = "approval.rejected" => events::ApprovalRejected,
    EnvPromoted = "env.promoted" => events::EnvPromoted,
    StageRolledBack = "stage.rolled_back" => events::StageRolledBack,
    StagePaused = "stage.paused" => events::StagePaused,
    StageResumed = "stage.resumed" => events::StageResumed,
    RunSucceeded = "run.succeeded" => events::RunSucceeded,
    RunFailed = "run.failed" => events::RunFailed,
    RunSuperseded = "run.superseded" => events::RunSuperseded,
    RunCancelled = "run.cancelled" => events::RunCancelled,
}

const TYPE_PREFIX: &str = "io.gantry.";
const TYPE_SUFFIX: &str = ".v1";

impl EventName {
    /// The CloudEvents `type`, e.g. `io.gantry.package.built.v1`.
    pub fn type_name(self) -> String {
        format!("{TYPE_PREFIX}{}{TYPE_SUFFIX}", self.as_str())
    }

    pub fn from_type_name(ty: &str) -> Option<Self> {
        ty.strip_prefix(TYPE_PREFIX)?
            .strip_suffix(TYPE_SUFFIX)
            .and_then(Self::parse)
    }

    /// Ends a run: nothing more happens to it.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            EventName::RunSucceeded
                | EventName::RunFailed
                | EventName::RunSuperseded
                | EventName::RunCancelled
        )
    }
}

impl std::fmt::Display for EventName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_type_names() {
        assert_eq!(EventName::ALL.len(), 27);
        for name in EventName::ALL {
            assert_eq!(EventName::parse(name.as_str()), Some(*name));
            assert_eq!(EventName::from_type_name(&name.type_name()), Some(*name));
        }
        assert_eq!(
            EventName::from_type_name("io.gantry.package.built.v2"),
            None
        );
        assert_eq!(
            EventName::from_type_name("com.example.package.built.v1"),
            None
        );
    }
}
