//! The console's overview under load: 50 pipelines × 5 stages and 1,000
//! runs seeded into a SQLite log, served by the real `gantry up`, loaded in
//! headless Chromium. Prints the bytes transferred and the times to first
//! contentful paint and to the load event (Chromium's performance timing),
//! and the server's own time to answer the page. Figures, not assertions:
//! BENCHMARKS.md records them.
//!
//!   cargo bench -p gantry --bench console [-- --pipelines 50 --stages 5 --runs 1000]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gantry_proto::events::{
    ApprovalGranted, ApprovalRequested, EnvPromoted, ImagePushed, RunStarted, RunSucceeded,
    StageStarted,
};
use gantry_proto::{CloudEvent, StagePlan, Step, Trigger};
use gantry_store::{EventStore, ExpectedVersion};
use serde_json::{json, Value};

#[allow(dead_code)]
#[path = "../../../tests/e2e/browser.rs"]
mod browser;

struct Shape {
    pipelines: usize,
    stages: usize,
    runs: usize,
    loads: usize,
}

fn shape() -> Shape {
    let mut s = Shape {
        pipelines: 50,
        stages: 5,
        runs: 1000,
        loads: 10,
    };
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i + 1 < args.len() {
        let n = args[i + 1].parse().ok();
        match (args[i].as_str(), n) {
            ("--pipelines", Some(n)) => s.pipelines = n,
            ("--stages", Some(n)) => s.stages = n,
            ("--runs", Some(n)) => s.runs = n,
            ("--loads", Some(n)) => s.loads = n,
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    s
}

fn stage_names(n: usize) -> Vec<String> {
    let named = ["dev", "test", "staging", "preprod", "prod"];
    (0..n)
        .map(|i| named.get(i).map_or(format!("stage{i}"), |s| s.to_string()))
        .collect()
}

fn pipeline_yaml(name: &str, stages: &[String]) -> String {
    let mut y = format!(
        "name: {name}\nsource:\n  repo: https://git.example.com/bench/{name}.git\n  branch: main\n\
         gateway:\n  format: yaml\n  path: gateway/\nstages:\n"
    );
    for (i, s) in stages.iter().enumerate() {
        y.push_str(&format!("  - name: {s}\n"));
        if i + 1 == stages.len() {
            y.push_str("    approval: { required: 2, approvers: [release-managers] }\n");
        }
    }
    y
}

/// One run's events: every stage promoted with an image (two approvals on
/// the last), or, for the latest run, waiting for the last stage's approval.
fn run_events(pipeline: &str, stages: &[String], n: usize, waiting: bool) -> Vec<CloudEvent> {
    let run_id = uuid::Uuid::now_v7().to_string();
    let commit = format!("{:040x}", n * 7919 + 1);
    let mut out = vec![CloudEvent::new(
        "bench",
        pipeline,
        Some(&run_id),
        &RunStarted {
            run_id: run_id.clone(),
            commit: commit.clone(),
            branch: "main".into(),
            repository: format!("https://git.example.com/bench/{pipeline}.git"),
            message: Some(format!("Raise the quota of API {n}")),
            author: None,
            authors: vec![],
            trigger: Trigger::Webhook,
            stages: stages
                .iter()
                .enumerate()
                .map(|(i, s)| StagePlan {
                    name: s.clone(),
                    after: i.checked_sub(1).map(|p| stages[p].clone()),
                    steps: vec![Step::Package, Step::Image],
                })
                .collect(),
            rollback: None,
        },
    )];
    for (i, stage) in stages.iter().enumerate() {
        let digest = format!("sha256:{:064x}", n * 31 + i);
        let image = format!(
            "registry.example.com/bench/{pipeline}:{stage}-{}",
            &commit[..7]
        );
        out.push(CloudEvent::new(
            "bench",
            pipeline,
            Some(&run_id),
            &ImagePushed {
                stage: stage.clone(),
                repository: format!("registry.example.com/bench/{pipeline}"),
                tag: format!("{stage}-{}", &commit[..7]),
                digest: digest.clone(),
                parent_digest: None,
                bytes_uploaded: 0,
                bytes_reused: 0,
            },
        ));
        let last = i + 1 == stages.len();
        if last {
            out.push(CloudEvent::new(
                "bench",
                pipeline,
                Some(&run_id),
                &ApprovalRequested {
                    stage: stage.clone(),
                    required: 2,
                    approvers: vec!["release-managers".into()],
                    expires_at: None,
                },
            ));
            if waiting {
                return out;
            }
            for user in ["rita", "sam"] {
                out.push(CloudEvent::new(
                    "bench",
                    pipeline,
                    Some(&run_id),
                    &ApprovalGranted {
                        stage: stage.clone(),
                        user: user.into(),
                        comment: None,
                    },
                ));
            }
        }
        out.push(CloudEvent::new(
            "bench",
            pipeline,
            Some(&run_id),
            &StageStarted {
                stage: stage.clone(),
                commit: commit.clone(),
                image: Some(image.clone()),
                digest: Some(digest.clone()),
                rollback: false,
            },
        ));
        out.push(CloudEvent::new(
            "bench",
            pipeline,
            Some(&run_id),
            &EnvPromoted {
                stage: stage.clone(),
                commit: commit.clone(),
                image: Some(image),
                digest: Some(digest),
            },
        ));
    }
    out.push(CloudEvent::new(
        "bench",
        pipeline,
        Some(&run_id),
        &RunSucceeded {},
    ));
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

const TIMING: &str = "
    const nav = performance.getEntriesByType('navigation')[0];
    const resources = performance.getEntriesByType('resource');
    const fcp = performance.getEntriesByName('first-contentful-paint')[0];
    return {
      transferred: nav.transferSize + resources.reduce((n, r) => n + r.transferSize, 0),
      html_bytes: nav.transferSize,
      fcp_ms: fcp ? fcp.startTime : null,
      dom_content_loaded_ms: nav.domContentLoadedEventEnd,
      load_ms: nav.loadEventEnd,
      elements: document.getElementsByTagName('*').length,
    };";

#[tokio::main]
async fn main() {
    // Test runners list and run every target (`cargo nextest run
    // --all-targets` asks with `--list`); this one runs under `cargo bench`
    // only, which passes `--bench`.
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") || args.iter().any(|a| a == "--list") {
        return;
    }
    let shape = shape();
    let dir = tempfile::tempdir().expect("tempdir");
    let pipelines_dir = dir.path().join("pipelines");
    std::fs::create_dir_all(&pipelines_dir).unwrap();
    let stages = stage_names(shape.stages);
    let names: Vec<String> = (0..shape.pipelines).map(|p| format!("p{p:02}")).collect();
    for name in &names {
        std::fs::write(
            pipelines_dir.join(format!("{name}.yaml")),
            pipeline_yaml(name, &stages),
        )
        .unwrap();
    }

    // Seed the log: runs spread over the pipelines, the newest of each waiting.
    let db = format!("sqlite://{}", dir.path().join("bench.db").display());
    let store = EventStore::connect(&db).await.expect("store");
    store.migrate().await.expect("migrate");
    let seeded = Instant::now();
    let per = shape.runs.div_ceil(shape.pipelines.max(1));
    let mut runs = 0;
    for (p, name) in names.iter().enumerate() {
        for r in 0..per {
            if runs == shape.runs {
                break;
            }
            let events = run_events(name, &stages, p * per + r, r + 1 == per);
            let stream =
                gantry_runtime::trigger::run_stream(events[0].runid.as_deref().unwrap_or_default());
            store
                .append(&stream, ExpectedVersion::Any, events)
                .await
                .expect("append");
            runs += 1;
        }
    }
    let events = store.head().await.unwrap();
    drop(store);
    eprintln!(
        "seeded {runs} runs, {events} events in {:?}",
        seeded.elapsed()
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let mut gantry = Command::new(
        std::env::var("GANTRY_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_gantry").into()),
    )
    .arg("up")
    .current_dir(dir.path())
    .env("GANTRY_LISTEN", format!("127.0.0.1:{port}"))
    .env("GANTRY_DATABASE_URL", &db)
    .env("GANTRY_LOG", "warn")
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("start gantry");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "gantry did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The server alone: time to the whole page.
    let mut server_ms = Vec::new();
    let mut html_bytes = 0;
    for _ in 0..shape.loads.max(1) + 1 {
        let t = Instant::now();
        let body = http
            .get(format!("{base}/"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        server_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        html_bytes = body.len();
    }
    server_ms.remove(0); // the first read folds the log into the projections

    // The browser: a cold load (nothing cached), then warm ones.
    let browser = browser::Browser::start(1280, 900).await;
    // The browser's own start (fonts, the first renderer) is not the page's.
    browser.goto("data:text/html,<p>warm-up</p>").await;
    let mut loads: Vec<Value> = Vec::new();
    for _ in 0..shape.loads.max(1) + 1 {
        browser.goto(&format!("{base}/")).await;
        loads.push(
            browser
                .client
                .execute(TIMING, vec![])
                .await
                .expect("timing"),
        );
    }
    let cold = loads[0].clone();
    let warm = &loads[1..];
    let field = |k: &str| {
        warm.iter()
            .filter_map(|l| l[k].as_f64())
            .collect::<Vec<_>>()
    };
    let result = json!({
        "bench": "console-overview",
        "pipelines": shape.pipelines,
        "stages": shape.stages,
        "runs": runs,
        "events": events,
        "html_bytes": html_bytes,
        "server_ms_p50": median(server_ms.clone()),
        "cold": cold,
        "warm_fcp_ms_p50": median(field("fcp_ms")),
        "warm_load_ms_p50": median(field("load_ms")),
        "warm_transferred_p50": median(field("transferred")),
    });
    println!("{result}");
    drop(browser);
    let _ = gantry.kill();
    let _ = gantry.wait();
}
