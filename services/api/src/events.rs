//! `GET /api/v1/events`: the whole log as Server-Sent Events.
//!
//! Each message has `id:` = the global position and `data:` = the CloudEvent
//! as one JSON line. `?from=N` starts at position N (inclusive);
//! `Last-Event-ID: N` (what browsers send on reconnect) resumes after N and
//! wins over `from`. Optional filters: `?pipeline=`, `?run=`; `?follow=false`
//! ends the stream once it has caught up. `?format=cdevents` streams the
//! CDEvents the log's facts stand for instead (DESIGN.md 1.9): `data:` is
//! one CDEvent, `id:` still the position of the Gantry event it comes from
//! (an event that maps to two CDEvents sends both under its position).
//!
//! Events are read from the log page by page as the client takes them, so a
//! slow client only slows its own stream: nothing is buffered without bound
//! and nothing is skipped.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use gantry_runtime::Problem;
use gantry_store::cdevents::CdeventsMapper;
use serde::Deserialize;

use crate::Api;

const PAGE: i64 = 256;

#[derive(Debug, Deserialize)]
struct EventsQuery {
    from: Option<i64>,
    pipeline: Option<String>,
    run: Option<String>,
    /// `false` ends the stream once it has caught up (for scripts).
    follow: Option<bool>,
    /// `cloudevents` (default) or `cdevents`.
    format: Option<String>,
}

/// What each SSE message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EventsFormat {
    /// Gantry's own CloudEvents, one per recorded event.
    #[default]
    CloudEvents,
    /// The CDEvents the recorded events stand for.
    CdEvents,
}

/// What a `GET /api/v1/events` asks for, from its `Last-Event-ID` header and
/// query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsRequest {
    /// Stream the events after this position (0: from the start).
    pub after: i64,
    pub pipeline: Option<String>,
    pub run: Option<String>,
    /// `false` ends the stream once it has caught up.
    pub follow: bool,
    pub format: EventsFormat,
}

/// Reads an events request: both inputs come straight from the client. Pub so
/// that the fuzz target drives exactly what the route parses.
pub fn parse_events_request(headers: &HeaderMap, uri: &Uri) -> Result<EventsRequest, Problem> {
    let Query(q) = Query::<EventsQuery>::try_from_uri(uri)
        .map_err(|rejection| Problem::bad_request(rejection.body_text()))?;
    let after = match headers.get("last-event-id") {
        Some(v) => {
            let text = v.to_str().unwrap_or_default().trim();
            text.parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| {
                    Problem::bad_request(format!("Last-Event-ID `{text}` is not a log position"))
                })?
        }
        None => match q.from {
            Some(f) if f < 0 => {
                return Err(Problem::bad_request(format!(
                    "from={f} is not a log position (positions start at 1)"
                )))
            }
            // `from=0` also means from the start: no position is below 0.
            Some(f) => f.saturating_sub(1).max(0),
            None => 0,
        },
    };
    let format = match q.format.as_deref().map(str::trim) {
        None | Some("") | Some("cloudevents") => EventsFormat::CloudEvents,
        Some("cdevents") => EventsFormat::CdEvents,
        Some(other) => {
            return Err(Problem::bad_request(format!(
                "format=`{other}` is not an event format (cloudevents or cdevents)"
            )))
        }
    };
    Ok(EventsRequest {
        format,
        after,
        pipeline: q.pipeline.filter(|p| !p.is_empty()),
        run: q.run.filter(|r| !r.is_empty()),
        follow: q.follow.unwrap_or(true),
    })
}

pub(crate) async fn stream(
    State(api): State<Api>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Problem> {
    let EventsRequest {
        after: last_seen,
        pipeline,
        run,
        follow,
        format,
    } = parse_events_request(&headers, &uri)?;
    let store = api.app.store.clone();
    let mut cdevents = (format == EventsFormat::CdEvents)
        .then(|| CdeventsMapper::new(store.clone(), &api.app.settings.public_url()));
    let shutdown = api.app.shutdown.clone();
    let stream = async_stream::stream! {
        let mut wake = store.wakeups();
        let mut after = last_seen;
        loop {
            let page = match store.read_all(after, PAGE).await {
                Ok(p) => p,
                Err(e) => {
                    // End the stream; the client resumes from its last id.
                    tracing::warn!(error = %e, "event stream read failed; closing it");
                    break;
                }
            };
            if page.is_empty() {
                if !follow {
                    break;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = wake.wait_beyond(after) => {}
                }
                continue;
            }
            for recorded in page {
                after = recorded.position;
                if pipeline.as_deref().is_some_and(|p| p != recorded.event.pipeline) {
                    continue;
                }
                if run.as_deref().is_some_and(|r| Some(r) != recorded.event.runid.as_deref()) {
                    continue;
                }
                let id = recorded.position.to_string();
                let Some(mapper) = cdevents.as_mut() else {
                    let Ok(json) = serde_json::to_string(&recorded.event) else { continue };
                    yield Ok(Event::default().id(id).data(json));
                    continue;
                };
                let mapped = match mapper.map(&recorded).await {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "event stream read failed; closing it");
                        return;
                    }
                };
                for cd in mapped {
                    yield Ok(Event::default().id(id.clone()).data(cd.json.to_string()));
                }
            }
        }
    };
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(last_event_id: Option<&str>, target: &str) -> Result<EventsRequest, Problem> {
        let mut headers = HeaderMap::new();
        if let Some(id) = last_event_id {
            headers.insert("last-event-id", id.parse().unwrap());
        }
        parse_events_request(&headers, &target.parse().unwrap())
    }

    // Found by fuzz/sse_events: `from=0` (or `from=000…`) gave position -1.
    #[test]
    fn from_zero_starts_at_the_beginning() {
        for target in [
            "/api/v1/events?from=0",
            "/api/v1/events?from=0000000000000000000",
        ] {
            assert_eq!(parse(None, target).unwrap().after, 0, "{target}");
        }
        assert_eq!(parse(None, "/api/v1/events?from=5").unwrap().after, 4);
        assert_eq!(
            parse(Some(" 7 "), "/api/v1/events?from=0").unwrap().after,
            7
        );
        assert!(parse(Some("-1"), "/api/v1/events").is_err());
        assert!(parse(None, "/api/v1/events?from=-1").is_err());
    }

    #[test]
    fn format_is_cloudevents_unless_cdevents_is_asked_for() {
        assert_eq!(
            parse(None, "/api/v1/events").unwrap().format,
            EventsFormat::CloudEvents
        );
        assert_eq!(
            parse(None, "/api/v1/events?format=cdevents")
                .unwrap()
                .format,
            EventsFormat::CdEvents
        );
        let err = parse(None, "/api/v1/events?format=xml").unwrap_err();
        assert!(format!("{err:?}").contains("xml"), "{err:?}");
    }
}
