//! `cargo bench -p gantry-tests --bench apim`: what reconciling a stage's
//! API Manager data costs Gantry, against the in-process API Manager double
//! (so the time is Gantry's planning, comparing and HTTP round trips on
//! loopback, not a real API Manager's work): creating N published APIs with
//! a client organization grant, then the no-op reconciliation that every
//! later promotion of an unchanged configuration does (reads only; its
//! request count is what a real API Manager would see).
//!
//! `GANTRY_BENCH_APIS` (default 20) APIs, `GANTRY_BENCH_ROUNDS` (default 20)
//! no-op rounds.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use gantry_apim::client::{ApiManagerClient, ClientConfig};
use gantry_apim::desired::{
    ApiSpecification, ApiState, DesiredApi, DesiredState, GrantMode, SpecKind, SpecSource,
};
use gantry_apim::reconcile::{self, ReconcileOptions};
use gantry_pipeline::ApimVersion;
use gantry_tests::apimanager::{ApiManagerDouble, DEFAULT_PASSWORD, DEFAULT_USER};
use serde_json::{json, Map};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn desired(n: usize) -> DesiredState {
    let spec = std::fs::read(
        gantry_tests::wiremock::default_fixture_dir().join("../examples/petstore.json"),
    )
    .expect("petstore.json fixture");
    let mut fields = Map::new();
    fields.insert("summary".into(), json!("benchmark API"));
    fields.insert("tags".into(), json!({ "team": ["bench"] }));
    let apis = (0..n)
        .map(|i| DesiredApi {
            source: PathBuf::from(format!("apis/api{i}/api-config.json")),
            name: format!("API {i}"),
            path: format!("/bench/api{i}"),
            version: Some("1.0.0".into()),
            state: ApiState::Published,
            vhost: None,
            api_routing_key: None,
            organization: "API Development".into(),
            backend_basepath: None,
            specification: ApiSpecification {
                source: SpecSource::File {
                    path: PathBuf::from(format!("apis/api{i}/petstore.json")),
                    content: spec.clone(),
                },
                kind: SpecKind::Swagger,
            },
            client_organizations: vec!["Partners".into()],
            applications: Vec::new(),
            client_orgs_mode: GrantMode::Add,
            client_apps_mode: GrantMode::Add,
            proxy_fields: fields.clone(),
        })
        .collect();
    DesiredState {
        apis,
        ..DesiredState::default()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    // Test runners list and run every target (`cargo nextest run
    // --all-targets` asks with `--list`); this one runs under `cargo bench`
    // only, which passes `--bench`.
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") || args.iter().any(|a| a == "--list") {
        return Ok(());
    }
    let n = env_usize("GANTRY_BENCH_APIS", 20);
    let rounds = env_usize("GANTRY_BENCH_ROUNDS", 20).max(1);
    let apim = ApiManagerDouble::start().await?;
    apim.add_organization("API Development");
    apim.add_organization("Partners");
    let client = ApiManagerClient::new(ClientConfig::new(
        apim.url(),
        ApimVersion::V1_4,
        DEFAULT_USER,
        DEFAULT_PASSWORD,
    ))?;
    client.login().await?;
    let state = desired(n);
    let options = ReconcileOptions::default();

    apim.clear_requests();
    let started = Instant::now();
    let changes = reconcile::reconcile(&client, &state, &options).await?;
    let create = started.elapsed();
    let create_requests = apim.requests().len();
    let create_writes = apim.write_calls().len();
    assert_eq!(apim.proxies().len(), n, "every API created");

    let mut times = Vec::with_capacity(rounds);
    let mut requests = 0;
    for _ in 0..rounds {
        apim.clear_requests();
        let started = Instant::now();
        let again = reconcile::reconcile(&client, &state, &options).await?;
        times.push(started.elapsed());
        assert!(
            again.is_empty(),
            "an unchanged state changes nothing: {again:?}"
        );
        assert!(apim.write_calls().is_empty(), "and writes nothing");
        requests = apim.requests().len();
    }
    times.sort();
    client.logout().await?;

    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
    println!("apim reconcile, {n} published APIs with a client organization each");
    println!(
        "  create:  {} ({} changes, {create_requests} requests of which {create_writes} writes)",
        ms(create),
        changes.len()
    );
    println!(
        "  no-op:   p50 {} / max {} over {rounds} rounds ({requests} requests, 0 writes)",
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 1.0))
    );
    let per_api = requests as f64 / n as f64;
    println!("  no-op requests per API: {per_api:.1}");
    Ok(())
}
