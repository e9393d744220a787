//! `gantry up` and `gantry serve <service>`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use axum::Router;
use gantry_core::consumer::Handler;
use gantry_core::{App, Settings};
use tokio::task::JoinSet;

use crate::cli::Service;

/// How long in-flight work may take to finish after a shutdown signal.
const DRAIN: Duration = Duration::from_secs(20);

/// Everything in one process.
pub async fn up(settings: Settings) -> anyhow::Result<()> {
    settings.check_exposure()?;
    let app = start(settings).await?;
    let http = http_router(&app)?;
    let conductor = conductor(&app);
    let workers = vec![
        Arc::new(conductor.clone()) as Arc<dyn Handler>,
        envgen(&app),
        imagebuild(&app),
        deployer(&app),
        apim(&app),
        smoke(&app),
    ];
    run(app, http, "up", workers, Some(conductor)).await
}

/// One microservice, over Postgres and NATS.
pub async fn serve(settings: Settings, service: Service) -> anyhow::Result<()> {
    if settings.database_url.is_none() || settings.nats_url.is_none() {
        bail!(
            "`gantry serve` runs one service of a distributed installation and needs both \
             GANTRY_DATABASE_URL (postgres://...) and GANTRY_NATS_URL (nats://...); \
             use `gantry up` to run everything in one process"
        );
    }
    if matches!(service, Service::Api | Service::Webhook) {
        settings.check_exposure()?;
    }
    let app = start(settings).await?;
    let mut timers = None;
    let (http, workers) = match service {
        Service::Webhook => (gantry_webhook::router(app.clone()), vec![]),
        Service::Api => (
            gantry_api::router(app.clone()).context("loading API tokens")?,
            vec![],
        ),
        Service::Conductor => {
            let c = conductor(&app);
            timers = Some(c.clone());
            (Router::new(), vec![Arc::new(c) as Arc<dyn Handler>])
        }
        Service::Envgen => (Router::new(), vec![envgen(&app)]),
        Service::Imagebuild => (Router::new(), vec![imagebuild(&app)]),
        Service::Smoke => (Router::new(), vec![smoke(&app)]),
        Service::Deployer => (Router::new(), vec![deployer(&app)]),
        Service::Apim => (Router::new(), vec![apim(&app)]),
    };
    let http = gantry_core::problem::finish(http.merge(app.health_routes()));
    run(app, http, service.name(), workers, timers).await
}

/// What `gantry up` serves: webhooks, the API and console, health; every
/// error answer a problem.
pub fn http_router(app: &App) -> anyhow::Result<Router> {
    Ok(gantry_core::problem::finish(
        Router::new()
            .merge(gantry_webhook::router(app.clone()))
            .merge(gantry_api::router(app.clone()).context("loading API tokens")?)
            .merge(app.health_routes()),
    ))
}

/// The environmentalization worker: `run.started` → packages.
fn envgen(app: &App) -> Arc<dyn Handler> {
    gantry_envgen::service::handler(
        app.pipelines.clone(),
        &app.settings.data_dir,
        app.packages.clone(),
    )
}

/// The conductor: decisions from the pipeline's history.
fn conductor(app: &App) -> gantry_conductor::Conductor {
    gantry_conductor::Conductor::new(app.store.clone(), app.pipelines.clone())
}

/// The deploy worker: gitops or command, then readiness.
fn deployer(app: &App) -> Arc<dyn Handler> {
    gantry_deployer::handler(app.pipelines.clone(), &app.settings.data_dir)
}

/// The API Manager worker: APIs, organizations, applications per stage.
fn apim(app: &App) -> Arc<dyn Handler> {
    gantry_apim::handler(
        app.store.clone(),
        app.pipelines.clone(),
        &app.settings.data_dir,
    )
}

/// The smoke worker: checks against the deployed gateway.
fn smoke(app: &App) -> Arc<dyn Handler> {
    gantry_smoke::handler(app.store.clone(), app.pipelines.clone())
}

/// The image worker: `package.built` → images.
fn imagebuild(app: &App) -> Arc<dyn Handler> {
    gantry_imagebuild::service::handler(app.pipelines.clone(), app.packages.clone())
}

async fn start(settings: Settings) -> anyhow::Result<App> {
    App::start(settings).await.map_err(anyhow::Error::from)
}

async fn run(
    app: App,
    http: Router,
    role: &str,
    workers: Vec<Arc<dyn Handler>>,
    conductor_timers: Option<gantry_conductor::Conductor>,
) -> anyhow::Result<()> {
    let shutdown = app.shutdown.clone();
    let signal = gantry_core::shutdown::on_signal();
    let linked = shutdown.clone();
    tokio::spawn(async move {
        signal.cancelled().await;
        linked.cancel();
    });
    let mut tasks = JoinSet::new();
    app.spawn_background(&mut tasks, &shutdown);
    // Projections are read by the API only (`up`, `serve api`).
    if matches!(role, "up" | "api") {
        app.spawn_projector(&mut tasks, &shutdown);
    }
    for worker in workers {
        app.spawn_consumer(&mut tasks, &shutdown, worker);
    }
    if let Some(c) = conductor_timers {
        tasks.spawn(c.run_timers(shutdown.child_token()));
    }

    let addr = app.settings.listen;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr}; set --listen or GANTRY_LISTEN to a free address")
    })?;
    let local = listener.local_addr()?;
    tracing::info!(
        role,
        listen = %local,
        bus = app.bus.kind(),
        store = ?app.store.backend(),
        pipelines = app.pipelines.get().len(),
        "gantry is up at http://{local}"
    );
    let token = shutdown.clone();
    axum::serve(listener, http)
        .with_graceful_shutdown(async move { token.cancelled().await })
        .await
        .context("HTTP server failed")?;

    shutdown.cancel();
    let drained =
        tokio::time::timeout(DRAIN, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!("background work did not finish within {DRAIN:?}; stopping it");
        tasks.abort_all();
    }
    tracing::info!("stopped");
    Ok(())
}
