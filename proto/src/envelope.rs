//! The CloudEvents 1.0 envelope (JSON structured mode) every Gantry fact travels in.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{EventName, EventPayload};

pub const SPEC_VERSION: &str = "1.0";
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// One Gantry event as a CloudEvent. `data` stays raw JSON so that readers of
/// the log can pass events on (SSE, NATS) without knowing every type; use
/// [`CloudEvent::decode`] to get the typed payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CloudEvent {
    pub specversion: String,
    /// UUIDv7: unique, and roughly time-ordered.
    pub id: Uuid,
    /// `gantry/<service>`.
    pub source: String,
    /// `io.gantry.<name>.v1`.
    #[serde(rename = "type")]
    pub ty: String,
    /// The run id, for run- and stage-scoped events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub time: DateTime<Utc>,
    pub datacontenttype: String,
    pub data: serde_json::Value,
    /// Extension: the pipeline this event belongs to.
    pub pipeline: String,
    /// Extension: the run id (same as `subject` when present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runid: Option<String>,
    /// Extension: global log position; assigned when the event is recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<i64>,
    /// Extension: the event that caused this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causationid: Option<Uuid>,
    /// Extension: the first event of the chain (usually `commit.received`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlationid: Option<Uuid>,
    /// Extension: W3C trace context of the producer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// Failure to turn a stored or received event into a typed payload.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("event {id} has type `{actual}`, expected `{expected}`")]
    WrongType {
        id: Uuid,
        actual: String,
        expected: String,
    },
    #[error("event {id} of type `{ty}` has invalid data: {source}")]
    InvalidData {
        id: Uuid,
        ty: String,
        #[source]
        source: serde_json::Error,
    },
}

impl CloudEvent {
    /// A new event with a fresh UUIDv7 id and the current time.
    pub fn new<P: EventPayload>(
        service: &str,
        pipeline: &str,
        run_id: Option<&str>,
        payload: &P,
    ) -> Self {
        let data = serde_json::to_value(payload)
            .expect("event payloads are plain data and always serialize");
        Self {
            specversion: SPEC_VERSION.to_owned(),
            id: Uuid::now_v7(),
            source: format!("gantry/{service}"),
            ty: P::NAME.type_name(),
            subject: run_id.map(str::to_owned),
            time: Utc::now(),
            datacontenttype: CONTENT_TYPE_JSON.to_owned(),
            data,
            pipeline: pipeline.to_owned(),
            runid: run_id.map(str::to_owned),
            sequence: None,
            causationid: None,
            correlationid: None,
            traceparent: None,
        }
    }

    /// Marks this event as caused by `cause`, inheriting its correlation id.
    pub fn caused_by(mut self, cause: &CloudEvent) -> Self {
        self.causationid = Some(cause.id);
        self.correlationid = Some(cause.correlationid.unwrap_or(cause.id));
        if self.traceparent.is_none() {
            self.traceparent.clone_from(&cause.traceparent);
        }
        self
    }

    /// Uses a caller-chosen id, for effects that must be idempotent across retries.
    pub fn with_id(mut self, id: Uuid) -> Self {
        self.id = id;
        self
    }

    /// The short event name (`package.built`), if the type is one of Gantry's.
    pub fn name(&self) -> Option<EventName> {
        EventName::from_type_name(&self.ty)
    }

    /// The stage named in `data.stage`, for stage-scoped events.
    pub fn stage(&self) -> Option<&str> {
        self.data.get("stage").and_then(|s| s.as_str())
    }

    /// The typed payload; fails when the type differs or the data does not match it.
    pub fn decode<P: EventPayload>(&self) -> Result<P, DecodeError> {
        let expected = P::NAME.type_name();
        if self.ty != expected {
            return Err(DecodeError::WrongType {
                id: self.id,
                actual: self.ty.clone(),
                expected,
            });
        }
        serde_json::from_value(self.data.clone()).map_err(|source| DecodeError::InvalidData {
            id: self.id,
            ty: self.ty.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::RunCancelled;

    #[test]
    fn envelope_serializes_as_structured_cloudevent() {
        let ev = CloudEvent::new(
            "api",
            "banking",
            Some("r1"),
            &RunCancelled {
                user: "rita".into(),
                reason: Some("obsolete".into()),
            },
        );
        let json = serde_json::to_value(&ev).unwrap();
        assert_eq!(json["specversion"], "1.0");
        assert_eq!(json["type"], "io.gantry.run.cancelled.v1");
        assert_eq!(json["source"], "gantry/api");
        assert_eq!(json["subject"], "r1");
        assert_eq!(json["runid"], "r1");
        assert_eq!(json["pipeline"], "banking");
        assert_eq!(json["datacontenttype"], "application/json");
        assert_eq!(json["data"]["user"], "rita");
        assert!(
            json.get("sequence").is_none(),
            "unrecorded events have no position"
        );
        let back: CloudEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, ev);
        assert_eq!(back.decode::<RunCancelled>().unwrap().user, "rita");
    }

    #[test]
    fn decode_refuses_other_types() {
        let ev = CloudEvent::new(
            "api",
            "banking",
            None,
            &RunCancelled {
                user: "rita".into(),
                reason: None,
            },
        );
        let err = ev.decode::<crate::events::RunSuperseded>().unwrap_err();
        assert!(matches!(err, DecodeError::WrongType { .. }), "{err}");
    }

    #[test]
    fn causation_chains_keep_the_first_correlation_id() {
        let cancelled = |source: &str| {
            CloudEvent::new(
                source,
                "p",
                Some("r"),
                &RunCancelled {
                    user: "u".into(),
                    reason: None,
                },
            )
        };
        let root = cancelled("webhook");
        let child = cancelled("conductor").caused_by(&root);
        let grandchild = cancelled("conductor").caused_by(&child);
        assert_eq!(child.causationid, Some(root.id));
        assert_eq!(grandchild.causationid, Some(child.id));
        assert_eq!(grandchild.correlationid, Some(root.id));
    }
}
