//! One smoke check: request, expectations, retries until the deadline.

use std::time::{Duration, Instant};

use gantry_core::pipeline::SmokeCheck;
use gantry_proto::events::CheckResult;

/// Pause between attempts of a failing check.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub pause: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            pause: Duration::from_secs(1),
        }
    }
}

/// Runs `check` until it passes or its timeout has passed.
pub async fn run_check(
    client: &reqwest::Client,
    check: &SmokeCheck,
    retry: &RetryPolicy,
) -> CheckResult {
    let started = Instant::now();
    let deadline = started + check.timeout_or_default();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let outcome = attempt(client, check, deadline).await;
        let done = outcome.is_ok() || Instant::now() + retry.pause >= deadline;
        if done {
            let (passed, status, message) = match outcome {
                Ok(status) => (true, Some(status), None),
                Err((status, message)) => (false, status, Some(message)),
            };
            return CheckResult {
                name: check.name.clone(),
                passed,
                status,
                duration_ms: started.elapsed().as_millis() as u64,
                attempts,
                message,
            };
        }
        tokio::time::sleep(retry.pause).await;
    }
}

/// One request; `Ok(status)` when every expectation holds, else the status
/// (if any) and what did not hold. Never includes header values: they may
/// be credentials.
async fn attempt(
    client: &reqwest::Client,
    check: &SmokeCheck,
    deadline: Instant,
) -> Result<u16, (Option<u16>, String)> {
    let req = &check.request;
    let method = reqwest::Method::from_bytes(req.method.as_bytes())
        .map_err(|_| (None, format!("`{}` is not an HTTP method", req.method)))?;
    let mut builder = client.request(method, &req.url).timeout(
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100)),
    );
    for (name, value) in &req.headers {
        let value = value
            .resolve()
            .map_err(|e| (None, format!("header `{name}`: {e}")))?;
        builder = builder.header(name.as_str(), value.expose());
    }
    if let Some(body) = &req.body {
        builder = builder.body(body.clone());
    }
    let sent = Instant::now();
    let resp = builder.send().await.map_err(|e| {
        let what = if e.is_timeout() {
            format!("timed out after {} ms", sent.elapsed().as_millis())
        } else if e.is_connect() {
            format!("cannot connect ({})", root_cause(&e))
        } else {
            root_cause(&e)
        };
        (None, format!("{} {}: {what}", req.method, req.url))
    })?;
    let status = resp.status().as_u16();
    let latency = sent.elapsed();
    let expect = &check.expect;
    let mut problems = Vec::new();
    match expect.status {
        Some(want) if want != status => problems.push(format!("status {status}, expected {want}")),
        None if !(200..300).contains(&status) => {
            problems.push(format!("status {status}, expected 2xx"))
        }
        _ => {}
    }
    for (name, want) in &expect.headers {
        match resp
            .headers()
            .get(name.as_str())
            .and_then(|v| v.to_str().ok())
        {
            Some(got) if got == want => {}
            Some(_) => problems.push(format!("header `{name}` differs from the expected value")),
            None => problems.push(format!("header `{name}` is missing")),
        }
    }
    let body = resp.text().await.unwrap_or_default();
    if let Some(needle) = &expect.body_contains {
        if !body.contains(needle.as_str()) {
            problems.push(format!("body does not contain `{needle}`"));
        }
    }
    if !expect.json.is_empty() {
        match serde_json::from_str::<serde_json::Value>(&body) {
            Ok(json) => {
                for (pointer, want) in &expect.json {
                    match json.pointer(pointer) {
                        Some(got) if got == want => {}
                        Some(got) => problems.push(format!("{pointer} is {got}, expected {want}")),
                        None => problems.push(format!("{pointer} is missing")),
                    }
                }
            }
            Err(e) => problems.push(format!("body is not JSON: {e}")),
        }
    }
    if let Some(max) = expect.max_latency {
        if latency > max {
            problems.push(format!(
                "took {} ms, at most {} ms allowed",
                latency.as_millis(),
                max.as_millis()
            ));
        }
    }
    if problems.is_empty() {
        Ok(status)
    } else {
        Err((Some(status), problems.join("; ")))
    }
}

/// The innermost error's message: reqwest's own says only "error sending request".
fn root_cause(e: &reqwest::Error) -> String {
    let mut source: &dyn std::error::Error = e;
    while let Some(next) = source.source() {
        source = next;
    }
    source.to_string()
}
