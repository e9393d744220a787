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

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_proto::StageStatus;
    use serde_json::json;

    fn waiting(w: Value, approvals: Vec<Value>) -> StageView {
        StageView {
            name: "prod".into(),
            status: StageStatus::AwaitingApproval,
            after: Some("test".into()),
            steps: vec![],
            waiting: Some(w),
            reason: None,
            package_digest: None,
            image: None,
            image_digest: None,
            approvals,
            updated_at: "2026-12-07T14:00:00Z".into(),
        }
    }

    #[test]
    fn approvals_given_and_missing_with_names_escaped() {
        let s = waiting(
            json!({ "stage": "prod", "required": 2, "approvers": ["release-managers"],
                    "expires_at": "2026-12-10T14:00:00Z" }),
            vec![
                json!({ "user": "<b>rita</b>", "decision": "granted" }),
                json!({ "user": "sam", "decision": "rejected" }),
            ],
        );
        let text = why(&s, None);
        assert!(
            text.starts_with("Waits for approval: 1 of 2 given by &lt;b&gt;rita&lt;/b&gt;; 1 missing (from release-managers)"),
            "{text}"
        );
        assert!(
            text.contains("expires <time datetime=\"2026-12-10T14:00:00Z\">"),
            "{text}"
        );
    }

    #[test]
    fn queue_freeze_dependencies_and_other_reasons_in_words() {
        let queued = waiting(json!({ "reason": "queue", "behind": "01a2-run" }), vec![]);
        assert!(why(&queued, None).contains("Queued behind run <a href=\"/runs/01a2-run\""));
        let frozen = waiting(
            json!({ "reason": "freeze", "until": "2026-12-27T00:00:00Z" }),
            vec![],
        );
        assert!(why(&frozen, None).starts_with("Freeze window until <time"));
        let after = waiting(json!({ "reason": "dependencies" }), vec![]);
        assert_eq!(
            why(&after, None),
            "Waits for stage test to promote this run."
        );
        let paused = waiting(
            json!({ "reason": "paused", "detail": "stage prod paused by rita: <incident>" }),
            vec![],
        );
        assert_eq!(
            why(&paused, None),
            "stage prod paused by rita: &lt;incident&gt;"
        );
    }
}
