//! Command-line definition (DESIGN.md 1.4). Every flag mirrors a `GANTRY_*`
//! environment variable; flags win over the environment.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use gantry_runtime::Settings;
use gantry_store::bus::{NatsConnection, StreamLimits};

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
    /// Connections per process to the event store's database.
    #[arg(long, env = "GANTRY_DATABASE_POOL", global = true, value_parser = clap::value_parser!(u32).range(i64::from(gantry_store::store::MIN_POOL)..))]
    pub database_pool: Option<u32>,
    /// NATS credentials file (.creds: user JWT and NKEY seed).
    #[arg(long, env = "GANTRY_NATS_CREDS", global = true)]
    pub nats_creds: Option<PathBuf>,
    /// File holding the NKEY seed to authenticate to NATS with.
    #[arg(long, env = "GANTRY_NATS_NKEY", global = true)]
    pub nats_nkey: Option<PathBuf>,
    /// PEM CA certificates NATS's certificate must chain to (implies TLS).
    #[arg(long, env = "GANTRY_NATS_CA", global = true)]
    pub nats_ca: Option<PathBuf>,
    /// PEM client certificate for NATS (with --nats-key; implies TLS).
    #[arg(long, env = "GANTRY_NATS_CERT", global = true)]
    pub nats_cert: Option<PathBuf>,
    /// PEM private key of the NATS client certificate.
    #[arg(long, env = "GANTRY_NATS_KEY", global = true)]
    pub nats_key: Option<PathBuf>,
    /// Replicas of the JetStream stream and the package bucket (a NATS
    /// cluster of at least as many servers).
    #[arg(long, env = "GANTRY_NATS_REPLICAS", default_value_t = gantry_runtime::config::DEFAULT_NATS_REPLICAS, global = true, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub nats_replicas: u8,
    /// Events older than this leave the JetStream stream (e.g. 7d); kept when unset.
    #[arg(long, env = "GANTRY_NATS_MAX_AGE", global = true, value_parser = parse_max_age)]
    pub nats_max_age: Option<std::time::Duration>,
    /// The JetStream stream's size limit (e.g. 10GiB); the oldest events leave first.
    #[arg(long, env = "GANTRY_NATS_MAX_BYTES", global = true, value_parser = parse_max_bytes)]
    pub nats_max_bytes: Option<i64>,
    /// Subject prefix on NATS, so installations can share a server.
    #[arg(
        long,
        env = "GANTRY_NATS_PREFIX",
        default_value = gantry_runtime::config::DEFAULT_NATS_PREFIX,
        global = true
    )]
    pub nats_prefix: String,
    /// JetStream stream name.
    #[arg(
        long,
        env = "GANTRY_NATS_STREAM",
        default_value = gantry_runtime::config::DEFAULT_NATS_STREAM,
        global = true
    )]
    pub nats_stream: String,
    /// HTTP listen address; client commands talk to the server here.
    #[arg(long, env = "GANTRY_LISTEN", default_value = gantry_runtime::config::DEFAULT_LISTEN, global = true)]
    pub listen: SocketAddr,
    /// Directory of pipeline definitions.
    #[arg(
        long,
        env = "GANTRY_PIPELINES",
        default_value = gantry_runtime::config::DEFAULT_PIPELINES,
        global = true
    )]
    pub pipelines: PathBuf,
    /// Where embedded state (SQLite, packages) lives.
    #[arg(
        long,
        env = "GANTRY_DATA_DIR",
        default_value = gantry_runtime::config::DEFAULT_DATA_DIR,
        global = true
    )]
    pub data_dir: PathBuf,
    /// JetStream object store bucket of packages (distributed mode).
    #[arg(
        long,
        env = "GANTRY_PACKAGES_BUCKET",
        default_value = gantry_store::packages::DEFAULT_BUCKET,
        global = true
    )]
    pub packages_bucket: String,
    /// Size limit of the package bucket in bytes when Gantry creates it [default: unlimited].
    #[arg(long, env = "GANTRY_PACKAGES_MAX_BYTES", global = true)]
    pub packages_max_bytes: Option<u64>,
    /// YAML file of API tokens; when set, every /api call needs a bearer token.
    #[arg(long, env = "GANTRY_API_TOKENS", global = true)]
    pub api_tokens: Option<PathBuf>,
    /// Serve without API tokens on a non-loopback --listen address (`up`,
    /// `serve api|webhook`); without this they refuse to start there.
    #[arg(
        long,
        env = "GANTRY_ALLOW_ANONYMOUS",
        global = true,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub allow_anonymous: bool,
    /// `GANTRY_SECURE_COOKIES`: mark console session cookies `Secure`, for
    /// a Gantry reached over HTTPS (a TLS proxy in front). A request that
    /// arrives with `X-Forwarded-Proto: https` gets them anyway.
    #[arg(
        long,
        env = "GANTRY_SECURE_COOKIES",
        global = true,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub secure_cookies: bool,
    /// Where users reach the console, for links in CDEvents and
    /// notifications [default: http://<listen>].
    #[arg(long, env = "GANTRY_PUBLIC_URL", global = true)]
    pub public_url: Option<String>,
    /// Server URL for client commands [default: http://<listen>]. When given,
    /// client commands fail if it does not answer (no local fallback).
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
            nats_connection: NatsConnection {
                creds: self.nats_creds.clone(),
                nkey: self.nats_nkey.clone(),
                ca: self.nats_ca.clone(),
                cert: self.nats_cert.clone(),
                key: self.nats_key.clone(),
            },
            nats_limits: StreamLimits {
                replicas: usize::from(self.nats_replicas),
                max_age: self.nats_max_age,
                max_bytes: self.nats_max_bytes,
            },
            database_pool: self.database_pool,
            listen: self.listen,
            pipelines: self.pipelines.clone(),
            data_dir: self.data_dir.clone(),
            api_tokens: self.api_tokens.clone(),
            allow_anonymous: self.allow_anonymous,
            secure_cookies: self.secure_cookies,
            public_url: self.public_url.clone(),
            nats_replicas: usize::from(self.nats_replicas),
            packages_bucket: self.packages_bucket.clone(),
            packages_max_bytes: self.packages_max_bytes,
        }
    }
}

impl Global {
    /// `--database-url` and `--nats-url` may be `file:/path`: the URL (with
    /// its password) is read from that file, e.g. a mounted secret.
    pub fn resolve_file_refs(&mut self) -> anyhow::Result<()> {
        for (flag, value) in [
            ("GANTRY_DATABASE_URL", &mut self.database_url),
            ("GANTRY_NATS_URL", &mut self.nats_url),
        ] {
            let Some(path) = value
                .as_deref()
                .and_then(|v| v.trim().strip_prefix("file:"))
            else {
                continue;
            };
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("{flag}: cannot read {path}: {e}"))?;
            *value = Some(text.trim().to_owned());
        }
        Ok(())
    }
}

fn parse_max_age(s: &str) -> Result<std::time::Duration, String> {
    gantry_pipeline::parse_duration(s).map_err(|e| e.to_string())
}

fn parse_max_bytes(s: &str) -> Result<i64, String> {
    gantry_runtime::config::parse_size(s).map_err(|e| e.to_string())
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
    /// A whole promotion on this machine: writes a sample configuration
    /// repository, an OCI layout registry, a GitOps repository, a pipeline
    /// dev -> test -> prod and API tokens into DIR, serves it as `up` does
    /// and starts a run. Again on the same DIR: serves it again.
    Quickstart {
        /// Where [default: ./gantry-quickstart].
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Commit another change to the quickstart's configuration and
        /// trigger a run of it (the server started by `quickstart` runs it).
        #[arg(long)]
        commit: bool,
    },
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
    /// Figures from the log: `insights dora`.
    Insights {
        #[command(subcommand)]
        command: InsightsCommand,
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
    /// Stop the line: the stage starts no new promotion (runs wait for it
    /// and say why) until it is resumed; a promotion already in it goes on.
    Pause {
        pipeline: String,
        stage: String,
        /// Why, shown to everyone whose runs wait.
        #[arg(long)]
        reason: String,
    },
    /// Let a paused stage promote again.
    Resume {
        pipeline: String,
        stage: String,
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
    /// The log as a hash-chained file an auditor can verify: export,
    /// verify, import (disaster recovery).
    Audit {
        #[command(subcommand)]
        command: crate::audit::AuditCommand,
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
    /// The perf gate: drives load at the deployed gateway (DESIGN.md 1.10).
    Perf,
    /// Delivers the pipelines' `notify` targets (DESIGN.md 1.9).
    Notifier,
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
            Service::Perf => "perf",
            Service::Notifier => "notifier",
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

#[derive(Debug, Subcommand)]
pub enum InsightsCommand {
    /// DORA's four keys per pipeline and stage over the last --days:
    /// deployments and their frequency, lead time, change failure rate,
    /// time to restore (definitions in the README).
    Dora {
        #[arg(long)]
        pipeline: Option<String>,
        #[arg(long)]
        stage: Option<String>,
        #[arg(long, default_value_t = 30)]
        days: u32,
    },
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use gantry_runtime::Settings;

    use super::Cli;

    /// The flags' defaults are the embedded ones (`Settings::default()`),
    /// for every setting whose variable this environment leaves unset.
    #[test]
    fn flag_defaults_are_the_embedded_defaults() {
        let cli = Cli::try_parse_from(["gantry", "up"]).expect("parses");
        let (from_flags, embedded) = (cli.global.settings(), Settings::default());
        let unset = |var: &str| std::env::var_os(var).is_none();
        if unset("GANTRY_NATS_PREFIX") {
            assert_eq!(from_flags.nats_prefix, embedded.nats_prefix);
        }
        if unset("GANTRY_NATS_STREAM") {
            assert_eq!(from_flags.nats_stream, embedded.nats_stream);
        }
        if unset("GANTRY_LISTEN") {
            assert_eq!(from_flags.listen, embedded.listen);
        }
        if unset("GANTRY_PIPELINES") {
            assert_eq!(from_flags.pipelines, embedded.pipelines);
        }
        if unset("GANTRY_DATA_DIR") {
            assert_eq!(from_flags.data_dir, embedded.data_dir);
        }
        if unset("GANTRY_NATS_REPLICAS") {
            assert_eq!(from_flags.nats_replicas, embedded.nats_replicas);
        }
        if unset("GANTRY_PACKAGES_BUCKET") {
            assert_eq!(from_flags.packages_bucket, embedded.packages_bucket);
        }
    }
}
