//! `gantry`: the one binary. Exit codes: 0 success, 1 failure, 2 bad usage.

mod bench;
mod cli;
mod client;
mod previews;
mod server;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use futures::StreamExt;
use http::Method;
use serde_json::{json, Value};

/// mimalloc instead of glibc's allocator: a request allocates many small
/// short-lived values, and glibc's free lists cost a fifth of the webhook
/// path's CPU in a profile (BENCHMARKS.md, issue 17).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use cli::{
    ApisCommand, Cli, Command, Output, PackagesCommand, PipelinesCommand, ProjectionsCommand,
};
use client::Client;

fn main() -> ExitCode {
    let cli = Cli::parse();
    gantry_runtime::telemetry::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(mut cli: Cli) -> anyhow::Result<ExitCode> {
    cli.global.resolve_file_refs()?;
    let g = &cli.global;
    match cli.command {
        Command::Up => server::up(g.settings()).await?,
        Command::Serve { service } => server::serve(g.settings(), service).await?,
        Command::Pipelines {
            command: PipelinesCommand::Validate { path },
        } => {
            return Ok(validate(
                path.unwrap_or_else(|| g.pipelines.clone()),
                g.output,
            ))
        }
        Command::Migrate => {
            let settings = g.settings();
            let url = settings.database_url();
            if settings.database_url.is_none() {
                std::fs::create_dir_all(&settings.data_dir)
                    .with_context(|| format!("creating {}", settings.data_dir.display()))?;
            }
            settings.register_secrets();
            let store =
                gantry_store::EventStore::connect_with_pool(&url, settings.database_pool).await?;
            store.migrate().await?;
            println!(
                "database at {} is up to date",
                gantry_store::store::redact_url(&url)
            );
        }
        Command::Projections {
            command: ProjectionsCommand::Rebuild,
        } => {
            let app = gantry_runtime::App::start(gantry_runtime::Settings {
                nats_url: None,
                ..g.settings()
            })
            .await?;
            let position = app.projections.rebuild().await?;
            match g.output {
                Output::Json => println!("{}", json!({ "rebuilt_to_position": position })),
                Output::Text => {
                    println!("projections rebuilt from the log up to position {position}")
                }
            }
        }
        Command::Trigger {
            pipeline,
            commit,
            message,
        } => {
            let resp = Client::new(g)
                .send(
                    Method::POST,
                    "/api/v1/runs",
                    Some(json!({ "pipeline": pipeline, "commit": commit, "message": message })),
                )
                .await?
                .json()
                .await?;
            match g.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&resp)?),
                Output::Text => {
                    let verb = if resp["created"].as_bool() == Some(true) {
                        "started"
                    } else {
                        "already exists"
                    };
                    println!(
                        "run {} {verb} for pipeline {} at commit {}",
                        str_of(&resp["run_id"]),
                        str_of(&resp["pipeline"]),
                        str_of(&resp["commit"])
                    );
                }
            }
        }
        Command::Runs {
            pipeline,
            status,
            limit,
        } => {
            let mut path = format!("/api/v1/runs?limit={limit}");
            if let Some(p) = pipeline {
                path.push_str(&format!("&pipeline={}", urlencode(&p)));
            }
            if let Some(s) = status {
                path.push_str(&format!("&status={}", urlencode(&s)));
            }
            let runs = Client::new(g)
                .send(Method::GET, &path, None)
                .await?
                .json()
                .await?;
            match g.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&runs)?),
                Output::Text => print_runs(&runs),
            }
        }
        Command::Run { id } => {
            let run = Client::new(g)
                .send(
                    Method::GET,
                    &format!("/api/v1/runs/{}", urlencode(&id)),
                    None,
                )
                .await?
                .json()
                .await?;
            match g.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&run)?),
                Output::Text => print_run(&run),
            }
        }
        Command::Apis {
            command: ApisCommand::Plan { run, stage },
        } => {
            let path = format!(
                "/api/v1/runs/{}/stages/{}/apis/plan",
                urlencode(&run),
                urlencode(&stage)
            );
            let plan = Client::new(g)
                .send(Method::GET, &path, None)
                .await?
                .json()
                .await?;
            match g.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&plan)?),
                Output::Text => print_apis_plan(&plan),
            }
        }
        Command::Rollback {
            pipeline,
            stage,
            to,
            reason,
        } => {
            let path = format!(
                "/api/v1/pipelines/{}/stages/{}/rollback",
                urlencode(&pipeline),
                urlencode(&stage)
            );
            let resp = Client::new(g)
                .send(
                    Method::POST,
                    &path,
                    Some(json!({ "to": to, "reason": reason })),
                )
                .await?
                .json()
                .await?;
            match g.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&resp)?),
                Output::Text => {
                    let verb = if resp["created"].as_bool() == Some(true) {
                        "started"
                    } else {
                        "is already going"
                    };
                    println!(
                        "rollback run {} {verb}: {stage} of {} goes back to commit {} \
                         (follow it with `gantry run {}`)",
                        str_of(&resp["run_id"]),
                        str_of(&resp["pipeline"]),
                        str_of(&resp["commit"]),
                        str_of(&resp["run_id"]),
                    );
                }
            }
        }
        Command::Cancel { run, reason } => {
            let resp = Client::new(g)
                .send(
                    Method::POST,
                    &format!("/api/v1/runs/{}/cancel", urlencode(&run)),
                    Some(json!({ "reason": reason })),
                )
                .await?
                .json()
                .await?;
            match g.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&resp)?),
                Output::Text => println!(
                    "cancelled run {} ({})",
                    str_of(&resp["subject"]),
                    str_of(&resp["data"]["user"])
                ),
            }
        }
        Command::Diff { run, stage } => {
            let path = format!(
                "/api/v1/runs/{}/stages/{}/diff",
                urlencode(&run),
                urlencode(&stage)
            );
            let client = Client::new(g);
            match g.output {
                Output::Json => {
                    let diff = client.send(Method::GET, &path, None).await?.json().await?;
                    println!("{}", serde_json::to_string_pretty(&diff)?);
                }
                Output::Text => {
                    let resp = client
                        .send(Method::GET, &format!("{path}?format=text"), None)
                        .await?;
                    let status = resp.status;
                    let body = resp.bytes().await?;
                    if !status.is_success() {
                        let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        anyhow::bail!("{}", client_error(status, &value));
                    }
                    print!("{}", String::from_utf8_lossy(&body));
                }
            }
        }
        Command::Approve {
            run,
            stage,
            comment,
        } => {
            let path = format!(
                "/api/v1/runs/{}/stages/{}/approve",
                urlencode(&run),
                urlencode(&stage)
            );
            let resp = Client::new(g)
                .send(Method::POST, &path, Some(json!({ "comment": comment })))
                .await?
                .json()
                .await?;
            print_decision(g.output, &resp, "approved")?;
        }
        Command::Reject { run, stage, reason } => {
            let path = format!(
                "/api/v1/runs/{}/stages/{}/reject",
                urlencode(&run),
                urlencode(&stage)
            );
            let resp = Client::new(g)
                .send(Method::POST, &path, Some(json!({ "reason": reason })))
                .await?
                .json()
                .await?;
            print_decision(g.output, &resp, "rejected")?;
        }
        Command::Events {
            follow,
            from,
            pipeline,
            run,
        } => {
            let mut path = format!("/api/v1/events?follow={follow}");
            if let Some(f) = from {
                path.push_str(&format!("&from={f}"));
            }
            if let Some(p) = pipeline {
                path.push_str(&format!("&pipeline={}", urlencode(&p)));
            }
            if let Some(r) = run {
                path.push_str(&format!("&run={}", urlencode(&r)));
            }
            let resp = Client::new(g).send(Method::GET, &path, None).await?;
            if !resp.status.is_success() {
                let status = resp.status;
                let body = resp.bytes().await?;
                let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                anyhow::bail!("{}", client_error(status, &value));
            }
            let mut messages = Box::pin(client::sse_messages(resp.body));
            while let Some(msg) = messages.next().await {
                let (id, data) = msg?;
                match g.output {
                    Output::Json => println!("{data}"),
                    Output::Text => print_event(id, &data),
                }
            }
        }
        Command::Packages {
            command:
                PackagesCommand::Prune {
                    keep_days,
                    grace_minutes,
                    dry_run,
                },
        } => {
            let app = gantry_runtime::App::start(g.settings()).await?;
            let policy = gantry_store::packages::retention::RetentionPolicy {
                keep_days,
                grace: chrono::Duration::minutes(i64::from(grace_minutes)),
            };
            let plan = gantry_store::packages::retention::prune(
                &app.packages,
                &app.projections,
                &policy,
                dry_run,
            )
            .await?;
            match g.output {
                Output::Json => println!(
                    "{}",
                    json!({
                        "store": app.packages.place(),
                        "dry_run": dry_run,
                        "removed": plan.remove,
                        "kept": plan.keep.iter().map(|(d, why)| json!({ "digest": d, "why": why.to_string() })).collect::<Vec<_>>(),
                    })
                ),
                Output::Text => {
                    let verb = if dry_run { "would remove" } else { "removed" };
                    for d in &plan.remove {
                        println!("{verb} {d}");
                    }
                    println!(
                        "{}: {verb} {} package(s), kept {}",
                        app.packages.place(),
                        plan.remove.len(),
                        plan.keep.len()
                    );
                }
            }
        }
        Command::Bench { command } => bench::run(command, g).await?,
    }
    Ok(ExitCode::SUCCESS)
}

fn client_error(status: http::StatusCode, value: &Value) -> String {
    let detail = value["detail"].as_str().unwrap_or("request failed");
    format!("{detail} ({status})")
}

fn validate(path: std::path::PathBuf, output: Output) -> ExitCode {
    let result = if path.is_file() {
        gantry_pipeline::load_file(&path).map(|p| {
            let mut set = gantry_pipeline::PipelineSet::new();
            set.insert(p, Some(path.clone()));
            set
        })
    } else {
        gantry_pipeline::load_dir(&path)
    };
    match (result, output) {
        (Ok(set), output) => {
            let names: Vec<&str> = set.names().collect();
            let warnings = validation_warnings(&set);
            if output == Output::Json {
                println!(
                    "{}",
                    json!({ "valid": true, "pipelines": names, "errors": [], "warnings": warnings })
                );
            } else {
                for w in &warnings {
                    eprintln!(
                        "warning: {}: {}: {}",
                        str_of(&w["file"]),
                        str_of(&w["field"]),
                        str_of(&w["message"])
                    );
                }
                println!(
                    "{} pipeline(s) valid in {}: {}",
                    names.len(),
                    path.display(),
                    names.join(", ")
                );
            }
            ExitCode::SUCCESS
        }
        (Err(errors), Output::Json) => {
            let list: Vec<Value> = errors
                .iter()
                .map(|e| {
                    json!({
                        "file": e.file.display().to_string(),
                        "line": e.line,
                        "column": e.column,
                        "field": e.field,
                        "message": e.message,
                    })
                })
                .collect();
            println!("{}", json!({ "valid": false, "errors": list }));
            ExitCode::FAILURE
        }
        (Err(errors), Output::Text) => {
            for e in errors.iter() {
                eprintln!("{e}");
            }
            eprintln!("{} problem(s) found", errors.len());
            ExitCode::FAILURE
        }
    }
}

/// Risky settings of valid pipelines, and approvals that cannot be given
/// because this environment has no API tokens (everyone would be anonymous).
fn validation_warnings(set: &gantry_pipeline::PipelineSet) -> Vec<Value> {
    let tokens = std::env::var_os("GANTRY_API_TOKENS").is_some_and(|v| !v.is_empty());
    let mut out = Vec::new();
    for p in set.iter() {
        let file = set
            .file_of(&p.name)
            .map(|f| f.display().to_string())
            .unwrap_or_else(|| p.name.clone());
        for w in gantry_pipeline::warnings(p) {
            out.push(
                json!({ "file": file, "pipeline": p.name, "field": w.path, "message": w.message }),
            );
        }
        if !tokens {
            for (i, stage) in p.stages.iter().enumerate() {
                if stage.approval.is_some() {
                    out.push(json!({
                        "file": file,
                        "pipeline": p.name,
                        "field": format!("stages[{i}].approval"),
                        "message": "GANTRY_API_TOKENS is not set: without tokens nobody can be told apart, so this approval will be refused (403); set up API tokens (README, Security model)",
                    }));
                }
            }
        }
    }
    out
}

fn str_of(v: &Value) -> &str {
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

fn print_decision(output: Output, resp: &Value, verb: &str) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(resp)?),
        Output::Text => println!(
            "{verb}: stage {} of run {} by {}",
            str_of(&resp["data"]["stage"]),
            str_of(&resp["subject"]),
            str_of(&resp["data"]["user"])
        ),
    }
    Ok(())
}
