//! Where a run and its stages are, as the projections fold the log and the
//! API reports it (`GET /api/v1/runs`, `GET /api/v1/runs/{id}`). No event
//! carries these: they are derived from events, named here so that the
//! projections, the API and the README use one set of words.

use crate::EventName;

wire_enum! {
    /// A run's status.
    pub enum RunStatus as "run status" {
        /// From `run.started` until a terminal event.
        Running = "running",
        /// `run.succeeded`.
        Succeeded = "succeeded",
        /// `run.failed`.
        Failed = "failed",
        /// `run.superseded`.
        Superseded = "superseded",
        /// `run.cancelled`.
        Cancelled = "cancelled",
    }
}

impl RunStatus {
    /// The status a terminal event leaves the run in.
    pub const fn after(event: EventName) -> Option<RunStatus> {
        match event {
            EventName::RunSucceeded => Some(RunStatus::Succeeded),
            EventName::RunFailed => Some(RunStatus::Failed),
            EventName::RunSuperseded => Some(RunStatus::Superseded),
            EventName::RunCancelled => Some(RunStatus::Cancelled),
            _ => None,
        }
    }
}

wire_enum! {
    /// A stage's status in a run: it follows the stage's latest event.
    pub enum StageStatus as "stage status" {
        /// Nothing recorded for the stage since `run.started`.
        Pending = "pending",
        /// `package.built`.
        Packaged = "packaged",
        /// `image.pushed`.
        ImageReady = "image_ready",
        /// `stage.queued`.
        Queued = "queued",
        /// `approval.requested`.
        AwaitingApproval = "awaiting_approval",
        /// `stage.started`.
        Deploying = "deploying",
        /// `deploy.completed`.
        Deployed = "deployed",
        /// `apis.promoted`.
        ApisPromoted = "apis_promoted",
        /// `smoke.passed` or `perf.passed`.
        Verified = "verified",
        /// `env.promoted`.
        Promoted = "promoted",
        /// `approval.rejected`.
        Rejected = "rejected",
        /// `package.failed`, `image.failed`, `deploy.failed`, `apis.failed`,
        /// `smoke.failed` or `perf.failed`.
        Failed = "failed",
        /// `stage.rolled_back`.
        RolledBack = "rolled_back",
    }
}

impl StageStatus {
    /// The status a stage-scoped event leaves its stage in; `None` for
    /// events that do not change it (`approval.granted`, say).
    pub const fn after(event: EventName) -> Option<StageStatus> {
        use EventName as E;
        Some(match event {
            E::PackageBuilt => StageStatus::Packaged,
            E::ImagePushed => StageStatus::ImageReady,
            E::StageQueued => StageStatus::Queued,
            E::ApprovalRequested => StageStatus::AwaitingApproval,
            E::StageStarted => StageStatus::Deploying,
            E::DeployCompleted => StageStatus::Deployed,
            E::ApisPromoted => StageStatus::ApisPromoted,
            E::SmokePassed | E::PerfPassed => StageStatus::Verified,
            E::EnvPromoted => StageStatus::Promoted,
            E::ApprovalRejected => StageStatus::Rejected,
            E::PackageFailed
            | E::ImageFailed
            | E::DeployFailed
            | E::ApisFailed
            | E::SmokeFailed
            | E::PerfFailed => StageStatus::Failed,
            E::StageRolledBack => StageStatus::RolledBack,
            E::CommitReceived
            | E::RunStarted
            | E::ApprovalGranted
            | E::StagePaused
            | E::StageResumed
            | E::RunSucceeded
            | E::RunFailed
            | E::RunSuperseded
            | E::RunCancelled => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_spelling_is_the_serde_spelling() {
        for s in RunStatus::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
            assert_eq!(s.as_str().parse::<RunStatus>(), Ok(*s));
        }
        for s in StageStatus::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
            assert_eq!(s.as_str().parse::<StageStatus>(), Ok(*s));
        }
        assert_eq!(
            "done".parse::<RunStatus>().unwrap_err().to_string(),
            "`done` is not a run status (one of running, succeeded, failed, superseded, cancelled)"
        );
    }

    #[test]
    fn every_status_but_the_first_follows_an_event() {
        for s in &RunStatus::ALL[1..] {
            assert!(EventName::ALL
                .iter()
                .any(|e| RunStatus::after(*e) == Some(*s)));
        }
        for s in &StageStatus::ALL[1..] {
            assert!(EventName::ALL
                .iter()
                .any(|e| StageStatus::after(*e) == Some(*s)));
        }
        assert!(EventName::ALL
            .iter()
            .all(|e| RunStatus::after(*e).is_some() == e.is_terminal()));
    }
}
