//! `gantry bench webhooks`: verified webhooks/s as a user measures them with
//! `wrk` — open keep-alive connections, each sending its next request when
//! the last is answered, every request a distinct signed GitHub push of a
//! distinct commit — against this process or separate `gantry serve
//! webhook` processes; then a check, from the log, that every accepted
//! webhook made exactly one run.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use gantry_proto::EventName;
use gantry_runtime::{App, Settings};
use gantry_store::bus::NatsBus;
use gantry_store::EventStore;
use serde_json::json;

use super::{percentiles, relay_checkpoint};
use crate::cli::Global;

const SECRET: &str = "bench-secret";
const SECRET_VAR: &str = "GANTRY_BENCH_WEBHOOK_SECRET";

/// How much load to send.
pub struct Load {
    pub requests: usize,
    pub connections: usize,
    pub duration: Option<Duration>,
}

pub async fn webhooks(
    global: &Global,
    load: Load,
    replicas: usize,
    pgbench: bool,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // A pipeline of its own per measurement, so the runs counted afterwards
    // are this measurement's even in a database that holds earlier ones.
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let pipeline = format!("bench-{tag}");
    let repo = format!("https://git.example.com/bench/{pipeline}.git");
    let pipelines = dir.path().join("pipelines");
    std::fs::create_dir_all(&pipelines)?;
    std::fs::write(
        pipelines.join("bench.yaml"),
        format!(
            "name: {pipeline}\nsource:\n  repo: {repo}\n  branch: main\n  \
             webhook_secret: env:{SECRET_VAR}\ngateway:\n  format: yaml\n  path: gateway/\n\
             stages:\n  - name: test\n  - name: prod\n"
        ),
    )?;
    std::env::set_var(SECRET_VAR, SECRET);

    let mut settings: Settings = global.settings();
    settings.pipelines = pipelines;
    settings.data_dir = dir.path().join("data");
    let mut stream_to_delete = None;
    let (store, targets, _servers) = if replicas == 0 {
        settings.nats_url = None;
        let app = App::start(settings).await?;
        let http = gantry_webhook::router(app.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, http).await });
        (app.store.clone(), vec![addr], Servers::default())
    } else {
        let Some(db) = settings.database_url.clone() else {
            bail!("--replicas needs --database-url postgres://... (the replicas share the log)");
        };
        let store = EventStore::connect(&db).await?;
        store.migrate().await?;
        let mut env = vec![
            ("GANTRY_DATABASE_URL", db),
            ("GANTRY_PIPELINES", settings.pipelines.display().to_string()),
            ("GANTRY_LOG", "warn".to_owned()),
        ];
        if let Some(mut nats) = settings.nats() {
            // A stream of its own, its relay starting at the log's head: the
            // replicas publish only this measurement's events.
            nats.prefix = format!("bench{tag}");
            nats.stream = format!("BENCH_{tag}").to_uppercase();
            let bus = NatsBus::connect(nats.clone()).await?;
            store
                .save_checkpoint(&relay_checkpoint(&bus), store.head().await?)
                .await?;
            stream_to_delete = Some(bus);
            env.push(("GANTRY_NATS_URL", nats.url.clone()));
            env.push(("GANTRY_NATS_PREFIX", nats.prefix.clone()));
            env.push(("GANTRY_NATS_STREAM", nats.stream.clone()));
        }
        let servers = Servers::start(replicas, dir.path(), &env).await?;
        (store, servers.addrs.clone(), servers)
    };

    let head_before = store.head().await?;
    let result = send(&targets, &load, &repo).await?;
    let runs = runs_of(&store, &pipeline, head_before).await?;
    let accepted = result.accepted;
    let lost = accepted.saturating_sub(runs.distinct);
    let twice = runs.started - runs.distinct;
    let seconds = result.elapsed.as_secs_f64();
    let rate = accepted as f64 / seconds;
    let mut report = json!({
        "bench": "webhooks",
        "store": format!("{:?}", store.backend()).to_lowercase(),
        "bus": if stream_to_delete.is_some() { "nats" } else if replicas > 0 { "sql" } else { "in-process" },
        "servers": if replicas == 0 { "in this process".to_owned() } else { format!("{replicas} × gantry serve webhook") },
        "connections": load.connections,
        "requests": result.sent,
        "accepted": accepted,
        "refused": result.sent - accepted,
        "runs_recorded": runs.distinct,
        "runs_lost": lost,
        "runs_twice": twice,
        "seconds": seconds,
        "webhooks_per_second": rate,
        "latency": percentiles(result.samples),
    });
    if pgbench {
        let db = global
            .settings()
            .database_url
            .context("--pgbench needs --database-url")?;
        let tps = pgbench_tps(&store, &db, load.connections, result.elapsed).await?;
        report["pgbench_tps"] = json!(tps);
        report["ratio_to_pgbench"] = json!(rate / tps);
    }
    println!("{report}");
    if let Some(bus) = stream_to_delete {
        let _ = bus.jetstream().delete_stream(&bus.settings().stream).await;
    }
    if lost > 0 || twice > 0 || result.sent != accepted {
        bail!("{lost} accepted webhooks have no run, {twice} runs were made twice, {} requests were refused", result.sent - accepted);
    }
    Ok(())
}

/// Separate `gantry serve webhook` processes of this binary, stopped on drop.
#[derive(Default)]
struct Servers {
    addrs: Vec<SocketAddr>,
    children: Vec<tokio::process::Child>,
}

impl Servers {
    async fn start(n: usize, dir: &Path, env: &[(&str, String)]) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating the gantry binary")?;
        let mut servers = Servers::default();
        for i in 0..n {
            // Reserve a port, then hand it to the child (the window in
            // between is a benchmark's risk, not a product's).
            let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
            let log = std::fs::File::create(dir.join(format!("webhook-{i}.log")))?;
            let child = tokio::process::Command::new(&exe)
                .args(["serve", "webhook"])
                .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
                .env("GANTRY_LISTEN", addr.to_string())
                .env("GANTRY_DATA_DIR", dir.join(format!("data-{i}")))
                .stdout(Stdio::null())
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .context("starting gantry serve webhook")?;
            servers.children.push(child);
            servers.addrs.push(addr);
        }
        let client = reqwest::Client::new();
        for (i, addr) in servers.addrs.iter().enumerate() {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let ready = client.get(format!("http://{addr}/readyz")).send().await;
                if ready.is_ok_and(|r| r.status().is_success()) {
                    break;
                }
                if let Some(status) = servers.children[i].try_wait()? {
                    let log = std::fs::read_to_string(dir.join(format!("webhook-{i}.log")))
                        .unwrap_or_default();
                    bail!("gantry serve webhook exited ({status}):\n{log}");
                }
                if Instant::now() > deadline {
                    bail!("gantry serve webhook at {addr} was not ready within 30 s");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(servers)
    }
}

struct Sent {
    sent: usize,
    accepted: usize,
    samples: Vec<u64>,
    elapsed: Duration,
}

/// Closed-loop load over `connections` connections spread round-robin over
/// `targets` (one HTTP/1.1 keep-alive connection each, like `wrk`).
async fn send(targets: &[SocketAddr], load: &Load, repo: &str) -> anyhow::Result<Sent> {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let until = load.duration.map(|d| start + d);
    let limit = if until.is_some() {
        usize::MAX
    } else {
        load.requests
    };
    let mut tasks = Vec::new();
    for c in 0..load.connections {
        let addr = targets[c % targets.len()];
        let (next, repo) = (next.clone(), repo.to_owned());
        let client = reqwest::Client::builder()
            .http1_only()
            .pool_max_idle_per_host(1)
            .build()?;
        tasks.push(tokio::spawn(async move {
            let url = format!("http://{addr}/webhooks/github");
            let (mut samples, mut sent) = (Vec::new(), 0usize);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= limit || until.is_some_and(|u| Instant::now() >= u) {
                    return anyhow::Ok((sent, samples));
                }
                let (body, signature) = push(i, &repo)?;
                let t0 = Instant::now();
                let resp = client
                    .post(&url)
                    .header("X-GitHub-Event", "push")
                    .header("X-GitHub-Delivery", format!("bench-{i}"))
                    .header("X-Hub-Signature-256", signature)
                    .header("Content-Type", "application/json")
                    .body(body)
                    .send()
                    .await?;
                let status = resp.status();
                let _ = resp.bytes().await?;
                sent += 1;
                if status == 202 {
                    samples.push(t0.elapsed().as_micros() as u64);
                } else {
                    tracing::warn!(%status, "webhook refused");
                }
            }
        }));
    }
    let (mut sent, mut samples) = (0, Vec::new());
    for t in tasks {
        let (n, s) = t.await??;
        sent += n;
        samples.extend(s);
    }
    Ok(Sent {
        sent,
        accepted: samples.len(),
        samples,
        elapsed: start.elapsed(),
    })
}

/// The i-th push: a distinct commit, signed with the pipeline's secret.
fn push(i: usize, repo: &str) -> anyhow::Result<(Vec<u8>, String)> {
    let body = serde_json::to_vec(&json!({
        "ref": "refs/heads/main",
        "after": format!("{:040x}", i + 1),
        "repository": { "clone_url": repo },
        "head_commit": { "message": "bench", "author": { "name": "b", "email": "b@example.com" } }
    }))?;
    let (_, signature) = gantry_webhook::signature::signing_header(
        gantry_webhook::signature::Provider::Github,
        SECRET.as_bytes(),
        &body,
    );
    Ok((body, signature))
}

struct Runs {
    started: usize,
    distinct: usize,
}

/// The runs the log holds for `pipeline` after `head`: how many were
/// started, and for how many distinct commits.
async fn runs_of(store: &EventStore, pipeline: &str, head: i64) -> anyhow::Result<Runs> {
    let events = store.read_pipeline_after(pipeline, head).await?;
    let mut commits = HashSet::new();
    let mut started = 0;
    for e in events {
        if e.event.name() != Some(EventName::RunStarted) {
            continue;
        }
        let run: gantry_proto::events::RunStarted = e.event.decode()?;
        started += 1;
        commits.insert(run.commit);
    }
    Ok(Runs {
        started,
        distinct: commits.len(),
    })
}

/// Postgres's own durable commit rate on this machine right now: `pgbench`
/// with one-row inserts into a table of its own, `clients` clients.
async fn pgbench_tps(
    store: &EventStore,
    url: &str,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    sqlx::query("CREATE TABLE IF NOT EXISTS gantry_bench_pgbench (v text)")
        .execute(store.pool())
        .await?;
    let script = tempfile::NamedTempFile::new()?;
    std::fs::write(
        script.path(),
        "INSERT INTO gantry_bench_pgbench (v) VALUES ('x');\n",
    )?;
    let out = tokio::process::Command::new("pgbench")
        .args(["-n", "-j", "2", "-c", &clients.to_string()])
        .args(["-T", &duration.as_secs().max(1).to_string()])
        .arg("-f")
        .arg(script.path())
        .arg(url)
        .output()
        .await
        .context("running pgbench (Debian: postgresql-contrib)")?;
    sqlx::query("DROP TABLE IF EXISTS gantry_bench_pgbench")
        .execute(store.pool())
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "pgbench failed: {}{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no tps in pgbench's output:\n{stdout}"))
}
