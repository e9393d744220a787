//! What a notification says: the CloudEvent itself, or a Slack message in
//! words with the run, stage, commit and a link to the console; and its
//! signature.

use gantry_pipeline::NotifyFormat;
use gantry_proto::events as ev;
use gantry_proto::{CloudEvent, EventName};
use gantry_store::{EventStore, StoreError};
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

/// A notification's body and its content type.
#[derive(Debug, Clone, PartialEq)]
pub struct Body {
    pub content_type: &'static str,
    pub bytes: Vec<u8>,
}

impl Body {
    /// The body for `event` in `format`; a Slack message reads the run's
    /// commit from the log.
    pub async fn build(
        store: &EventStore,
        event: &CloudEvent,
        format: NotifyFormat,
        public_url: &str,
    ) -> Result<Body, StoreError> {
        match format {
            NotifyFormat::Cloudevents => Ok(Body {
                content_type: "application/cloudevents+json",
                bytes: serde_json::to_vec(event).unwrap_or_default(),
            }),
            NotifyFormat::Slack => {
                let run = match event.runid.as_deref() {
                    Some(run) => store.first_of_run::<ev::RunStarted>(run, None).await?,
                    None => None,
                };
                Ok(slack(event, run.as_ref(), public_url))
            }
        }
    }
}

/// `sha256=<hex HMAC-SHA256(key, body)>`, as `X-Gantry-Signature` carries it.
pub fn signature(key: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A Slack incoming-webhook message: one line of `text` (what notifications
/// and screen readers show) and the same as a section with the details.
fn slack(event: &CloudEvent, run: Option<&ev::RunStarted>, public_url: &str) -> Body {
    let what = summary(event);
    let mut context = vec![format!("*{}*", escape(&event.pipeline))];
    if let Some(stage) = event.stage() {
        context.push(format!("stage *{}*", escape(stage)));
    }
    if let Some(run) = run {
        let short: String = run.commit.chars().take(8).collect();
        let mut commit = format!("commit `{short}`");
        if let Some(message) = run.message.as_deref().and_then(|m| m.lines().next()) {
            commit.push_str(&format!(" {}", escape(message)));
        }
        context.push(commit);
    }
    let link = event.runid.as_deref().map(|id| {
        format!(
            "<{}/runs/{id}|run {}>",
            public_url,
            id.chars().take(13).collect::<String>()
        )
    });
    if let Some(link) = &link {
        context.push(link.clone());
    }
    let text = format!("{} · {}", escape(&what), context.join(" · "));
    let body = json!({
        "text": text,
        "blocks": [
            { "type": "section", "text": { "type": "mrkdwn", "text": format!("*{}*", escape(&what)) } },
            { "type": "context", "elements": [ { "type": "mrkdwn", "text": context.join(" · ") } ] },
        ],
    });
    Body {
        content_type: "application/json",
        bytes: serde_json::to_vec(&body).unwrap_or_default(),
    }
}

/// Slack's three reserved characters.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One line saying what happened, in words.
pub fn summary(event: &CloudEvent) -> String {
    let stage = event.stage().unwrap_or("?");
    let Some(name) = event.name() else {
        return event.ty.clone();
    };
    let said = match name {
        EventName::CommitReceived => event
            .decode::<ev::CommitReceived>()
            .ok()
            .map(|c| format!("Commit {} received on {}", short(&c.commit), c.branch)),
        EventName::RunStarted => Some("Run started".to_owned()),
        EventName::RunSucceeded => Some("Run succeeded".to_owned()),
        EventName::RunFailed => event
            .decode::<ev::RunFailed>()
            .ok()
            .map(|f| format!("Run failed: {}", f.reason)),
        EventName::RunCancelled => event
            .decode::<ev::RunCancelled>()
            .ok()
            .map(|c| format!("Run cancelled by {}", c.user)),
        EventName::RunSuperseded => event
            .decode::<ev::RunSuperseded>()
            .ok()
            .map(|s| format!("Run superseded by {}", s.by_run)),
        EventName::EnvPromoted => Some(format!("{stage} promoted")),
        EventName::StageRolledBack => event
            .decode::<ev::StageRolledBack>()
            .ok()
            .map(|r| format!("{stage} rolled back: {}", r.reason)),
        EventName::ApprovalRequested => event
            .decode::<ev::ApprovalRequested>()
            .ok()
            .map(|a| format!("{stage} waits for {} approval(s)", a.required)),
        EventName::ApprovalGranted => event
            .decode::<ev::ApprovalGranted>()
            .ok()
            .map(|a| format!("{stage} approved by {}", a.user)),
        EventName::ApprovalRejected => event
            .decode::<ev::ApprovalRejected>()
            .ok()
            .map(|a| format!("{stage} rejected by {}: {}", a.user, a.reason)),
        EventName::StagePaused => event
            .decode::<ev::StagePaused>()
            .ok()
            .map(|p| format!("{stage} paused by {}: {}", p.user, p.reason)),
        EventName::StageResumed => event
            .decode::<ev::StageResumed>()
            .ok()
            .map(|p| format!("{stage} resumed by {}", p.user)),
        _ => None,
    };
    said.unwrap_or_else(|| match event.stage() {
        Some(stage) => format!("{stage}: {}", name.as_str()),
        None => name.as_str().to_owned(),
    })
}

fn short(commit: &str) -> &str {
    commit.get(..8).unwrap_or(commit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_the_hex_hmac_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn slack_messages_name_the_run_stage_and_commit_with_a_link() {
        let event = CloudEvent::new(
            "conductor",
            "banking",
            Some("0193-run"),
            &ev::RunFailed {
                stage: Some("prod".into()),
                reason: "smoke <failed>".into(),
            },
        );
        let run = ev::RunStarted {
            run_id: "0193-run".into(),
            commit: "abcdef0123456789".into(),
            branch: "main".into(),
            repository: "r".into(),
            message: Some("Fix pets\n\nlong text".into()),
            author: None,
            authors: vec![],
            trigger: gantry_proto::Trigger::Webhook,
            stages: vec![],
            rollback: None,
        };
        let body = slack(&event, Some(&run), "https://gantry.example.com");
        let json: serde_json::Value = serde_json::from_slice(&body.bytes).unwrap();
        let text = json["text"].as_str().unwrap();
        assert!(
            text.starts_with("Run failed: smoke &lt;failed&gt; · *banking*"),
            "{text}"
        );
        assert!(text.contains("stage *prod*"), "{text}");
        assert!(text.contains("commit `abcdef01` Fix pets"), "{text}");
        assert!(
            text.contains("<https://gantry.example.com/runs/0193-run|run 0193-run>"),
            "{text}"
        );
        assert_eq!(body.content_type, "application/json");
    }
}
