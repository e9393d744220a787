//! Why a waiting stage waits, in words: from the `stage.queued` or
//! `approval.requested` the projection keeps, the approvals given so far
//! and the stage's approval policy.

use gantry_pipeline::Stage;
use gantry_store::projection::StageView;
use serde_json::Value;

use crate::html::{esc, run_id_link, time};

/// The users who approved (granted) the stage.
pub fn approvers_given(stage: &StageView) -> Vec<String> {
    stage
        .approvals
        .iter()
        .filter(|a| a["decision"] == "granted")
        .filter_map(|a| a["user"].as_str().map(esc))
        .collect()
}

/// HTML: why `stage` waits; empty when it does not.
pub fn why(stage: &StageView, defined: Option<&Stage>) -> String {
    let Some(w) = &stage.waiting else {
        return String::new();
    };
    if let Some(required) = w["required"].as_u64() {
        let given = approvers_given(stage);
        let from = match w["approvers"].as_array() {
            Some(a) if !a.is_empty() => a
                .iter()
                .filter_map(Value::as_str)
                .map(esc)
                .collect::<Vec<_>>()
                .join(", "),
            _ => "distinct users".into(),
        };
        let missing = required.saturating_sub(given.len() as u64);
        let mut out = format!(
            "Waits for approval: {} of {required} given{}; {missing} missing (from {from})",
            given.len(),
            if given.is_empty() {
                String::new()
            } else {
                format!(" by {}", given.join(", "))
            },
        );
        if defined
            .and_then(|s| s.approval.as_ref())
            .is_some_and(|a| !a.allow_self)
        {
            out.push_str("; the run's authors may not approve");
        }
        if let Some(at) = w["expires_at"].as_str() {
            out.push_str(&format!("; expires {}", time(at)));
        }
        return out + ".";
    }
    let detail = w["detail"].as_str().map(esc);
    match w["reason"].as_str().unwrap_or_default() {
        "queue" => match w["behind"].as_str() {
            Some(behind) => format!(
                "Queued behind run {} (one promotion at a time).",
                run_id_link(behind)
            ),
            None => "Queued for the stage.".into(),
        },
        "freeze" => match w["until"].as_str() {
            Some(until) => format!("Freeze window until {}.", time(until)),
            None => "In a freeze window.".into(),
        },
        "dependencies" => format!(
            "Waits for stage {} to promote this run.",
            esc(stage.after.as_deref().unwrap_or("before it"))
        ),
        other => detail.unwrap_or_else(|| format!("Waits: {}.", esc(other))),
    }
}
