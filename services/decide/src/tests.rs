//! One test (or a few) per rule of the module documentation.

use chrono::Duration;
use gantry_proto::events as ev;
use gantry_proto::{EventName, Step, Trigger};

use super::fixture::*;
use super::*;

fn two_stages(prod_extra: &str) -> Pipeline {
    pipeline(
        true,
        &format!("  - name: test\n{DEPLOY}{SMOKE}  - name: prod\n{DEPLOY}{prod_extra}"),
    )
}

fn start(run: &str, stage: &str) -> Decision {
    Decision::Start {
        run: run.into(),
        stage: stage.into(),
        commit: commit_of(run),
        image: Some(format!("{REPO}:{stage}-{run}")),
        digest: Some(format!("sha256:img-{run}-{stage}")),
        rollback: false,
    }
}

fn promote(run: &str, stage: &str) -> Decision {
    Decision::Promote {
        run: run.into(),
        stage: stage.into(),
        commit: commit_of(run),
        image: Some(format!("{REPO}:{stage}-{run}")),
        digest: Some(format!("sha256:img-{run}-{stage}")),
    }
}

fn queued(run: &str, stage: &str, reason: WaitReason, behind: Option<&str>) -> Decision {
    Decision::Queue {
        run: run.into(),
        stage: stage.into(),
        reason,
        behind: behind.map(str::to_owned),
        until: None,
        by: None,
        detail: None,
    }
}

/// Takes `run` through `stage`'s deploy and smoke steps (those in the plan).
fn pass_stage(log: &mut Log, run: &str, stage: &str) {
    let s = log.pipeline.stage(stage).expect("stage").clone();
    if s.deploy.is_some() {
        log.deployed(run, stage);
    }
    if s.apimanager.is_some() {
        log.apis_promoted(run, stage);
    }
    if !s.smoke.is_empty() {
        log.smoke(run, stage, true);
    }
}

#[test]
fn first_stage_waits_for_package_and_image_then_starts() {
    let mut log = Log::new(two_stages(""));
    log.start_run("r1", "alice");
    // The first stage has no `after`: it waits for its dependencies, once.
    assert_eq!(
        log.step(),
        vec![queued("r1", "test", WaitReason::Dependencies, None)]
    );
    log.package("r1", "test");
    assert_eq!(log.step(), vec![], "the image is still missing");
    log.image("r1", "test");
    assert_eq!(log.step(), vec![start("r1", "test")]);
}

#[test]
fn packages_only_pipeline_needs_no_image() {
    let mut log = Log::new(pipeline(false, &format!("  - name: dev\n{DEPLOY}")));
    log.start_run("r1", "alice");
    log.package("r1", "dev");
    let d = log.step();
    assert_eq!(
        d,
        vec![Decision::Start {
            run: "r1".into(),
            stage: "dev".into(),
            commit: commit_of("r1"),
            image: None,
            digest: None,
            rollback: false,
        }]
    );
    log.deployed("r1", "dev");
    let d = log.step();
    assert!(
        matches!(&d[0], Decision::Promote { image: None, .. }),
        "{d:?}"
    );
    assert_eq!(d[1], Decision::Succeed { run: "r1".into() });
}

#[test]
fn stage_waits_for_after_stage_to_promote_this_run() {
    let mut log = Log::new(two_stages(""));
    log.start_run("r1", "alice");
    log.build_all("r1");
    assert_eq!(log.step(), vec![start("r1", "test")]);
    log.deployed("r1", "test");
    assert_eq!(log.step(), vec![], "smoke has not passed yet");
    log.smoke("r1", "test", true);
    assert_eq!(log.step(), vec![promote("r1", "test"), start("r1", "prod")]);
    log.deployed("r1", "prod");
    assert_eq!(
        log.step(),
        vec![
            promote("r1", "prod"),
            Decision::Succeed { run: "r1".into() }
        ]
    );
    assert_eq!(log.step(), vec![], "terminal runs produce nothing");
}

#[test]
fn explicit_after_branches() {
    // b and c both follow a; d follows b.
    let p = pipeline(
        false,
        "  - name: a\n  - name: b\n    after: a\n  - name: c\n    after: a\n  - name: d\n    after: b\n",
    );
    let mut log = Log::new(p);
    log.start_run("r1", "alice");
    log.build_all("r1");
    let d = log.step();
    // No steps: each stage promotes as soon as it starts.
    let names: Vec<(EventName, Option<&str>)> = d.iter().map(|d| (d.name(), d.stage())).collect();
    assert_eq!(
        names,
        vec![
            (EventName::StageStarted, Some("a")),
            (EventName::EnvPromoted, Some("a")),
            (EventName::StageStarted, Some("b")),
            (EventName::EnvPromoted, Some("b")),
            (EventName::StageStarted, Some("c")),
            (EventName::EnvPromoted, Some("c")),
            (EventName::StageStarted, Some("d")),
            (EventName::EnvPromoted, Some("d")),
            (EventName::RunSucceeded, None),
        ]
    );
}

#[test]
fn one_promotion_per_stage_fifo_in_run_order() {
    let mut log = Log::new(pipeline(
        true,
        &format!("  - name: test\n{DEPLOY}    queue: fifo\n"),
    ));
    for r in ["r1", "r2", "r3"] {
        log.start_run(r, "alice");
    }
    // r3 is ready first: runs not yet ready hold nobody back.
    log.build_all("r3");
    assert_eq!(
        log.step(),
        vec![
            queued("r1", "test", WaitReason::Dependencies, None),
            queued("r2", "test", WaitReason::Dependencies, None),
            start("r3", "test"),
        ]
    );
    log.build_all("r2");
    log.build_all("r1");
    assert_eq!(
        log.step(),
        vec![
            queued("r1", "test", WaitReason::Queue, Some("r3")),
            queued("r2", "test", WaitReason::Queue, Some("r1")),
        ]
    );
    log.deployed("r3", "test");
    assert_eq!(
        log.step(),
        vec![
            promote("r3", "test"),
            Decision::Succeed { run: "r3".into() },
            start("r1", "test"),
        ],
        "r2 stays behind r1, which needs no new queued event"
    );
    log.deployed("r1", "test");
    assert_eq!(log.step()[2], start("r2", "test"));
}

#[test]
fn latest_supersedes_waiting_older_runs_only() {
    let mut log = Log::new(pipeline(true, &format!("  - name: test\n{DEPLOY}")));
    for r in ["r1", "r2", "r3"] {
        log.start_run(r, "alice");
        log.build_all(r);
    }
    let d = log.step();
    // All three are ready in the same history: only the newest goes.
    assert_eq!(
        d,
        vec![
            Decision::Supersede {
                run: "r1".into(),
                stage: "test".into(),
                by_run: "r3".into()
            },
            Decision::Supersede {
                run: "r2".into(),
                stage: "test".into(),
                by_run: "r3".into()
            },
            start("r3", "test"),
        ]
    );
}

#[test]
fn latest_keeps_the_running_promotion_and_replaces_the_waiting_one() {
    let mut log = Log::new(pipeline(true, &format!("  - name: test\n{DEPLOY}")));
    log.start_run("r1", "alice");
    log.build_all("r1");
    assert_eq!(log.step(), vec![start("r1", "test")]);
    log.start_run("r2", "alice");
    log.build_all("r2");
    assert_eq!(
        log.step(),
        vec![queued("r2", "test", WaitReason::Queue, Some("r1"))]
    );
    log.start_run("r3", "alice");
    log.build_all("r3");
    assert_eq!(
        log.step(),
        vec![
            Decision::Supersede {
                run: "r2".into(),
                stage: "test".into(),
                by_run: "r3".into()
            },
            queued("r3", "test", WaitReason::Queue, Some("r1")),
        ]
    );
    log.deployed("r1", "test");
    let d = log.step();
    assert_eq!(d[0], promote("r1", "test"));
    assert_eq!(d[2], start("r3", "test"));
}

#[test]
fn latest_never_deploys_an_older_commit_over_a_newer_one() {
    let mut log = Log::new(pipeline(true, &format!("  - name: test\n{DEPLOY}")));
    log.start_run("r1", "alice");
    log.start_run("r2", "alice");
    log.build_all("r2");
    assert_eq!(
        log.step(),
        vec![
            queued("r1", "test", WaitReason::Dependencies, None),
            start("r2", "test")
        ]
    );
    log.deployed("r2", "test");
    log.step();
    // r1's package arrives late: r2 already promoted the stage.
    log.build_all("r1");
    assert_eq!(
        log.step(),
        vec![Decision::Supersede {
            run: "r1".into(),
            stage: "test".into(),
            by_run: "r2".into()
        }]
    );
}

#[test]
fn approval_is_requested_once_and_counts_distinct_non_author_users() {
    let mut log = Log::new(two_stages(
        "    approval: { required: 2, approvers: [release-managers], allow_self: false, expires: 72h }\n",
    ));
    log.start_run("r1", "alice");
    log.build_all("r1");
    log.step();
    pass_stage(&mut log, "r1", "test");
    let d = log.step();
    assert_eq!(d[0], promote("r1", "test"));
    assert_eq!(
        d[1],
        Decision::RequestApproval {
            run: "r1".into(),
            stage: "prod".into(),
            required: 2,
            approvers: vec!["release-managers".into()],
            expires_at: Some(t0() + Duration::hours(72)),
        }
    );
    assert_eq!(d.len(), 2);
    assert_eq!(log.decide().next_wakeup, Some(t0() + Duration::hours(72)));
    // The author, by username or by email, does not count; nor does a repeat.
    log.grant("r1", "prod", "alice");
    log.grant("r1", "prod", "Alice@Example.com");
    log.grant("r1", "prod", "bob");
    log.grant("r1", "prod", "bob");
    assert_eq!(log.step(), vec![], "one valid approval of two");
    log.grant("r1", "prod", "carol");
    assert_eq!(log.step(), vec![start("r1", "prod")]);
}

#[test]
fn self_approval_counts_when_allowed() {
    let mut log = Log::new(two_stages(
        "    approval: { required: 1, approvers: [rm], allow_self: true }\n",
    ));
    log.start_run("r1", "alice");
    log.build_all("r1");
    log.step();
    pass_stage(&mut log, "r1", "test");
    let d = log.step();
    assert!(matches!(
        &d[1],
        Decision::RequestApproval {
            expires_at: None,
            ..
        }
    ));
    assert_eq!(log.decide().next_wakeup, None, "no expiry, no timer");
    log.grant("r1", "prod", "alice");
    assert_eq!(log.step(), vec![start("r1", "prod")]);
}

#[test]
fn no_author_of_the_run_may_approve_it() {
    let mut log = Log::new(two_stages(
        "    approval: { required: 1, approvers: [rm], allow_self: false }\n",
    ));
    // The commit claims `alice` wrote it; `mallory` pushed it and `trent`
    // triggered it: none of them may approve.
    log.start_run_by("r1", "alice", &["mallory", "trent"]);
    log.build_all("r1");
    log.step();
    pass_stage(&mut log, "r1", "test");
    log.step();
    for author in ["alice", "mallory", "Trent@example.com"] {
        log.grant("r1", "prod", author);
        assert_eq!(log.step(), vec![], "{author} is an author");
    }
    log.grant("r1", "prod", "rita");
    assert_eq!(log.step(), vec![start("r1", "prod")]);
}

#[test]
fn a_grant_before_the_request_does_not_count() {
    let mut log = Log::new(two_stages(
        "    approval: { required: 1, approvers: [rm] }\n",
    ));
    log.start_run("r1", "alice");
    log.build_all("r1");
    log.step();
    // Given before `approval.requested`: before anyone saw what it approves.
    log.grant("r1", "prod", "rita");
    pass_stage(&mut log, "r1", "test");
    let d = log.step();
    assert!(
        matches!(&d[1], Decision::RequestApproval { .. }),
        "still asks: {d:?}"
    );
    assert_eq!(log.step(), vec![], "the early grant is not counted");
    log.grant("r1", "prod", "rita");
    assert_eq!(log.step(), vec![start("r1", "prod")]);
}

#[test]
fn rejection_fails_the_run() {
    let mut log = Log::new(two_stages("    approval: { approvers: [rm] }\n"));
    log.start_run("r1", "alice");
    log.build_all("r1");
    log.step();
    pass_stage(&mut log, "r1", "test");
    log.step();
    log.reject("r1", "prod", "rita");
    assert_eq!(
        log.step(),
        vec![Decision::Fail {
            run: "r1".into(),
            stage: Some("prod".into()),
            reason: "approval for prod rejected by rita: not now".into(),
        }]
    );
    log.grant("r1", "prod", "bob");
    assert_eq!(log.step(), vec![], "a failed run never promotes");
}

#[test]
fn expired_approval_fails_the_run_and_late_grants_do_not_count() {
    let mut log = Log::new(two_stages(
        "    approval: { required: 1, approvers: [rm], expires: 2h }\n",
    ));
    log.start_run("r1", "alice");
    log.build_all("r1");
    log.step();
    pass_stage(&mut log, "r1", "test");
    log.step();
    log.now = at_hours(1);
    assert_eq!(log.step(), vec![]);
    assert_eq!(log.decide().next_wakeup, Some(at_hours(2)));
    log.now = at_hours(2);
    log.grant("r1", "prod", "bob");
    let d = log.step();
    assert_eq!(d.len(), 1, "{d:?}");
    let Decision::Fail { stage, reason, .. } = &d[0] else {
        panic!("{d:?}")
    };
    assert_eq!(stage.as_deref(), Some("prod"));
    assert_eq!(
        reason,
        "approval for prod expired at 2026-12-01T02:00:00Z (0 of 1 approvals)"
    );
}

#[test]
fn satisfied_approval_does_not_lapse_while_queued() {
    let mut log = Log::new(pipeline(
        true,
        &format!(
            "  - name: prod\n{DEPLOY}    queue: fifo\n    approval: {{ approvers: [rm], expires: 1h }}\n"
        ),
    ));
    log.start_run("r1", "alice");
    log.build_all("r1");
    log.step();
    log.grant("r1", "prod", "bob");
    assert_eq!(log.step(), vec![start("r1", "prod")]);
    log.start_run("r2", "alice");
    log.build_all("r2");
    log.step();
    log.grant("r2", "prod", "bob");
    assert_eq!(
        log.step(),
        vec![queued("r2", "prod", WaitReason::Queue, Some("r1"))]
    );
    log.now = at_hours(5);
    assert_eq!(log.step(), vec![]);
    log.deployed("r1", "prod");
    let d = log.step();
    assert_eq!(d[2], start("r2", "prod"));
}

#[test]
fn freeze_holds_the_stage_until_the_window_ends() {
    // Two touching windows make one frozen span; approval waits for the end.
    let mut log = Log::new(two_stages(
        "    approval: { approvers: [rm] }\n    freeze:\n      - { from: \"2026-11-30T00:00:00Z\", to: \"2026-12-01T06:00:00Z\" }\n      - { from: \"2026-12-01T06:00:00Z\", to: \"2026-12-01T08:00:00Z\" }\n",
    ));
    log.start_run("r1", "alice");
    log.build_all("r1");
    log.step();
    pass_stage(&mut log, "r1", "test");
    let d = log.step();
    assert_eq!(
        d[1],
        Decision::Queue {
            run: "r1".into(),
            stage: "prod".into(),
            reason: WaitReason::Freeze,
            behind: None,
            until: Some(at_hours(8)),
            by: None,
            detail: None,
        }
    );
    assert_eq!(d.len(), 2, "no approval requested while frozen: {d:?}");
    assert_eq!(log.decide().next_wakeup, Some(at_hours(8)));
    log.now = at_hours(7);
    assert_eq!(log.step(), vec![]);
    log.now = at_hours(8);
    let d = log.step();
    assert!(
        matches!(&d[..], [Decision::RequestApproval { .. }]),
        "{d:?}"
    );
    log.grant("r1", "prod", "bob");
    assert_eq!(log.step(), vec![start("r1", "prod")]);
}

#[test]
fn freeze_after_approval_then_approval_wait_is_said_again() {
    let mut log = Log::new(two_stages(
        "    approval: { required: 2, approvers: [rm] }\n    freeze: [ { from: \"2026-12-01T02:00:00Z\", to: \"2026-12-01T04:00:00Z\" } ]\n",
    ));
    log.start_run("r1", "alice");
    log.build_all("r1");
    log.step();
    pass_stage(&mut log, "r1", "test");
    log.step();
    log.grant("r1", "prod", "bob");
    log.now = at_hours(3);
    let d = log.step();
    assert!(
        matches!(
            &d[..],
            [Decision::Queue {
                reason: WaitReason::Freeze,
                ..
            }]
        ),
        "{d:?}"
    );
    log.now = at_hours(4);
    assert_eq!(
        log.step(),
        vec![queued("r1", "prod", WaitReason::Approval, None)]
    );
    log.grant("r1", "prod", "carol");
    assert_eq!(log.step(), vec![start("r1", "prod")]);
}

#[test]
fn freeze_does_not_interrupt_a_promotion_in_progress() {
    let mut log = Log::new(pipeline(
        true,
        &format!(
            "  - name: test\n{DEPLOY}    freeze: [ {{ from: \"2026-12-01T01:00:00Z\", to: \"2026-12-01T04:00:00Z\" }} ]\n"
        ),
    ));
    log.start_run("r1", "alice");
    log.build_all("r1");
    assert_eq!(log.step(), vec![start("r1", "test")]);
    log.now = at_hours(2);
    log.deployed("r1", "test");
    assert_eq!(log.step()[0], promote("r1", "test"));
}

fn paused(run: &str, stage: &str, by: &str, why: &str) -> Decision {
    Decision::Queue {
        run: run.into(),
        stage: stage.into(),
        reason: WaitReason::Paused,
        behind: None,
        until: None,
        by: Some(by.into()),
        detail: Some(format!("stage {stage} paused by {by}: {why}")),
    }
}

#[test]
fn a_paused_stage_starts_nothing_and_asks_for_no_approval_until_resumed() {
    let mut log = Log::new(two_stages("    approval: { approvers: [rm] }\n"));
    log.pause("prod", "rita", "incident 4711");
    log.start_run("r1", "alice");
    log.build_all("r1");
    // test is not paused: it promotes.
    assert_eq!(log.step(), vec![start("r1", "test")]);
    pass_stage(&mut log, "r1", "test");
    assert_eq!(
        log.step(),
        vec![
            promote("r1", "test"),
            paused("r1", "prod", "rita", "incident 4711")
        ],
        "prod says why it waits and asks for no approval"
    );
    assert_eq!(log.decide().next_wakeup, None, "a pause has no end time");
    log.now = at_hours(48);
    assert_eq!(log.step(), vec![], "time does not end a pause");
    log.resume("prod", "sam");
    let d = log.step();
    assert!(
        matches!(&d[..], [Decision::RequestApproval { .. }]),
        "{d:?}"
    );
    log.grant("r1", "prod", "bob");
    assert_eq!(log.step(), vec![start("r1", "prod")]);
}

#[test]
fn a_pause_does_not_interrupt_a_promotion_in_progress() {
    let mut log = Log::new(two_stages(""));
    log.start_run("r1", "alice");
    log.build_all("r1");
    assert_eq!(log.step(), vec![start("r1", "test")]);
    log.pause("test", "rita", "look at it");
    log.deployed("r1", "test");
    log.smoke("r1", "test", true);
    let d = log.step();
    assert_eq!(d[0], promote("r1", "test"), "{d:?}");
    // The next run waits for the resume, and says so once.
    log.start_run("r2", "alice");
    log.build_all("r2");
    let d = log.step();
    assert!(
        d.contains(&paused("r2", "test", "rita", "look at it")),
        "{d:?}"
    );
    assert_eq!(log.step(), vec![]);
}

#[test]
fn paused_again_by_someone_else_says_so_and_queues_behind_a_paused_leader() {
    let mut log = Log::new(pipeline(
        true,
        &format!("  - name: test\n{DEPLOY}    queue: fifo\n"),
    ));
    log.pause("test", "rita", "first");
    log.start_run("r1", "alice");
    log.start_run("r2", "bob");
    log.build_all("r1");
    log.build_all("r2");
    assert_eq!(
        log.step(),
        vec![
            paused("r1", "test", "rita", "first"),
            paused("r2", "test", "rita", "first")
        ]
    );
    log.resume("test", "rita");
    log.pause("test", "sam", "second");
    assert_eq!(
        log.step(),
        vec![
            paused("r1", "test", "sam", "second"),
            paused("r2", "test", "sam", "second")
        ]
    );
    log.resume("test", "sam");
    assert_eq!(
        log.step(),
        vec![
            start("r1", "test"),
            queued("r2", "test", WaitReason::Queue, Some("r1"))
        ]
    );
}

#[test]
fn a_pause_does_not_hold_a_manual_rollback() {
    let mut log = two_releases("");
    log.pause("prod", "rita", "stop");
    log.start_rollback("rb", "prod", None);
    let d = log.step();
    assert!(
        matches!(
            &d[..],
            [Decision::Start {
                rollback: false,
                ..
            }]
        ),
        "a manual rollback run starts while paused: {d:?}"
    );
}

#[test]
fn pauses_of_other_pipelines_and_stages_are_ignored() {
    let mut log = Log::new(two_stages(""));
    let other = ev::StagePaused {
        stage: "test".into(),
        user: "rita".into(),
        reason: "other pipeline".into(),
    };
    log.record(gantry_proto::CloudEvent::new("api", "other", None, &other));
    log.pause("nosuchstage", "rita", "x");
    log.start_run("r1", "alice");
    log.build_all("r1");
    assert_eq!(log.step(), vec![start("r1", "test")]);
}

#[test]
fn failed_deploy_rolls_back_to_the_previous_release_then_fails_the_run() {
    let mut log = Log::new(pipeline(true, &format!("  - name: test\n{DEPLOY}{SMOKE}")));
    log.start_run("r1", "alice");
    log.build_all("r1");
    log.step();
    pass_stage(&mut log, "r1", "test");
    log.step();
    log.start_run("r2", "bob");
    log.build_all("r2");
    assert_eq!(log.step(), vec![start("r2", "test")]);
    log.deploy_failed("r2", "test", "readiness timed out");
    assert_eq!(
        log.step(),
        vec![Decision::Start {
            run: "r2".into(),
            stage: "test".into(),
            commit: commit_of("r1"),
            image: Some(format!("{REPO}:test-r1")),
            digest: Some("sha256:img-r1-test".into()),
            rollback: true,
        }]
    );
    // The stage is busy with the rollback: a new run waits.
    log.start_run("r3", "carol");
    log.build_all("r3");
    assert_eq!(
        log.step(),
        vec![queued("r3", "test", WaitReason::Queue, Some("r2"))]
    );
    log.deployed("r2", "test");
    let reason = "deploy to test failed: readiness timed out".to_owned();
    assert_eq!(
        log.step(),
        vec![
            Decision::RollBack {
                run: "r2".into(),
                stage: "test".into(),
                reason: reason.clone(),
                to_run: Some("r1".into()),
                to_commit: Some(commit_of("r1")),
            },
            Decision::Fail {
                run: "r2".into(),
                stage: Some("test".into()),
                reason,
            },
            start("r3", "test"),
        ]
    );
}

#[test]
fn failed_smoke_rolls_back_too_and_rollback_ignores_smoke() {
    let mut log = Log::new(pipeline(
        true,
        &format!("  - name: test\n{DEPLOY}{APIM}{SMOKE}"),
    ));
    log.start_run("r1", "alice");
    log.build_all("r1");
    log.step();
    pass_stage(&mut log, "r1", "test");
    log.step();
    log.start_run("r2", "alice");
    log.build_all("r2");
    log.step();
    log.deployed("r2", "test");
    log.apis_promoted("r2", "test");
    log.smoke("r2", "test", false);
    let d = log.step();
    assert!(
        matches!(&d[..], [Decision::Start { rollback: true, .. }]),
        "{d:?}"
    );
    log.deployed("r2", "test");
    assert_eq!(log.step(), vec![], "API Manager not rolled back yet");
    log.apis_promoted("r2", "test");
    let d = log.step();
    assert!(
        matches!(&d[0], Decision::RollBack { to_run: Some(r), reason, .. }
            if r == "r1" && reason == "smoke checks in test failed: up"),
        "{d:?}"
    );
    assert!(matches!(&d[1], Decision::Fail { .. }));
}

#[test]
fn failure_without_an_earlier_release_is_marked_and_fails() {
    let mut log = Log::new(pipeline(true, &format!("  - name: test\n{DEPLOY}")));
    log.start_run("r1", "alice");
    log.build_all("r1");
    log.step();
    log.deploy_failed("r1", "test", "boom");
    assert_eq!(
        log.step(),
        vec![
            Decision::RollBack {
                run: "r1".into(),
                stage: "test".into(),
                reason: "deploy to test failed: boom".into(),
                to_run: None,
                to_commit: None,
            },
            Decision::Fail {
                run: "r1".into(),
                stage: Some("test".into()),
                reason: "deploy to test failed: boom".into(),
            },
        ]
    );
}

#[test]
fn failed_rollback_releases_the_stage_and_says_so() {
    let mut log = Log::new(pipeline(true, &format!("  - name: test\n{DEPLOY}")));
    log.start_run("r1", "alice");
    log.build_all("r1");
    log.step();
    log.deployed("r1", "test");
    log.step();
    log.start_run("r2", "alice");
    log.build_all("r2");
    log.step();
    log.deploy_failed("r2", "test", "boom");
    log.step();
    log.deploy_failed("r2", "test", "still boom");
    assert_eq!(
        log.step(),
        vec![Decision::Fail {
            run: "r2".into(),
            stage: Some("test".into()),
            reason: "deploy to test failed: boom; rollback of test failed: deploy to test failed: still boom".into(),
        }]
    );
    // The next failure rolls back to r1 again: it is still the last good release.
    log.start_run("r3", "alice");
    log.build_all("r3");
    assert_eq!(log.step(), vec![start("r3", "test")]);
    log.deploy_failed("r3", "test", "boom");
    let d = log.step();
    assert!(
        matches!(&d[..], [Decision::Start { rollback: true, commit, .. }] if *commit == commit_of("r1")),
        "{d:?}"
    );
}

#[test]
fn package_failure_fails_the_run() {
    let mut log = Log::new(two_stages(""));
    log.start_run("r1", "alice");
    log.push(
        "r1",
        ev::PackageFailed {
            stage: "prod".into(),
            reason: "placeholder {{ db.url }} has no value".into(),
            diagnostics: Vec::new(),
        },
    );
    let d = log.step();
    assert_eq!(
        d,
        vec![Decision::Fail {
            run: "r1".into(),
            stage: Some("prod".into()),
            reason: "package for prod failed: placeholder {{ db.url }} has no value".into(),
        }]
    );
}

#[test]
fn a_failure_waits_for_the_promotion_in_progress_and_nothing_new_starts() {
    let mut log = Log::new(two_stages(""));
    log.start_run("r1", "alice");
    log.package("r1", "test");
    log.image("r1", "test");
    log.package("r1", "prod");
    assert_eq!(log.step(), vec![start("r1", "test")]);
    log.push(
        "r1",
        ev::ImageFailed {
            stage: "prod".into(),
            reason: "registry down".into(),
        },
    );
    assert_eq!(log.step(), vec![], "test is still being promoted");
    pass_stage(&mut log, "r1", "test");
    assert_eq!(
        log.step(),
        vec![
            promote("r1", "test"),
            Decision::Fail {
                run: "r1".into(),
                stage: Some("prod".into()),
                reason: "image for prod failed: registry down".into(),
            }
        ]
    );
}

#[test]
fn cancelled_run_gets_nothing_more_and_frees_its_stage() {
    let mut log = Log::new(pipeline(
        true,
        &format!("  - name: test\n{DEPLOY}    queue: fifo\n"),
    ));
    log.start_run("r1", "alice");
    log.start_run("r2", "alice");
    log.build_all("r1");
    log.build_all("r2");
    log.step();
    log.cancel("r1");
    assert_eq!(log.step(), vec![start("r2", "test")]);
    log.deployed("r1", "test");
    assert_eq!(
        log.step(),
        vec![],
        "late results of a cancelled run are ignored"
    );
}

#[test]
fn stages_and_runs_of_other_pipelines_are_ignored() {
    let mut log = Log::new(two_stages(""));
    log.start_run("r1", "alice");
    for e in &mut log.events {
        e.pipeline = "other".into();
    }
    assert_eq!(log.decide(), Outcome::default());
}

#[test]
fn plan_is_frozen_but_settings_are_current() {
    // r1 started when prod had no approval; the definition now asks for one.
    let mut log = Log::new(two_stages(""));
    log.start_run("r1", "alice");
    log.build_all("r1");
    log.pipeline = two_stages("    approval: { approvers: [rm] }\n");
    log.step();
    pass_stage(&mut log, "r1", "test");
    let d = log.step();
    assert!(matches!(&d[1], Decision::RequestApproval { .. }), "{d:?}");
}

#[test]
fn unknown_after_in_a_plan_fails_the_run() {
    let mut log = Log::new(two_stages(""));
    log.push(
        "r1",
        ev::RunStarted {
            run_id: "r1".into(),
            commit: commit_of("r1"),
            branch: "main".into(),
            repository: "x".into(),
            message: None,
            author: None,
            authors: Vec::new(),
            trigger: Trigger::Manual,
            stages: vec![ev::StagePlan {
                name: "prod".into(),
                after: Some("gone".into()),
                steps: vec![Step::Package],
            }],
            rollback: None,
        },
    );
    let d = log.step();
    assert!(
        matches!(&d[..], [Decision::Fail { reason, .. }] if reason.contains("gone")),
        "{d:?}"
    );
}

#[test]
fn decisions_become_contract_events() {
    let d = Decision::Queue {
        run: "r1".into(),
        stage: "prod".into(),
        reason: WaitReason::Freeze,
        behind: None,
        until: Some(at_hours(8)),
        by: None,
        detail: None,
    };
    let e = d.into_event("banking");
    assert_eq!(e.ty, "io.gantry.stage.queued.v1");
    assert_eq!(e.source, "gantry/conductor");
    assert_eq!(e.subject.as_deref(), Some("r1"));
    assert_eq!(e.runid.as_deref(), Some("r1"));
    assert_eq!(e.pipeline, "banking");
    assert_eq!(e.stage(), Some("prod"));
    let q: ev::StageQueued = e.decode().unwrap();
    assert_eq!(q.reason, "freeze");
    assert_eq!(q.until, Some(at_hours(8)));

    let all = [
        d,
        Decision::RequestApproval {
            run: "r".into(),
            stage: "s".into(),
            required: 1,
            approvers: vec![],
            expires_at: None,
        },
        start("r", "s"),
        promote("r", "s"),
        Decision::RollBack {
            run: "r".into(),
            stage: "s".into(),
            reason: "x".into(),
            to_run: None,
            to_commit: None,
        },
        Decision::Succeed { run: "r".into() },
        Decision::Fail {
            run: "r".into(),
            stage: None,
            reason: "x".into(),
        },
        Decision::Supersede {
            run: "r".into(),
            stage: "s".into(),
            by_run: "q".into(),
        },
    ];
    for d in all {
        let e = d.into_event("p");
        assert_eq!(e.name(), Some(d.name()));
        assert_eq!(e.data, d.data());
        assert_eq!(e.stage(), d.stage());
        assert_eq!(d.is_terminal(), d.name().is_terminal());
    }
}

// ---- manual rollback -------------------------------------------------------

/// r1 then r2 promoted through `test` and `prod`.
fn two_releases(prod_extra: &str) -> Log {
    let mut log = Log::new(two_stages(prod_extra));
    for run in ["r1", "r2"] {
        log.start_run(run, "alice");
        log.build_all(run);
        log.step();
        pass_stage(&mut log, run, "test");
        log.step();
        for author in ["rm1", "rm2"] {
            log.grant(run, "prod", author);
        }
        log.step();
        pass_stage(&mut log, run, "prod");
        log.step();
    }
    log
}

fn rollback_promoted(run: &str, stage: &str, to: &str) -> Vec<Decision> {
    vec![
        Decision::Promote {
            run: run.into(),
            stage: stage.into(),
            commit: commit_of(to),
            image: Some(format!("{REPO}:{stage}-{to}")),
            digest: Some(format!("sha256:img-{to}-{stage}")),
        },
        Decision::RollBack {
            run: run.into(),
            stage: stage.into(),
            reason: "rolled back by rita: errors".into(),
            to_run: Some(to.into()),
            to_commit: Some(commit_of(to)),
        },
        Decision::Succeed { run: run.into() },
    ]
}

#[test]
fn rollback_target_is_the_release_before_the_current_one() {
    let log = two_releases("");
    let t = rollback_target(&log.pipeline, &log.events, "prod", None).expect("target");
    assert_eq!(t.run, "r1");
    assert_eq!(t.commit, commit_of("r1"));
    assert_eq!(t.package, "sha256:pkg-r1-prod");
    assert_eq!(t.digest.as_deref(), Some("sha256:img-r1-prod"));
    assert_eq!(t.pending, None);
    assert_eq!(
        rollback_target(&log.pipeline, &log.events, "prod", Some("r2")),
        Err(RollbackError::AlreadyRunning {
            run: "r2".into(),
            stage: "prod".into()
        })
    );
    assert!(matches!(
        rollback_target(&log.pipeline, &log.events, "prod", Some("r9")),
        Err(RollbackError::NotAReleaseOf { .. })
    ));
    assert!(matches!(
        rollback_target(&log.pipeline, &log.events, "qa", None),
        Err(RollbackError::UnknownStage { .. })
    ));
    let mut first = Log::new(two_stages(""));
    first.start_run("r1", "alice");
    first.build_all("r1");
    first.step();
    pass_stage(&mut first, "r1", "test");
    first.step();
    assert_eq!(
        rollback_target(&first.pipeline, &first.events, "test", None),
        Err(RollbackError::NoEarlierRelease {
            stage: "test".into()
        })
    );
}

#[test]
fn manual_rollback_redeploys_the_earlier_release_without_approval_or_freeze() {
    let mut log = two_releases(
        "    approval: { required: 2, approvers: [rm] }\n    freeze: [ { from: \"2026-12-01T01:00:00Z\", to: \"2026-12-02T00:00:00Z\" } ]\n",
    );
    // The freeze begins after r1 and r2 went through.
    log.now = at_hours(2);
    log.start_rollback("rb", "prod", None);
    assert_eq!(
        log.step(),
        vec![Decision::Start {
            run: "rb".into(),
            stage: "prod".into(),
            commit: commit_of("r1"),
            image: Some(format!("{REPO}:prod-r1")),
            digest: Some("sha256:img-r1-prod".into()),
            rollback: false,
        }]
    );
    // A second request while it runs names the same run.
    let t = rollback_target(&log.pipeline, &log.events, "prod", None).expect("target");
    assert_eq!(t.pending.as_deref(), Some("rb"));
    log.deployed("rb", "prod");
    assert_eq!(log.step(), rollback_promoted("rb", "prod", "r1"));
    // Going back again means going to what it ran before: r2's release.
    let t = rollback_target(&log.pipeline, &log.events, "prod", None).expect("target");
    assert_eq!((t.run.as_str(), t.pending), ("r2", None));
}

#[test]
fn a_failed_manual_rollback_restores_the_current_release() {
    let mut log = two_releases("");
    log.start_rollback("rb", "test", Some("r1"));
    log.step();
    log.deployed("rb", "test");
    log.smoke("rb", "test", false);
    assert_eq!(
        log.step(),
        vec![Decision::Start {
            run: "rb".into(),
            stage: "test".into(),
            commit: commit_of("r2"),
            image: Some(format!("{REPO}:test-r2")),
            digest: Some("sha256:img-r2-test".into()),
            rollback: true,
        }]
    );
    log.deployed("rb", "test");
    let d = log.step();
    assert!(
        matches!(&d[..], [Decision::RollBack { to_run: Some(r), .. }, Decision::Fail { .. }] if r == "r2"),
        "{d:?}"
    );
}

#[test]
fn manual_rollback_waits_for_the_stage_and_supersedes_older_ready_runs() {
    let mut log = two_releases("");
    // r3 is deploying to test; r4 is ready for test behind it.
    log.start_run("r3", "alice");
    log.build_all("r3");
    log.step();
    log.start_run("r4", "alice");
    log.build_all("r4");
    log.step();
    log.start_rollback("rb", "test", Some("r1"));
    let d = log.step();
    assert!(
        d.contains(&queued("rb", "test", WaitReason::Queue, Some("r3")))
            && d.iter().any(|d| matches!(d, Decision::Supersede { run, by_run, .. } if run == "r4" && by_run == "rb")),
        "{d:?}"
    );
    pass_stage(&mut log, "r3", "test");
    let d = log.step();
    assert_eq!(d[0], promote("r3", "test"));
    assert!(
        d.contains(&Decision::Start {
            run: "rb".into(),
            stage: "test".into(),
            commit: commit_of("r1"),
            image: Some(format!("{REPO}:test-r1")),
            digest: Some("sha256:img-r1-test".into()),
            rollback: false,
        }),
        "{d:?}"
    );
    pass_stage(&mut log, "rb", "test");
    assert_eq!(log.step(), rollback_promoted("rb", "test", "r1"));
}

/// The last event of `name` for `stage` in the log.
fn last_of(log: &Log, name: EventName, stage: &str) -> CloudEvent {
    log.events
        .iter()
        .rev()
        .find(|e| e.name() == Some(name) && e.stage() == Some(stage))
        .cloned()
        .unwrap_or_else(|| panic!("no {name} for {stage}"))
}

#[test]
fn a_step_past_its_deadline_fails_and_a_late_answer_does_not_resurrect_it() {
    let mut log = Log::new(pipeline(
        true,
        &format!("  - name: test\n{DEPLOY}{APIM}    timeouts: {{ deploy: 2h, apimanager: 1h }}\n"),
    ));
    // r1 promotes the stage: the release a failed promotion goes back to.
    log.start_run("r1", "alice");
    log.build_all("r1");
    log.step();
    log.deployed("r1", "test");
    log.apis_promoted("r1", "test");
    log.step();
    log.step();
    log.start_run("r2", "alice");
    log.build_all("r2");
    assert_eq!(log.step(), vec![start("r2", "test")]);
    let started = last_of(&log, EventName::StageStarted, "test");
    // Until the deadline nothing happens, and the wake-up is the deadline.
    log.now += Duration::minutes(119);
    assert_eq!(log.decide().decisions, vec![]);
    assert_eq!(
        log.decide().next_wakeup,
        Some(started.time + Duration::hours(2))
    );
    log.now += Duration::minutes(1);
    let decisions = log.step();
    assert_eq!(
        decisions[0],
        Decision::TimeOut {
            run: "r2".into(),
            stage: "test".into(),
            step: Step::Deploy,
            after: std::time::Duration::from_secs(7200),
            cause: Some(started.id),
        }
    );
    // The failure is recorded like a worker's, caused by the step's cue,
    // and rolls the stage back to r1's release.
    let failed = last_of(&log, EventName::DeployFailed, "test");
    assert_eq!(failed.data["reason"], "timed out after 2h");
    assert_eq!(failed.causationid, Some(started.id));
    assert!(matches!(
        &decisions[1],
        Decision::Start { rollback: true, commit, .. } if *commit == commit_of("r1")
    ));
    // The deployer answers the promotion late: it counts for nothing, not
    // even for the rollback under way.
    let before = log.decide();
    log.push_late(
        "r2",
        ev::DeployCompleted {
            stage: "test".into(),
            image: None,
            digest: Some("sha256:img-r2-test".into()),
            revision: None,
            output: None,
            duration_ms: 1,
        },
        started.id,
    );
    assert_eq!(log.decide(), before);
    // The rollback's own deploy then passes; its API Manager step times out.
    log.deployed("r2", "test");
    assert_eq!(log.step(), vec![]);
    log.now += Duration::hours(1);
    let decisions = log.step();
    assert!(
        matches!(
            &decisions[0],
            Decision::TimeOut {
                step: Step::ApiManager,
                ..
            }
        ),
        "{decisions:#?}"
    );
    assert!(
        matches!(&decisions[1], Decision::Fail { reason, .. }
            if reason.contains("deploy to test failed: timed out after 2h")
            && reason.contains("rollback of test failed: API Manager promotion in test failed: timed out after 1h")),
        "{decisions:#?}"
    );
}

#[test]
fn packages_and_images_have_deadlines_too() {
    let mut log = Log::new(pipeline(
        true,
        &format!("  - name: test\n{DEPLOY}    timeouts: {{ package: 1h, image: 3h }}\n  - name: prod\n{DEPLOY}    timeouts: {{ package: 2h }}\n"),
    ));
    log.start_run("r1", "alice");
    log.step();
    log.package("r1", "test");
    log.now += Duration::hours(1);
    // test's package came; prod's may take until 2h.
    assert_eq!(log.step(), vec![]);
    assert_eq!(log.decide().next_wakeup, Some(at_hours(2)));
    log.now = at_hours(2);
    let decisions = log.step();
    assert!(
        matches!(&decisions[0], Decision::TimeOut { stage, step: Step::Package, .. } if stage == "prod"),
        "{decisions:#?}"
    );
    // The run fails at once: nothing holds a stage.
    assert!(
        matches!(&decisions[1], Decision::Fail { reason, .. } if reason == "package for prod failed: timed out after 2h"),
        "{decisions:#?}"
    );
    // A package that comes after its failure is not the stage's.
    log.package("r1", "prod");
    assert_eq!(log.step(), vec![]);

    // The image's deadline counts from `package.built`.
    log.start_run("r2", "alice");
    log.step();
    log.package("r2", "test");
    log.package("r2", "prod");
    log.now += Duration::hours(3);
    let decisions = log.step();
    assert!(
        decisions.iter().any(
            |d| matches!(d, Decision::TimeOut { stage, step: Step::Image, .. } if stage == "test")
        ),
        "{decisions:#?}"
    );
}
