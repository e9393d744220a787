//! The service harness: what every Gantry process shares (store, bus,
//! pipelines, projections), its background tasks, and its health routes.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::problem::Problem;
use gantry_pipeline::{PipelineErrors, PipelineSet};
use gantry_store::bus::{EventBus, NatsBus, SqlBus};
use gantry_store::consumer::{self, Handler};
use gantry_store::packages::{PackageStore, PackageStoreError};
use gantry_store::projection::Projections;
use gantry_store::relay::Relay;
use gantry_store::store::{redact_url, EventStore};

/// The pipelines in force; replaced whole on reload.
#[derive(Debug, Clone, Default)]
pub struct Pipelines {
    current: Arc<RwLock<Arc<PipelineSet>>>,
}

impl Pipelines {
    /// The pipelines in force. Their secrets become the process's masked
    /// secrets ([`gantry_pipeline::mask::register`]).
    pub fn new(set: PipelineSet) -> Self {
        gantry_pipeline::mask::register(gantry_pipeline::mask::Masker::for_pipelines(&set));
        Self {
            current: Arc::new(RwLock::new(Arc::new(set))),
        }
    }

    /// A consistent snapshot.
    pub fn get(&self) -> Arc<PipelineSet> {
        self.current
            .read()
            .map(|g| g.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Loads `dir` again. Valid files replace the set; invalid ones are
    /// reported and left out, so one bad edit does not stop the others.
    pub fn reload(&self, dir: &std::path::Path) -> PipelineErrors {
        let (set, errors) = gantry_pipeline::load_dir_partial(dir);
        for e in errors.iter() {
            tracing::error!(error = %e, "pipeline rejected");
        }
        tracing::info!(pipelines = set.len(), dir = %dir.display(), "pipelines loaded");
        gantry_pipeline::mask::register(gantry_pipeline::mask::Masker::for_pipelines(&set));
        match self.current.write() {
            Ok(mut g) => *g = Arc::new(set),
            Err(p) => *p.into_inner() = Arc::new(set),
        }
        errors
    }
}

/// Everything a Gantry process works with.
#[derive(Clone)]
pub struct App {
    pub settings: Arc<Settings>,
    pub store: EventStore,
    pub bus: Arc<dyn EventBus>,
    pub nats: Option<NatsBus>,
    pub pipelines: Pipelines,
    pub projections: Projections,
    /// Where packages live: the data dir (embedded) or the NATS object
    /// store (distributed); one per process, shared by every service in it.
    pub packages: PackageStore,
    /// Cancelled when the process shuts down; long-lived responses (SSE) end on it.
    pub shutdown: CancellationToken,
    /// Whether this process folds the projections (the API's): only it
    /// exports the series read from them (DORA) on `/metrics`.
    folds: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("store", &self.store)
            .field("bus", &self.bus.kind())
            .field("packages", &self.packages)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot open the event store at {url}: {source}")]
    Store {
        url: String,
        source: gantry_store::StoreError,
    },
    #[error("cannot connect to NATS at {url}: {source}")]
    Nats {
        url: String,
        source: gantry_store::bus::BusError,
    },
    #[error("cannot open the package store: {0}")]
    Packages(#[from] PackageStoreError),
}

impl App {
    /// Opens the store (migrating it), connects to NATS when configured, and
    /// loads the pipelines.
    pub async fn start(settings: Settings) -> Result<Self, StartError> {
        settings.register_secrets();
        let url = settings.database_url();
        if settings.database_url.is_none() {
            std::fs::create_dir_all(&settings.data_dir).map_err(|source| StartError::DataDir {
                path: settings.data_dir.display().to_string(),
                source,
            })?;
        }
        let store_err = |source| StartError::Store {
            url: redact_url(&url),
            source,
        };
        let store = EventStore::connect_with_pool(&url, settings.database_pool)
            .await
            .map_err(store_err)?;
        store.migrate().await.map_err(store_err)?;
        let (bus, nats): (Arc<dyn EventBus>, _) = match settings.nats() {
            Some(ns) => {
                let url = redact_url(&ns.url);
                let nats = NatsBus::connect(ns)
                    .await
                    .map_err(|source| StartError::Nats { url, source })?;
                (Arc::new(nats.clone()), Some(nats))
            }
            None => (Arc::new(SqlBus::new(store.clone())), None),
        };
        // Distributed services share no disk: packages go where every
        // process reaches them, the NATS they already need.
        let packages = match &nats {
            Some(nats) => PackageStore::nats(nats.jetstream(), &settings.package_bucket()).await?,
            None => PackageStore::local(&settings.data_dir),
        };
        let pipelines = Pipelines::default();
        pipelines.reload(&settings.pipelines);
        Ok(Self {
            projections: Projections::new(store.clone()),
            settings: Arc::new(settings),
            store,
            bus,
            nats,
            pipelines,
            packages,
            shutdown: CancellationToken::new(),
            folds: Arc::default(),
        })
    }

    /// Starts what every process runs in the background: the relay
    /// candidates (with NATS: the events, and their CDEvents) and pipeline
    /// reload on SIGHUP.
    pub fn spawn_background(&self, tasks: &mut JoinSet<()>, shutdown: &CancellationToken) {
        if let Some(nats) = &self.nats {
            let relay = Relay::new(self.store.clone(), nats.clone());
            tasks.spawn(relay.run(shutdown.child_token()));
            // The CDEvents have their own relay: their mapping never slows
            // Gantry's events.
            let cdevents = Relay::cdevents(
                self.store.clone(),
                nats.clone(),
                &self.settings.public_url(),
            );
            tasks.spawn(cdevents.run(shutdown.child_token()));
        }
        #[cfg(unix)]
        {
            let pipelines = self.pipelines.clone();
            let dir = self.settings.pipelines.clone();
            let token = shutdown.child_token();
            tasks.spawn(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let Ok(mut hup) = signal(SignalKind::hangup()) else {
                    return;
                };
                loop {
                    tokio::select! {
                        _ = token.cancelled() => return,
                        _ = hup.recv() => { pipelines.reload(&dir); }
                    }
                }
            });
        }
    }

    /// Keeps the projections folded as events arrive, so reads find them
    /// ready. Only processes that read them run it (the API's): every read
    /// catches up first anyway, and an ingress process (webhooks) then
    /// spends its time on appends alone.
    pub fn spawn_projector(&self, tasks: &mut JoinSet<()>, shutdown: &CancellationToken) {
        self.folds.store(true, std::sync::atomic::Ordering::Relaxed);
        let projections = self.projections.clone();
        let token = shutdown.child_token();
        tasks.spawn(async move { projections.run(token).await });
    }

    /// Runs `handler` as a consumer until shutdown, restarting it after bus errors.
    pub fn spawn_consumer(
        &self,
        tasks: &mut JoinSet<()>,
        shutdown: &CancellationToken,
        handler: Arc<dyn Handler>,
    ) {
        let store = self.store.clone();
        let bus = self.bus.clone();
        let token = shutdown.child_token();
        let handler: Arc<dyn Handler> = Arc::new(crate::metrics::Timed(handler));
        tasks.spawn(async move {
            while !token.is_cancelled() {
                match consumer::run(store.clone(), bus.clone(), handler.clone(), token.clone()).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(handler = handler.name(), error = %e, "consumer failed; restarting");
                        tokio::select! {
                            _ = token.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                }
            }
        });
    }

    /// `/healthz`, `/readyz` and `/metrics`.
    pub fn health_routes(&self) -> Router {
        Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .with_state(self.clone())
    }
}

async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Ready when the database answers and the bus can deliver.
async fn readyz(State(app): State<App>) -> Result<Json<serde_json::Value>, Problem> {
    let limit = Duration::from_secs(2);
    let db = match tokio::time::timeout(limit, app.store.ping()).await {
        Ok(Ok(())) => "ok".to_owned(),
        Ok(Err(e)) => format!("error: {e}"),
        Err(_) => "timeout".to_owned(),
    };
    let bus = match tokio::time::timeout(limit, app.bus.ready()).await {
        Ok(Ok(())) => "ok".to_owned(),
        Ok(Err(e)) => format!("error: {e}"),
        Err(_) => "timeout".to_owned(),
    };
    if db == "ok" && bus == "ok" {
        Ok(Json(serde_json::json!({
            "status": "ready",
            "database": db,
            "bus": app.bus.kind(),
        })))
    } else {
        Err(Problem::unavailable("not ready")
            .with("database", db)
            .with("bus", bus))
    }
}

/// `gantry_notify_*` series of one notification target.
fn notify_series(t: &gantry_store::notify::TargetStatus) {
    use crate::metrics::set;
    let labels = [
        ("pipeline", t.pipeline.as_str()),
        ("target", t.target.as_str()),
        ("host", t.host.as_str()),
    ];
    set("gantry_notify_pending", &labels, t.pending as f64);
    set("gantry_notify_delivered_total", &labels, t.delivered as f64);
    set(
        "gantry_notify_failed_attempts_total",
        &labels,
        t.failed_attempts as f64,
    );
    set("gantry_notify_given_up_total", &labels, t.given_up as f64);
}

/// The window of the `gantry_dora_*` series (DESIGN.md 1.9's default).
const DORA_DAYS: u32 = 30;

/// `gantry_dora_*` gauges of one stage over the last [`DORA_DAYS`] days.
fn dora_series(k: &gantry_store::dora::Dora) {
    use crate::metrics::set;
    let labels = [
        ("pipeline", k.pipeline.as_str()),
        ("stage", k.stage.as_str()),
    ];
    set("gantry_dora_deployments", &labels, k.deployments as f64);
    set(
        "gantry_dora_deployment_frequency_per_day",
        &labels,
        k.deployment_frequency_per_day,
    );
    set(
        "gantry_dora_change_failure_rate",
        &labels,
        k.change_failure_rate,
    );
    set(
        "gantry_dora_failed_changes",
        &labels,
        k.failed_changes as f64,
    );
    for (name, q) in [
        ("gantry_dora_lead_time_seconds", k.lead_time_seconds),
        (
            "gantry_dora_time_to_restore_seconds",
            k.time_to_restore_seconds,
        ),
    ] {
        // NaN without observations, as Prometheus summaries have it: the
        // series exists (dashboards find it) and says "no value".
        for (quantile, value) in [("0.5", q.p50), ("0.9", q.p90)] {
            let labels = [labels[0], labels[1], ("quantile", quantile)];
            set(name, &labels, value.map_or(f64::NAN, |v| v as f64));
        }
    }
}

async fn metrics(State(app): State<App>) -> impl IntoResponse {
    if let Ok(head) = app.store.head().await {
        crate::metrics::set("gantry_log_head_position", &[], head as f64);
        // Bus lag: how far each reader of the log is behind its head.
        if let Ok(readers) = app.store.checkpoints().await {
            for (reader, position) in readers {
                let lag = (head - position).max(0) as f64;
                crate::metrics::set("gantry_reader_lag_events", &[("reader", &reader)], lag);
            }
        }
    }
    // The notifier's record is in the database: every process shows it,
    // whichever one delivers.
    if let Ok(targets) = app.store.notify_status().await {
        for t in &targets {
            notify_series(t);
        }
    }
    if app.folds.load(std::sync::atomic::Ordering::Relaxed) {
        // Exact at every scrape: a few indexed queries over the projection.
        match app
            .projections
            .dora(None, None, DORA_DAYS, chrono::Utc::now())
            .await
        {
            Ok(keys) => keys.iter().for_each(dora_series),
            Err(e) => tracing::warn!(error = %e, "DORA keys for /metrics"),
        }
        match app.projections.run_counts().await {
            Ok(counts) => {
                for (pipeline, status, n) in counts {
                    crate::metrics::set(
                        "gantry_runs",
                        &[("pipeline", &pipeline), ("status", &status)],
                        n as f64,
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "run counts for /metrics"),
        }
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        crate::metrics::render(),
    )
}
