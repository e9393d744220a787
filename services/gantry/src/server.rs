//! `gantry up` and `gantry serve <service>`.
//!
//! The HTTP listener is bound before anything else starts and handed to
//! [`run`]: either `--listen` / `GANTRY_LISTEN`, or a socket a supervisor
//! already bound and passed (systemd socket activation: `LISTEN_FDS=1`,
//! fd 3), which is also how tests give a `gantry` process a port-0
//! listener without a window in which another process could take the port.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use axum::Router;
use gantry_runtime::{App, Settings, WorkerContext};
use gantry_store::consumer::Handler;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::cli::Service;

/// How long in-flight work may take to finish after a shutdown signal.
const DRAIN: Duration = Duration::from_secs(20);

/// Everything in one process.
pub async fn up(settings: Settings) -> anyhow::Result<()> {
    up_then(settings, |_| async { Ok(()) }).await
}

/// What [`up_then`]'s follow-up gets: where the server listens, and the
/// router it serves (to send it requests in-process).
pub struct Started {
    pub addr: std::net::SocketAddr,
    pub router: Router,
}

/// [`up`], running `then` once the listener is bound and the app started
/// (`gantry quickstart` triggers its first run and prints where to look).
/// A failure of `then` is logged; the server keeps serving.
pub async fn up_then<F, Fut>(settings: Settings, then: F) -> anyhow::Result<()>
where
    F: FnOnce(Started) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let listener = listen(&settings, true).await?;
    let addr = listener.local_addr()?;
    let app = start(settings).await?;
    let http = http_router(&app)?;
    let (conductor, workers) = workers(&app);
    let follow_up = then(Started {
        addr,
        router: http.clone(),
    });
    tokio::spawn(async move {
        if let Err(e) = follow_up.await {
            tracing::error!(error = %format!("{e:#}"), "after start");
        }
    });
    run(app, listener, http, "up", workers, Some(conductor)).await
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
    let exposed = matches!(service, Service::Api | Service::Webhook);
    let listener = listen(&settings, exposed).await?;
    let app = start(settings).await?;
    let http = match service {
        Service::Webhook => gantry_webhook::router(app.clone()),
        Service::Api => api_router(&app)?,
        _ => Router::new(),
    };
    let (timers, workers) = worker(&app, service);
    let http = gantry_runtime::problem::finish(http.merge(app.health_routes()));
    run(app, listener, http, service.name(), workers, timers).await
}

/// What `gantry up` serves: webhooks, the API and console, health; every
/// error answer a problem.
pub fn http_router(app: &App) -> anyhow::Result<Router> {
    Ok(gantry_runtime::problem::finish(
        Router::new()
            .merge(gantry_webhook::router(app.clone()))
            .merge(api_router(app)?)
            .merge(app.health_routes()),
    ))
}

/// The API, with the diff and plan previews of envgen and apim, and the
/// console over the same state (its sessions are the API's).
pub fn api_router(app: &App) -> anyhow::Result<Router> {
    let previews = Arc::new(crate::previews::Previews::new(app));
    let api = gantry_api::Api::new(app.clone(), previews, gantry_runtime::auth::RELOAD_INTERVAL)
        .context("loading API tokens")?;
    // Pages and JSON compress about tenfold; the event stream is never
    // compressed (the layer leaves `text/event-stream` alone).
    Ok(gantry_api::routes(api.clone())
        .merge(gantry_console::router(api))
        .layer(tower_http::compression::CompressionLayer::new()))
}

/// Every worker, built the one way ([`WorkerContext`]); the conductor is
/// returned on its own too, for its timers.
fn workers(app: &App) -> (gantry_conductor::Conductor, Vec<Arc<dyn Handler>>) {
    let ctx = WorkerContext::of(app);
    let conductor = gantry_conductor::Conductor::new(&ctx);
    let workers = vec![
        Arc::new(conductor.clone()) as Arc<dyn Handler>,
        gantry_envgen::service::handler(&ctx),
        gantry_imagebuild::service::handler(&ctx),
        gantry_deployer::handler(&ctx),
        gantry_apim::handler(&ctx),
        gantry_smoke::handler(&ctx),
        gantry_perf::service::handler(&ctx),
    ];
    (conductor, workers)
}

/// The worker `gantry serve <service>` runs, if it is one; the conductor
/// is returned on its own too, for its timers (they share its state).
fn worker(
    app: &App,
    service: Service,
) -> (Option<gantry_conductor::Conductor>, Vec<Arc<dyn Handler>>) {
    let ctx = WorkerContext::of(app);
    let handler = match service {
        Service::Webhook | Service::Api | Service::Notifier => return (None, vec![]),
        Service::Conductor => {
            let conductor = gantry_conductor::Conductor::new(&ctx);
            return (Some(conductor.clone()), vec![Arc::new(conductor)]);
        }
        Service::Envgen => gantry_envgen::service::handler(&ctx),
        Service::Imagebuild => gantry_imagebuild::service::handler(&ctx),
        Service::Deployer => gantry_deployer::handler(&ctx),
        Service::Apim => gantry_apim::handler(&ctx),
        Service::Smoke => gantry_smoke::handler(&ctx),
        Service::Perf => gantry_perf::service::handler(&ctx),
    };
    (None, vec![handler])
}

async fn start(settings: Settings) -> anyhow::Result<App> {
    App::start(settings).await.map_err(anyhow::Error::from)
}

/// The listener to serve on: the one a supervisor passed, else
/// `settings.listen` bound now. With `exposed` (the API or webhooks are
/// served), an address other machines can reach needs API tokens or
/// `--allow-anonymous`, whichever way the socket came (DESIGN.md 1.7).
async fn listen(settings: &Settings, exposed: bool) -> anyhow::Result<TcpListener> {
    let check = |addr| {
        if exposed {
            gantry_runtime::config::check_exposure(
                addr,
                settings.api_tokens.is_some(),
                settings.allow_anonymous,
            )
        } else {
            Ok(())
        }
    };
    if let Some(inherited) = activation::take_listener()? {
        let addr = inherited
            .local_addr()
            .context("the socket passed in LISTEN_FDS has no TCP address")?;
        check(addr)?;
        return TcpListener::from_std(inherited)
            .context("cannot serve on the socket passed in LISTEN_FDS");
    }
    // Before binding: a refused address is never opened.
    check(settings.listen)?;
    let addr = settings.listen;
    TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr}; set --listen or GANTRY_LISTEN to a free address")
    })
}

/// Runs the background tasks and `workers`, and serves `http` on
/// `listener` (bound by the caller, so its port is known before anything
/// runs) until a shutdown signal; then drains.
async fn run(
    app: App,
    listener: TcpListener,
    http: Router,
    role: &str,
    workers: Vec<Arc<dyn Handler>>,
    conductor_timers: Option<gantry_conductor::Conductor>,
) -> anyhow::Result<()> {
    let shutdown = app.shutdown.clone();
    let signal = gantry_runtime::shutdown::on_signal();
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
    if matches!(role, "up" | "notifier") {
        let notifier = gantry_notifier::Notifier::new(&app);
        // Before the first request is served: nothing recorded after this
        // start goes unannounced.
        notifier
            .prepare()
            .await
            .context("reading the notifier's checkpoint")?;
        tasks.spawn(notifier.run(shutdown.child_token()));
    }
    if let Some(c) = conductor_timers {
        tasks.spawn(c.run_timers(shutdown.child_token()));
    }

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

/// Sockets passed by a supervisor, as systemd does it (`sd_listen_fds(3)`):
/// `LISTEN_FDS` says how many, starting at fd 3; `LISTEN_PID`, when set,
/// names the process they are meant for.
mod activation {
    /// The one listening TCP socket passed to this process, if any.
    #[cfg(unix)]
    pub fn take_listener() -> anyhow::Result<Option<std::net::TcpListener>> {
        use std::os::fd::{FromRawFd, RawFd};

        use anyhow::{bail, Context};

        const FIRST: RawFd = 3;
        let Ok(count) = std::env::var("LISTEN_FDS") else {
            return Ok(None);
        };
        if let Ok(pid) = std::env::var("LISTEN_PID") {
            if pid.trim() != std::process::id().to_string() {
                return Ok(None); // passed to the process that started us
            }
        }
        let count: u32 = count
            .trim()
            .parse()
            .with_context(|| format!("LISTEN_FDS={count:?} is not a number of sockets"))?;
        match count {
            0 => return Ok(None),
            1 => {}
            n => bail!("LISTEN_FDS={n}: gantry serves one socket; pass exactly one"),
        }
        // Take fd 3 only once the kernel says it is a listening socket: if
        // LISTEN_FDS is set by mistake, fd 3 may be something of our own.
        let mut listening: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `listening`.
        let rc = unsafe {
            libc::getsockopt(
                FIRST,
                libc::SOL_SOCKET,
                libc::SO_ACCEPTCONN,
                (&mut listening as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if rc != 0 || listening == 0 {
            bail!(
                "LISTEN_FDS=1, but fd {FIRST} is not a listening socket ({}); \
                 unset LISTEN_FDS to listen on --listen / GANTRY_LISTEN",
                if rc != 0 {
                    std::io::Error::last_os_error().to_string()
                } else {
                    "not listening".to_owned()
                }
            );
        }
        // Commands gantry runs (deploys) must not inherit the socket.
        // SAFETY: fcntl on an fd just checked to be open.
        if unsafe { libc::fcntl(FIRST, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error())
                .context("cannot mark the socket passed in LISTEN_FDS close-on-exec");
        }
        // SAFETY: fd 3 is an open listening socket passed to this process
        // for it to serve, and nothing else here owns it.
        let listener = unsafe { std::net::TcpListener::from_raw_fd(FIRST) };
        listener
            .set_nonblocking(true)
            .context("cannot make the socket passed in LISTEN_FDS non-blocking")?;
        Ok(Some(listener))
    }

    #[cfg(not(unix))]
    pub fn take_listener() -> anyhow::Result<Option<std::net::TcpListener>> {
        if std::env::var_os("LISTEN_FDS").is_some() {
            anyhow::bail!("LISTEN_FDS (socket activation) is supported on Unix only");
        }
        Ok(None)
    }
}
