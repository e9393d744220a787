//! Which packages may go: the retention rule of the package store.
//!
//! A package is **kept** when any of these holds:
//! 1. it is the package of a stage's current release (the `releases`
//!    projection: what a stage runs now, which a diff compares against);
//! 2. a run that is still `running` built it (imagebuild, a promotion or a
//!    diff may still read it);
//! 3. a run created within the last `keep_days` days built it (recent runs
//!    stay diffable and inspectable);
//! 4. it was written less than `grace` ago (envgen stores a package before
//!    its `package.built` is recorded, so a fresh object may not be
//!    referenced yet), or its write time is unknown.
//!
//! Everything else in the store is unreachable for Gantry and is removed.
//! Rollbacks need no package (they re-deploy the release's image), so
//! older releases do not pin theirs. The rule is a pure function
//! ([`plan`]); `gantry packages prune` applies it.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use gantry_proto::RunStatus;

use super::ListedPackage;

/// A package as the projections know it: which run built it for which stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageRef {
    pub digest: String,
    pub pipeline: String,
    pub run_id: String,
    pub stage: String,
    pub run_status: RunStatus,
    /// When the run was created; `None` when unreadable (kept, to be safe).
    pub run_created_at: Option<DateTime<Utc>>,
    /// Whether this (run, stage) is what the stage runs now.
    pub released: bool,
}

/// The retention settings (`gantry packages prune --keep-days --grace-minutes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub keep_days: u32,
    pub grace: Duration,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        Self {
            keep_days: 30,
            grace: Duration::hours(1),
        }
    }
}

/// Why a package is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keep {
    Released { pipeline: String, stage: String },
    RunInProgress { run_id: String },
    RecentRun { run_id: String },
    RecentlyWritten,
}

impl std::fmt::Display for Keep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Keep::Released { pipeline, stage } => {
                write!(f, "the current release of {pipeline}/{stage}")
            }
            Keep::RunInProgress { run_id } => write!(f, "run {run_id} is still running"),
            Keep::RecentRun { run_id } => write!(f, "built by the recent run {run_id}"),
            Keep::RecentlyWritten => write!(f, "written within the grace period"),
        }
    }
}

/// What the rule decides for the packages in a store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionPlan {
    /// Digest → the first reason it is kept.
    pub keep: BTreeMap<String, Keep>,
    /// Digests to remove.
    pub remove: Vec<String>,
}

/// Applies the rule to what the store holds (`stored`) and what runs
/// reference (`refs`), at `now`.
pub fn plan(
    stored: &[ListedPackage],
    refs: &[PackageRef],
    policy: &RetentionPolicy,
    now: DateTime<Utc>,
) -> RetentionPlan {
    let recent_since = now - Duration::days(i64::from(policy.keep_days));
    let mut reasons: BTreeMap<&str, Keep> = BTreeMap::new();
    // Strongest reason first, so the plan says the most useful one.
    for r in refs.iter().filter(|r| r.released) {
        reasons.entry(&r.digest).or_insert(Keep::Released {
            pipeline: r.pipeline.clone(),
            stage: r.stage.clone(),
        });
    }
    for r in refs.iter().filter(|r| r.run_status == RunStatus::Running) {
        reasons.entry(&r.digest).or_insert(Keep::RunInProgress {
            run_id: r.run_id.clone(),
        });
    }
    for r in refs
        .iter()
        .filter(|r| r.run_created_at.is_none_or(|t| t >= recent_since))
    {
        reasons.entry(&r.digest).or_insert(Keep::RecentRun {
            run_id: r.run_id.clone(),
        });
    }
    let mut out = RetentionPlan::default();
    for p in stored {
        let reason = reasons.get(p.digest.as_str()).cloned().or_else(|| {
            p.modified
                .is_none_or(|m| m > now - policy.grace)
                .then_some(Keep::RecentlyWritten)
        });
        match reason {
            Some(r) => {
                out.keep.insert(p.digest.clone(), r);
            }
            None => out.remove.push(p.digest.clone()),
        }
    }
    out.remove.sort();
    out
}

/// Why a prune stopped.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error("reading the runs: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Packages(#[from] super::PackageStoreError),
}

/// Applies the rule to `packages` with the runs `projections` know;
/// removes what it may unless `dry_run`. Returns the plan it followed.
pub async fn prune(
    packages: &super::PackageStore,
    projections: &crate::projection::Projections,
    policy: &RetentionPolicy,
    dry_run: bool,
) -> Result<RetentionPlan, PruneError> {
    // Listing the store before reading the runs: a package written after
    // the listing is not considered, and one written before it whose run
    // was recorded since is seen as referenced (or is within the grace).
    let stored = packages.list().await?;
    let refs = projections.package_references().await?;
    let plan = plan(&stored, &refs, policy, Utc::now());
    if !dry_run {
        for digest in &plan.remove {
            packages.delete(digest).await?;
            tracing::info!(%digest, store = %packages.place(), "package removed by retention");
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> String {
        format!("sha256:{}", hex::encode([n; 32]))
    }

    fn stored(n: u8, age: Duration, now: DateTime<Utc>) -> ListedPackage {
        ListedPackage {
            digest: digest(n),
            size: 1,
            modified: Some(now - age),
        }
    }

    fn reference(
        n: u8,
        run: &str,
        status: RunStatus,
        age: Duration,
        now: DateTime<Utc>,
    ) -> PackageRef {
        PackageRef {
            digest: digest(n),
            pipeline: "banking".into(),
            run_id: run.into(),
            stage: "prod".into(),
            run_status: status,
            run_created_at: Some(now - age),
            released: false,
        }
    }

    #[test]
    fn keeps_releases_running_and_recent_runs_and_fresh_objects_only() {
        let now = Utc::now();
        let old = Duration::days(90);
        let policy = RetentionPolicy::default();
        let store = vec![
            stored(1, old, now),                  // current release of an old run
            stored(2, old, now),                  // an old, finished run's package: removed
            stored(3, old, now),                  // an old run still running
            stored(4, old, now),                  // a run from yesterday
            stored(5, Duration::minutes(5), now), // written just now, not referenced yet
            stored(6, old, now),                  // referenced by nothing: removed
            stored(7, old, now), // an old run's package that a release shares: kept
        ];
        let mut released = reference(1, "r1", RunStatus::Succeeded, old, now);
        released.released = true;
        let mut shared = reference(7, "r7", RunStatus::Succeeded, old, now);
        shared.released = true;
        let refs = vec![
            released,
            reference(2, "r2", RunStatus::Succeeded, old, now),
            reference(3, "r3", RunStatus::Running, old, now),
            reference(4, "r4", RunStatus::Failed, Duration::days(1), now),
            reference(7, "r7b", RunStatus::Superseded, old, now),
            shared,
        ];
        let plan = plan(&store, &refs, &policy, now);
        assert_eq!(plan.remove, vec![digest(2), digest(6)]);
        assert_eq!(
            plan.keep[&digest(1)],
            Keep::Released {
                pipeline: "banking".into(),
                stage: "prod".into()
            }
        );
        assert_eq!(
            plan.keep[&digest(3)],
            Keep::RunInProgress {
                run_id: "r3".into()
            }
        );
        assert_eq!(
            plan.keep[&digest(4)],
            Keep::RecentRun {
                run_id: "r4".into()
            }
        );
        assert_eq!(plan.keep[&digest(5)], Keep::RecentlyWritten);
        assert!(matches!(plan.keep[&digest(7)], Keep::Released { .. }));
    }

    #[test]
    fn unknown_times_are_kept() {
        let now = Utc::now();
        let p = ListedPackage {
            digest: digest(1),
            size: 1,
            modified: None,
        };
        let mut r = reference(2, "r", RunStatus::Succeeded, Duration::zero(), now);
        r.run_created_at = None;
        let plan = plan(
            &[p, stored(2, Duration::days(400), now)],
            &[r],
            &RetentionPolicy::default(),
            now,
        );
        assert!(plan.remove.is_empty(), "{plan:?}");
    }

    #[test]
    fn keep_days_zero_removes_every_finished_unreleased_package() {
        let now = Utc::now();
        let policy = RetentionPolicy {
            keep_days: 0,
            grace: Duration::zero(),
        };
        let plan = plan(
            &[stored(1, Duration::hours(2), now)],
            &[reference(
                1,
                "r",
                RunStatus::Succeeded,
                Duration::hours(2),
                now,
            )],
            &policy,
            now,
        );
        assert_eq!(plan.remove, vec![digest(1)]);
    }
}
