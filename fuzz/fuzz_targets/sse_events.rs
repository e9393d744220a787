//! `GET /api/v1/events`: the `Last-Event-ID` header and the query string
//! (`from`, `pipeline`, `run`, `follow`), through `parse_events_request`.
//!
//! Input: `<Last-Event-ID value>\n<request target>`; an empty first line
//! means no header. Only targets `http` accepts as a URI get that far, as
//! in a real request.

#![no_main]

use gantry_api::parse_events_request;
use http::{HeaderMap, HeaderValue, Uri};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (id, target) = gantry_fuzz::first_line(data);
    let mut headers = HeaderMap::new();
    if !id.is_empty() {
        let Ok(value) = HeaderValue::from_bytes(id) else {
            return;
        };
        headers.insert("last-event-id", value);
    }
    let Ok(uri) = Uri::try_from(target) else {
        return;
    };
    if let Ok(req) = parse_events_request(&headers, &uri) {
        // Positions are never negative, whatever the client sent.
        assert!(req.after >= 0, "{req:?}");
        assert!(req.pipeline.as_deref() != Some(""));
        assert!(req.run.as_deref() != Some(""));
    }
});
