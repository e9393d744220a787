//! `gantry audit export | verify | import`: the log as a hash-chained file
//! (format in `gantry_store::audit`).

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use gantry_store::audit::{self, AuditError, Summary};
use serde_json::json;

use crate::cli::{Global, Output};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Write the log as JSON lines `{position, stream, event, prev, hash}`,
    /// each hash chained to the line before.
    Export {
        /// The first position to write (the chain still starts at 1).
        #[arg(long, default_value_t = 1)]
        from: i64,
        /// Write here instead of to standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check an export: exits 0, or 1 naming the first position whose hash
    /// or chain breaks.
    Verify { file: PathBuf },
    /// Load an export of a whole log into an empty store (disaster
    /// recovery); the projections rebuild from it, nothing is delivered
    /// to the workers again.
    Import { file: PathBuf },
}

pub async fn run(g: &Global, command: AuditCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::Export { from, out } => {
            let app = open(g).await?;
            let summary = match &out {
                Some(path) => {
                    let file = File::create(path)
                        .with_context(|| format!("creating {}", path.display()))?;
                    audit::export(&app.store, from, &mut BufWriter::new(file)).await?
                }
                None => audit::export(&app.store, from, &mut std::io::stdout().lock()).await?,
            };
            // The export itself may be on stdout: the summary goes to stderr.
            if out.is_some() || matches!(g.output, Output::Json) {
                report(g, "exported", &summary, &mut std::io::stderr())?;
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Verify { file } => match audit::verify(reader(&file)?) {
            Ok(summary) => {
                report(g, "verified", &summary, &mut std::io::stdout())?;
                Ok(ExitCode::SUCCESS)
            }
            Err(e @ (AuditError::Broken { .. } | AuditError::Read { .. })) => {
                match g.output {
                    Output::Json => {
                        println!("{}", json!({ "valid": false, "error": e.to_string() }))
                    }
                    Output::Text => eprintln!("{}: {e}", file.display()),
                }
                Ok(ExitCode::FAILURE)
            }
            Err(e) => Err(e.into()),
        },
        AuditCommand::Import { file } => {
            let app = open(g).await?;
            let summary =
                audit::import(&app.store, || reader(&file).map_err(std::io::Error::other))
                    .await
                    .with_context(|| format!("importing {}", file.display()))?;
            let position = app.projections.rebuild().await?;
            report(g, "imported", &summary, &mut std::io::stdout())?;
            if let Output::Text = g.output {
                println!("projections rebuilt up to position {position}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The store alone: no NATS, nothing delivered.
async fn open(g: &Global) -> anyhow::Result<gantry_runtime::App> {
    Ok(gantry_runtime::App::start(gantry_runtime::Settings {
        nats_url: None,
        ..g.settings()
    })
    .await?)
}

fn reader(path: &Path) -> anyhow::Result<BufReader<File>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(BufReader::with_capacity(1 << 20, file))
}

fn report(g: &Global, what: &str, s: &Summary, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
    match g.output {
        Output::Json => writeln!(out, "{}", json!({ "valid": true, what: s }))?,
        Output::Text => writeln!(
            out,
            "{what} {} events (positions {}..{}); head hash {}",
            s.events,
            s.first_position.unwrap_or(0),
            s.last_position.unwrap_or(0),
            s.head_hash.as_deref().unwrap_or("-"),
        )?,
    }
    Ok(())
}
