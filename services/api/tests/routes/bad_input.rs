//! Bad input to every route of the API and the webhooks: malformed and
//! mistyped JSON, unknown fields, huge bodies, odd path parameters, bad query
//! parameters, wrong methods. Every answer is a 4xx problem
//! (`application/problem+json`): never a 5xx, an empty body or axum's plain
//! text; and nothing is recorded.

use crate::support::{Answer, Options, TestApp};

/// Every route of the router (`services/api/src/lib.rs`,
/// `services/webhook/src/lib.rs`), as (method, pattern, takes a JSON body).
const ROUTES: &[(&str, &str, bool)] = &[
    ("GET", "/api/v1/pipelines", false),
    ("GET", "/api/v1/pipelines/{name}", false),
    (
        "POST",
        "/api/v1/pipelines/{name}/stages/{stage}/rollback",
        true,
    ),
    ("GET", "/api/v1/runs", false),
    ("POST", "/api/v1/runs", true),
    ("GET", "/api/v1/runs/{id}", false),
    ("GET", "/api/v1/runs/{id}/events", false),
    ("GET", "/api/v1/runs/{id}/stages/{stage}/diff", false),
    ("GET", "/api/v1/runs/{id}/stages/{stage}/apis/plan", false),
    ("POST", "/api/v1/runs/{id}/stages/{stage}/approve", true),
    ("POST", "/api/v1/runs/{id}/stages/{stage}/reject", true),
    ("POST", "/api/v1/runs/{id}/cancel", true),
    ("GET", "/api/v1/events", false),
    ("POST", "/webhooks/{provider}", true),
];

/// Odd values for a path parameter, percent-encoded as sent.
fn odd_segments() -> Vec<String> {
    vec![
        "%00".into(),
        "a%00b".into(),
        "%0A".into(),
        "..".into(),
        "%2E%2E".into(),
        "%2F".into(),
        "a%2Fb".into(),
        "%2e%2e%2f%2e%2e%2fetc%2fpasswd".into(),
        "%C3%A9t%C3%A9%F0%9F%92%A5".into(),
        "%FF%FE".into(),
        "%".into(),
        "%zz".into(),
        "'%20OR%201=1--".into(),
        "x".repeat(4000),
    ]
}

/// Bodies that are not what any route takes.
fn bad_bodies() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("malformed JSON", b"{\"pipeline\": ".to_vec()),
        ("not JSON", b"pipeline=demo".to_vec()),
        ("invalid UTF-8", vec![b'{', 0xff, 0xfe, b'}']),
        ("a JSON array", b"[1, 2, 3]".to_vec()),
        ("a JSON string", b"\"demo\"".to_vec()),
        ("null", b"null".to_vec()),
        (
            "wrong types",
            br#"{"pipeline": 5, "commit": [], "message": {}, "comment": 1, "reason": false, "to": 7, "user": [], "ref": 5, "after": {}}"#
                .to_vec(),
        ),
        ("unknown fields", br#"{"zzz": 1, "admin": true}"#.to_vec()),
        ("nested garbage", "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[".repeat(1000).into_bytes()),
    ]
}

/// Fills a route pattern with the given values, others with real ones.
fn fill(pattern: &str, name: &str, stage: &str, id: &str, provider: &str) -> String {
    pattern
        .replace("{name}", name)
        .replace("{stage}", stage)
        .replace("{id}", id)
        .replace("{provider}", provider)
}

struct Sweep<'a> {
    app: &'a TestApp,
    failures: Vec<String>,
    count: usize,
}

impl Sweep<'_> {
    async fn send(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
        what: &str,
    ) {
        let mut all: Vec<(&str, &str)> = vec![
            ("Content-Type", "application/json"),
            ("X-GitHub-Event", "push"),
            ("X-Gitea-Event", "push"),
            ("X-Gitlab-Event", "Push Hook"),
            ("X-Event-Key", "repo:push"),
        ];
        all.extend_from_slice(headers);
        let answer = self.app.raw(method, target, &all, body).await;
        self.count += 1;
        if let Err(why) = check(&answer) {
            let shown: String = target.chars().take(120).collect();
            self.failures.push(format!(
                "{method} {shown} ({what}): {why}; answered {} {:?}: {}",
                answer.status,
                answer.header("content-type"),
                answer.text().chars().take(200).collect::<String>()
            ));
        }
    }
}

fn check(a: &Answer) -> Result<(), String> {
    if !(400..500).contains(&a.status) {
        return Err("not a 4xx".into());
    }
    if a.header("content-type") != Some("application/problem+json") {
        return Err("not application/problem+json".into());
    }
    let v: serde_json::Value =
        serde_json::from_slice(&a.body).map_err(|e| format!("body is not JSON: {e}"))?;
    if v["status"].as_u64() != Some(a.status as u64) {
        return Err("problem `status` differs from the HTTP status".into());
    }
    if v["title"].as_str().is_none_or(str::is_empty) {
        return Err("problem has no title".into());
    }
    Ok(())
}

async fn sweep(app: &TestApp) {
    let run = app.seed_run(&"c".repeat(40)).await;
    let head = app.head().await;
    let mut s = Sweep {
        app,
        failures: Vec::new(),
        count: 0,
    };
    let huge = vec![b'x'; 10 * 1024 * 1024];
    let real = |pattern: &str| fill(pattern, "demo", "prod", &run, "github");

    for &(method, pattern, takes_body) in ROUTES {
        // Bodies: on routes that take one, every bad kind.
        if takes_body {
            for provider in ["github", "gitlab", "gitea", "bitbucket", "generic"] {
                if !pattern.contains("{provider}") && provider != "github" {
                    continue;
                }
                let target = fill(pattern, "demo", "prod", &run, provider);
                for (what, body) in bad_bodies() {
                    s.send(method, &target, &[], Some(body), what).await;
                }
            }
        }
        // A huge body, on every route (also those that take none).
        s.send(
            method,
            &real(pattern),
            &[],
            Some(huge.clone()),
            "10 MiB body",
        )
        .await;
        // Odd path parameters, one parameter at a time.
        for odd in odd_segments() {
            for param in ["{name}", "{stage}", "{id}", "{provider}"] {
                if !pattern.contains(param) {
                    continue;
                }
                let target = real(&pattern.replace(param, &odd));
                let body = takes_body.then(|| b"{}".to_vec());
                let label = format!("odd {param} {}", odd.chars().take(20).collect::<String>());
                s.send(method, &target, &[], body, &label).await;
            }
        }
        // A method the route does not take.
        s.send("DELETE", &real(pattern), &[], None, "wrong method")
            .await;
    }

    // Bad query parameters.
    for query in [
        "/api/v1/runs?limit=abc",
        "/api/v1/runs?limit=-1",
        "/api/v1/runs?limit=0",
        "/api/v1/runs?limit=99999999999999999999999",
        "/api/v1/runs?status=x",
        "/api/v1/runs?status=%00",
        "/api/v1/runs?pipeline=%00",
        "/api/v1/runs?pipeline=%FF",
        "/api/v1/events?from=-1",
        "/api/v1/events?from=abc",
        "/api/v1/events?from=1.5",
        "/api/v1/events?follow=maybe",
        "/api/v1/events?run=%00",
        "/api/v1/events?pipeline=a%00&follow=false",
    ] {
        s.send("GET", query, &[], None, "bad query").await;
    }
    let diff = real("/api/v1/runs/{id}/stages/{stage}/diff");
    s.send("GET", &format!("{diff}?format=%00"), &[], None, "bad query")
        .await;
    s.send(
        "GET",
        "/api/v1/events?follow=false",
        &[("Last-Event-ID", "abc")],
        None,
        "bad Last-Event-ID",
    )
    .await;
    s.send(
        "GET",
        "/api/v1/events?follow=false",
        &[("Last-Event-ID", "-5")],
        None,
        "negative Last-Event-ID",
    )
    .await;
    // Paths no route serves.
    for path in [
        "/api/v1/nope",
        "/api/v2/runs",
        "/webhooks",
        "/webhooks/github/extra",
        "/webhooks/%00",
        "/nope",
    ] {
        s.send("POST", path, &[], Some(b"{}".to_vec()), "no such route")
            .await;
    }

    assert!(s.count > 300, "the sweep sent only {} requests", s.count);
    assert!(
        s.failures.is_empty(),
        "{} of {} answers were not a 4xx problem:\n{}",
        s.failures.len(),
        s.count,
        s.failures.join("\n")
    );
    assert_eq!(app.head().await, head, "bad input recorded events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_bad_input_with_a_problem_sqlite() {
    let app = TestApp::start(Options::default()).await;
    sweep(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_bad_input_with_a_problem_postgres() {
    let app = TestApp::start(Options {
        postgres: true,
        ..Options::default()
    })
    .await;
    sweep(&app).await;
}
