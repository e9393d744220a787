//! Chaos: every Gantry service as a process of its own over a private
//! Postgres and a private NATS, several pipelines with image, GitOps deploy,
//! readiness, API Manager and smoke steps, commits pushed as signed webhooks
//! while a driver SIGKILLs a random Gantry process every few seconds and
//! starts it again, and crashes NATS and Postgres once each. At the end the
//! invariants of issue 18 hold:
//!
//! - every run ended (exactly one terminal event);
//! - no event twice on NATS, which holds exactly the log;
//! - at most one `env.promoted` and one `image.pushed` per (run, stage);
//! - no (run, stage) deployed twice in the deploy repository;
//! - API Manager written at most once per change;
//! - each stage runs the release its last `env.promoted` names.
//!
//! Size: `GANTRY_CHAOS_RUNS` runs (15 by default, what `.ci/run` runs); the
//! full size and its figures are in RELIABILITY.md:
//! `GANTRY_CHAOS_RUNS=60 scripts/test -p gantry --test e2e -- chaos:: --no-capture`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use axum::routing::get;
use gantry_tests::apimanager::ApiManagerDouble;
use gantry_tests::{GitRepo, NatsServer, PostgresServer, Registry};
use serde_json::{json, Value};
use tokio::sync::Mutex;

const PIPELINES: usize = 3;
const STAGES: [&str; 2] = ["test", "prod"];

fn runs_wanted() -> usize {
    std::env::var("GANTRY_CHAOS_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15)
}

/// A small deterministic generator (xorshift): the seed is printed, so a
/// failing schedule can be replayed with `GANTRY_CHAOS_SEED`.
struct Rng(u64);

impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below.max(1)
    }
}

/// What the driver did, for the figures.
#[derive(Debug, Default)]
struct Chaos {
    kills: HashMap<&'static str, usize>,
    nats_restarts: usize,
    postgres_restarts: usize,
}

/// The API config of pipeline 0's API: `summary` changes with every commit,
/// so each promotion is one change API Manager must see written once.
fn api_config(n: usize) -> String {
    json!({
        "name": "Petstore", "path": "/petstore/v1", "state": "published",
        "organization": "API Development",
        "summary": format!("chaos change {n}"),
        "apiSpecification": { "resource": "petstore.json" }
    })
    .to_string()
}

fn pipeline_yaml(
    i: usize,
    repo: &GitRepo,
    base: &str,
    registry: &str,
    deploy: &str,
    gw: &str,
    apim: &str,
) -> String {
    let queue = if i == 1 { "fifo" } else { "latest" };
    let mut yaml = format!(
        "name: chaos-{i}\nsource:\n  repo: {repo}\n  branch: main\n  webhook_secret: env:E2E_WEBHOOK_SECRET\n\
         gateway:\n  format: yaml\n  path: gateway/\n\
         image:\n  base: {base}\n  repository: {registry}/apim/chaos-{i}\n",
        repo = repo.path().display(),
    );
    if i == 0 {
        yaml.push_str("apis:\n  path: apis/\n");
    }
    yaml.push_str("stages:\n");
    for stage in STAGES {
        yaml.push_str(&format!(
            "  - name: {stage}\n    queue: {queue}\n\
             \x20   deploy:\n      gitops: {{ repo: {deploy}, branch: main, file: envs/chaos-{i}/{stage}.yaml, key: apitraffic.image }}\n\
             \x20   ready: {{ url: http://{gw}/healthcheck, timeout: 60s }}\n\
             \x20   smoke:\n      - name: healthy\n        request: {{ url: http://{gw}/healthcheck }}\n        timeout: 10s\n"
        ));
        if i == 0 && stage == "test" {
            yaml.push_str(&format!(
                "    apimanager: {{ url: \"{apim}\", username: env:APIM_USER, password: env:APIM_PASS }}\n"
            ));
        }
    }
    yaml
}

/// Pushes `commit` of `repo` until the webhook process accepts it (it may
/// be down or die mid-request: a forge retries); the run's id.
async fn push_until_accepted(base: &str, repo: &GitRepo, commit: &str) -> String {
    let author = json!({ "name": "Dev", "email": "dev@example.com" });
    let body = local_push_body(repo, commit, author);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let sent = client
            .post(format!("{base}/webhooks/github"))
            .header("X-GitHub-Event", "push")
            .header("X-Hub-Signature-256", sign(&body))
            .body(body.clone())
            .send()
            .await;
        if let Ok(resp) = sent {
            let status = resp.status();
            let answer: Value = resp.json().await.unwrap_or(Value::Null);
            if status == 202 {
                return answer["runs"][0]["run_id"].as_str().unwrap().to_owned();
            }
            // 503 while the log is unreachable; anything else is a defect.
            assert!(status.is_server_error(), "{status}: {answer}");
        }
        assert!(
            Instant::now() < deadline,
            "the webhook never accepted {commit}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_run_ends_and_nothing_happens_twice_under_random_kills() {
    let started = Instant::now();
    let runs = runs_wanted();
    let seed = std::env::var("GANTRY_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| u64::from(std::process::id()) * 2_654_435_761 + 1);
    println!("chaos: {runs} runs, seed {seed}");

    let mut postgres = PostgresServer::start().await.unwrap();
    let mut nats = NatsServer::start().await.unwrap();
    let registry = Registry::start().await.unwrap();
    let base_image = push_parent(&registry, "axway/apigw-emt").await;
    let files: Vec<(String, &str)> = (0..PIPELINES)
        .flat_map(|i| {
            STAGES.map(|s| {
                (
                    format!("envs/chaos-{i}/{s}.yaml"),
                    "apitraffic:\n  image: none  # set by Gantry\n",
                )
            })
        })
        .collect();
    let files: Vec<(&str, &str)> = files.iter().map(|(p, c)| (p.as_str(), *c)).collect();
    let deploy = seeded_deploy_repo(&files);
    let gw = serve_http(axum::Router::new().route("/healthcheck", get(|| async { "ok" }))).await;
    let apim = ApiManagerDouble::start().await.unwrap();
    apim.add_organization("API Development");

    let repos: Vec<GitRepo> = (0..PIPELINES)
        .map(|i| {
            let repo = if i == 0 {
                petstore_project()
            } else {
                let repo = GitRepo::init().unwrap();
                write_minimal_project(&repo);
                repo
            };
            if i == 0 {
                repo.write("apis/petstore/api-config.json", api_config(0))
                    .unwrap();
            }
            repo.commit("initial").unwrap();
            repo
        })
        .collect();
    let template = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(template.path().join("pipelines")).unwrap();
    for (i, repo) in repos.iter().enumerate() {
        std::fs::write(
            template.path().join(format!("pipelines/chaos-{i}.yaml")),
            pipeline_yaml(
                i,
                repo,
                &base_image,
                &registry.host_port(),
                &deploy.path().display().to_string(),
                &gw.to_string(),
                &apim.url(),
            ),
        )
        .unwrap();
    }

    let prefix = gantry_tests::unique_name("chaos");
    let stream_name = gantry_tests::unique_name("CHAOS_").to_uppercase();
    let env: Vec<(&str, String)> = vec![
        ("GANTRY_DATABASE_URL", postgres.url()),
        ("GANTRY_NATS_URL", nats.url()),
        ("GANTRY_NATS_PREFIX", prefix.clone()),
        ("GANTRY_NATS_STREAM", stream_name.clone()),
        ("APIM_USER", "apiadmin".into()),
        ("APIM_PASS", "changeme".into()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut processes = Vec::new();
    for service in SERVICES {
        processes
            .push(Gantry::start_alone_with(template.path(), &[], &["serve", service], &env).await);
    }
    let webhook_url = processes[0].url();
    let api_url = processes[1].url();
    let processes = Arc::new(Mutex::new(processes));

    // The driver: a random process every 1.5–3.5 s, SIGKILLed and started
    // again; NATS after a third of the pushes, Postgres after two thirds.
    let pushed = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let restarts = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicUsize::new(0));
    let driver = {
        let (processes, pushed, stop, restarts, killed) = (
            processes.clone(),
            pushed.clone(),
            stop.clone(),
            restarts.clone(),
            killed.clone(),
        );
        tokio::spawn(async move {
            let mut rng = Rng(seed);
            let mut chaos = Chaos::default();
            while !stop.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(1_500 + rng.next(2_000))).await;
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let done = pushed.load(Ordering::SeqCst);
                if chaos.nats_restarts == 0 && done >= runs / 3 {
                    nats.restart().await.unwrap();
                    chaos.nats_restarts += 1;
                    restarts.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                if chaos.postgres_restarts == 0 && done >= 2 * runs / 3 {
                    postgres.restart().await.unwrap();
                    chaos.postgres_restarts += 1;
                    restarts.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                let i = rng.next(SERVICES.len() as u64) as usize;
                let mut all = processes.lock().await;
                all[i].kill();
                tokio::time::sleep(Duration::from_millis(rng.next(800))).await;
                all[i].restart().await;
                *chaos.kills.entry(SERVICES[i]).or_default() += 1;
                killed.fetch_add(1, Ordering::SeqCst);
            }
            (chaos, nats, postgres)
        })
    };

    // The pushes: one commit at a time, round robin over the pipelines.
    let mut run_ids = Vec::new();
    for n in 1..=runs {
        let i = n % PIPELINES;
        let repo = &repos[i];
        repo.write("gateway/values.yaml", format!("---\nchange: {n}\n"))
            .unwrap();
        if i == 0 {
            repo.write("apis/petstore/api-config.json", api_config(n))
                .unwrap();
        }
        let commit = repo.commit(&format!("change {n}")).unwrap();
        run_ids.push(push_until_accepted(&webhook_url, repo, &commit).await);
        pushed.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    // Chaos goes on until both infrastructure restarts happened and at
    // least a kill per four runs (six at the least).
    let kills_wanted = (runs / 4).max(6);
    let deadline = Instant::now() + Duration::from_secs(60 + 5 * kills_wanted as u64);
    while restarts.load(Ordering::SeqCst) < 2 || killed.load(Ordering::SeqCst) < kills_wanted {
        assert!(
            Instant::now() < deadline,
            "the driver did not get through its schedule"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let (chaos, nats, postgres) = driver.await.unwrap();
    let chaos_ended = started.elapsed();

    // Every run ends.
    let deadline = Instant::now() + Duration::from_secs(180 + 5 * runs as u64);
    let statuses = loop {
        let answer = reqwest::get(format!("{api_url}/api/v1/runs?limit=1000")).await;
        let listed: Value = match answer {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        let statuses: HashMap<String, String> = listed
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|r| {
                        (
                            r["run_id"].as_str().unwrap_or_default().to_owned(),
                            r["status"].as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let open: Vec<&String> = run_ids
            .iter()
            .filter(|id| statuses.get(*id).is_none_or(|s| s == "running"))
            .collect();
        if open.is_empty() {
            break statuses;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = processes
                .lock()
                .await
                .iter()
                .map(|g| {
                    g.log_text()
                        .lines()
                        .rev()
                        .take(15)
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .collect();
            panic!("runs that never ended: {open:?}\n{}", logs.join("\n---\n"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let all_ended = started.elapsed();

    // The log of record.
    let pool = sqlx::PgPool::connect(&postgres.url()).await.unwrap();
    let rows = log_rows(&pool).await;
    let of_type = |ty: &str| -> Vec<&Value> {
        let ty = format!("io.gantry.{ty}.v1");
        rows.iter().filter(|r| r.1 == ty).map(|r| &r.2).collect()
    };
    let run_stage = |e: &Value| {
        (
            e["runid"].as_str().unwrap_or_default().to_owned(),
            e["data"]["stage"].as_str().unwrap_or_default().to_owned(),
        )
    };

    // Exactly one terminal event per run.
    let mut ended: HashMap<String, usize> = HashMap::new();
    for ty in [
        "run.succeeded",
        "run.failed",
        "run.superseded",
        "run.cancelled",
    ] {
        for e in of_type(ty) {
            *ended
                .entry(e["runid"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    for id in &run_ids {
        assert_eq!(
            ended.get(id).copied(),
            Some(1),
            "run {id} ended {:?} times",
            ended.get(id)
        );
    }
    // At most one env.promoted and one image.pushed per (run, stage).
    for ty in ["env.promoted", "image.pushed"] {
        let mut seen = HashSet::new();
        for e in of_type(ty) {
            assert!(
                seen.insert(run_stage(e)),
                "{ty} twice for {:?}",
                run_stage(e)
            );
        }
    }
    // No (run, stage) deployed twice.
    let log = deploy.git(["log", "--format=%B%x00", "main"]).unwrap();
    let mut deployed = HashSet::new();
    for message in log.split('\0').filter(|m| m.trim().starts_with("deploy ")) {
        let stage = message
            .trim()
            .strip_prefix("deploy ")
            .and_then(|m| m.split(':').next())
            .unwrap_or_default()
            .to_owned();
        let run = message
            .lines()
            .find_map(|l| l.strip_prefix("run "))
            .unwrap_or_default()
            .to_owned();
        assert!(
            deployed.insert((run.clone(), stage.clone())),
            "({run}, {stage}) deployed twice:\n{log}"
        );
    }
    // Each stage runs the release its last env.promoted names.
    for i in 0..PIPELINES {
        for stage in STAGES {
            let last = rows.iter().rev().find(|r| {
                r.1 == "io.gantry.env.promoted.v1"
                    && r.2["pipeline"] == format!("chaos-{i}")
                    && r.2["data"]["stage"] == stage
            });
            let file = deploy
                .git(["show", &format!("main:envs/chaos-{i}/{stage}.yaml")])
                .unwrap();
            match last {
                Some(e) => {
                    let digest = e.2["data"]["digest"].as_str().unwrap();
                    assert!(
                        file.contains(digest),
                        "chaos-{i}/{stage} runs\n{file}\nbut its last env.promoted names {digest}"
                    );
                }
                None => assert!(
                    file.contains("image: none"),
                    "chaos-{i}/{stage} deployed without env.promoted: {file}"
                ),
            }
        }
    }
    // API Manager: each change (a summary) written at most once.
    let mut writes: HashMap<String, usize> = HashMap::new();
    for call in apim
        .requests()
        .iter()
        .filter(|r| r.method == "PUT" && r.path.contains("/proxies/"))
    {
        if let Some(n) = call
            .body
            .as_deref()
            .and_then(|b| b.split("chaos change ").nth(1))
            .and_then(|rest| rest.split('"').next())
        {
            *writes.entry(n.to_owned()).or_default() += 1;
        }
    }
    for (change, count) in &writes {
        assert_eq!(
            *count, 1,
            "API Manager written {count} times for change {change}"
        );
    }

    // NATS holds exactly the log: every event once, in order.
    let in_log: Vec<&String> = rows.iter().map(|r| &r.0).collect();
    assert_nats_holds_log(&nats.url(), &stream_name, &in_log).await;

    let mut by_status: HashMap<&str, usize> = HashMap::new();
    for id in &run_ids {
        *by_status.entry(statuses[id].as_str()).or_default() += 1;
    }
    let kills: usize = chaos.kills.values().sum();
    println!(
        "chaos: {runs} runs over {PIPELINES} pipelines ({by_status:?}); {kills} SIGKILLs {:?}, \
         NATS restarted {}x, Postgres restarted {}x; chaos for {:.0?}, every run ended after {:.0?}; \
         {} events; {} deploy commits; {} API Manager changes",
        chaos.kills,
        chaos.nats_restarts,
        chaos.postgres_restarts,
        chaos_ended,
        all_ended,
        rows.len(),
        deployed.len(),
        writes.len(),
    );
    assert_eq!(chaos.nats_restarts, 1, "NATS was restarted");
    assert_eq!(chaos.postgres_restarts, 1, "Postgres was restarted");
    assert!(kills >= kills_wanted, "{kills} kills");
}
