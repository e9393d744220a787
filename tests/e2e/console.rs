//! The web console in headless Chromium, against the real `gantry up`:
//! sign-in sessions, what runs where, deep links, approvals, rejections,
//! rollback, cancel, live updates without reload, and the screenshots in
//! the README (docs/screenshots/).

use std::time::Duration;

use fantoccini::key::Key;
use gantry_tests::GitRepo;
use serde_json::{json, Value};

use crate::browser::Browser;
use crate::common::*;

const WAIT: Duration = Duration::from_secs(30);

fn dev1() -> Value {
    json!({ "name": "Dev One", "email": "dev@example.com", "username": "dev1" })
}

fn short(commit: &str) -> &str {
    &commit[..7]
}

/// `POST {base}{path}` with `body`, as `token`'s user when given.
async fn post(base: &str, token: Option<&str>, path: &str, body: Value) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .json(&body);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await.unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

/// A repository with a first commit, and a work dir whose pipeline
/// `banking` follows it with `stages` (YAML under `stages:`).
fn banking_with(stages: &str) -> (GitRepo, String, tempfile::TempDir) {
    let repo = GitRepo::init().unwrap();
    write_minimal_project(&repo);
    let first = repo.commit("first").unwrap();
    let dir = pipelines_dir(
        "banking",
        &format!("{}stages:\n{stages}", banking(repo.path().display())),
    );
    (repo, first, dir)
}

/// Signs in through the form (the token typed, Enter pressed).
async fn sign_in(browser: &Browser, token: &str) {
    let field = browser.field(None, "API token").await;
    field
        .send_keys(&format!("{token}{}", char::from(Key::Enter)))
        .await
        .unwrap();
}

async fn no_unnamed_controls(browser: &Browser) {
    let unnamed = browser.unnamed_controls().await;
    assert!(unnamed.is_empty(), "controls without a name: {unnamed:?}");
}

#[tokio::test]
async fn release_managers_sign_in_see_what_runs_where_and_approve_without_reload() {
    let (repo, first, dir) = banking_with(
        "  - name: test\n  - name: prod\n\
         \x20   approval: { required: 2, approvers: [release-managers], allow_self: false }\n\
         \x20   freeze: [ { from: \"2030-12-24T00:00:00Z\", to: \"2030-12-27T00:00:00Z\" } ]\n",
    );
    let tokens = write_api_tokens(dir.path(), TOKENS);
    let gantry = Gantry::start(dir.path(), &["up"], &[("GANTRY_API_TOKENS", &tokens)]).await;
    let base = gantry.url();
    let run = push_local_commit(&base, &repo, &first, dev1()).await;
    wait_stage_status(
        &base,
        Some("tok-rita"),
        &run,
        ("prod", "awaiting_approval"),
        WAIT,
    )
    .await;

    let browser = Browser::start(1280, 1000).await;

    // With tokens, every page asks for one first; an unknown one is refused.
    browser.goto(&format!("{base}/runs/{run}")).await;
    sign_in(&browser, "not-a-token").await;
    browser.wait_text("main", "not known").await;

    // The author (an approver too) signs in on the deep link, sees Approve,
    // and is told why it is refused.
    sign_in(&browser, "tok-dev").await;
    browser.wait_text(".bar", "Signed in as dev1").await;
    browser.wait_text("#stage-prod", "0 of 2 given").await;
    browser.click(Some("#stage-prod"), "Approve").await;
    browser.wait_text("#stage-prod .result", "own change").await;

    // Sign out ends the session on the server: its cookie is refused.
    let cookie = browser
        .client
        .get_named_cookie("gantry_session")
        .await
        .expect("a session cookie")
        .value()
        .to_owned();
    browser.click(None, "Sign out").await;
    browser.field(None, "API token").await;
    let old = reqwest::Client::new()
        .get(format!("{base}/api/v1/runs"))
        .header("Cookie", format!("gantry_session={cookie}"))
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), 401, "a signed-out session is over");

    // Someone who is no approver sees no Approve or Reject.
    browser.goto(&format!("{base}/runs/{run}")).await;
    sign_in(&browser, "tok-out").await;
    browser
        .wait_text("#stage-prod", "not among this stage's approvers")
        .await;
    let buttons = browser.text("#stage-prod .decide").await;
    assert!(
        !buttons.contains("Approve") && !buttons.contains("Reject"),
        "{buttons}"
    );
    browser.click(None, "Sign out").await;
    browser.field(None, "API token").await;

    // A release manager signs in; a reload keeps the session.
    browser.goto(&format!("{base}/runs/{run}")).await;
    sign_in(&browser, "tok-rita").await;
    browser.wait_text(".bar", "Signed in as rita").await;
    browser.client.refresh().await.unwrap();
    browser.wait_text(".bar", "Signed in as rita").await;
    browser.wait_text("#stage-prod", "Waits for approval").await;
    // What they approve is beside the buttons.
    browser.wait_text("#stage-prod pre", "files changed").await;
    browser.wait_text("#live", "Live").await;
    no_unnamed_controls(&browser).await;
    browser.client.set_window_size(1280, 1400).await.unwrap();
    browser.screenshot("run-awaiting-approval").await;
    browser.client.set_window_size(1280, 1000).await.unwrap();

    // Approving updates the page without a reload, and so does the second
    // approval given elsewhere.
    browser.mark_page().await;
    browser.click(Some("#stage-prod"), "Approve").await;
    browser.wait_text("#stage-prod", "granted by rita").await;
    browser
        .wait_text("#stage-prod", "1 of 2 given by rita")
        .await;
    let (status, body) = post(
        &base,
        Some("tok-sam"),
        &format!("/api/v1/runs/{run}/stages/prod/approve"),
        json!({}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    browser.wait_text("#stage-prod h3", "promoted").await;
    browser.wait_text("#run-summary", "succeeded").await;
    browser.wait_text("#timeline", "env.promoted").await;
    assert!(browser.still_same_page().await, "the page was reloaded");

    // The overview: what runs where, who approved it.
    browser.goto(&format!("{base}/")).await;
    let prod = browser
        .wait_text("[data-stage=prod] .now", short(&first))
        .await;
    assert!(prod.contains("approved by rita, sam"), "{prod}");
    browser
        .wait_text("[data-stage=test] .now", short(&first))
        .await;
    browser.wait_text("#live", "Live").await;
    no_unnamed_controls(&browser).await;

    // A new run appears live, waiting for prod and saying why.
    browser.mark_page().await;
    repo.write("gateway/values.yaml", "---\nquota: 10\n")
        .unwrap();
    let second = repo.commit("second").unwrap();
    let run2 = push_local_commit(&base, &repo, &second, dev1()).await;
    let waits = browser
        .wait_text("[data-stage=prod] .waits", short(&second))
        .await;
    browser
        .wait_text("[data-stage=prod] .waits", "awaiting approval")
        .await;
    assert!(
        browser.still_same_page().await,
        "the overview was reloaded: {waits}"
    );
    browser.screenshot("overview").await;

    // A rejection needs a reason; the API's answer is on the page.
    browser.goto(&format!("{base}/runs/{run2}")).await;
    browser.click(Some("#stage-prod"), "Reject").await;
    browser
        .wait_text(
            "#stage-prod form[data-action$='/reject'] .result",
            "needs a `reason`",
        )
        .await;
    let reason = browser.field(Some("#stage-prod"), "Reason").await;
    reason.send_keys("the quota is wrong").await.unwrap();
    browser.click(Some("#stage-prod"), "Reject").await;
    browser.wait_text("#stage-prod h3", "rejected").await;
    browser.wait_text("#stage-prod", "the quota is wrong").await;

    // The pipeline: runs × stages, freezes, deploy history.
    browser.goto(&format!("{base}/pipelines/banking")).await;
    browser.wait_text("#matrix", short(&second)).await;
    browser.wait_text("#matrix", "rejected").await;
    browser.wait_text("#stage-prod", "Freeze").await;
    browser.wait_text("#history", "runs now").await;
    no_unnamed_controls(&browser).await;
    browser.screenshot("pipeline").await;

    // Phone width: nothing runs off the side of the page.
    browser.client.set_window_size(390, 844).await.unwrap();
    for path in ["/", "/pipelines/banking", &format!("/runs/{run}")] {
        browser.goto(&format!("{base}{path}")).await;
        browser.wait_text("main", "").await;
        let overflow = browser
            .client
            .execute(
                "return document.documentElement.scrollWidth - window.innerWidth;",
                vec![],
            )
            .await
            .unwrap();
        assert!(
            overflow.as_i64().unwrap_or(0) <= 0,
            "{path} is wider than a phone: {overflow}"
        );
    }
}

#[tokio::test]
async fn operators_roll_back_and_cancel_and_the_page_follows_the_log() {
    let (repo, first, dir) = banking_with(
        "  - name: test\n  - name: prod\n    approval: { required: 1, allow_self: true }\n",
    );
    let mut gantry = Gantry::start(dir.path(), &["up"], &[]).await;
    let base = gantry.url();

    // A commit message is shown as text, never run as markup.
    let (status, body) = post(
        &base,
        None,
        "/api/v1/runs",
        json!({ "pipeline": "banking", "commit": first, "message": "<script>window.__xss = 1</script><b>bold</b>" }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let run1 = body["run_id"].as_str().unwrap().to_owned();
    wait_stage_status(&base, None, &run1, ("prod", "awaiting_approval"), WAIT).await;

    // Without tokens (loopback only) the console needs no sign-in.
    let browser = Browser::start(1280, 1000).await;
    browser.goto(&format!("{base}/runs/{run1}")).await;
    let summary = browser
        .wait_text("#run-summary", "<script>window.__xss = 1</script>")
        .await;
    assert!(summary.contains("<b>bold</b>"), "{summary}");
    let xss = browser
        .client
        .execute(
            "return window.__xss === undefined && !document.querySelector('#run-summary b');",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(xss, json!(true), "the message ran as markup");
    browser.click(Some("#stage-prod"), "Approve").await;
    browser.wait_text("#stage-prod h3", "promoted").await;

    // A second release of prod, then back to the first from the pipeline page.
    repo.write("gateway/values.yaml", "---\nquota: 10\n")
        .unwrap();
    let second = repo.commit("second").unwrap();
    let run2 = trigger_run(&base, None, "banking", &second).await;
    wait_stage_status(&base, None, &run2, ("prod", "awaiting_approval"), WAIT).await;
    let (status, body) = post(
        &base,
        None,
        &format!("/api/v1/runs/{run2}/stages/prod/approve"),
        json!({}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    wait_stage_status(&base, None, &run2, ("prod", "promoted"), WAIT).await;

    browser.goto(&format!("{base}/pipelines/banking")).await;
    browser.wait_text("#stage-prod .now", short(&second)).await;
    let release = browser.field(Some("#stage-prod"), "Release").await;
    release.select_by_value(&run1).await.unwrap();
    browser
        .type_into(
            Some("#stage-prod form[data-action$='/rollback']"),
            "Reason",
            "the quota broke clients",
        )
        .await;
    browser.mark_page().await;
    browser.click(Some("#stage-prod"), "Roll back").await;
    browser.wait_text("#stage-prod", "Rollback started").await;
    // The stage runs the first release again, and the page says so by itself.
    browser.wait_text("#stage-prod .now", short(&first)).await;
    browser.wait_text("#history", "rolled back").await;
    assert!(browser.still_same_page().await);

    // Trigger a commit of the branch from the page: the new run appears
    // there live; Cancel stops it.
    repo.write("gateway/values.yaml", "---\nquota: 20\n")
        .unwrap();
    let third = repo.commit("third").unwrap();
    browser.type_into(None, "Commit", &third).await;
    browser.click(None, "Trigger").await;
    browser
        .wait_text("form.trigger .result", "Run started")
        .await;
    let run3 = browser
        .client
        .execute(
            "return document.querySelector('form.trigger .result a').getAttribute('href').split('/').pop();",
            vec![],
        )
        .await
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    browser.wait_text("#matrix", short(&third)).await;
    assert!(
        browser.still_same_page().await,
        "the pipeline page was reloaded"
    );
    wait_stage_status(&base, None, &run3, ("prod", "awaiting_approval"), WAIT).await;
    browser.goto(&format!("{base}/runs/{run3}")).await;
    browser.mark_page().await;
    browser.click(Some("#run-summary"), "Cancel").await;
    browser.wait_text("#run-summary", "cancelled").await;
    assert!(browser.still_same_page().await);

    // A lost connection says so, and resumes when Gantry is back.
    browser.wait_text("#live", "Live").await;
    gantry.kill();
    browser.wait_text("#live", "Connection lost").await;
    gantry.restart().await;
    browser.wait_text("#live", "Reconnected").await;
    browser.wait_text("#timeline", "run.cancelled").await;
}

#[tokio::test]
async fn pause_and_resume_from_the_pipeline_page() {
    let (_repo, _first, dir) = banking_with("  - name: test\n  - name: prod\n");
    let gantry = Gantry::start(dir.path(), &["up"], &[]).await;
    let base = gantry.url();
    let browser = Browser::start(1280, 1000).await;
    browser.goto(&format!("{base}/pipelines/banking")).await;
    browser
        .type_into(Some("#stage-prod"), "Reason", "incident 4711")
        .await;
    browser.click(Some("#stage-prod"), "Pause").await;
    browser
        .wait_text("#stage-prod .paused", "incident 4711")
        .await;
    browser.click(Some("#stage-prod"), "Resume").await;
    browser.button(Some("#stage-prod"), "Pause").await;
    browser.goto(&format!("{base}/")).await;
    assert_eq!(browser.text("[data-stage=prod] .paused").await, "");
}

#[tokio::test]
async fn a_session_request_with_a_foreign_origin_is_refused() {
    let dir = workdir();
    let tokens = write_api_tokens(dir.path(), TOKENS);
    let gantry = Gantry::start(dir.path(), &["up"], &[("GANTRY_API_TOKENS", &tokens)]).await;
    let base = gantry.url();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let sign_in = |origin: &str, proto: Option<&str>| {
        let mut req = http
            .post(format!("{base}/console/sign-in"))
            .header("Origin", origin)
            .form(&[("token", "tok-rita"), ("next", "/pipelines/banking")]);
        if let Some(p) = proto {
            req = req.header("X-Forwarded-Proto", p);
        }
        req.send()
    };

    // Signing in from another site's page is refused.
    assert_eq!(
        sign_in("http://evil.example", None).await.unwrap().status(),
        403
    );

    let resp = sign_in(&base, None).await.unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "/pipelines/banking");
    let set = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attr), "{set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP: {set}");
    let cookie = set.split(';').next().unwrap().to_owned();
    let https = sign_in(&base, Some("https")).await.unwrap();
    assert!(https.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("; Secure"));

    // The session reads the API and the pages; the token is nowhere in them.
    let get = |path: &str| {
        http.get(format!("{base}{path}"))
            .header("Cookie", &cookie)
            .send()
    };
    assert_eq!(get("/api/v1/runs").await.unwrap().status(), 200);
    let page = get("/").await.unwrap();
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let html = page.text().await.unwrap();
    assert!(
        html.contains("Signed in as <strong>rita</strong>"),
        "{html}"
    );
    assert!(!html.contains("tok-rita"));
    // Deep links to what does not exist answer a page that says so.
    for path in ["/runs/no-such-run", "/pipelines/no-such-pipeline"] {
        let missing = get(path).await.unwrap();
        assert_eq!(missing.status(), 404, "{path}");
        let kind = missing.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(kind.starts_with("text/html"), "{path}: {kind}");
    }

    // A change with the session from another origin, or naming none, is refused.
    let trigger = |origin: Option<&str>, auth: (&str, String)| {
        let mut req = http
            .post(format!("{base}/api/v1/runs"))
            .header(auth.0, auth.1)
            .json(&json!({ "pipeline": "banking", "commit": commit_sha(1) }));
        if let Some(o) = origin {
            req = req.header("Origin", o);
        }
        req.send()
    };
    for origin in [Some("http://evil.example"), Some("null"), None] {
        let resp = trigger(origin, ("Cookie", cookie.clone())).await.unwrap();
        assert_eq!(resp.status(), 403, "origin {origin:?}");
        let problem: Value = resp.json().await.unwrap();
        assert!(
            problem["type"].as_str().unwrap().ends_with("cross-origin"),
            "{problem}"
        );
    }
    // From the console's own origin it goes through to the API's checks.
    let same = trigger(Some(&base), ("Cookie", cookie.clone()))
        .await
        .unwrap();
    assert!(
        ![401, 403].contains(&same.status().as_u16()),
        "{}",
        same.status()
    );
    // A bearer token from another site's page is refused too.
    let bearer = trigger(
        Some("http://evil.example"),
        ("Authorization", "Bearer tok-rita".into()),
    )
    .await
    .unwrap();
    assert_eq!(bearer.status(), 403);

    // Signing out ends the session.
    let out = http
        .post(format!("{base}/console/sign-out"))
        .header("Origin", &base)
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    assert!(out.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    assert_eq!(get("/api/v1/runs").await.unwrap().status(), 401);
}
