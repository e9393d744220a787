//! The client commands: each sends one request to the API (`--server`, or
//! the local store in process when nothing answers) and prints the answer,
//! as JSON with `-o json` or as text.

use futures::StreamExt;
use http::Method;
use serde_json::{json, Value};

use crate::cli::{Global, Output};
use crate::client::{self, Client};

/// Sends one request and returns the JSON of a success (a problem's detail
/// as the error otherwise).
async fn call(
    g: &Global,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    Client::new(g).send(method, path, body).await?.json().await
}

/// Prints `value` as JSON with `-o json`, else as `text` renders it.
fn show(output: Output, value: &Value, text: impl FnOnce(&Value)) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Output::Text => text(value),
    }
    Ok(())
}

/// `/api/v1/runs/{run}/stages/{stage}/{action}`, the parts percent-encoded.
fn stage_path(run: &str, stage: &str, action: &str) -> String {
    format!(
        "/api/v1/runs/{}/stages/{}/{action}",
        segment(run),
        segment(stage)
    )
}

/// A path segment: every byte but RFC 3986's unreserved ones percent-encoded
/// (form encoding would turn a space into `+`, which a path keeps as `+`).
fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `?a=1&b=2` of the parameters that are set, values URL-encoded.
fn query(params: &[(&str, Option<String>)]) -> String {
    let set: Vec<String> = params
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", urlencode(v))))
        .collect();
    if set.is_empty() {
        String::new()
    } else {
        format!("?{}", set.join("&"))
    }
}

pub async fn trigger(
    g: &Global,
    pipeline: &str,
    commit: Option<String>,
    message: Option<String>,
) -> anyhow::Result<()> {
    let body = json!({ "pipeline": pipeline, "commit": commit, "message": message });
    let resp = call(g, Method::POST, "/api/v1/runs", Some(body)).await?;
    show(g.output, &resp, |r| {
        let verb = if r["created"].as_bool() == Some(true) {
            "started"
        } else {
            "already exists"
        };
        println!(
            "run {} {verb} for pipeline {} at commit {}",
            str_of(&r["run_id"]),
            str_of(&r["pipeline"]),
            str_of(&r["commit"])
        );
    })
}

pub async fn runs(
    g: &Global,
    pipeline: Option<String>,
    status: Option<String>,
    limit: i64,
) -> anyhow::Result<()> {
    let path = format!(
        "/api/v1/runs{}",
        query(&[
            ("limit", Some(limit.to_string())),
            ("pipeline", pipeline),
            ("status", status),
        ])
    );
    let runs = call(g, Method::GET, &path, None).await?;
    show(g.output, &runs, print_runs)
}

pub async fn run(g: &Global, id: &str) -> anyhow::Result<()> {
    let path = format!("/api/v1/runs/{}", segment(id));
    let run = call(g, Method::GET, &path, None).await?;
    show(g.output, &run, print_run)
}

pub async fn dora(
    g: &Global,
    pipeline: Option<String>,
    stage: Option<String>,
    days: u32,
) -> anyhow::Result<()> {
    // Always the list form, whichever filters are given.
    let path = format!(
        "/api/v1/insights/dora{}",
        query(&[("days", Some(days.to_string())), ("pipeline", pipeline)])
    );
    let mut keys = call(g, Method::GET, &path, None).await?;
    if let (Some(stage), Value::Array(all)) = (stage, &mut keys) {
        all.retain(|k| k["stage"] == stage.as_str());
    }
    show(g.output, &keys, print_dora)
}

pub async fn apis_plan(g: &Global, run: &str, stage: &str) -> anyhow::Result<()> {
    let plan = call(g, Method::GET, &stage_path(run, stage, "apis/plan"), None).await?;
    show(g.output, &plan, print_apis_plan)
}

pub async fn rollback(
    g: &Global,
    pipeline: &str,
    stage: &str,
    to: Option<String>,
    reason: Option<String>,
) -> anyhow::Result<()> {
    let path = format!(
        "/api/v1/pipelines/{}/stages/{}/rollback",
        segment(pipeline),
        segment(stage)
    );
    let body = json!({ "to": to, "reason": reason });
    let resp = call(g, Method::POST, &path, Some(body)).await?;
    show(g.output, &resp, |r| {
        let verb = if r["created"].as_bool() == Some(true) {
            "started"
        } else {
            "is already going"
        };
        println!(
            "rollback run {} {verb}: {stage} of {} goes back to commit {} \
             (follow it with `gantry run {}`)",
            str_of(&r["run_id"]),
            str_of(&r["pipeline"]),
            str_of(&r["commit"]),
            str_of(&r["run_id"]),
        );
    })
}

/// `gantry pause` (`pause: true`) and `gantry resume`.
pub async fn pause(
    g: &Global,
    pipeline: &str,
    stage: &str,
    pause: bool,
    reason: Option<String>,
) -> anyhow::Result<()> {
    let action = if pause { "pause" } else { "resume" };
    let path = format!(
        "/api/v1/pipelines/{}/stages/{}/{action}",
        segment(pipeline),
        segment(stage)
    );
    let resp = call(g, Method::POST, &path, Some(json!({ "reason": reason }))).await?;
    show(g.output, &resp, |r| {
        let why = r["data"]["reason"]
            .as_str()
            .map(|w| format!(": {w}"))
            .unwrap_or_default();
        if pause {
            println!(
                "paused stage {stage} of {pipeline} ({}{why}); runs wait for it until \
                 `gantry resume {pipeline} {stage}`",
                str_of(&r["data"]["user"])
            );
        } else {
            println!(
                "resumed stage {stage} of {pipeline} ({}{why})",
                str_of(&r["data"]["user"])
            );
        }
    })
}

pub async fn cancel(g: &Global, run: &str, reason: Option<String>) -> anyhow::Result<()> {
    let path = format!("/api/v1/runs/{}/cancel", segment(run));
    let resp = call(g, Method::POST, &path, Some(json!({ "reason": reason }))).await?;
    show(g.output, &resp, |r| {
        println!(
            "cancelled run {} ({})",
            str_of(&r["subject"]),
            str_of(&r["data"]["user"])
        )
    })
}

pub async fn diff(g: &Global, run: &str, stage: &str) -> anyhow::Result<()> {
    let path = stage_path(run, stage, "diff");
    if g.output == Output::Json {
        let diff = call(g, Method::GET, &path, None).await?;
        return show(g.output, &diff, |_| {});
    }
    // The server renders the text report itself.
    let resp = Client::new(g)
        .send(Method::GET, &format!("{path}?format=text"), None)
        .await?;
    if !resp.status.is_success() {
        return Err(resp.into_error().await);
    }
    print!("{}", String::from_utf8_lossy(&resp.bytes().await?));
    Ok(())
}

/// An approval or a rejection.
pub enum Decision {
    Approve { comment: Option<String> },
    Reject { reason: String },
}

pub async fn decide(g: &Global, run: &str, stage: &str, decision: Decision) -> anyhow::Result<()> {
    let (action, body, verb) = match decision {
        Decision::Approve { comment } => ("approve", json!({ "comment": comment }), "approved"),
        Decision::Reject { reason } => ("reject", json!({ "reason": reason }), "rejected"),
    };
    let resp = call(g, Method::POST, &stage_path(run, stage, action), Some(body)).await?;
    show(g.output, &resp, |r| {
        println!(
            "{verb}: stage {} of run {} by {}",
            str_of(&r["data"]["stage"]),
            str_of(&r["subject"]),
            str_of(&r["data"]["user"])
        )
    })
}

pub async fn events(
    g: &Global,
    follow: bool,
    from: Option<i64>,
    pipeline: Option<String>,
    run: Option<String>,
) -> anyhow::Result<()> {
    let path = format!(
        "/api/v1/events{}",
        query(&[
            ("follow", Some(follow.to_string())),
            ("from", from.map(|f| f.to_string())),
            ("pipeline", pipeline),
            ("run", run),
        ])
    );
    let resp = Client::new(g).send(Method::GET, &path, None).await?;
    if !resp.status.is_success() {
        return Err(resp.into_error().await);
    }
    let mut messages = Box::pin(client::sse_messages(resp.body));
    while let Some(msg) = messages.next().await {
        let (id, data) = msg?;
        match g.output {
            Output::Json => println!("{data}"),
            Output::Text => print_event(id, &data),
        }
    }
    Ok(())
}

pub fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn print_runs(runs: &Value) {
    let empty = vec![];
    let runs = runs.as_array().unwrap_or(&empty);
    if runs.is_empty() {
        println!("no runs");
        return;
    }
    println!(
        "{:<36}  {:<16}  {:<12}  {:<10}  CREATED",
        "RUN", "PIPELINE", "COMMIT", "STATUS"
    );
    for r in runs {
        println!(
            "{:<36}  {:<16}  {:<12.12}  {:<10}  {}",
            str_of(&r["run_id"]),
            str_of(&r["pipeline"]),
            str_of(&r["commit"]),
            str_of(&r["status"]),
            str_of(&r["created_at"])
        );
    }
}

fn print_dora(keys: &Value) {
    let empty = vec![];
    let keys = keys.as_array().unwrap_or(&empty);
    if keys.is_empty() {
        println!("no deployments or failed changes in the window");
        return;
    }
    let secs = |q: &Value| match q.as_i64() {
        Some(s) => format!("{s}s"),
        None => "-".to_owned(),
    };
    println!(
        "{:<16}  {:<10}  {:>7}  {:>7}  {:>10}  {:>10}  {:>6}  {:>10}  {:>10}",
        "PIPELINE",
        "STAGE",
        "DEPLOYS",
        "PER DAY",
        "LEAD P50",
        "LEAD P90",
        "CFR",
        "MTTR P50",
        "MTTR P90"
    );
    for k in keys {
        println!(
            "{:<16}  {:<10}  {:>7}  {:>7.2}  {:>10}  {:>10}  {:>5.0}%  {:>10}  {:>10}",
            str_of(&k["pipeline"]),
            str_of(&k["stage"]),
            k["deployments"].as_i64().unwrap_or(0),
            k["deployment_frequency_per_day"].as_f64().unwrap_or(0.0),
            secs(&k["lead_time_seconds"]["p50"]),
            secs(&k["lead_time_seconds"]["p90"]),
            k["change_failure_rate"].as_f64().unwrap_or(0.0) * 100.0,
            secs(&k["time_to_restore_seconds"]["p50"]),
            secs(&k["time_to_restore_seconds"]["p90"]),
        );
    }
}

fn print_run(run: &Value) {
    println!("run       {}", str_of(&run["run_id"]));
    println!("pipeline  {}", str_of(&run["pipeline"]));
    println!(
        "commit    {} ({})",
        str_of(&run["commit"]),
        str_of(&run["branch"])
    );
    if let Some(m) = run["message"].as_str() {
        println!("message   {}", m.lines().next().unwrap_or(""));
    }
    println!("status    {}", str_of(&run["status"]));
    if let Some(r) = run["reason"].as_str() {
        println!("reason    {r}");
    }
    println!();
    println!("{:<16}  {:<18}  DETAIL", "STAGE", "STATUS");
    for s in run["stages"].as_array().into_iter().flatten() {
        let detail = if let Some(w) = s.get("waiting").filter(|w| !w.is_null()) {
            describe_wait(w)
        } else if let Some(r) = s["reason"].as_str() {
            r.to_owned()
        } else if let Some(i) = s["image"].as_str() {
            i.to_owned()
        } else {
            String::new()
        };
        println!(
            "{:<16}  {:<18}  {}",
            str_of(&s["name"]),
            str_of(&s["status"]),
            detail
        );
    }
}

fn describe_wait(w: &Value) -> String {
    if let Some(required) = w["required"].as_u64() {
        return format!(
            "waits for {required} approval(s) from {}",
            w["approvers"]
                .as_array()
                .map(|a| a
                    .iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        );
    }
    if let Some(detail) = w["detail"].as_str() {
        return detail.to_owned();
    }
    match w["reason"].as_str() {
        Some("freeze") => format!("frozen until {}", str_of(&w["until"])),
        Some("queue") => format!("queued behind run {}", str_of(&w["behind"])),
        Some(other) => format!("waits: {other}"),
        None => w.to_string(),
    }
}

fn print_event(id: Option<i64>, data: &str) {
    let Ok(e) = serde_json::from_str::<Value>(data) else {
        println!("{data}");
        return;
    };
    let ty = str_of(&e["type"]);
    let name = gantry_proto::EventName::from_type_name(ty)
        .map(|n| n.as_str().to_owned())
        .unwrap_or_else(|| ty.to_owned());
    let stage = e["data"]["stage"]
        .as_str()
        .map(|s| format!(" stage={s}"))
        .unwrap_or_default();
    println!(
        "#{:<6} {} {:<20} pipeline={} run={}{}",
        id.map(|i| i.to_string()).unwrap_or_default(),
        str_of(&e["time"]),
        name,
        str_of(&e["pipeline"]),
        str_of(&e["subject"]),
        stage
    );
}

fn print_apis_plan(plan: &Value) {
    println!(
        "API Manager plan for stage {} of {} at commit {}:",
        str_of(&plan["stage"]),
        str_of(&plan["pipeline"]),
        str_of(&plan["commit"])
    );
    let empty = Vec::new();
    let changes = plan["changes"].as_array().unwrap_or(&empty);
    if plan["noop"].as_bool() == Some(true) {
        println!("  nothing to change");
    }
    for c in changes {
        let fields: Vec<&str> = c["fields"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let fields = if fields.is_empty() {
            String::new()
        } else {
            format!(" ({})", fields.join(", "))
        };
        println!(
            "  {:<12} {}{fields}",
            str_of(&c["action"]),
            str_of(&c["target"])
        );
    }
    for r in plan["refused"].as_array().unwrap_or(&empty) {
        let fields: Vec<&str> = r["fields"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .filter_map(Value::as_str)
            .collect();
        println!(
            "  REFUSED      {}: breaking change to {} (the stage does not allow breaking changes)",
            str_of(&r["target"]),
            fields.join(", ")
        );
    }
    for w in plan["warnings"].as_array().unwrap_or(&empty) {
        println!("  warning: {}", str_of(w));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_keeps_the_set_parameters_in_order_and_encodes_values() {
        assert_eq!(query(&[("a", None)]), "");
        assert_eq!(
            query(&[
                ("limit", Some("50".into())),
                ("pipeline", None),
                ("status", Some("a b&c".into())),
            ]),
            "?limit=50&status=a+b%26c"
        );
    }

    #[test]
    fn stage_paths_encode_run_and_stage() {
        assert_eq!(
            stage_path("r/1", "prod eu", "apis/plan"),
            "/api/v1/runs/r%2F1/stages/prod%20eu/apis/plan"
        );
    }
}
