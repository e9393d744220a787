//! Loading and validation tests: every rule, error positions, and the
//! example pipelines shipped in `pipelines/`.

use std::path::Path;
use std::time::Duration;

use super::*;
use gantry_proto::Step;

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../pipelines");

/// A valid pipeline; tests append or alter lines to break one rule at a time.
const HEAD: &str = "\
name: demo
source:
  repo: /srv/git/demo.git
gateway:
  format: yaml
  path: gateway/
apis:
  path: apis/
image:
  base: registry.example.com/axway/apigw-emt:7.7
  repository: registry.example.com/apim/demo
";

fn with_stages(stages: &str) -> String {
    format!("{HEAD}stages:\n{stages}")
}

fn parse(text: &str) -> Result<Pipeline, PipelineErrors> {
    parse_str("test.yaml", text)
}

fn errors(text: &str) -> Vec<PipelineError> {
    match parse(text) {
        Ok(p) => panic!("expected errors, parsed {p:?}"),
        Err(e) => e.0,
    }
}

/// The single error for `text`, asserting its field path.
fn only_error(text: &str, field: &str) -> PipelineError {
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "expected one error, got: {errs:#?}");
    let e = errs.into_iter().next().expect("one error");
    assert_eq!(e.field, field, "{e}");
    e
}

/// Asserts an error for `field` whose message contains `needle`, at `line`.
fn expect_error(text: &str, field: &str, needle: &str, line: u32) {
    let errs = errors(text);
    let found = errs
        .iter()
        .find(|e| e.field == field && e.message.contains(needle));
    match found {
        Some(e) => assert_eq!(e.line, Some(line), "{e}"),
        None => panic!("no error for {field} containing {needle:?} in {errs:#?}"),
    }
}

#[test]
fn example_pipelines_are_valid() {
    let set = match load_dir(EXAMPLES) {
        Ok(set) => set,
        Err(e) => panic!("pipelines/ has errors:\n{e}"),
    };
    let names: Vec<&str> = set.names().collect();
    assert_eq!(names, ["banking", "demo", "payments-k8s", "petstore-fed"]);

    let banking = set.get("banking").expect("banking");
    assert_eq!(banking.gateway.format, GatewayFormat::Yaml);
    assert_eq!(
        banking.source.token,
        Some(SecretRef::Env("GIT_TOKEN".into()))
    );
    let test = &banking.stages[0];
    assert_eq!(
        test.ready.as_ref().map(|r| r.timeout),
        Some(Duration::from_secs(300))
    );
    let smoke = &test.smoke[0];
    assert_eq!(
        smoke.request.headers.get("KeyId"),
        Some(&HeaderValue::Secret(SecretRef::Env("TEST_KEY".into())))
    );
    assert_eq!(smoke.expect.status, Some(200));
    assert_eq!(smoke.expect.json.get("/0/id"), Some(&serde_json::json!(1)));
    assert_eq!(smoke.expect.max_latency, Some(Duration::from_millis(800)));
    assert!(matches!(
        test.deploy.as_ref().map(Deploy::method),
        Some(DeployMethod::GitOps(g)) if g.key == "apitraffic.image"
    ));
    let prod = &banking.stages[1];
    let approval = prod.approval.as_ref().expect("approval");
    assert_eq!(approval.required, 2);
    assert_eq!(approval.expires, Some(Duration::from_secs(72 * 3600)));
    assert_eq!(prod.freeze.len(), 1);
    assert!(prod
        .frozen_at("2026-12-25T12:00:00Z".parse().expect("time"))
        .is_some());
    assert!(prod
        .frozen_at("2026-12-27T00:00:00Z".parse().expect("time"))
        .is_none());

    let fed = set.get("petstore-fed").expect("petstore-fed");
    assert_eq!(fed.gateway.format, GatewayFormat::Fed);
    assert_eq!(fed.stages.len(), 1);
    assert!(matches!(
        fed.stages[0].deploy.as_ref().map(Deploy::method),
        Some(DeployMethod::Command(c)) if c[0] == "sh"
    ));
    assert_eq!(fed.stages[0].queue, QueuePolicy::Fifo);

    let k8s = set.get("payments-k8s").expect("payments-k8s");
    let test = &k8s.stages[0];
    assert!(matches!(
        test.deploy.as_ref().map(Deploy::method),
        Some(DeployMethod::Kubernetes(k)) if k.deployment == "axway-apim-apitraffic"
    ));
    assert_eq!(test.timeout(Step::Deploy), Some(Duration::from_secs(600)));
    let perf = &k8s.stages[1];
    let ready = perf.ready.as_ref().expect("ready");
    assert!(ready.argocd.is_some() && ready.kubernetes.is_some() && ready.url.is_some());
    let seed: Vec<(&str, Option<f64>)> = perf
        .perf
        .iter()
        .map(|p| (p.name.as_str(), p.expect.min_tps))
        .collect();
    assert_eq!(
        seed,
        [
            ("api-key", Some(750.0)),
            ("oauth", Some(670.0)),
            ("passthrough-1k", Some(1270.0))
        ]
    );
    assert_eq!(
        perf.perf[2].request.body.as_ref().map(String::len),
        Some(1024)
    );
    assert!(k8s.steps(perf).contains(&Step::Perf));
    assert!(!k8s.rollback_steps("perf").contains(&Step::Approval));
    // Kubeconfigs, the Argo CD token and perf headers are masked secrets.
    let refs = k8s.secret_refs();
    for expected in [
        SecretRef::Env("ARGOCD_TOKEN".into()),
        SecretRef::Env("PERF_BEARER".into()),
        SecretRef::File("/etc/gantry/kube/perf.kubeconfig".into()),
    ] {
        assert!(refs.contains(&&expected), "{expected:?} not in {refs:?}");
    }

    let demo = set.get("demo").expect("demo");
    assert!(demo.image.is_none());
    assert_eq!(
        set.file_of("demo").and_then(Path::file_name),
        Some("demo.yaml".as_ref())
    );
}

#[test]
fn defaults_are_applied() {
    let p = parse(&with_stages(
        "  - name: test
    apimanager: { url: https://apim:8075, username: env:U, password: env:P }
    ready: { url: https://gw/healthcheck }
    smoke:
      - name: s
        request: { url: https://gw/x }
    approval: { approvers: [ops] }
",
    ))
    .expect("valid");
    assert_eq!(p.source.branch, "main");
    let s = &p.stages[0];
    assert_eq!(s.queue, QueuePolicy::Latest);
    assert_eq!(
        s.apimanager.as_ref().map(|a| a.version),
        Some(ApimVersion::V1_4)
    );
    assert_eq!(ApimVersion::V1_4.base_path(), "/api/portal/v1.4");
    assert_eq!(
        s.ready.as_ref().map(|r| r.timeout),
        Some(Duration::from_secs(300))
    );
    assert_eq!(s.smoke[0].request.method, "GET");
    assert_eq!(s.smoke[0].expect, SmokeExpect::default());
    let a = s.approval.as_ref().expect("approval");
    assert_eq!((a.required, a.allow_self, a.expires), (1, false, None));
    assert!(!p.gateway.render);
}

#[test]
fn stage_plan_defaults_to_previous_stage() {
    let p = parse(&with_stages(
        "  - name: test
  - name: preprod
  - name: prod
    after: test
",
    ))
    .expect("valid");
    let plan: Vec<(&str, Option<&str>)> = p
        .stage_plan()
        .iter()
        .map(|s| (s.stage.name.as_str(), s.after))
        .collect();
    assert_eq!(
        plan,
        [
            ("test", None),
            ("preprod", Some("test")),
            ("prod", Some("test"))
        ]
    );
    assert!(p.stage("preprod").is_some());
    assert!(p.stage("nope").is_none());
}

// ---- parse errors: positions and field paths ---------------------------

#[test]
fn missing_required_field_names_field_and_line() {
    let text = "name: demo\nsource:\n  branch: main\ngateway: { format: yaml, path: g/ }\nstages: [ { name: a } ]\n";
    let e = only_error(text, "source.repo");
    assert!(e.message.contains("missing required field `repo`"), "{e}");
    assert_eq!(
        (e.line, e.column),
        (Some(2), Some(1)),
        "points at `source:`"
    );

    // Reported at the mapping's last key by the parser; still the mapping here.
    let text = "name: demo\nsource:\n  branch: main\n  token: env:T\ngateway: { format: yaml, path: g/ }\nstages: [ { name: a } ]\n";
    let e = only_error(text, "source.repo");
    assert_eq!(e.line, Some(2));

    let e = only_error(
        &with_stages("  - name: a\n  - after: a\n"),
        "stages[1].name",
    );
    assert!(e.message.contains("`name`"), "{e}");
    assert_eq!(e.line, Some(14));

    let e = only_error(
        "name: demo\nsource: { repo: /srv/x }\nstages: [ { name: a } ]\n",
        "gateway",
    );
    assert!(
        e.message.contains("missing required field `gateway`"),
        "{e}"
    );
    assert_eq!(e.line, Some(1));
}

#[test]
fn unknown_key_names_key_and_line() {
    let text = HEAD.replace(
        "  repo: /srv/git/demo.git\n",
        "  repo: /srv/git/demo.git\n  brnach: dev\n",
    );
    let e = only_error(&with_stages_text(&text, "  - name: a\n"), "source.brnach");
    assert!(e.message.contains("unknown key `brnach`"), "{e}");
    assert!(e.message.contains("branch"), "lists the expected keys: {e}");
    assert_eq!((e.line, e.column), (Some(4), Some(3)));
    assert_eq!(
        e.to_string(),
        format!("test.yaml:4:3: source.brnach: {}", e.message)
    );

    let e = only_error(
        &with_stages(
            "  - name: a\n  - name: b\n    approval:\n      required: 1\n      aprovers: [x]\n",
        ),
        "stages[1].approval.aprovers",
    );
    assert_eq!(e.line, Some(17));

    let e = only_error(
        &format!("{HEAD}stages: [ {{ name: a }} ]\ntimeout: 5m\n"),
        "timeout",
    );
    assert_eq!(e.line, Some(13));
}

fn with_stages_text(head: &str, stages: &str) -> String {
    format!("{head}stages:\n{stages}")
}

#[test]
fn literal_secret_is_rejected_without_echoing_it() {
    let text = HEAD.replace(
        "  repo: /srv/git/demo.git\n",
        "  repo: /srv/git/demo.git\n  token: hunter2\n",
    );
    let e = only_error(&with_stages_text(&text, "  - name: a\n"), "source.token");
    assert_eq!(e.message, SECRET_FORMAT_HINT);
    assert_eq!(e.line, Some(4));
    assert!(!e.to_string().contains("hunter2"));

    let e = only_error(
        &with_stages("  - name: a\n    apimanager: { url: https://apim, username: admin, password: env:P }\n"),
        "stages[0].apimanager.username",
    );
    assert_eq!(e.message, SECRET_FORMAT_HINT);
    assert_eq!(e.line, Some(14));

    for field in [
        "webhook_secret: s3cret",
        "token: file:relative/path",
        "token: env:bad-name",
    ] {
        let text = HEAD.replace(
            "  repo: /srv/git/demo.git\n",
            &format!("  repo: /srv/git/demo.git\n  {field}\n"),
        );
        let errs = errors(&with_stages_text(&text, "  - name: a\n"));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].line, Some(4));
    }

    let e = only_error(
        &with_stages(
            "  - name: a\n    smoke:\n      - name: s\n        request: { url: https://gw, headers: { X-Key: env:lower-case } }\n",
        ),
        "stages[0].smoke[0].request.headers.X-Key",
    );
    assert!(e.message.contains("env:"), "{e}");
}

#[test]
fn gitops_and_registry_tokens_must_be_references() {
    let e = only_error(
        &with_stages(
            "  - name: a\n    deploy:\n      gitops: { repo: https://g/x, file: v.yaml, key: a.b, token: ghp_abc }\n",
        ),
        "stages[0].deploy.gitops.token",
    );
    assert_eq!(e.message, SECRET_FORMAT_HINT);
    let text = HEAD.replace(
        "  repository: registry.example.com/apim/demo\n",
        "  repository: registry.example.com/apim/demo\n  auth: { username: env:REG_USER, password: pw }\n",
    );
    let e = only_error(
        &with_stages_text(&text, "  - name: a\n"),
        "image.auth.password",
    );
    assert_eq!(e.message, SECRET_FORMAT_HINT);
}

#[test]
fn bad_yaml_syntax_has_line_and_column() {
    let e = only_error("name: demo\nsource: { repo: /srv/x\ngateway: 1\n", "");
    assert_eq!(e.line, Some(3));
    assert!(e.column.is_some());
    assert!(e.to_string().starts_with("test.yaml:3:"), "{e}");

    let e = errors("name: demo\n  bad: indent\n").remove(0);
    assert_eq!(e.line, Some(2));

    let e = only_error("name: a\nname: b\n", "");
    assert!(e.message.contains("duplicate"), "{e}");
    assert_eq!(e.line, Some(2));
}

#[test]
fn wrong_types_and_enum_values_are_located() {
    let text = HEAD.replace("format: yaml", "format: xml");
    let e = only_error(&with_stages_text(&text, "  - name: a\n"), "gateway.format");
    assert!(
        e.message.contains("xml") && e.message.contains("pol-env"),
        "{e}"
    );
    assert_eq!((e.line, e.column), (Some(5), Some(11)));

    let e = only_error(
        &with_stages("  - name: a\n    queue: lifo\n"),
        "stages[0].queue",
    );
    assert_eq!(e.line, Some(14));

    let e = only_error(
        &with_stages("  - name: a\n    approval: { required: -1, approvers: [x] }\n"),
        "stages[0].approval.required",
    );
    assert_eq!(e.line, Some(14));

    let e = only_error(&with_stages("  - name: [a]\n"), "stages[0].name");
    assert_eq!(e.line, Some(13));

    let e = only_error(
        &with_stages(
            "  - name: a\n    freeze: [ { from: 2026-12-24, to: \"2026-12-27T00:00:00Z\" } ]\n",
        ),
        "stages[0].freeze[0].from",
    );
    assert!(e.message.contains("RFC 3339"), "{e}");
}

#[test]
fn durations_are_parsed_and_checked() {
    let e = only_error(
        &with_stages("  - name: a\n    ready: { url: https://gw, timeout: 300 }\n"),
        "stages[0].ready.timeout",
    );
    assert!(e.message.contains("no unit"), "{e}");
    assert_eq!(e.line, Some(14));

    let e = only_error(
        &with_stages("  - name: a\n    ready: { url: https://gw, timeout: 5 min }\n"),
        "stages[0].ready.timeout",
    );
    assert!(e.message.contains("invalid duration"), "{e}");

    let p = parse(&with_stages(
        "  - name: a\n    deploy: { command: [true], timeout: 1h30m }\n    approval: { approvers: [x], expires: 2d }\n",
    ))
    .expect("valid");
    let s = &p.stages[0];
    assert_eq!(
        s.deploy.as_ref().and_then(|d| d.timeout),
        Some(Duration::from_secs(5400))
    );
    assert_eq!(
        s.approval.as_ref().and_then(|a| a.expires),
        Some(Duration::from_secs(2 * 86400))
    );

    expect_error(
        &with_stages("  - name: a\n    ready: { url: https://gw, timeout: 0s }\n"),
        "stages[0].ready.timeout",
        "longer than zero",
        14,
    );
}

#[test]
fn step_timeouts_default_and_override() {
    use gantry_proto::Step;
    let p = parse(&with_stages(
        "  - name: a\n    deploy: { command: [true], timeout: 3m }\n    ready: { url: https://gw, timeout: 1m }\n  - name: b\n    deploy: { command: [true], timeout: 3m }\n    timeouts: { package: 2m, image: 20m, deploy: 15m, ready: 2m, apimanager: 1m, smoke: 30s, perf: 1h }\n",
    ))
    .expect("valid");
    let (a, b) = (&p.stages[0], &p.stages[1]);
    assert_eq!(a.timeout(Step::Package), Some(Timeouts::PACKAGE));
    assert_eq!(a.timeout(Step::Image), Some(Timeouts::IMAGE));
    // The older per-step settings still count when `timeouts` says nothing.
    assert_eq!(a.timeout(Step::Deploy), Some(Duration::from_secs(180)));
    assert_eq!(a.timeout(Step::Ready), Some(Duration::from_secs(60)));
    assert_eq!(a.timeout(Step::ApiManager), Some(Timeouts::APIMANAGER));
    assert_eq!(a.timeout(Step::Smoke), Some(Timeouts::SMOKE));
    assert_eq!(a.timeout(Step::Approval), None);
    assert_eq!(b.timeout(Step::Package), Some(Duration::from_secs(120)));
    assert_eq!(b.timeout(Step::Deploy), Some(Duration::from_secs(900)));
    assert_eq!(b.timeout(Step::Smoke), Some(Duration::from_secs(30)));
    assert_eq!(b.timeouts.perf, Some(Duration::from_secs(3600)));
    assert_eq!(p.source.timeout_or_default(), Source::DEFAULT_TIMEOUT);

    let p = parse(
        &(HEAD.replace(
            "  repo: /srv/git/demo.git\n",
            "  repo: /srv/git/demo.git\n  timeout: 45s\n",
        ) + "stages:\n  - name: a\n"),
    )
    .expect("valid");
    assert_eq!(p.source.timeout_or_default(), Duration::from_secs(45));
}

#[test]
fn step_timeouts_are_checked_and_located() {
    expect_error(
        &with_stages("  - name: a\n    timeouts: { deploy: 0s }\n"),
        "stages[0].timeouts.deploy",
        "longer than zero",
        14,
    );
    let e = only_error(
        &with_stages("  - name: a\n    timeouts:\n      smoke: 5\n"),
        "stages[0].timeouts.smoke",
    );
    assert!(e.message.contains("no unit"), "{e}");
    assert_eq!(e.line, Some(15));
    let e = errors(&with_stages(
        "  - name: a\n    timeouts:\n      approval: 5m\n",
    ));
    assert!(
        e.iter()
            .any(|e| e.message.contains("approval") && e.line == Some(15)),
        "{e:#?}"
    );
    expect_error(
        &(HEAD.replace(
            "  repo: /srv/git/demo.git\n",
            "  repo: /srv/git/demo.git\n  timeout: 0ms\n",
        ) + "stages:\n  - name: a\n"),
        "source.timeout",
        "longer than zero",
        4,
    );
}

#[test]
fn empty_file_is_an_error() {
    for text in ["", "\n# only a comment\n", "---\n"] {
        let e = only_error(text, "");
        assert!(e.message.contains("empty"), "{e}");
    }
}

// ---- semantic rules ------------------------------------------------------

#[test]
fn pipeline_name_rule() {
    for bad in ["Banking", "bank_ing", "\"\"", &"a".repeat(64)] {
        let text = HEAD.replace("name: demo", &format!("name: {bad}"));
        expect_error(
            &with_stages_text(&text, "  - name: a\n"),
            "name",
            "not a valid name",
            1,
        );
    }
}

#[test]
fn stage_name_rules() {
    expect_error(
        &with_stages("  - name: Test\n"),
        "stages[0].name",
        "not a valid name",
        13,
    );
    expect_error(
        &with_stages("  - name: test\n  - name: test\n"),
        "stages[1].name",
        "defined twice",
        14,
    );
}

#[test]
fn after_rules() {
    let text = with_stages("  - name: a\n  - name: b\n    after: nope\n");
    expect_error(&text, "stages[1].after", "no stage named `nope`", 15);
    let text = with_stages("  - name: a\n    after: b\n  - name: b\n");
    expect_error(&text, "stages[0].after", "defined later", 14);
    let text = with_stages("  - name: a\n  - name: b\n    after: b\n");
    expect_error(&text, "stages[1].after", "after itself", 15);
    // A cycle needs a forward reference, which is already rejected.
    let text = with_stages("  - name: a\n    after: b\n  - name: b\n    after: a\n");
    assert_eq!(errors(&text).len(), 1);
}

#[test]
fn at_least_one_stage() {
    expect_error(
        &format!("{HEAD}stages: []\n"),
        "stages",
        "at least one stage",
        12,
    );
    let e = only_error(HEAD, "stages");
    assert_eq!(e.line, Some(1), "absent: falls back to the document");
}

#[test]
fn approval_rules() {
    let text = with_stages("  - name: a\n    approval:\n      required: 0\n      approvers: []\n");
    expect_error(&text, "stages[0].approval.required", "at least 1", 15);
    // No approvers: anyone may approve (and without API tokens, only a
    // single approval can be given: DESIGN.md 1.7).
    let text = with_stages("  - name: a\n    approval: { required: 2 }\n");
    parse(&text).expect("approvers are optional");
    let text = with_stages("  - name: a\n    approval: { approvers: [ops, \"\"] }\n");
    expect_error(
        &text,
        "stages[0].approval.approvers[1]",
        "must not be empty",
        14,
    );
}

#[test]
fn freeze_window_rule() {
    let text = with_stages(
        "  - name: a\n    freeze:\n      - { from: \"2026-12-27T00:00:00Z\", to: \"2026-12-24T00:00:00Z\" }\n",
    );
    expect_error(&text, "stages[0].freeze[0].to", "later than `from`", 15);
    let text = with_stages(
        "  - name: a\n    freeze:\n      - from: \"2026-12-24T00:00:00Z\"\n        to: \"2026-12-24T00:00:00Z\"\n",
    );
    expect_error(&text, "stages[0].freeze[0].to", "later than `from`", 16);
}

#[test]
fn smoke_rules() {
    let text = with_stages(
        "  - name: a
    smoke:
      - name: s
        request:
          method: get
          url: apigw/pets
          headers: { \"bad header\": x }
        expect:
          status: 700
          json: { \"0/id\": 1 }
          headers: { \"a b\": x }
          max_latency: 0ms
        timeout: 0s
      - name: s
        request: { url: \"ftp://gw/x\" }
",
    );
    let errs = errors(&text);
    let want = [
        ("stages[0].smoke[0].request.method", 17),
        ("stages[0].smoke[0].request.url", 18),
        ("stages[0].smoke[0].request.headers[\"bad header\"]", 19),
        ("stages[0].smoke[0].expect.status", 21),
        ("stages[0].smoke[0].expect.headers[\"a b\"]", 23),
        ("stages[0].smoke[0].expect.json[\"0/id\"]", 22),
        ("stages[0].smoke[0].expect.max_latency", 24),
        ("stages[0].smoke[0].timeout", 25),
        ("stages[0].smoke[1].name", 26),
        ("stages[0].smoke[1].request.url", 27),
    ];
    for (field, line) in want {
        let e = errs
            .iter()
            .find(|e| e.field == field)
            .unwrap_or_else(|| panic!("no error for {field} in {errs:#?}"));
        assert_eq!(e.line, Some(line), "{e}");
    }
    assert_eq!(errs.len(), want.len(), "{errs:#?}");
}

#[test]
fn image_rules() {
    let text = HEAD
        .replace(
            "  base: registry.example.com/axway/apigw-emt:7.7",
            "  base: \"\"",
        )
        .replace("apim/demo", "apim/demo:v1");
    let text = with_stages_text(&text, "  - name: a\n");
    expect_error(&text, "image.base", "must not be empty", 10);
    expect_error(&text, "image.repository", "no tag", 11);

    let text = HEAD
        .replace(
            "  base: registry.example.com/axway/apigw-emt:7.7",
            "  base: oci:/var/lib/base:7.7",
        )
        .replace(
            "registry.example.com/apim/demo",
            "oci:/var/lib/out\n  platform: linux/amd64",
        );
    parse(&with_stages_text(&text, "  - name: a\n")).expect("oci forms are valid");

    let text = HEAD.replace("apim/demo", "apim/demo\n  platform: amd64");
    expect_error(
        &with_stages_text(&text, "  - name: a\n"),
        "image.platform",
        "linux/amd64",
        12,
    );
}

#[test]
fn deploy_rules() {
    let text = with_stages(
        "  - name: a\n    deploy:\n      gitops: { repo: https://g/x, file: /etc/v.yaml, key: a..b }\n      command: [helm]\n",
    );
    expect_error(&text, "stages[0].deploy", "not gitops and command", 14);
    expect_error(&text, "stages[0].deploy.gitops.file", "relative", 15);
    expect_error(&text, "stages[0].deploy.gitops.key", "dotted key", 15);
    let merge = text.replace("key: a..b", "key: apitraffic.<<");
    expect_error(&merge, "stages[0].deploy.gitops.key", "merge key", 15);

    let text = with_stages("  - name: a\n    deploy: { timeout: 5m }\n");
    expect_error(
        &text,
        "stages[0].deploy",
        "one of `gitops`, `kubernetes` or `command`",
        14,
    );

    let text = with_stages(
        "  - name: a\n    deploy:\n      gitops: { repo: ops/gitops, branch: refs/heads/main, file: ../v.yaml, key: k }\n",
    );
    expect_error(&text, "stages[0].deploy.gitops.repo", "absolute", 15);
    expect_error(&text, "stages[0].deploy.gitops.branch", "refs/heads", 15);
    expect_error(
        &text,
        "stages[0].deploy.gitops.file",
        "inside the repository",
        15,
    );

    let text = with_stages("  - name: a\n    deploy: { command: [\"\"] }\n");
    expect_error(&text, "stages[0].deploy.command[0]", "program name", 14);
}

#[test]
fn source_and_gateway_rules() {
    let text = HEAD
        .replace(
            "repo: /srv/git/demo.git",
            "repo: repos/demo\n  branch: \"a b\"\n  webhook_repo: demo",
        )
        .replace("path: gateway/", "path: /abs/gateway\n  render: true");
    let text = with_stages_text(&text, "  - name: a\n    values: ../up.yaml\n");
    expect_error(&text, "source.repo", "absolute", 3);
    expect_error(&text, "source.branch", "not a valid branch", 4);
    expect_error(&text, "source.webhook_repo", "full name", 5);
    expect_error(&text, "gateway.path", "relative", 8);
    expect_error(&text, "stages[0].values", "inside the repository", 17);

    let text = HEAD.replace("format: yaml", "format: pol-env").replace(
        "path: gateway/",
        "path: gateway/\n  render: true\n  yaml_path: /opt/yaml",
    );
    let text = with_stages_text(&text, "  - name: a\n    values: v.yaml\n");
    expect_error(&text, "gateway.render", "only to `format: yaml`", 7);
    expect_error(&text, "gateway.yaml_path", "only to `format: yaml`", 8);
    // Stage values are the settings of `fed` and `pol-env` packages too.
    let errors = crate::parse_str("p.yaml", &text).unwrap_err();
    assert!(
        !errors.iter().any(|e| e.field == "stages[0].values"),
        "{errors:?}"
    );

    let text = HEAD.replace(
        "path: gateway/",
        "path: gateway/\n  yaml_path: relative/dir",
    );
    expect_error(
        &with_stages_text(&text, "  - name: a\n"),
        "gateway.yaml_path",
        "absolute",
        7,
    );
}

#[test]
fn apimanager_rules() {
    let text = HEAD.replace("apis:\n  path: apis/\n", "");
    let text = with_stages_text(
        &text,
        "  - name: a\n    apimanager: { url: \"apimgr:8075\", username: env:U, password: env:P }\n",
    );
    expect_error(&text, "stages[0].apimanager", "apis.path", 12);
    expect_error(&text, "stages[0].apimanager.url", "http", 12);

    let text = with_stages(
        "  - name: a\n    apimanager: { url: https://apim, username: env:U, password: env:P, version: v1.3 }\n",
    );
    let p = parse(&text).expect("valid");
    assert_eq!(
        p.stages[0].apimanager.as_ref().map(|a| a.version),
        Some(ApimVersion::V1_3)
    );
}

#[test]
fn all_problems_in_a_file_are_reported_in_order() {
    let text = with_stages(
        "  - name: Test
    approval: { required: 0, approvers: [ops] }
  - name: prod
    after: staging
    freeze: [ { from: \"2026-12-27T00:00:00Z\", to: \"2026-12-24T00:00:00Z\" } ]
",
    );
    let errs = errors(&text);
    let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "stages[0].name",
            "stages[0].approval.required",
            "stages[1].after",
            "stages[1].freeze[0].to",
        ]
    );
    assert!(errs.iter().all(|e| e.line.is_some() && e.column.is_some()));
}

// ---- directories ---------------------------------------------------------

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).expect("write");
}

#[test]
fn errors_from_several_files_are_all_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "a.yaml", &with_stages("  - name: a\n"));
    write(
        dir.path(),
        "b.yml",
        &with_stages("  - name: a\n").replace("demo\n", "beta\n"),
    );
    write(
        dir.path(),
        "c.yaml",
        "name: c\nsource: {repo: /x}\n  broken: [\n",
    );
    write(
        dir.path(),
        "d.yaml",
        &with_stages("  - name: B\n").replace("name: demo", "name: delta"),
    );
    write(dir.path(), "e.yaml", &with_stages("  - name: a\n"));
    write(dir.path(), "notes.txt", "not a pipeline");
    write(dir.path(), ".#a.yaml", "editor lock file");
    std::fs::create_dir(dir.path().join("sub.yaml")).expect("mkdir");

    let errs = load_dir(dir.path()).expect_err("invalid files");
    let by_file: Vec<(String, &str)> = errs
        .iter()
        .map(|e| {
            let name = e
                .file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (name, e.field.as_str())
        })
        .collect();
    assert_eq!(
        by_file,
        [
            ("c.yaml".to_owned(), ""),
            ("d.yaml".to_owned(), "stages[0].name"),
            ("e.yaml".to_owned(), "name"),
        ],
        "{errs}"
    );
    let dup = errs
        .iter()
        .find(|e| e.file.ends_with("e.yaml"))
        .expect("dup");
    assert!(
        dup.message.contains("already defined in") && dup.message.contains("a.yaml"),
        "{dup}"
    );
    assert_eq!(dup.line, Some(1));
    assert_eq!(errs.to_string().lines().count(), 3);

    let (set, partial_errs) = load_dir_partial(dir.path());
    assert_eq!(set.names().collect::<Vec<_>>(), ["beta", "demo"]);
    assert_eq!(partial_errs.len(), 3);
    assert!(set.file_of("demo").is_some_and(|f| f.ends_with("a.yaml")));
}

#[test]
fn empty_and_missing_directories() {
    let dir = tempfile::tempdir().expect("tempdir");
    let set = load_dir(dir.path()).expect("empty dir is fine");
    assert!(set.is_empty());

    let missing = dir.path().join("nope");
    let errs = load_dir(&missing).expect_err("missing dir");
    assert_eq!(errs.len(), 1);
    assert!(errs.0[0].message.contains("does not exist"), "{errs}");
    assert_eq!(errs.0[0].file, missing);
}

#[test]
fn load_file_reports_io_and_utf8_problems() {
    let dir = tempfile::tempdir().expect("tempdir");
    let errs = load_file(dir.path().join("nope.yaml")).expect_err("missing");
    assert!(errs.0[0].message.contains("cannot read"), "{errs}");
    std::fs::write(dir.path().join("bin.yaml"), [b'a', 0xff, b'\n']).expect("write");
    let errs = load_file(dir.path().join("bin.yaml")).expect_err("binary");
    assert!(errs.0[0].message.contains("UTF-8"), "{errs}");
    write(dir.path(), "ok.yaml", &with_stages("  - name: a\n"));
    assert_eq!(
        load_file(dir.path().join("ok.yaml")).expect("valid").name,
        "demo"
    );
}

// ---- serialization and matching -------------------------------------------

#[test]
fn serializes_back_to_an_equal_pipeline() {
    let set = load_dir(EXAMPLES).expect("examples");
    for p in &set {
        let yaml = serde_saphyr::to_string(p).expect("serialize");
        let again = parse(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        assert_eq!(&again, p);
        serde_json::to_string(p).expect("json");
    }
}

fn set_of(texts: &[&str]) -> PipelineSet {
    texts.iter().map(|t| parse(t).expect("valid")).collect()
}

fn pipeline(name: &str, repo: &str, branch: &str, webhook_repo: Option<&str>) -> String {
    let mut text = format!(
        "name: {name}\nsource:\n  repo: \"{repo}\"\n  branch: {branch}\ngateway: {{ format: yaml, path: g/ }}\nstages: [ {{ name: a }} ]\n"
    );
    if let Some(full) = webhook_repo {
        text = text.replace("  branch:", &format!("  webhook_repo: {full}\n  branch:"));
    }
    text
}

#[test]
fn matching_push_follows_design_rules() {
    let set = set_of(&[
        &pipeline(
            "banking",
            "https://github.com/acme/banking-config.git",
            "main",
            None,
        ),
        &pipeline(
            "banking-rel",
            "git@github.com:acme/banking-config.git",
            "release",
            None,
        ),
        &pipeline(
            "mirror",
            "https://git.internal/mirrors/banking",
            "main",
            Some("acme/banking-config"),
        ),
        &pipeline("local", "/srv/git/demo.git", "main", None),
    ]);
    let names = |v: Vec<&Pipeline>| v.into_iter().map(|p| p.name.clone()).collect::<Vec<_>>();

    let github_urls = [
        "https://github.com/acme/banking-config.git",
        "git://github.com/acme/banking-config.git",
        "git@github.com:acme/banking-config.git",
        "https://github.com/acme/banking-config",
    ];
    assert_eq!(
        names(set.matching_push(&github_urls, Some("acme/banking-config"), "main")),
        ["banking", "mirror"]
    );
    assert_eq!(
        names(set.matching_push(&github_urls, None, "refs/heads/main")),
        ["banking"]
    );
    assert_eq!(
        names(set.matching_push(&github_urls, None, "release")),
        ["banking-rel"]
    );
    assert!(set
        .matching_push(&github_urls, None, "refs/tags/main")
        .is_empty());
    assert!(set.matching_push(&github_urls, None, "develop").is_empty());
    assert_eq!(
        names(set.matching_push(&["ssh://git@GitHub.com/acme/banking-config/"], None, "main")),
        ["banking"]
    );
    assert_eq!(
        names(set.matching_push(&[], Some("ACME/Banking-Config"), "main")),
        ["mirror"]
    );
    assert_eq!(
        names(set.matching_push(&["file:///srv/git/demo"], None, "main")),
        ["local"]
    );
    assert_eq!(
        names(set.matching_push(&["/srv/git/demo/"], None, "main")),
        ["local"]
    );
    assert!(set
        .matching_push(
            &["https://github.com/acme/other"],
            Some("acme/other"),
            "main"
        )
        .is_empty());
    assert!(set.matching_push(&["", " "], Some(""), "main").is_empty());
}

#[test]
fn anchors_and_merge_keys_work() {
    let text = with_stages(
        "  - &base
    name: test
    ready: { url: https://gw/healthcheck, timeout: 1m }
  - <<: *base
    name: prod
    approval: { required: 0, approvers: [ops] }
",
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].field, "stages[1].approval.required");
    assert_eq!(errs[0].line, Some(18));

    let p = parse(&text.replace("required: 0", "required: 1")).expect("valid");
    assert_eq!(p.stages[1].name, "prod");
    assert_eq!(p.stages[1].ready, p.stages[0].ready);
}

#[test]
fn following_repo_ignores_the_branch() {
    let set = set_of(&[
        &pipeline("main-line", "https://github.com/acme/x.git", "main", None),
        &pipeline("release", "git@github.com:acme/x.git", "release", None),
        &pipeline("other", "https://github.com/acme/y.git", "main", None),
    ]);
    let names: Vec<&str> = set
        .following_repo(&["https://github.com/acme/x"], None)
        .into_iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(names, ["main-line", "release"]);
}

#[test]
fn stage_env_names_and_values() {
    let text = with_stages(
        "  - name: a\n    env:\n      HOST: orders.internal\n      DB: env:DB_PASS\n      KEY: file:/run/k\n",
    );
    let p = parse(&text).expect("valid env");
    let env = &p.stages[0].env;
    assert_eq!(env["HOST"], EnvValue::Literal("orders.internal".into()));
    assert_eq!(
        env["DB"],
        EnvValue::Secret(SecretRef::Env("DB_PASS".into()))
    );
    assert_eq!(p.secret_refs().len(), 2, "the literal is no secret");
    let text = with_stages("  - name: a\n    env:\n      GANTRY_IMAGE: x\n");
    expect_error(&text, "stages[0].env.GANTRY_IMAGE", "Gantry's own", 15);
    let text = with_stages("  - name: a\n    env:\n      1BAD: x\n");
    expect_error(&text, "stages[0].env.1BAD", "not a variable name", 15);
    let text = with_stages("  - name: a\n    env:\n      X: file:relative\n");
    let e = parse(&text).expect_err("relative file");
    assert!(e.to_string().contains("absolute"), "{e}");
}

#[test]
fn repository_urls_with_credentials_are_refused_without_echoing_them() {
    for repo in [
        "https://rita:s3cr3t-token@git.example.com/a/b.git",
        "https://ghp_abcdef@github.com/a/b.git",
        "ssh://git:pw@git.example.com/a/b.git",
    ] {
        let text = HEAD.replace("/srv/git/demo.git", repo);
        assert_ne!(text, HEAD, "the fixture names the repository");
        let e = parse(&format!("{text}stages:\n  - name: a\n")).expect_err("credentials");
        let shown = e.to_string();
        assert!(shown.contains("source.token"), "{shown}");
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("ghp_abcdef"),
            "{shown}"
        );
    }
    let ssh_user = HEAD.replace("/srv/git/demo.git", "ssh://git@git.example.com/a/b.git");
    parse(&format!("{ssh_user}stages:\n  - name: a\n")).expect("an ssh user is no credential");
}

#[test]
fn access_groups_and_warnings() {
    let head = HEAD.replace(
        "  repository: registry.example.com/apim/demo\n",
        "  repository: registry.example.com/apim/demo\n  insecure: true\n",
    );
    let text = format!(
        "{head}access: {{ trigger: [dev], operate: [] }}\nstages:\n  - name: a\n    approval: {{ allow_self: true }}\n"
    );
    expect_error(&text, "access.operate", "at least one", 13);
    let fixed = text.replace("operate: []", "operate: [ops]");
    let p = parse(&fixed).expect("valid");
    let warned: Vec<String> = crate::warnings(&p).into_iter().map(|w| w.path).collect();
    assert_eq!(warned, ["image.insecure", "stages[0].approval.allow_self"]);
}

#[test]
fn notify_targets_are_parsed_and_checked() {
    let text = format!(
        "{HEAD}stages:\n  - name: a\n\
         notify:\n\
         \x20 - url: https://hooks.example.com/gantry\n    secret: env:HOOK_KEY\n    events: [run.failed, env.promoted]\n\
         \x20 - url: env:SLACK_URL\n    format: slack\n"
    );
    let p = parse(&text).expect("valid");
    assert_eq!(p.notify.len(), 2);
    assert!(p.notify[0].wants("run.failed"));
    assert!(!p.notify[0].wants("run.started"));
    assert!(p.notify[1].wants("run.started"), "no list: every event");
    assert_eq!(p.notify[1].format, crate::NotifyFormat::Slack);
    let refs: Vec<String> = p.secret_refs().iter().map(|r| r.to_string()).collect();
    assert!(refs.contains(&"env:HOOK_KEY".to_owned()), "{refs:?}");
    assert!(
        refs.contains(&"env:SLACK_URL".to_owned()),
        "a secret URL is masked like any secret: {refs:?}"
    );

    expect_error(
        &text.replace("run.failed", "run.exploded"),
        "notify[0].events[0]",
        "`run.exploded` is not an event name",
        17,
    );
    let bad_url = text.replace(
        "https://hooks.example.com/gantry",
        "ftp://hooks.example.com/x",
    );
    let e = only_error(&bad_url, "notify[0].url");
    assert!(
        !e.message.contains("hooks.example.com"),
        "URLs are not echoed: {e}"
    );
    expect_error(
        &text.replace("format: slack", "format: teams"),
        "notify[1].format",
        "teams",
        19,
    );
    expect_error(
        &text.replace("secret: env:HOOK_KEY", "secret: s3cret"),
        "notify[0].secret",
        "env:",
        16,
    );
}

#[test]
fn one_perf_scenario_is_a_map_with_defaults() {
    let p = parse(&with_stages(
        "  - name: test
    perf:
      request: { url: https://gw/pets, headers: { KeyId: env:PERF_KEY } }
      expect: { min_tps: 750, max_p95: 200ms, max_error_rate: 0.01 }
",
    ))
    .expect("valid");
    let s = &p.stages[0];
    assert_eq!(s.perf.len(), 1);
    let perf = &s.perf[0];
    assert_eq!(perf.name, "perf");
    assert_eq!(perf.duration, Duration::from_secs(60));
    assert_eq!(perf.warmup, Duration::from_secs(5));
    assert_eq!(perf.concurrency, 20);
    assert_eq!(perf.rate, None);
    assert_eq!(perf.expect.max_p95, Some(Duration::from_millis(200)));
    assert_eq!(s.timeout(Step::Perf), Some(Timeouts::PERF));
    assert_eq!(p.steps(s), [Step::Package, Step::Image, Step::Perf]);
}

#[test]
fn perf_mistakes_name_their_field() {
    let stage = |perf: &str| with_stages(&format!("  - name: test\n    perf:\n{perf}"));
    only_error(
        &stage("      request: { url: https://gw/x }\n      expect: {}\n"),
        "stages[0].perf.expect",
    );
    only_error(
        &stage("      request: { url: https://gw/x }\n      concurrency: 0\n      expect: { min_tps: 1 }\n"),
        "stages[0].perf.concurrency",
    );
    only_error(
        &stage("      request: { url: https://gw/x }\n      expect: { max_error_rate: 2 }\n"),
        "stages[0].perf.expect.max_error_rate",
    );
    only_error(
        &stage("      request: { url: ftp://gw/x }\n      expect: { min_tps: 1 }\n"),
        "stages[0].perf.request.url",
    );
    only_error(
        &stage(
            "      - { name: a, request: { url: https://gw/x }, expect: { min_tps: 1 } }\n      - { name: a, request: { url: https://gw/y }, expect: { min_tps: 1 } }\n",
        ),
        "stages[0].perf[1].name",
    );
    // A misspelled key inside the one-scenario map keeps serde's message.
    let e = errors(&stage(
        "      request: { url: https://gw/x }\n      expect: { min_tsp: 1 }\n",
    ));
    assert!(e[0].message.contains("min_tsp"), "{e:?}");
}

#[test]
fn kubernetes_and_argocd_need_what_they_name() {
    let e = only_error(
        &with_stages("  - name: test\n    ready: { timeout: 1m }\n"),
        "stages[0].ready",
    );
    assert!(e.message.contains("`url`, `kubernetes` or `argocd`"), "{e}");
    only_error(
        &with_stages(
            "  - name: test\n    ready: { kubernetes: { namespace: Apim_Test, deployment: gw } }\n",
        ),
        "stages[0].ready.kubernetes.namespace",
    );
    only_error(
        &with_stages(
            "  - name: test\n    ready: { argocd: { url: https://argocd, app: gw, token: hunter2 } }\n",
        ),
        "stages[0].ready.argocd.token",
    );
    let both = only_error(
        &with_stages(
            "  - name: test\n    deploy: { kubernetes: { namespace: a, deployment: gw }, command: [true] }\n",
        ),
        "stages[0].deploy",
    );
    assert!(
        both.message.contains("not kubernetes and command"),
        "{both}"
    );
    // The digest set comes from the pipeline's image.
    let no_image = format!(
        "{}stages:\n  - name: test\n    deploy: {{ kubernetes: {{ namespace: a, deployment: gw }} }}\n",
        HEAD.replace("image:\n  base: registry.example.com/axway/apigw-emt:7.7\n  repository: registry.example.com/apim/demo\n", "")
    );
    only_error(&no_image, "stages[0].deploy.kubernetes");
}
