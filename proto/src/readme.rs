//! The README documents the steps of a stage and the statuses of runs and
//! stages; these tests fail when it drifts from the types.

use crate::{RunStatus, StageStatus, Step};

fn readme() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
    std::fs::read_to_string(path).expect("README.md at the workspace root")
}

/// The words in backticks in `text`, in order.
fn backticked(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// The text from the line holding `marker` up to the next heading or list item.
fn section<'a>(readme: &'a str, marker: &str) -> &'a str {
    let start = readme
        .find(marker)
        .unwrap_or_else(|| panic!("README.md has no `{marker}`"));
    let rest = &readme[start + marker.len()..];
    let end = ["\n#", "\n- **"]
        .iter()
        .filter_map(|m| rest.find(m))
        .min()
        .unwrap_or(rest.len());
    &rest[..end]
}

#[test]
fn the_step_table_lists_every_step_in_order() {
    let readme = readme();
    let table = section(&readme, "### Steps of a stage");
    assert!(
        table.contains("`proto/src/plan.rs`"),
        "the README names where the order is defined"
    );
    let listed: Vec<&str> = table
        .lines()
        .filter(|l| l.starts_with("| `"))
        .filter_map(|l| backticked(l).first().copied())
        .collect();
    let steps: Vec<&str> = Step::ORDER.iter().map(|s| s.as_str()).collect();
    assert_eq!(
        listed, steps,
        "README.md's table under `### Steps of a stage` must list `Step::ORDER`"
    );
}

#[test]
fn the_statuses_listed_are_the_statuses() {
    let readme = readme();
    let text = section(&readme, "**Run status** in the API:");
    let (runs, stages) = text
        .split_once("stage status")
        .expect("run statuses, then `stage status ...`");
    let stages = stages
        .split_once('(')
        .and_then(|(_, s)| s.split_once(')'))
        .map(|(s, _)| s)
        .expect("stage statuses in parentheses");
    let run_statuses: Vec<&str> = RunStatus::ALL.iter().map(|s| s.as_str()).collect();
    let stage_statuses: Vec<&str> = StageStatus::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(backticked(runs), run_statuses, "README.md's run statuses");
    assert_eq!(
        backticked(stages),
        stage_statuses,
        "README.md's stage statuses"
    );
}
