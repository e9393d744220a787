//! A run's plan: its stages, the steps each has, and what triggered it.
//!
//! [`Step`] is the one definition of the order in which a stage's steps run
//! ([`Step::ORDER`]). The decision engine (`gantry_decide`) waits for the
//! gates and the promotion's results in this order, the `apim` and `smoke`
//! services start after the step before theirs ([`Step::starts_after`]),
//! and the README's step table is checked against it (`readme.rs`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::EventName;

/// One stage of a run's plan, frozen from the pipeline definition when the run started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StagePlan {
    pub name: String,
    /// The stage that must have promoted this run first; none for the first stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// Which steps this stage has, in the order they run.
    pub steps: Vec<Step>,
}

impl StagePlan {
    pub fn has(&self, step: Step) -> bool {
        self.steps.contains(&step)
    }
}

wire_enum! {
    /// A step of a stage, listed in the order a stage runs them: the gates
    /// (`package`, `image`, `approval`) are met before the conductor starts
    /// the promotion (`stage.started`), then the promotion's steps run one
    /// after the other. A stage has the steps its definition asks for
    /// (`package` always).
    pub enum Step as "step" {
        /// envgen builds the stage's environmentalized package from the
        /// commit: `package.built` / `package.failed`. Every stage has it.
        Package = "package",
        /// imagebuild pushes the package on top of `image.base`:
        /// `image.pushed` / `image.failed`. When the pipeline has `image`.
        Image = "image",
        /// The conductor asks for approvals (`approval.requested`) once the
        /// package (and image) exist; `approval.granted` /
        /// `approval.rejected`. When the stage has `approval`.
        Approval = "approval",
        /// The deployer deploys the image at `stage.started`:
        /// `deploy.completed` / `deploy.failed`. When the stage has `deploy`.
        Deploy = "deploy",
        /// The deployer polls `ready.url` until healthy before it records
        /// `deploy.completed` (a readiness failure is a `deploy.failed`);
        /// no event of its own, and nothing to do without `deploy`. When
        /// the stage has `ready`.
        Ready = "ready",
        /// apim reconciles API Manager after the deploy (or at
        /// `stage.started` without one): `apis.promoted` / `apis.failed`.
        /// When the stage has `apimanager`.
        ApiManager = "apimanager",
        /// smoke runs the stage's checks after the step before it:
        /// `smoke.passed` / `smoke.failed`. When the stage has `smoke`.
        Smoke = "smoke",
        /// perf drives load at the deployed gateway after the step before
        /// it: `perf.passed` / `perf.failed`. When the stage has `perf`.
        Perf = "perf",
    }
}

impl Step {
    /// The order in which a stage's steps run: the declaration order.
    pub const ORDER: &'static [Step] = Step::ALL;

    /// Met before the promotion starts: `stage.started` waits for them. A
    /// rollback run has none (its release exists, and asking was the decision).
    pub const fn is_gate(self) -> bool {
        matches!(self, Step::Package | Step::Image | Step::Approval)
    }

    /// Checks the promoted release (smoke, perf); a rollback restores what
    /// ran before and skips them.
    pub const fn is_verification(self) -> bool {
        matches!(self, Step::Smoke | Step::Perf)
    }

    /// The events (success, failure) a worker records for this step within
    /// a promotion; none for the gates, and none for `ready`, which the
    /// deployer's `deploy.completed` / `deploy.failed` include.
    pub const fn results(self) -> Option<(EventName, EventName)> {
        match self {
            Step::Deploy => Some((EventName::DeployCompleted, EventName::DeployFailed)),
            Step::ApiManager => Some((EventName::ApisPromoted, EventName::ApisFailed)),
            Step::Smoke => Some((EventName::SmokePassed, EventName::SmokeFailed)),
            Step::Perf => Some((EventName::PerfPassed, EventName::PerfFailed)),
            Step::Package | Step::Image | Step::Approval | Step::Ready => None,
        }
    }

    /// The step whose result `event` is, and whether it succeeded.
    pub fn of_result(event: EventName) -> Option<(Step, bool)> {
        Step::ORDER.iter().find_map(|&step| {
            let (ok, failed) = step.results()?;
            (event == ok || event == failed).then_some((step, event == ok))
        })
    }

    /// The event after which a worker begins this step in a stage with
    /// `steps`: the success of the nearest earlier step of the promotion
    /// that has results, else `stage.started`. `None` for a step without
    /// results of its own (see [`Step::results`]).
    pub fn starts_after(self, steps: &[Step]) -> Option<EventName> {
        self.results()?;
        let before = Step::ORDER
            .iter()
            .take_while(|&&s| s != self)
            .filter(|s| steps.contains(s))
            .filter_map(|s| s.results().map(|(ok, _)| ok))
            .last();
        Some(before.unwrap_or(EventName::StageStarted))
    }

    /// Whether `event` is when a worker begins this step in a stage with
    /// `steps` (false when the stage does not have it).
    pub fn begins_at(self, event: EventName, steps: &[Step]) -> bool {
        steps.contains(&self) && self.starts_after(steps) == Some(event)
    }
}

wire_enum! {
    /// What started a run (`run.started` `trigger`).
    pub enum Trigger as "trigger" {
        /// A verified forge webhook (any provider, `generic` included).
        Webhook = "webhook",
        /// `gantry trigger` / `POST /api/v1/runs`.
        Manual = "manual",
        /// `gantry rollback` / `POST /api/v1/pipelines/{name}/stages/{stage}/rollback`:
        /// the run re-promotes an earlier release (`run.started` `rollback`).
        Rollback = "rollback",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_spelling_is_the_serde_spelling() {
        for step in Step::ALL {
            let json = serde_json::to_value(step).unwrap();
            assert_eq!(json, step.as_str());
            assert_eq!(serde_json::from_value::<Step>(json).unwrap(), *step);
            assert_eq!(step.as_str().parse::<Step>(), Ok(*step));
        }
        for trigger in Trigger::ALL {
            assert_eq!(serde_json::to_value(trigger).unwrap(), trigger.as_str());
            assert_eq!(trigger.as_str().parse::<Trigger>(), Ok(*trigger));
        }
        let err = "load".parse::<Step>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "`load` is not a step (one of package, image, approval, deploy, ready, apimanager, smoke, perf)"
        );
        assert!(serde_json::from_str::<Step>("\"load\"").is_err());
    }

    #[test]
    fn order_is_the_documented_one() {
        let order: Vec<&str> = Step::ORDER.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            order,
            [
                "package",
                "image",
                "approval",
                "deploy",
                "ready",
                "apimanager",
                "smoke",
                "perf"
            ]
        );
        // `Ord` follows the declaration order, so sorting a plan's steps puts
        // them in the order they run.
        assert!(Step::ORDER.windows(2).all(|w| w[0] < w[1]));
        // The gates come first.
        let gates = Step::ORDER.iter().take_while(|s| s.is_gate()).count();
        assert!(Step::ORDER[gates..].iter().all(|s| !s.is_gate()));
    }

    #[test]
    fn each_worker_starts_after_the_step_before_it() {
        use EventName as E;
        use Step as S;
        let all = Step::ORDER;
        assert_eq!(S::Deploy.starts_after(all), Some(E::StageStarted));
        assert_eq!(S::ApiManager.starts_after(all), Some(E::DeployCompleted));
        assert_eq!(S::Smoke.starts_after(all), Some(E::ApisPromoted));
        assert_eq!(S::Perf.starts_after(all), Some(E::SmokePassed));
        assert_eq!(
            S::Perf.starts_after(&[S::Package, S::Deploy, S::Perf]),
            Some(E::DeployCompleted)
        );
        // Steps the stage lacks are skipped; `ready` has no event of its own.
        let no_apim = [S::Package, S::Deploy, S::Ready, S::Smoke];
        assert_eq!(S::Smoke.starts_after(&no_apim), Some(E::DeployCompleted));
        assert_eq!(
            S::Smoke.starts_after(&[S::Package, S::Ready, S::Smoke]),
            Some(E::StageStarted)
        );
        assert_eq!(
            S::ApiManager.starts_after(&[S::ApiManager]),
            Some(E::StageStarted)
        );
        for step in [S::Package, S::Image, S::Approval, S::Ready] {
            assert_eq!(step.starts_after(all), None);
        }
        assert!(S::Smoke.begins_at(E::DeployCompleted, &no_apim));
        assert!(!S::Smoke.begins_at(E::StageStarted, &no_apim));
        assert!(!S::ApiManager.begins_at(E::DeployCompleted, &no_apim));
    }

    #[test]
    fn results_name_their_step() {
        assert_eq!(
            Step::of_result(EventName::DeployCompleted),
            Some((Step::Deploy, true))
        );
        assert_eq!(
            Step::of_result(EventName::ApisFailed),
            Some((Step::ApiManager, false))
        );
        assert_eq!(
            Step::of_result(EventName::SmokePassed),
            Some((Step::Smoke, true))
        );
        assert_eq!(Step::of_result(EventName::PackageBuilt), None);
        assert_eq!(Step::of_result(EventName::StageStarted), None);
    }
}
