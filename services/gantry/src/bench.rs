//! `gantry bench`: the measurements behind BENCHMARKS.md, run against real
//! components (SQLite in a temp dir, or the Postgres and NATS named by
//! `--database-url` / `--nats-url`). Each prints one JSON line of results.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Subcommand, ValueEnum};
use gantry_proto::events::RunCancelled;
use gantry_proto::{CloudEvent, EventName};
use gantry_runtime::{App, Settings};
use gantry_store::bus::{EventBus, NatsBus, SqlBus};
use gantry_store::relay::Relay;
use gantry_store::{EventStore, ExpectedVersion, NewEvents};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::cli::Global;

mod webhooks;
use webhooks::{webhooks, Load};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Append→delivered latency of single events, one at a time.
    Hop {
        #[arg(long, value_enum, default_value_t = Mode::Embedded)]
        mode: Mode,
        #[arg(long, default_value_t = 2000)]
        events: usize,
    },
    /// Sustained events/s through append → relay → NATS consumer.
    Throughput {
        #[arg(long, default_value_t = 50_000)]
        events: usize,
        /// Concurrent appenders.
        #[arg(long, default_value_t = 4)]
        writers: usize,
        /// Events per append (one transaction).
        #[arg(long, default_value_t = 10)]
        batch: usize,
        /// Events written straight into the log (Postgres) before measuring,
        /// to show appends cost the same into a long log.
        #[arg(long, default_value_t = 0)]
        preload: u64,
        /// Also run the CDEvents relay, as every installation with NATS
        /// does: it competes for the same CPU (BENCHMARKS.md has both).
        #[arg(long)]
        cdevents: bool,
    },
    /// Orchestration overhead: commit received → first stage promoted with
    /// zero-work workers, then many concurrent runs across pipelines.
    Orchestration {
        /// Sequential runs for the overhead figure.
        #[arg(long, default_value_t = 50)]
        runs: usize,
        /// Concurrent runs for the drain phase.
        #[arg(long, default_value_t = 100)]
        concurrent: usize,
        /// Pipelines the concurrent runs are spread over.
        #[arg(long = "pipeline-count", default_value_t = 10)]
        pipeline_count: usize,
    },
    /// Package write and read throughput through the package store: the NATS
    /// object store with --nats-url (a fresh bucket, removed afterwards),
    /// else the local directory store in a temp dir.
    Packages {
        /// Package size in MB (10^6 bytes).
        #[arg(long, default_value_t = 10)]
        size_mb: usize,
        /// Packages written and read.
        #[arg(long, default_value_t = 20)]
        rounds: usize,
    },
    /// `gantry audit export` and `verify` of a long log (Postgres; the log is
    /// preloaded to --events first when it holds fewer).
    Audit {
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
    },
    /// DORA's keys read from the projection holding --runs deployments
    /// (seeded straight into it, 5% failed changes) over 10 pipelines x 5
    /// stages and 60 days: the time to answer the API's query.
    Dora {
        #[arg(long, default_value_t = 100_000)]
        runs: usize,
    },
    /// Verified webhooks/s and latency: distinct signed GitHub pushes of
    /// distinct commits over open keep-alive connections (like `wrk`), then
    /// a check that every accepted webhook made exactly one run.
    Webhooks {
        /// Requests to send (ignored with --duration).
        #[arg(long, default_value_t = 10_000)]
        requests: usize,
        /// Open connections, each sending its next request when the last
        /// one is answered.
        #[arg(long, alias = "connections", default_value_t = 16)]
        concurrency: usize,
        /// Send for this long instead of a number of requests (e.g. 5s).
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
        /// Serve from this many separate `gantry serve webhook` processes
        /// (started from this binary with the same --database-url and
        /// --nats-url), the connections spread over them as a Kubernetes
        /// Service spreads connections; 0 serves in this process.
        #[arg(long, default_value_t = 0)]
        replicas: usize,
        /// Then measure Postgres's own commit rate with `pgbench` (one-row
        /// inserts, as many clients as connections, as long as the load ran)
        /// and report the ratio.
        #[arg(long)]
        pgbench: bool,
    },
    /// The perf gate's load generator against `wrk`: requests/s of each,
    /// one after the other, against the same minimal HTTP server (200 `ok`)
    /// on threads of its own in this process, and their ratio.
    Loadgen {
        /// Open keep-alive connections of each generator.
        #[arg(long, default_value_t = 20)]
        connections: usize,
        /// How long each generator measures (after Gantry's warm-up).
        #[arg(long, value_parser = parse_duration, default_value = "10s")]
        duration: Duration,
        /// Then the open loop at this many requests/s (latency from when
        /// each request was due).
        #[arg(long)]
        rate: Option<f64>,
        /// Threads of the server.
        #[arg(long, default_value_t = 2)]
        server_threads: usize,
        /// Gantry then wrk, this many times; the medians are compared.
        #[arg(long, default_value_t = 1)]
        rounds: usize,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    gantry_pipeline::parse_duration(s).map_err(|e| e.to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// SQLite, consumers tailing the log in-process.
    Embedded,
    /// Postgres + NATS (needs --database-url and --nats-url).
    Nats,
}

pub async fn run(command: BenchCommand, global: &Global) -> anyhow::Result<()> {
    match command {
        BenchCommand::Hop { mode, events } => hop(global, mode, events).await,
        BenchCommand::Throughput {
            events,
            writers,
            batch,
            preload,
            cdevents,
        } => {
            if preload > 0 {
                preload_log(global, preload).await?;
            }
            throughput(global, events, writers, batch, cdevents).await
        }
        BenchCommand::Audit { events } => audit(global, events).await,
        BenchCommand::Dora { runs } => dora(global, runs).await,
        BenchCommand::Webhooks {
            requests,
            concurrency,
            duration,
            replicas,
            pgbench,
        } => {
            let load = Load {
                requests,
                connections: concurrency,
                duration,
            };
            webhooks(global, load, replicas, pgbench).await
        }
        BenchCommand::Packages { size_mb, rounds } => packages(global, size_mb, rounds).await,
        BenchCommand::Loadgen {
            connections,
            duration,
            rate,
            server_threads,
            rounds,
        } => loadgen(connections, duration, rate, server_threads, rounds).await,
        BenchCommand::Orchestration {
            runs,
            concurrent,
            pipeline_count,
        } => orchestration(global, runs, concurrent, pipeline_count).await,
    }
}

fn event(i: usize) -> CloudEvent {
    CloudEvent::new(
        "bench",
        "bench",
        Some("bench-run"),
        &RunCancelled {
            user: "bench".into(),
            reason: Some(i.to_string()),
        },
    )
}

/// p50, p99 and max of microsecond samples.
fn percentiles(mut samples: Vec<u64>) -> serde_json::Value {
    samples.sort_unstable();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples.get(i).copied().unwrap_or_default() as f64 / 1000.0
    };
    json!({ "samples": samples.len(), "p50_ms": at(0.50), "p99_ms": at(0.99), "max_ms": at(1.0) })
}

struct Setup {
    store: EventStore,
    bus: Arc<dyn EventBus>,
    shutdown: CancellationToken,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A fresh store and bus for one measurement: SQLite in a temp dir, or the
/// configured Postgres and NATS with a unique stream so runs never mix.
async fn setup(global: &Global, mode: Mode, cdevents: bool) -> anyhow::Result<Setup> {
    let shutdown = CancellationToken::new();
    match mode {
        Mode::Embedded => {
            let dir = tempfile::tempdir()?;
            let store = EventStore::connect(&format!(
                "sqlite://{}",
                dir.path().join("bench.db").display()
            ))
            .await?;
            store.migrate().await?;
            Ok(Setup {
                bus: Arc::new(SqlBus::new(store.clone())),
                store,
                shutdown,
                _dir: Some(dir),
            })
        }
        Mode::Nats => {
            let settings = global.settings();
            let (Some(db), Some(mut nats)) = (settings.database_url.clone(), settings.nats())
            else {
                bail!("--mode nats needs --database-url postgres://... and --nats-url nats://...");
            };
            let store = EventStore::connect(&db).await?;
            store.migrate().await?;
            let tag = uuid::Uuid::new_v4().simple().to_string();
            nats.prefix = format!("bench{}", &tag[..8]);
            nats.stream = format!("BENCH_{}", &tag[..8]).to_uppercase();
            let bus = NatsBus::connect(nats).await?;
            // Start publishing from the current head: earlier events are not
            // ours. With `cdevents`, the CDEvents relay runs too, as in every
            // installation with NATS (run.cancelled is one CDEvent).
            let head = store.head().await?;
            store.save_checkpoint(&relay_checkpoint(&bus), head).await?;
            let relay = Relay::new(store.clone(), bus.clone());
            tokio::spawn(relay.run(shutdown.child_token()));
            if cdevents {
                let s = bus.settings();
                let checkpoint = format!("relay-cdevents:{}:{}", s.stream, s.prefix);
                store.save_checkpoint(&checkpoint, head).await?;
                let relay = Relay::cdevents(store.clone(), bus.clone(), "http://127.0.0.1:8080");
                tokio::spawn(relay.run(shutdown.child_token()));
            }
            Ok(Setup {
                bus: Arc::new(bus),
                store,
                shutdown,
                _dir: None,
            })
        }
    }
}

/// Writes `rounds` distinct packages of `size_mb` MB (incompressible
/// bytes, like a gzipped archive), reads each back (verified against its
/// digest), and puts one again (the idempotent no-op).
async fn packages(global: &Global, size_mb: usize, rounds: usize) -> anyhow::Result<()> {
    use gantry_store::packages::{BucketSettings, PackageStore};
    let size = size_mb * 1_000_000;
    let settings = global.settings();
    let dir = tempfile::tempdir()?;
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let bucket = format!("BENCH_PACKAGES_{}", &tag[..8]).to_uppercase();
    let (store, js) = match settings.nats() {
        Some(nats) => {
            let client = async_nats::connect(&nats.url).await?;
            let js = async_nats::jetstream::new(client);
            let store = PackageStore::nats(
                &js,
                &BucketSettings {
                    bucket: bucket.clone(),
                    ..BucketSettings::default()
                },
            )
            .await?;
            (store, Some(js))
        }
        None => (PackageStore::local(dir.path()), None),
    };
    // xorshift: fast, incompressible enough, different per round.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut package = vec![0u8; size];
    let (mut writes, mut reads, mut digests) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        for chunk in package.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = chunk.len();
            chunk.copy_from_slice(&x.to_le_bytes()[..n]);
        }
        let t0 = Instant::now();
        let stored = store.put(&package).await?;
        writes.push(t0.elapsed().as_micros() as u64);
        digests.push(stored.digest);
    }
    for digest in &digests {
        let t0 = Instant::now();
        let bytes = store.get(digest).await?;
        reads.push(t0.elapsed().as_micros() as u64);
        anyhow::ensure!(bytes.len() == size, "read {} bytes of {size}", bytes.len());
    }
    let t0 = Instant::now();
    store.put(&package).await?;
    let again_ms = t0.elapsed().as_secs_f64() * 1000.0;
    if let Some(js) = js {
        js.delete_object_store(&bucket).await?;
    }
    let mb_per_s = |samples: &[u64]| {
        let mut s = samples.to_vec();
        s.sort_unstable();
        let median = s.get(s.len() / 2).copied().unwrap_or(1).max(1) as f64 / 1e6;
        (size as f64 / 1e6) / median
    };
    println!(
        "{}",
        json!({
            "bench": "packages",
            "store": store.kind(),
            "package_mb": size_mb,
            "rounds": rounds,
            "write": { "mb_per_s_median": mb_per_s(&writes), "latency": percentiles(writes) },
            "read_verified": { "mb_per_s_median": mb_per_s(&reads), "latency": percentiles(reads) },
            "idempotent_put_ms": again_ms,
        })
    );
    Ok(())
}

/// The load generator's ceiling: its requests/s next to `wrk`'s against one
/// server that does as little as a server can, so the figures are the
/// generators' own.
async fn loadgen(
    connections: usize,
    duration: Duration,
    rate: Option<f64>,
    server_threads: usize,
    rounds: usize,
) -> anyhow::Result<()> {
    use gantry_perf::{run_load, LoadReport, LoadRequest, LoadSpec};
    let ratio = |a: f64, b: f64| (a / b * 1000.0).round() / 1000.0;
    let server = OkServer::start(server_threads)?;
    let url = url::Url::parse(&format!("http://{}/", server.addr))?;
    let spec = LoadSpec {
        warmup: Duration::from_secs(1),
        ..LoadSpec::closed(LoadRequest::get(url.clone()), duration, connections)
    };
    let figures = |r: &LoadReport| {
        json!({
            "requests_per_s": (r.requests as f64 / r.duration.as_secs_f64()).round(),
            "requests": r.requests,
            "errors": r.errors,
            "p50_ms": r.p50.as_secs_f64() * 1e3,
            "p99_ms": r.p99.as_secs_f64() * 1e3,
            "max_ms": r.max.as_secs_f64() * 1e3,
        })
    };
    // Rounds alternate the two, so a neighbour's load on the machine falls
    // on both alike; the medians are compared.
    let (mut rounds_out, mut gantry_rps, mut wrk_rps) = (Vec::new(), Vec::new(), Vec::new());
    let mut have_wrk = true;
    for _ in 0..rounds.max(1) {
        let gantry = run_load(&spec).await?;
        let rps = gantry.requests as f64 / gantry.duration.as_secs_f64();
        gantry_rps.push(rps);
        let wrk = match have_wrk {
            true => wrk(&url, connections, duration).await?,
            false => None,
        };
        have_wrk = wrk.is_some();
        rounds_out.push(json!({
            "gantry": figures(&gantry),
            "wrk": wrk.as_ref().map(|w| json!({
                "requests_per_s": w.requests_per_s.round(),
                "threads": w.threads,
                "errors": w.errors,
            })),
            "gantry_to_wrk": wrk.as_ref().map(|w| ratio(rps, w.requests_per_s)),
        }));
        wrk_rps.extend(wrk.map(|w| w.requests_per_s));
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    let (gantry_median, wrk_median) = (median(gantry_rps), median(wrk_rps));
    let mut report = json!({
        "bench": "loadgen",
        "server": format!("axum, {server_threads} threads, 200 ok"),
        "connections": connections,
        "duration_s": duration.as_secs_f64(),
        "gantry_requests_per_s": gantry_median.map(f64::round),
        "wrk_requests_per_s": wrk_median.map(f64::round),
        "gantry_to_wrk": gantry_median.zip(wrk_median).map(|(g, w)| ratio(g, w)),
        "rounds": rounds_out,
    });
    if let Some(rate) = rate {
        let open = run_load(&LoadSpec {
            rate: Some(rate),
            ..spec.clone()
        })
        .await?;
        let mut figures = figures(&open);
        figures["rate"] = json!(rate);
        figures["tps"] = json!(open.tps.round());
        figures["missed"] = json!(open.missed);
        report["open_loop"] = figures;
    }
    println!("{report}");
    Ok(())
}

/// Answers 200 `ok` to every request, on a runtime of its own threads.
struct OkServer {
    addr: std::net::SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl OkServer {
    fn start(threads: usize) -> anyhow::Result<OkServer> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("bench-server")
            .enable_all()
            .build()?;
        // Dropping the sender (with the server) ends the thread and so the
        // runtime: a runtime cannot be dropped inside the async caller.
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("bench-server".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    let app = axum::Router::new().fallback(|| async { "ok" });
                    let server = tokio::spawn(async move { axum::serve(listener, app).await });
                    let _ = stopped.await;
                    server.abort();
                });
            })?;
        Ok(OkServer { addr, _stop: stop })
    }
}

struct WrkFigures {
    requests_per_s: f64,
    threads: usize,
    /// wrk's socket-error and non-2xx lines, when it printed any.
    errors: Vec<String>,
}

/// `wrk -t2 -c<connections> -d<duration>`, or `None` when wrk is not
/// installed.
async fn wrk(
    url: &url::Url,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<Option<WrkFigures>> {
    // wrk wants at least as many connections as threads, and whole seconds.
    let threads = connections.clamp(1, 2);
    let seconds = duration.as_secs_f64().ceil().max(1.0);
    let run = tokio::process::Command::new("wrk")
        .arg(format!("-t{threads}"))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .arg(url.as_str())
        .output()
        .await;
    let output = match run {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("wrk is not installed (not on PATH): Gantry's figure only");
            return Ok(None);
        }
        Err(e) => return Err(e).context("running wrk"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "wrk failed ({}): {}{}",
        output.status,
        stdout,
        String::from_utf8_lossy(&output.stderr)
    );
    let requests_per_s = stdout
        .lines()
        .find_map(|line| line.trim().strip_prefix("Requests/sec:"))
        .with_context(|| format!("no `Requests/sec:` line in wrk's output:\n{stdout}"))?
        .trim()
        .parse()
        .context("wrk's Requests/sec")?;
    let errors = stdout
        .lines()
        .map(str::trim)
        .filter(|line| line.starts_with("Socket errors") || line.starts_with("Non-2xx"))
        .map(str::to_owned)
        .collect();
    Ok(Some(WrkFigures {
        requests_per_s,
        threads,
        errors,
    }))
}

fn relay_checkpoint(bus: &NatsBus) -> String {
    let s = bus.settings();
    format!("relay:{}:{}", s.stream, s.prefix)
}

async fn hop(global: &Global, mode: Mode, n: usize) -> anyhow::Result<()> {
    let setup = setup(global, mode, false).await?;
    let mut sub = setup
        .bus
        .subscribe("bench-hop", &[EventName::RunCancelled])
        .await?;
    let stream = format!("bench-{}", uuid::Uuid::new_v4());
    let mut samples = Vec::with_capacity(n);
    // A short warm-up settles connections and consumer creation.
    for i in 0..n + 50 {
        let ev = event(i);
        let id = ev.id;
        let t0 = Instant::now();
        setup
            .store
            .append(&stream, ExpectedVersion::Any, vec![ev])
            .await?;
        let delivery = loop {
            let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
                .await
                .context("event not delivered within 10 s")??
                .context("bus closed")?;
            if d.event.id == id {
                break d;
            }
            d.ack().await?;
        };
        let elapsed = t0.elapsed();
        delivery.ack().await?;
        if i >= 50 {
            samples.push(elapsed.as_micros() as u64);
        }
    }
    println!(
        "{}",
        json!({ "bench": "hop", "mode": format!("{mode:?}").to_lowercase(), "latency": percentiles(samples) })
    );
    Ok(())
}

/// Fills the Postgres log with `n` small events in a few large statements
/// (generate_series), as a long-lived installation's log would be.
async fn preload_log(global: &Global, n: u64) -> anyhow::Result<()> {
    let Some(db) = global.settings().database_url.clone() else {
        bail!("--preload needs --database-url postgres://...");
    };
    let store = EventStore::connect(&db).await?;
    store.migrate().await?;
    let started = Instant::now();
    let chunk: u64 = 200_000;
    let mut done = 0;
    while done < n {
        let count = chunk.min(n - done);
        let head = store.head().await?;
        let json = serde_json::to_string(&event(0))?;
        sqlx::query(
            "INSERT INTO events (position, event_id, stream_id, stream_version, pipeline, run_id, \
             event_type, event, recorded_at) \
             SELECT $1 + g, 'preload-' || ($1 + g), 'preload-' || (($1 + g) / 10), (($1 + g) % 10) + 1, \
             'bench', NULL, 'io.gantry.run.cancelled.v1', $2, $3 FROM generate_series(1, $4) AS g",
        )
        .bind(head)
        .bind(json)
        .bind(chrono::Utc::now().to_rfc3339())
        .bind(count as i64)
        .execute(store.pool())
        .await?;
        done += count;
    }
    eprintln!(
        "preloaded {n} events in {:.1} s; log head {}",
        started.elapsed().as_secs_f64(),
        store.head().await?
    );
    Ok(())
}

/// Time to answer DORA's keys over `runs` seeded deployments.
async fn dora(global: &Global, runs: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let settings = Settings {
        nats_url: None,
        data_dir: dir.path().to_owned(),
        ..global.settings()
    };
    let app = App::start(settings).await?;
    let pool = app.store.pool();
    let now = chrono::Utc::now();
    let stamp = |minutes_ago: i64| {
        (now - chrono::Duration::minutes(minutes_ago))
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    };
    let started = Instant::now();
    let mut tx = pool.begin().await?;
    for run in 0..runs {
        let (pipeline, stage) = (format!("p{}", run % 10), format!("s{}", (run / 10) % 5));
        let run_id = format!("bench-{run}");
        // Spread over 60 days, newest first.
        let ago = (run as i64 * 60 * 24 * 60) / runs as i64;
        if run % 20 == 0 {
            sqlx::query(
                "INSERT INTO dora_failures (pipeline, stage, run_id, failed_at, restored_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&pipeline)
            .bind(&stage)
            .bind(&run_id)
            .bind(stamp(ago + 30))
            .bind(stamp(ago + 10))
            .execute(&mut *tx)
            .await?;
        } else {
            // As the projector folds an `env.promoted`: the row and its day.
            gantry_store::dora::record_deployment(
                &mut tx,
                &pipeline,
                &stage,
                &run_id,
                &stamp(ago),
                Some((run % 7_200) as i64 + 60),
            )
            .await?;
        }
    }
    tx.commit().await?;
    let seeded = started.elapsed();
    let (mut one, mut all) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        let t = Instant::now();
        let keys = app
            .projections
            .dora(Some("p3"), Some("s2"), 30, now)
            .await?;
        one.push(t.elapsed().as_micros() as u64);
        anyhow::ensure!(
            keys.len() == 1 && keys[0].deployments > 0,
            "no keys: {keys:?}"
        );
        let t = Instant::now();
        let keys = app.projections.dora(None, None, 30, now).await?;
        all.push(t.elapsed().as_micros() as u64);
        anyhow::ensure!(keys.len() == 50, "{} stages", keys.len());
    }
    let median = |mut v: Vec<u64>| {
        v.sort_unstable();
        v[v.len() / 2] as f64 / 1000.0
    };
    println!(
        "{}",
        json!({
            "runs": runs,
            "backend": format!("{:?}", app.store.backend()),
            "seeded_s": seeded.as_secs_f64(),
            "one_stage_ms_median": median(one),
            "all_50_stages_ms_median": median(all),
        })
    );
    Ok(())
}

/// Export and verify rates of the audit chain over `n` events.
async fn audit(global: &Global, n: u64) -> anyhow::Result<()> {
    use gantry_store::audit;
    let Some(db) = global.settings().database_url.clone() else {
        bail!("bench audit needs --database-url postgres://...");
    };
    let store = EventStore::connect(&db).await?;
    store.migrate().await?;
    let head = store.head().await?;
    if head < n as i64 {
        preload_log(global, n - head as u64).await?;
    }
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("audit.jsonl");
    let started = Instant::now();
    let exported = {
        let file = std::fs::File::create(&path)?;
        audit::export(
            &store,
            1,
            &mut std::io::BufWriter::with_capacity(1 << 20, file),
        )
        .await?
    };
    let export_s = started.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(&path)?.len();
    let started = Instant::now();
    let file = std::fs::File::open(&path)?;
    let verified = audit::verify(std::io::BufReader::with_capacity(1 << 20, file))?;
    let verify_s = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        verified == exported,
        "verify saw another chain than export wrote"
    );
    println!(
        "{}",
        json!({
            "events": exported.events,
            "file_mb": bytes as f64 / 1e6,
            "export_s": export_s,
            "export_events_per_s": (exported.events as f64 / export_s).round(),
            "verify_s": verify_s,
            "verify_events_per_s": (verified.events as f64 / verify_s).round(),
        })
    );
    Ok(())
}

async fn throughput(
    global: &Global,
    n: usize,
    writers: usize,
    batch: usize,
    cdevents: bool,
) -> anyhow::Result<()> {
    let setup = setup(global, Mode::Nats, cdevents).await?;
    let mut sub = setup
        .bus
        .subscribe("bench-throughput", &[EventName::RunCancelled])
        .await?;
    let start = Instant::now();
    let per_writer = n / writers;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = setup.store.clone();
        tasks.push(tokio::spawn(async move {
            let stream = format!("bench-{}", uuid::Uuid::new_v4());
            let mut i = 0;
            while i < per_writer {
                let events: Vec<_> = (i..(i + batch).min(per_writer))
                    .map(|j| event(w * per_writer + j))
                    .collect();
                i += events.len();
                store
                    .append_many(vec![NewEvents::new(&stream, ExpectedVersion::Any, events)])
                    .await?;
            }
            anyhow::Ok(start.elapsed())
        }));
    }
    let total = per_writer * writers;
    let received = AtomicUsize::new(0);
    while received.load(Ordering::Relaxed) < total {
        let d = tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .context("delivery stalled for 30 s")??
            .context("bus closed")?;
        d.ack().await?;
        received.fetch_add(1, Ordering::Relaxed);
    }
    let mut appended_in = Duration::ZERO;
    for t in tasks {
        appended_in = appended_in.max(t.await??);
    }
    let elapsed = start.elapsed();
    println!(
        "{}",
        json!({
            "bench": "throughput",
            "events": total,
            "writers": writers,
            "batch": batch,
            "cdevents_relay": cdevents,
            "seconds": elapsed.as_secs_f64(),
            "events_per_second": total as f64 / elapsed.as_secs_f64(),
            "append_seconds": appended_in.as_secs_f64(),
        })
    );
    Ok(())
}

/// Stands in for envgen: answers `run.started` with one `package.built` per
/// stage at once, so what is measured is Gantry's own orchestration.
struct InstantPackages;

#[async_trait::async_trait]
impl gantry_store::consumer::Handler for InstantPackages {
    fn name(&self) -> &'static str {
        "bench-packages"
    }

    fn events(&self) -> &'static [EventName] {
        &[EventName::RunStarted]
    }

    async fn handle(
        &self,
        event: &CloudEvent,
    ) -> Result<Vec<NewEvents>, gantry_store::consumer::HandlerError> {
        let started: gantry_proto::events::RunStarted = gantry_runtime::worker::decode(event)?;
        let events = started
            .stages
            .iter()
            .map(|s| {
                CloudEvent::new(
                    "bench",
                    &event.pipeline,
                    Some(&started.run_id),
                    &gantry_proto::events::PackageBuilt {
                        stage: s.name.clone(),
                        digest: format!("sha256:{}", "0".repeat(64)),
                        size: 0,
                        files: 0,
                        format: "yaml".into(),
                        values_digest: None,
                        location: None,
                        commit: Some(started.commit.clone()),
                        committed_at: None,
                    },
                )
                .caused_by(event)
            })
            .collect();
        Ok(vec![NewEvents::new(
            gantry_runtime::trigger::run_stream(&started.run_id),
            ExpectedVersion::Any,
            events,
        )])
    }
}

async fn orchestration(
    global: &Global,
    sequential: usize,
    concurrent: usize,
    pipelines: usize,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pipeline_dir = dir.path().join("pipelines");
    std::fs::create_dir_all(&pipeline_dir)?;
    for p in 0..pipelines {
        std::fs::write(
            pipeline_dir.join(format!("p{p}.yaml")),
            format!(
                "name: p{p}\nsource:\n  repo: https://git.example.com/bench/p{p}.git\n\
                 gateway:\n  format: yaml\n  path: gateway/\nstages:\n  - name: test\n  - name: prod\n"
            ),
        )?;
    }
    let mut settings: Settings = global.settings();
    settings.pipelines = pipeline_dir;
    settings.data_dir = dir.path().join("data");
    settings.nats_url = global.settings().nats_url;
    let app = App::start(settings).await?;
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let mut tasks = tokio::task::JoinSet::new();
    app.spawn_background(&mut tasks, &shutdown);
    app.spawn_projector(&mut tasks, &shutdown);
    let conductor = gantry_conductor::Conductor::new(&gantry_runtime::WorkerContext::of(&app));
    app.spawn_consumer(&mut tasks, &shutdown, Arc::new(conductor));
    app.spawn_consumer(&mut tasks, &shutdown, Arc::new(InstantPackages));

    let set = app.pipelines.get();
    let start_run = |p: usize, n: usize| {
        let pipeline = set.get(&format!("p{p}")).cloned();
        let store = app.store.clone();
        async move {
            let pipeline = pipeline.context("bench pipeline")?;
            let run = gantry_runtime::trigger::start_run(
                &store,
                "bench",
                &pipeline,
                gantry_runtime::trigger::CommitInfo {
                    provider: "manual".into(),
                    commit: format!("{n:040x}"),
                    branch: "main".into(),
                    ..Default::default()
                },
            )
            .await?;
            anyhow::Ok(run.run_id)
        }
    };
    let terminal = |events: &[gantry_store::RecordedEvent]| {
        events
            .iter()
            .any(|e| e.event.name().is_some_and(EventName::is_terminal))
    };

    // Phase 1: one run at a time; overhead = env.promoted(test) - commit.received.
    let mut overhead = Vec::with_capacity(sequential);
    for n in 0..sequential {
        let run = start_run(0, n + 1).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let events = app.store.read_run(&run).await?;
            if terminal(&events) {
                let received = events.first().context("events")?.event.time;
                let promoted = events
                    .iter()
                    .find(|e| e.event.name() == Some(EventName::EnvPromoted))
                    .context("first stage promoted")?
                    .event
                    .time;
                overhead.push((promoted - received).num_microseconds().unwrap_or(0).max(0) as u64);
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "run {run} did not end in 30 s");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    // Phase 2: many runs at once across pipelines; all must end.
    let began = Instant::now();
    let mut runs = Vec::with_capacity(concurrent);
    let mut starts = Vec::new();
    for i in 0..concurrent {
        starts.push(start_run(i % pipelines, 1_000_000 + i));
    }
    for r in futures::future::join_all(starts).await {
        runs.push(r?);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
    loop {
        let mut ended = 0;
        statuses.clear();
        for run in &runs {
            let events = app.store.read_run(run).await?;
            if let Some(last) = events
                .iter()
                .filter_map(|e| e.event.name())
                .find(|n| n.is_terminal())
            {
                ended += 1;
                *statuses.entry(last.as_str().to_owned()).or_default() += 1;
            }
        }
        if ended == runs.len() {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{ended} of {} runs ended in 120 s",
            runs.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drained = began.elapsed();
    println!(
        "{}",
        json!({
            "bench": "orchestration",
            "store": format!("{:?}", app.store.backend()).to_lowercase(),
            "bus": app.bus.kind(),
            "overhead_commit_to_first_stage_promoted": percentiles(overhead),
            "concurrent_runs": concurrent,
            "pipelines": pipelines,
            "all_terminal": true,
            "terminal_states": statuses,
            "drain_seconds": drained.as_secs_f64(),
        })
    );
    shutdown.cancel();
    Ok(())
}
