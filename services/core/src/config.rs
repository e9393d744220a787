//! Settings shared by every command (DESIGN.md 1.4, 1.6).
//!
//! Layering: command-line flags over `GANTRY_*` environment variables over
//! the embedded defaults here; the binary's clap definitions do the first two.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::bus::NatsSettings;

/// Default HTTP listen address (`GANTRY_LISTEN`).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

#[derive(Debug, Clone)]
pub struct Settings {
    /// `GANTRY_DATABASE_URL`; SQLite under the data dir when unset.
    pub database_url: Option<String>,
    /// `GANTRY_NATS_URL`; in-process delivery when unset.
    pub nats_url: Option<String>,
    pub nats_prefix: String,
    pub nats_stream: String,
    pub listen: SocketAddr,
    pub pipelines: PathBuf,
    pub data_dir: PathBuf,
    /// `GANTRY_API_TOKENS`: YAML file of hashed API tokens.
    pub api_tokens: Option<PathBuf>,
    /// `GANTRY_NATS_REPLICAS`: replicas of the JetStream storage Gantry
    /// creates (the package bucket).
    pub nats_replicas: usize,
    /// `GANTRY_PACKAGES_BUCKET`: the object store bucket of packages in
    /// distributed mode.
    pub packages_bucket: String,
    /// `GANTRY_PACKAGES_MAX_BYTES`: the bucket's size limit when it is created.
    pub packages_max_bytes: Option<u64>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            database_url: None,
            nats_url: None,
            nats_prefix: "gantry".into(),
            nats_stream: "GANTRY_EVENTS".into(),
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            pipelines: PathBuf::from("pipelines"),
            data_dir: PathBuf::from(".gantry"),
            api_tokens: None,
            nats_replicas: 1,
            packages_bucket: crate::packages::DEFAULT_BUCKET.into(),
            packages_max_bytes: None,
        }
    }
}

impl Settings {
    /// The database to use: the configured URL, or `sqlite://<data dir>/gantry.db`.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) if !url.trim().is_empty() => url.clone(),
            _ => format!("sqlite://{}", self.data_dir.join("gantry.db").display()),
        }
    }

    /// The package bucket's settings (used in distributed mode).
    pub fn package_bucket(&self) -> crate::packages::BucketSettings {
        crate::packages::BucketSettings {
            bucket: self.packages_bucket.clone(),
            replicas: self.nats_replicas.max(1),
            max_bytes: self.packages_max_bytes.filter(|b| *b > 0),
        }
    }

    pub fn nats(&self) -> Option<NatsSettings> {
        let url = self.nats_url.as_ref().filter(|u| !u.trim().is_empty())?;
        Some(NatsSettings {
            url: url.clone(),
            prefix: self.nats_prefix.clone(),
            stream: self.nats_stream.clone(),
        })
    }
}
