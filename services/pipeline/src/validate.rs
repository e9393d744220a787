//! Semantic rules a parsed pipeline must satisfy (DESIGN.md 1.2).
//!
//! Parsing proves the shape; these rules catch definitions that are
//! well-formed YAML but would fail later, mid-run, or do the wrong thing
//! silently (a stage following a stage that does not exist, a freeze window
//! that ends before it starts...). Every rule records a problem and moves on
//! so that one pass reports everything.

use std::collections::HashSet;
use std::path::{Component, Path};
use std::time::Duration;

use super::locate::{join_index, join_key};
use super::model::{GatewayFormat, Pipeline, SmokeCheck, SmokeRequest, Stage};
use super::secret::HeaderValue;
use super::verify::{KubernetesTarget, PerfScenario};

/// A rule violation at a field path, e.g. `stages[1].after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub path: String,
    pub message: String,
}

#[derive(Default)]
struct Issues(Vec<Issue>);

impl Issues {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Issue {
            path: path.into(),
            message: message.into(),
        });
    }

    fn check(&mut self, path: &str, result: Result<(), String>) {
        if let Err(message) = result {
            self.add(path, message);
        }
    }
}

/// Checks one pipeline in isolation (name uniqueness across files is the
/// loader's job).
pub fn validate(p: &Pipeline) -> Vec<Issue> {
    let mut v = Issues::default();
    v.check("name", check_name(&p.name));

    v.check("source.repo", check_repo(&p.source.repo));
    v.check(
        "source.repo",
        check_no_credentials(&p.source.repo, "source.token"),
    );
    v.check("source.branch", check_branch(&p.source.branch));
    if let Some(t) = p.source.timeout {
        v.check("source.timeout", check_positive(t));
    }
    if let Some(full_name) = &p.source.webhook_repo {
        v.check("source.webhook_repo", check_full_name(full_name));
    }

    let yaml = p.gateway.format == GatewayFormat::Yaml;
    v.check("gateway.path", check_repo_path(&p.gateway.path));
    if let Some(dir) = &p.gateway.merge_dir {
        v.check("gateway.merge_dir", check_repo_path(dir));
    }
    if p.gateway.render && !yaml {
        v.add("gateway.render", "applies only to `format: yaml`");
    }
    if let Some(path) = &p.gateway.yaml_path {
        if !yaml {
            v.add("gateway.yaml_path", "applies only to `format: yaml`");
        } else if !path.starts_with('/') {
            v.add(
                "gateway.yaml_path",
                "must be an absolute path in the image (e.g. `/opt/Axway/apigateway/yaml`)",
            );
        }
    }
    if let Some(apis) = &p.apis {
        v.check("apis.path", check_repo_path(&apis.path));
    }
    if let Some(image) = &p.image {
        v.check("image.base", check_image_ref(&image.base, true));
        v.check(
            "image.repository",
            check_image_ref(&image.repository, false),
        );
        if let Some(platform) = &image.platform {
            v.check("image.platform", check_platform(platform));
        }
    }

    if let Some(access) = &p.access {
        for (field, groups) in [("trigger", &access.trigger), ("operate", &access.operate)] {
            let Some(groups) = groups else { continue };
            let path = join_key("access", field);
            if groups.is_empty() {
                v.add(
                    &path,
                    "name at least one user or group (or leave the key out for the default)",
                );
            }
            for (k, who) in groups.iter().enumerate() {
                if who.trim().is_empty() {
                    v.add(join_index(&path, k), "must not be empty");
                }
            }
        }
    }

    for (i, target) in p.notify.iter().enumerate() {
        let path = join_index("notify", i);
        if let HeaderValue::Literal(url) = &target.url {
            // The URL is never echoed: a literal one may still hold a token.
            if check_http_url(url).is_err() {
                v.add(
                    join_key(&path, "url"),
                    "must be an http:// or https:// URL with a host (or env:NAME / file:/path)",
                );
            }
        }
        for (k, name) in target.events.iter().enumerate() {
            if gantry_proto::EventName::parse(name).is_none() {
                v.add(
                    join_index(&join_key(&path, "events"), k),
                    format!("`{name}` is not an event name (e.g. `run.failed`, `env.promoted`)"),
                );
            }
        }
    }

    if p.stages.is_empty() {
        v.add("stages", "a pipeline needs at least one stage");
    }
    let mut seen: HashSet<&str> = HashSet::new();
    for (i, stage) in p.stages.iter().enumerate() {
        let path = join_index("stages", i);
        validate_stage(&mut v, p, i, stage, &path, &seen);
        seen.insert(stage.name.as_str());
    }
    v.0
}

fn validate_stage(
    v: &mut Issues,
    p: &Pipeline,
    i: usize,
    stage: &Stage,
    path: &str,
    earlier: &HashSet<&str>,
) {
    // `at("ready.url")` → `stages[i].ready.url`
    let at = |fields: &str| {
        fields
            .split('.')
            .fold(path.to_owned(), |p, f| join_key(&p, f))
    };

    v.check(&at("name"), check_name(&stage.name));
    if earlier.contains(stage.name.as_str()) {
        v.add(
            at("name"),
            format!("stage `{}` is defined twice", stage.name),
        );
    }

    if let Some(after) = &stage.after {
        if *after == stage.name {
            v.add(at("after"), "a stage cannot come after itself");
        } else if earlier.contains(after.as_str()) {
            // Fine: refers to an earlier stage, so the plan cannot cycle.
        } else if p.stages.iter().skip(i + 1).any(|s| s.name == *after) {
            v.add(
                at("after"),
                format!("`{after}` is defined later; `after` must name an earlier stage"),
            );
        } else {
            let names: Vec<&str> = p.stages.iter().map(|s| s.name.as_str()).collect();
            v.add(
                at("after"),
                format!("no stage named `{after}` (stages: {})", names.join(", ")),
            );
        }
    }

    // For `yaml`, an overlay on the project's values.yaml; for `fed` and
    // `pol-env`, the stage's settings written as `envSettings.props`.
    if let Some(values) = &stage.values {
        v.check(&at("values"), check_repo_path(values));
    }

    if let Some(deploy) = &stage.deploy {
        let dpath = at("deploy");
        let given: Vec<&str> = [
            ("gitops", deploy.gitops.is_some()),
            ("kubernetes", deploy.kubernetes.is_some()),
            ("command", !deploy.command.is_empty()),
        ]
        .into_iter()
        .filter_map(|(name, given)| given.then_some(name))
        .collect();
        match given.as_slice() {
            [] => v.add(&dpath, "give one of `gitops`, `kubernetes` or `command`"),
            [_] => {}
            many => v.add(
                &dpath,
                format!(
                    "give one of `gitops`, `kubernetes` or `command`, not {}",
                    many.join(" and ")
                ),
            ),
        }
        if let Some(k) = &deploy.kubernetes {
            validate_kubernetes(v, k, &join_key(&dpath, "kubernetes"));
            if p.image.is_none() {
                v.add(
                    join_key(&dpath, "kubernetes"),
                    "needs the pipeline's `image` section (the image whose digest is set)",
                );
            }
        }
        if let Some(g) = &deploy.gitops {
            let gpath = join_key(&dpath, "gitops");
            v.check(&join_key(&gpath, "repo"), check_repo(&g.repo));
            v.check(
                &join_key(&gpath, "repo"),
                check_no_credentials(&g.repo, "deploy.gitops.token"),
            );
            v.check(&join_key(&gpath, "branch"), check_branch(&g.branch));
            v.check(&join_key(&gpath, "file"), check_repo_path(&g.file));
            if g.key.is_empty() || g.key.split('.').any(str::is_empty) {
                v.add(
                    join_key(&gpath, "key"),
                    "must be a dotted key like `apitraffic.image`",
                );
            } else if g.key.split('.').any(|s| s == "<<") {
                v.add(
                    join_key(&gpath, "key"),
                    "`<<` is YAML's merge key: no value can be set under it",
                );
            }
        }
        if let Some(first) = deploy.command.first() {
            if first.trim().is_empty() {
                v.add(
                    join_index(&join_key(&dpath, "command"), 0),
                    "the program name must not be empty",
                );
            }
        }
        if let Some(t) = deploy.timeout {
            v.check(&join_key(&dpath, "timeout"), check_positive(t));
        }
    }

    for (key, timeout) in stage.timeouts.written() {
        if let Some(t) = timeout {
            v.check(&join_key(&at("timeouts"), key), check_positive(t));
        }
    }

    if let Some(ready) = &stage.ready {
        if ready.url.is_none() && ready.kubernetes.is_none() && ready.argocd.is_none() {
            v.add(
                at("ready"),
                "give at least one of `url`, `kubernetes` or `argocd`",
            );
        }
        if let Some(url) = &ready.url {
            v.check(&at("ready.url"), check_http_url(url));
        }
        if let Some(k) = &ready.kubernetes {
            validate_kubernetes(v, k, &at("ready.kubernetes"));
        }
        if let Some(a) = &ready.argocd {
            v.check(&at("ready.argocd.url"), check_http_url(&a.url));
            v.check(&at("ready.argocd.app"), check_kube_name(&a.app));
            if let Some(ns) = &a.app_namespace {
                v.check(&at("ready.argocd.app_namespace"), check_kube_name(ns));
            }
            if let Some(t) = a.timeout {
                v.check(&at("ready.argocd.timeout"), check_positive(t));
            }
        }
        v.check(&at("ready.timeout"), check_positive(ready.timeout));
    }

    if let Some(apim) = &stage.apimanager {
        v.check(&at("apimanager.url"), check_http_url(&apim.url));
        if p.apis.is_none() {
            v.add(
                at("apimanager"),
                "needs the pipeline's `apis.path` (the API configurations to promote)",
            );
        }
        if let Some(ca) = &apim.ca {
            if ca.as_os_str().is_empty() {
                v.add(at("apimanager.ca"), "must not be empty");
            }
        }
    }

    for name in stage.env.keys() {
        v.check(&join_key(&at("env"), name), check_env_name(name));
    }

    let mut check_names: HashSet<&str> = HashSet::new();
    for (j, check) in stage.smoke.iter().enumerate() {
        let spath = join_index(&at("smoke"), j);
        if check.name.trim().is_empty() {
            v.add(join_key(&spath, "name"), "must not be empty");
        } else if !check_names.insert(check.name.as_str()) {
            v.add(
                join_key(&spath, "name"),
                format!(
                    "smoke check `{}` is defined twice in this stage",
                    check.name
                ),
            );
        }
        validate_smoke(v, check, &spath);
    }

    let mut scenario_names: HashSet<&str> = HashSet::new();
    for (j, scenario) in stage.perf.iter().enumerate() {
        // A single scenario is written as a map: its fields are `perf.<f>`.
        let ppath = match stage.perf.len() {
            1 => at("perf"),
            _ => join_index(&at("perf"), j),
        };
        if !scenario_names.insert(scenario.name.as_str()) {
            v.add(
                join_key(&ppath, "name"),
                format!(
                    "perf scenario `{}` is defined twice in this stage",
                    scenario.name
                ),
            );
        }
        validate_perf(v, scenario, &ppath);
    }

    if let Some(approval) = &stage.approval {
        let apath = at("approval");
        if approval.required < 1 {
            v.add(join_key(&apath, "required"), "must be at least 1");
        }
        for (k, who) in approval.approvers.iter().enumerate() {
            if who.trim().is_empty() {
                v.add(
                    join_index(&join_key(&apath, "approvers"), k),
                    "must not be empty",
                );
            }
        }
        if let Some(expires) = approval.expires {
            v.check(&join_key(&apath, "expires"), check_positive(expires));
        }
    }

    for (k, window) in stage.freeze.iter().enumerate() {
        if window.from >= window.to {
            v.add(
                join_key(&join_index(&at("freeze"), k), "to"),
                "must be later than `from`",
            );
        }
    }
}

fn validate_request(v: &mut Issues, request: &SmokeRequest, path: &str) {
    let req = join_key(path, "request");
    let method = &request.method;
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        v.add(
            join_key(&req, "method"),
            "must be an HTTP method in capitals (GET, POST, ...)",
        );
    }
    v.check(&join_key(&req, "url"), check_http_url(&request.url));
    for name in request.headers.keys() {
        v.check(
            &join_key(&join_key(&req, "headers"), name),
            check_header_name(name),
        );
    }
}

/// A Deployment's namespace, name and container are DNS labels or
/// subdomains (RFC 1123); the kubeconfig must be a reference.
fn validate_kubernetes(v: &mut Issues, k: &KubernetesTarget, path: &str) {
    v.check(&join_key(path, "namespace"), check_kube_name(&k.namespace));
    v.check(
        &join_key(path, "deployment"),
        check_kube_name(&k.deployment),
    );
    if let Some(c) = &k.container {
        v.check(&join_key(path, "container"), check_kube_name(c));
    }
    if let Some(t) = k.timeout {
        v.check(&join_key(path, "timeout"), check_positive(t));
    }
}

/// The longest a perf scenario may load a gateway; a gate, not a soak test.
const MAX_PERF_DURATION: Duration = Duration::from_secs(60 * 60);

fn validate_perf(v: &mut Issues, scenario: &PerfScenario, path: &str) {
    if scenario.name.trim().is_empty() {
        v.add(join_key(path, "name"), "must not be empty");
    }
    validate_request(v, &scenario.request, path);
    v.check(
        &join_key(path, "duration"),
        check_positive(scenario.duration),
    );
    if scenario.duration > MAX_PERF_DURATION {
        v.add(join_key(path, "duration"), "must be at most 1h");
    }
    if scenario.warmup > MAX_PERF_DURATION {
        v.add(join_key(path, "warmup"), "must be at most 1h");
    }
    if !(1..=10_000).contains(&scenario.concurrency) {
        v.add(join_key(path, "concurrency"), "must be between 1 and 10000");
    }
    if let Some(rate) = scenario.rate {
        if !(rate.is_finite() && rate > 0.0) {
            v.add(
                join_key(path, "rate"),
                "must be a number of requests per second above 0",
            );
        }
    }
    let exp = join_key(path, "expect");
    let e = &scenario.expect;
    if e.is_empty() {
        v.add(
            &exp,
            "give at least one of `min_tps`, `max_p95`, `max_p99` or `max_error_rate`",
        );
    }
    if let Some(tps) = e.min_tps {
        if !(tps.is_finite() && tps > 0.0) {
            v.add(join_key(&exp, "min_tps"), "must be a number above 0");
        }
    }
    for (key, d) in [("max_p95", e.max_p95), ("max_p99", e.max_p99)] {
        if let Some(d) = d {
            v.check(&join_key(&exp, key), check_positive(d));
        }
    }
    if let Some(rate) = e.max_error_rate {
        if !(0.0..=1.0).contains(&rate) {
            v.add(
                join_key(&exp, "max_error_rate"),
                "must be a share between 0 and 1 (0.01 is 1%)",
            );
        }
    }
}

/// A Kubernetes object name: an RFC 1123 subdomain (`[a-z0-9.-]`, at most
/// 253 characters, starting and ending alphanumeric).
fn check_kube_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a Kubernetes name (lower-case letters, digits, `-` and `.`)"
        ))
    }
}

fn validate_smoke(v: &mut Issues, check: &SmokeCheck, path: &str) {
    validate_request(v, &check.request, path);

    let exp = join_key(path, "expect");
    if let Some(status) = check.expect.status {
        if !(100..=599).contains(&status) {
            v.add(
                join_key(&exp, "status"),
                "must be an HTTP status between 100 and 599",
            );
        }
    }
    for name in check.expect.headers.keys() {
        v.check(
            &join_key(&join_key(&exp, "headers"), name),
            check_header_name(name),
        );
    }
    for pointer in check.expect.json.keys() {
        if !pointer.is_empty() && !pointer.starts_with('/') {
            v.add(
                join_key(&join_key(&exp, "json"), pointer),
                "must be a JSON pointer starting with `/` (e.g. `/0/id`), or empty for the whole body",
            );
        }
    }
    if let Some(d) = check.expect.max_latency {
        v.check(&join_key(&exp, "max_latency"), check_positive(d));
    }
    if let Some(d) = check.timeout {
        v.check(&join_key(path, "timeout"), check_positive(d));
    }
}

/// `[a-z0-9-]{1,63}`: pipeline and stage names end up in NATS subjects,
/// URLs and image tags.
/// Settings that are valid but weaken a guard; `gantry pipelines validate`
/// prints them as warnings.
pub fn warnings(p: &Pipeline) -> Vec<Issue> {
    let mut v = Issues::default();
    if p.image.as_ref().is_some_and(|i| i.insecure) {
        v.add(
            "image.insecure",
            "registry credentials and images travel over plain HTTP; use HTTPS outside a lab",
        );
    }
    for (i, stage) in p.stages.iter().enumerate() {
        let path = join_index("stages", i);
        if stage.apimanager.as_ref().is_some_and(|a| a.insecure) {
            v.add(
                join_key(&join_key(&path, "apimanager"), "insecure"),
                "the API Manager's certificate is not verified, so its password can be taken by anyone in the path; give `ca:` instead",
            );
        }
        if stage.approval.as_ref().is_some_and(|a| a.allow_self) {
            v.add(
                join_key(&join_key(&path, "approval"), "allow_self"),
                "authors may approve their own change: no separation of duties for this stage",
            );
        }
        if stage
            .ready
            .as_ref()
            .and_then(|r| r.argocd.as_ref())
            .is_some_and(|a| a.insecure)
        {
            v.add(
                join_key(&join_key(&join_key(&path, "ready"), "argocd"), "insecure"),
                "Argo CD's certificate is not verified, so its token can be taken by anyone in the path",
            );
        }
        for (j, scenario) in stage.perf.iter().enumerate() {
            if scenario.insecure {
                let ppath = match stage.perf.len() {
                    1 => join_key(&path, "perf"),
                    _ => join_index(&join_key(&path, "perf"), j),
                };
                v.add(
                    join_key(&ppath, "insecure"),
                    "the gateway's certificate is not verified; the scenario's headers go to whoever answers",
                );
            }
        }
        for (j, check) in stage.smoke.iter().enumerate() {
            if check.follow_redirects {
                v.add(
                    join_key(
                        &join_index(&join_key(&path, "smoke"), j),
                        "follow_redirects",
                    ),
                    "redirects are followed; the check's headers go only to the same origin",
                );
            }
        }
    }
    v.0
}

/// A stage variable's name: what a shell accepts, and not one of the
/// `GANTRY_*` names Gantry sets for deploy commands itself.
fn check_env_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let valid = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!(
            "`{name}` is not a variable name: use letters, digits and `_`, not starting with a digit"
        ));
    }
    if name.starts_with("GANTRY_") {
        return Err(format!(
            "`{name}`: names starting with `GANTRY_` are Gantry's own (deploy commands get GANTRY_IMAGE, GANTRY_DIGEST, ...)"
        ));
    }
    Ok(())
}

/// A repository URL must not carry credentials: the URL is shown by the API
/// and written into events. An `ssh://git@host` user is not a credential.
fn check_no_credentials(repo: &str, instead: &str) -> Result<(), String> {
    let Some((scheme, rest)) = repo.split_once("://") else {
        return Ok(());
    };
    let authority = rest.split('/').next().unwrap_or("");
    let Some((userinfo, _)) = authority.rsplit_once('@') else {
        return Ok(());
    };
    let http = matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https");
    if http || userinfo.contains(':') {
        // Never echo the URL: it holds the secret.
        return Err(format!(
            "the URL carries credentials; remove them and give `{instead}: env:NAME` (or `file:/path`)"
        ));
    }
    Ok(())
}

pub fn check_name(name: &str) -> Result<(), String> {
    let ok = (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid name: use 1 to 63 lowercase letters, digits or `-`"
        ))
    }
}

fn check_repo(repo: &str) -> Result<(), String> {
    if repo.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if repo.trim() != repo {
        return Err("must not start or end with spaces".into());
    }
    if let Some((scheme, rest)) = repo.split_once("://") {
        let scheme = scheme.to_ascii_lowercase();
        if !matches!(
            scheme.as_str(),
            "http" | "https" | "ssh" | "git" | "file" | "git+ssh" | "ssh+git"
        ) {
            return Err(format!(
                "unsupported scheme `{scheme}://` (use https, ssh, git, file or a local path)"
            ));
        }
        let authority = rest.split('/').next().unwrap_or("");
        let host = authority.rsplit('@').next().unwrap_or("");
        if scheme != "file" && host.is_empty() {
            return Err("the URL has no host".into());
        }
        return Ok(());
    }
    if repo.starts_with('/') {
        return Ok(());
    }
    // scp-like `[user@]host:path`: a colon before any slash.
    if let Some(colon) = repo.find(':') {
        if !repo[..colon].contains('/') && colon > 1 {
            return Ok(());
        }
    }
    Err("a local repository path must be absolute (or use a URL such as `https://git.example.com/team/repo.git`)".into())
}

/// A short branch name as git accepts it (`git check-ref-format --branch`).
fn check_branch(branch: &str) -> Result<(), String> {
    if branch.starts_with("refs/") {
        return Err("write the branch name without `refs/heads/`".into());
    }
    let bad = branch.is_empty()
        || branch.starts_with('-')
        || branch.starts_with('/')
        || branch.ends_with('/')
        || branch.ends_with('.')
        || branch.ends_with(".lock")
        || branch.contains("..")
        || branch.contains("//")
        || branch.contains("@{")
        || branch
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "~^:?*[\\".contains(c));
    if bad {
        Err(format!("`{branch}` is not a valid branch name"))
    } else {
        Ok(())
    }
}

/// `owner/name` (or `group/subgroup/name` on GitLab).
fn check_full_name(name: &str) -> Result<(), String> {
    let parts: Vec<&str> = name.split('/').collect();
    let ok = parts.len() >= 2
        && parts
            .iter()
            .all(|p| !p.is_empty() && !p.chars().any(|c| c.is_whitespace()));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a repository full name like `acme/banking-config`"
        ))
    }
}

/// A path inside the repository: relative and not escaping it with `..`.
fn check_repo_path(path: &Path) -> Result<(), String> {
    if path.as_os_str().is_empty() {
        return Err("must not be empty".into());
    }
    for component in path.components() {
        match component {
            Component::RootDir | Component::Prefix(_) => {
                return Err("must be relative to the repository root".into())
            }
            Component::ParentDir => return Err("must stay inside the repository (no `..`)".into()),
            Component::CurDir | Component::Normal(_) => {}
        }
    }
    Ok(())
}

fn check_http_url(url: &str) -> Result<(), String> {
    match url::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        Ok(u) if !matches!(u.scheme(), "http" | "https") => {
            Err(format!("`{url}` must be an http:// or https:// URL"))
        }
        Ok(_) => Err(format!("`{url}` has no host")),
        Err(e) => Err(format!("`{url}` is not a valid URL: {e}")),
    }
}

fn check_positive(d: Duration) -> Result<(), String> {
    if d.is_zero() {
        Err("must be longer than zero".into())
    } else {
        Ok(())
    }
}

/// RFC 9110 token characters.
fn check_header_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!("`{name}` is not a valid HTTP header name"))
    }
}

/// `os/arch[/variant]`, e.g. `linux/amd64`.
fn check_platform(platform: &str) -> Result<(), String> {
    let parts: Vec<&str> = platform.split('/').collect();
    let ok = (2..=3).contains(&parts.len())
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("`{platform}` is not a platform like `linux/amd64`"))
    }
}

/// An image reference (`registry/path[:tag][@digest]`) or an OCI layout
/// (`oci:<dir>[:<tag>]`). `repository` fields take no tag or digest:
/// Gantry chooses the tag per run and stage.
pub fn check_image_ref(reference: &str, allow_tag: bool) -> Result<(), String> {
    if reference.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if reference.chars().any(char::is_whitespace) {
        return Err("must not contain spaces".into());
    }
    if let Some(layout) = reference.strip_prefix("oci:") {
        let (dir, tag) = split_tag(layout);
        if dir.is_empty() {
            return Err(if allow_tag {
                "`oci:` needs a directory, e.g. `oci:/var/lib/images/apigw:7.7`".into()
            } else {
                "`oci:` needs a directory, e.g. `oci:/var/lib/images/banking`".into()
            });
        }
        return match tag {
            Some(_) if !allow_tag => {
                Err("a repository takes no tag (Gantry tags each image)".into())
            }
            Some(tag) => check_tag(tag),
            None => Ok(()),
        };
    }

    let (name, digest) = match reference.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (reference, None),
    };
    let (name, tag) = split_tag(name);
    if !allow_tag && (tag.is_some() || digest.is_some()) {
        return Err("a repository takes no tag or digest (Gantry tags each image)".into());
    }
    if let Some(tag) = tag {
        check_tag(tag)?;
    }
    if let Some(digest) = digest {
        let ok = digest.split_once(':').is_some_and(|(algo, hex)| {
            !algo.is_empty() && !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit())
        });
        if !ok {
            return Err(format!("`{digest}` is not a digest like `sha256:<hex>`"));
        }
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    if parts.len() > 1 {
        let first = parts[0];
        if first.contains('.') || first.contains(':') || first == "localhost" {
            parts.remove(0);
        }
    }
    for part in parts {
        let ok = part
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
        if !ok {
            return Err(format!(
                "`{name}` is not a valid repository (path parts use lowercase letters, digits, `.`, `_`, `-`)"
            ));
        }
    }
    Ok(())
}

/// Splits `name:tag` where the colon comes after the last `/` (a colon
/// before it is a registry port).
fn split_tag(name: &str) -> (&str, Option<&str>) {
    match name.rfind(':') {
        Some(i) if !name[i..].contains('/') => (&name[..i], Some(&name[i + 1..])),
        _ => (name, None),
    }
}

fn check_tag(tag: &str) -> Result<(), String> {
    let ok = (1..=128).contains(&tag.len())
        && tag
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!("`{tag}` is not a valid image tag"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("banking").is_ok());
        assert!(check_name("a-1").is_ok());
        assert!(check_name(&"a".repeat(63)).is_ok());
        assert!(check_name(&"a".repeat(64)).is_err());
        assert!(check_name("").is_err());
        assert!(check_name("Banking").is_err());
        assert!(check_name("bank_ing").is_err());
        assert!(check_name("bänk").is_err());
    }

    #[test]
    fn repos() {
        for ok in [
            "https://git.example.com/apim/banking-config.git",
            "ssh://git@host:2222/a/b",
            "git@github.com:acme/x.git",
            "/srv/git/demo.git",
            "file:///srv/git/demo",
        ] {
            assert!(check_repo(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "repos/x",
            "./x",
            "ftp://h/x",
            "https:///x",
            " /srv/x",
            "C:x",
        ] {
            assert!(check_repo(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn branches() {
        for ok in ["main", "release/1.2", "feature-x"] {
            assert!(check_branch(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "refs/heads/main",
            "a b",
            "a..b",
            "-x",
            "x/",
            "x.lock",
            "a:b",
            "a~1",
        ] {
            assert!(check_branch(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn full_names() {
        assert!(check_full_name("acme/banking-config").is_ok());
        assert!(check_full_name("grp/sub/proj").is_ok());
        assert!(check_full_name("acme").is_err());
        assert!(check_full_name("acme/").is_err());
        assert!(check_full_name("ac me/x").is_err());
    }

    #[test]
    fn repo_paths() {
        assert!(check_repo_path(Path::new("gateway/")).is_ok());
        assert!(check_repo_path(Path::new("./gateway")).is_ok());
        assert!(check_repo_path(Path::new("")).is_err());
        assert!(check_repo_path(Path::new("/etc/passwd")).is_err());
        assert!(check_repo_path(Path::new("a/../../b")).is_err());
    }

    #[test]
    fn urls() {
        assert!(check_http_url("https://apigw.test.example.com/healthcheck").is_ok());
        assert!(check_http_url("http://127.0.0.1:8065/pets").is_ok());
        assert!(check_http_url("ftp://h/x").is_err());
        assert!(check_http_url("apigw/pets").is_err());
        assert!(check_http_url("").is_err());
    }

    #[test]
    fn image_refs() {
        for ok in [
            "registry.example.com/axway/apigw-emt:7.7.20240830",
            "localhost:5000/apigw",
            "localhost:5000/apigw:1@sha256:abcdef",
            "ubuntu",
            "oci:/var/lib/images/base:7.7",
            "oci:/var/lib/images/base",
        ] {
            assert!(check_image_ref(ok, true).is_ok(), "{ok}");
        }
        for ok in [
            "registry.example.com/apim/banking-gateway",
            "localhost:5000/x",
            "oci:/tmp/out",
        ] {
            assert!(check_image_ref(ok, false).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a b",
            "Registry.example.com/Apim",
            "oci:",
            "x:",
            "x@sha256:",
            "x:-tag",
        ] {
            assert!(check_image_ref(bad, true).is_err(), "{bad}");
        }
        for bad in [
            "registry.example.com/apim/banking:1",
            "x@sha256:ab",
            "oci:/tmp/out:tag",
        ] {
            assert!(check_image_ref(bad, false).is_err(), "{bad}");
        }
    }

    #[test]
    fn platforms_and_headers() {
        assert!(check_platform("linux/amd64").is_ok());
        assert!(check_platform("linux/arm64/v8").is_ok());
        assert!(check_platform("linux").is_err());
        assert!(check_platform("Linux/AMD64").is_err());
        assert!(check_header_name("KeyId").is_ok());
        assert!(check_header_name("X-Api-Key").is_ok());
        assert!(check_header_name("bad header").is_err());
        assert!(check_header_name("").is_err());
    }
}
