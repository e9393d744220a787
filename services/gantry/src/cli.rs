//! Command-line definition (DESIGN.md 1.4). Every flag mirrors a `GANTRY_*`
//! environment variable; flags win over the environment.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use gantry_core::Settings;

#[derive(Debug, Parser)]
#[command(
    name = "gantry",
    version,
    about = "Event-sourced promotion pipelines for Axway API Gateway and API Manager",
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Event store: sqlite://PATH or postgres://... [default: sqlite://<data-dir>/gantry.db]
    #[arg(
        long,
        env = "GANTRY_DATABASE_URL",
        global = true,
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// NATS server for distributed delivery; in-process delivery when unset.
    #[arg(long, env = "GANTRY_NATS_URL", global = true, hide_env_values = true)]
    pub nats_url: Option<String>,
    /// Subject prefix on NATS, so installations can share a server.
    #[arg(
        long,
        env = "GANTRY_NATS_PREFIX",
        default_value = "gantry",
        global = true
    )]
    pub nats_prefix: String,
    /// JetStream stream name.
    #[arg(
        long,
        env = "GANTRY_NATS_STREAM",
        default_value = "GANTRY_EVENTS",
        global = true
    )]
    pub nats_stream: String,
    /// HTTP listen address; client commands talk to the server here.
    #[arg(long, env = "GANTRY_LISTEN", default_value = gantry_core::config::DEFAULT_LISTEN, global = true)]
    pub listen: SocketAddr,
    /// Directory of pipeline definitions.
    #[arg(
        long,
        env = "GANTRY_PIPELINES",
        default_value = "pipelines",
        global = true
    )]
    pub pipelines: PathBuf,
    /// Where embedded state (SQLite, packages) lives.
    #[arg(
        long,
        env = "GANTRY_DATA_DIR",
        default_value = ".gantry",
        global = true
    )]
    pub data_dir: PathBuf,
    /// JetStream object store bucket of packages (distributed mode).
    #[arg(
        long,
        env = "GANTRY_PACKAGES_BUCKET",
        default_value = gantry_core::packages::DEFAULT_BUCKET,
        global = true
    )]
    pub packages_bucket: String,
    /// Size limit of the package bucket in bytes when Gantry creates it [default: unlimited].
    #[arg(long, env = "GANTRY_PACKAGES_MAX_BYTES", global = true)]
    pub packages_max_bytes: Option<u64>,
    /// Replicas of the JetStream storage Gantry creates (the package bucket).
    #[arg(long, env = "GANTRY_NATS_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5), global = true)]
    pub nats_replicas: u8,
    /// YAML file of API tokens; when set, every /api call needs a bearer token.
    #[arg(long, env = "GANTRY_API_TOKENS", global = true)]
    pub api_tokens: Option<PathBuf>,
    /// Server URL for client commands [default: http://<listen>].
    #[arg(long, env = "GANTRY_SERVER", global = true)]
    pub server: Option<String>,
    /// API token for client commands.
    #[arg(long, env = "GANTRY_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Output format of read commands.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Text, global = true)]
    pub output: Output,
}

impl Global {
    pub fn settings(&self) -> Settings {
        Settings {
            database_url: self.database_url.clone().filter(|s| !s.trim().is_empty()),
            nats_url: self.nats_url.clone().filter(|s| !s.trim().is_empty()),
            nats_prefix: self.nats_prefix.clone(),
            nats_stream: self.nats_stream.clone(),
            listen: self.listen,
            pipelines: self.pipelines.clone(),
            data_dir: self.data_dir.clone(),
            api_tokens: self.api_tokens.clone(),
            nats_replicas: usize::from(self.nats_replicas),
            packages_bucket: self.packages_bucket.clone(),
            packages_max_bytes: self.packages_max_bytes,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run everything in one process (embedded SQLite and in-process delivery
    /// unless GANTRY_DATABASE_URL / GANTRY_NATS_URL are set).
    Up,
    /// Run one microservice (needs GANTRY_DATABASE_URL and GANTRY_NATS_URL).
    Serve {
        #[arg(value_enum)]
        service: Service,
    },
    /// Pipeline definitions.
    Pipelines {
        #[command(subcommand)]
        command: PipelinesCommand,
    },
    /// Start a run of a pipeline by hand.
    Trigger {
        pipeline: String,
        /// Full commit id [default: the head of the pipeline's branch].
        #[arg(long)]
        commit: Option<String>,
        /// A note recorded with the run.
        #[arg(long)]
        message: Option<String>,
    },
    /// List runs, newest first.
    Runs {
        #[arg(long)]
        pipeline: Option<String>,
        /// running, succeeded, failed, superseded or cancelled.
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Show one run: its stages, and why a waiting stage waits.
    Run { id: String },
    /// What promoting a run into a stage would change (files and values,
    /// secrets masked), against what the stage runs now.
    Diff { run: String, stage: String },
    /// Approve the promotion of a run into a stage.
    Approve {
        run: String,
        stage: String,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Reject the promotion of a run into a stage (the run stops).
    Reject {
        run: String,
        stage: String,
        #[arg(long)]
        reason: String,
    },
    /// API Manager data: what promoting a run into a stage would change.
    Apis {
        #[command(subcommand)]
        command: ApisCommand,
    },
    /// Put a stage back on an earlier release: by default the one it ran
    /// before its current release. Goes through the stage's deploy,
    /// readiness, API Manager and smoke steps as a run of its own.
    Rollback {
        pipeline: String,
        stage: String,
        /// The run whose release to go back to.
        #[arg(long)]
        to: Option<String>,
        /// Why, recorded in the rollback run's events.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Stop a run where it is.
    Cancel {
        run: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Print the event log.
    Events {
        /// Keep printing new events as they are recorded.
        #[arg(long, short)]
        follow: bool,
        /// Start at this log position (inclusive).
        #[arg(long)]
        from: Option<i64>,
        #[arg(long)]
        pipeline: Option<String>,
        #[arg(long)]
        run: Option<String>,
    },
    /// Create or upgrade the database schema.
    Migrate,
    /// Read models.
    Projections {
        #[command(subcommand)]
        command: ProjectionsCommand,
    },
    /// The package store (the data dir, or the NATS bucket with --nats-url).
    Packages {
        #[command(subcommand)]
        command: PackagesCommand,
    },
    /// Measure Gantry on this machine (see BENCHMARKS.md).
    Bench {
        #[command(subcommand)]
        command: crate::bench::BenchCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum PipelinesCommand {
    /// Check pipeline files; errors name file, line and field.
    Validate {
        /// Directory or file [default: --pipelines].
        path: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum PackagesCommand {
    /// Remove the packages no run can reach any more: kept are those of a
    /// stage's current release, of running runs, of runs younger than
    /// --keep-days, and any written within --grace-minutes.
    Prune {
        #[arg(long, default_value_t = 30)]
        keep_days: u32,
        #[arg(long, default_value_t = 60)]
        grace_minutes: u32,
        /// Only say what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// Drop the read models and fold the whole log again.
    Rebuild,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Service {
    Webhook,
    Api,
    Conductor,
    Envgen,
    Imagebuild,
    Deployer,
    Apim,
    Smoke,
}

impl Service {
    pub fn name(self) -> &'static str {
        match self {
            Service::Webhook => "webhook",
            Service::Api => "api",
            Service::Conductor => "conductor",
            Service::Envgen => "envgen",
            Service::Imagebuild => "imagebuild",
            Service::Deployer => "deployer",
            Service::Apim => "apim",
            Service::Smoke => "smoke",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ApisCommand {
    /// A dry run against the stage's API Manager: the APIs, organizations,
    /// applications and grants that promoting `run` into `stage` would
    /// change, and the breaking changes the stage would refuse.
    Plan { run: String, stage: String },
}
