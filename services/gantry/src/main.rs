//! `gantry`: the one binary. Exit codes: 0 success, 1 failure, 2 bad usage.

mod audit;
mod bench;
mod cli;
mod client;
mod commands;
mod previews;
mod quickstart;
mod server;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use serde_json::{json, Value};

/// mimalloc instead of glibc's allocator: a request allocates many small
/// short-lived values, and glibc's free lists cost a fifth of the webhook
/// path's CPU in a profile (BENCHMARKS.md, issue 17).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use cli::{
    ApisCommand, Cli, Command, Global, InsightsCommand, Output, PackagesCommand, PipelinesCommand,
    ProjectionsCommand,
};
use commands::{str_of, Decision};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let service = match &cli.command {
        Command::Serve { service } => format!("gantry-{}", service.name()),
        _ => "gantry".to_owned(),
    };
    gantry_runtime::telemetry::init(&service);
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
    let code = match runtime.block_on(execute(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    };
    // Spans still in the exporter's batch are sent before the process goes.
    gantry_runtime::traces::shutdown();
    code
}

async fn execute(mut cli: Cli) -> anyhow::Result<ExitCode> {
    cli.global.resolve_file_refs()?;
    let g = &cli.global;
    match cli.command {
        Command::Up => server::up(g.settings()).await?,
        Command::Quickstart { dir, commit } => quickstart::run(g, dir, commit).await?,
        Command::Serve { service } => server::serve(g.settings(), service).await?,
        Command::Pipelines {
            command: PipelinesCommand::Validate { path },
        } => {
            return Ok(validate(
                path.unwrap_or_else(|| g.pipelines.clone()),
                g.output,
            ))
        }
        Command::Migrate => migrate(g).await?,
        Command::Projections {
            command: ProjectionsCommand::Rebuild,
        } => rebuild_projections(g).await?,
        Command::Audit { command } => return audit::run(g, command).await,
        Command::Trigger {
            pipeline,
            commit,
            message,
        } => commands::trigger(g, &pipeline, commit, message).await?,
        Command::Runs {
            pipeline,
            status,
            limit,
        } => commands::runs(g, pipeline, status, limit).await?,
        Command::Run { id } => commands::run(g, &id).await?,
        Command::Apis {
            command: ApisCommand::Plan { run, stage },
        } => commands::apis_plan(g, &run, &stage).await?,
        Command::Insights {
            command:
                InsightsCommand::Dora {
                    pipeline,
                    stage,
                    days,
                },
        } => commands::dora(g, pipeline, stage, days).await?,
        Command::Rollback {
            pipeline,
            stage,
            to,
            reason,
        } => commands::rollback(g, &pipeline, &stage, to, reason).await?,
        Command::Cancel { run, reason } => commands::cancel(g, &run, reason).await?,
        Command::Pause {
            pipeline,
            stage,
            reason,
        } => commands::pause(g, &pipeline, &stage, true, Some(reason)).await?,
        Command::Resume {
            pipeline,
            stage,
            reason,
        } => commands::pause(g, &pipeline, &stage, false, reason).await?,
        Command::Diff { run, stage } => commands::diff(g, &run, &stage).await?,
        Command::Approve {
            run,
            stage,
            comment,
        } => commands::decide(g, &run, &stage, Decision::Approve { comment }).await?,
        Command::Reject { run, stage, reason } => {
            commands::decide(g, &run, &stage, Decision::Reject { reason }).await?
        }
        Command::Events {
            follow,
            from,
            pipeline,
            run,
        } => commands::events(g, follow, from, pipeline, run).await?,
        Command::Packages {
            command:
                PackagesCommand::Prune {
                    keep_days,
                    grace_minutes,
                    dry_run,
                },
        } => prune_packages(g, keep_days, grace_minutes, dry_run).await?,
        Command::Bench { command } => bench::run(command, g).await?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `gantry migrate`: the log's schema, up to date.
async fn migrate(g: &Global) -> anyhow::Result<()> {
    let settings = g.settings();
    let url = settings.database_url();
    if settings.database_url.is_none() {
        std::fs::create_dir_all(&settings.data_dir)
            .with_context(|| format!("creating {}", settings.data_dir.display()))?;
    }
    settings.register_secrets();
    let store = gantry_store::EventStore::connect_with_pool(&url, settings.database_pool).await?;
    store.migrate().await?;
    println!(
        "database at {} is up to date",
        gantry_store::store::redact_url(&url)
    );
    Ok(())
}

/// `gantry projections rebuild`: the read models folded again from the log.
async fn rebuild_projections(g: &Global) -> anyhow::Result<()> {
    let app = gantry_runtime::App::start(gantry_runtime::Settings {
        nats_url: None,
        ..g.settings()
    })
    .await?;
    let position = app.projections.rebuild().await?;
    match g.output {
        Output::Json => println!("{}", json!({ "rebuilt_to_position": position })),
        Output::Text => println!("projections rebuilt from the log up to position {position}"),
    }
    Ok(())
}

/// `gantry packages prune`: packages no release or recent run needs, removed.
async fn prune_packages(
    g: &Global,
    keep_days: u32,
    grace_minutes: u32,
    dry_run: bool,
) -> anyhow::Result<()> {
    use gantry_store::packages::retention;
    let app = gantry_runtime::App::start(g.settings()).await?;
    let policy = retention::RetentionPolicy {
        keep_days,
        grace: chrono::Duration::minutes(i64::from(grace_minutes)),
    };
    let plan = retention::prune(&app.packages, &app.projections, &policy, dry_run).await?;
    let place = app.packages.place();
    match g.output {
        Output::Json => {
            let kept: Vec<Value> = plan
                .keep
                .iter()
                .map(|(d, why)| json!({ "digest": d, "why": why.to_string() }))
                .collect();
            let report =
                json!({ "store": place, "dry_run": dry_run, "removed": plan.remove, "kept": kept });
            println!("{report}");
        }
        Output::Text => {
            let verb = if dry_run { "would remove" } else { "removed" };
            for d in &plan.remove {
                println!("{verb} {d}");
            }
            let (removed, kept) = (plan.remove.len(), plan.keep.len());
            println!("{place}: {verb} {removed} package(s), kept {kept}");
        }
    }
    Ok(())
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
