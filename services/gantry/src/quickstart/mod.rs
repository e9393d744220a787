//! `gantry quickstart`: a whole promotion on one machine, from nothing but
//! the binary.
//!
//! In a fresh directory it writes a configuration repository (a small YAML
//! Entity Store project with per-stage values and an apim-cli API config), a
//! registry as OCI image layouts (`oci:` directories) holding a parent image,
//! a bare GitOps repository, the pipeline `quickstart` (dev -> test -> prod,
//! prod behind two release managers), API tokens for a developer and two
//! release managers, and a secret per stage; then it serves exactly what
//! `gantry up` serves (embedded SQLite) over that directory, triggers a run
//! of the configuration's head as the developer, and prints where to look.
//! Run again on the same directory, it serves it again. `--commit` changes
//! the configuration, commits it and triggers a run of it.
//!
//! API Manager cannot run here and Gantry ships no stand-in for it, so no
//! stage has an `apimanager` step.

mod files;
mod git;
mod registry;

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use axum::body::Body;
use gantry_runtime::Settings;
use http::{Method, Request};
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::cli::Global;
use crate::client::Client;
use crate::server::{self, Started};
use files::{token_of, HOLDERS, STAGES};

/// The directory's parts.
struct Layout {
    dir: PathBuf,
}

impl Layout {
    fn at(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    fn pipeline_file(&self) -> PathBuf {
        self.at("pipelines/quickstart.yaml")
    }

    fn tokens_file(&self) -> PathBuf {
        self.at("tokens.env")
    }

    /// Written last: a directory holding it is a whole quickstart.
    fn is_quickstart(&self) -> bool {
        self.pipeline_file().is_file() && self.tokens_file().is_file()
    }

    /// `gantry up`'s settings over this directory: embedded store and
    /// delivery whatever the environment says, its pipelines and tokens.
    fn settings(&self, g: &Global) -> Settings {
        Settings {
            database_url: None,
            nats_url: None,
            pipelines: self.at("pipelines"),
            data_dir: self.at(".gantry"),
            api_tokens: Some(self.at("api-tokens.yaml")),
            ..g.settings()
        }
    }

    fn token(&self, var: &str) -> anyhow::Result<String> {
        let path = self.tokens_file();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        token_of(&text, var).with_context(|| format!("{} has no {var}", path.display()))
    }
}

/// `gantry quickstart [--dir DIR] [--commit]`.
pub async fn run(g: &Global, dir: Option<PathBuf>, commit: bool) -> anyhow::Result<()> {
    let dir = dir.unwrap_or_else(|| PathBuf::from("gantry-quickstart"));
    let dir = std::path::absolute(&dir)
        .with_context(|| format!("cannot resolve the directory {}", dir.display()))?;
    let layout = Layout { dir };
    if commit {
        return another_commit(g, &layout).await;
    }
    if layout.is_quickstart() {
        println!("Serving the quickstart in {} again.", layout.dir.display());
    } else {
        create(&layout).await?;
        println!("Wrote the quickstart into {}.", layout.dir.display());
    }
    let dana = layout.token("DANA_TOKEN")?;
    let dir = layout.dir.clone();
    server::up_then(layout.settings(g), move |started| {
        first_run(started, dir, dana)
    })
    .await
}

/// Everything the quickstart needs, in an empty or new directory.
async fn create(layout: &Layout) -> anyhow::Result<()> {
    let dir = &layout.dir;
    // The registry is `oci:<dir>/registry/...`, and image references hold
    // no whitespace.
    if dir.display().to_string().chars().any(char::is_whitespace) {
        bail!(
            "{} has a space in its path, which the quickstart's image references (oci:<dir>) \
             cannot hold; name another directory with --dir",
            dir.display()
        );
    }
    if let Ok(mut entries) = std::fs::read_dir(dir) {
        if entries.next().is_some() {
            bail!(
                "{} is not empty and holds no complete quickstart (no pipelines/quickstart.yaml \
                 and tokens.env); remove it, or name another directory with --dir",
                dir.display()
            );
        }
    }
    std::fs::create_dir_all(layout.at("secrets"))
        .with_context(|| format!("creating {}", dir.display()))?;
    for stage in STAGES {
        let password = files::new_token();
        write_private(
            &layout.at(&format!("secrets/{stage}-db-password")),
            &password,
        )?;
    }
    let tokens: Vec<String> = HOLDERS.iter().map(|_| files::new_token()).collect();
    write_private(
        &layout.at("api-tokens.yaml"),
        &files::api_tokens_yaml(&tokens),
    )?;
    git::create_config(&layout.at("config"), files::CONFIG, &HOLDERS[0])?;
    let deployments: Vec<(String, String)> = STAGES
        .iter()
        .map(|s| (format!("envs/{s}/values.yaml"), files::gitops_values(s)))
        .collect();
    git::create_bare(&layout.at("gitops.git"), &deployments, &HOLDERS[0])?;
    registry::write_base_image(&layout.at("registry/apigw-emt")).await?;
    std::fs::create_dir_all(layout.at("pipelines"))?;
    std::fs::write(layout.pipeline_file(), files::pipeline_yaml(dir))?;
    // Last: its presence says the directory is complete.
    write_private(&layout.tokens_file(), &files::tokens_env(&tokens))?;
    Ok(())
}

/// Writes `text` to a new file only its owner may read.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// The trigger request: the head of `main`, or `commit`.
fn trigger_body(commit: Option<&str>, message: &str) -> Value {
    json!({ "pipeline": "quickstart", "commit": commit, "message": message })
}

/// Once the server is up: a run of the configuration's head, triggered by
/// the developer through the API it serves, and where to look.
async fn first_run(started: Started, dir: PathBuf, dana: String) -> anyhow::Result<()> {
    let body = trigger_body(None, "gantry quickstart");
    let req = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/runs")
        .header(http::header::AUTHORIZATION, format!("Bearer {dana}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_vec(&body)?))?;
    let resp = started.router.oneshot(req).await?;
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await?;
    let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if !status.is_success() {
        bail!(
            "the quickstart's run was not triggered ({status}): {}",
            answer["detail"].as_str().unwrap_or("no detail")
        );
    }
    let run = answer["run_id"].as_str().unwrap_or("-").to_owned();
    println!(
        "{}",
        banner(&dir, &format!("http://{}", started.addr), &run)
    );
    Ok(())
}

fn banner(dir: &Path, url: &str, run: &str) -> String {
    let tokens = dir.join("tokens.env").display().to_string();
    let holders: Vec<String> = HOLDERS
        .iter()
        .map(|h| format!("  ${:<12} {} ({})", h.var, h.user, h.role))
        .collect();
    format!(
        "\nGantry is up: dev -> test -> prod of the pipeline `quickstart`.\n\n\
         \x20 console    {url}/\n\
         \x20 run        {run} (dev and test promote by themselves; prod waits for two release managers)\n\
         \x20 tokens     {tokens} (mode 0600)\n\
         {holders}\n\
         \x20 registry   {registry} (OCI layout: the stage images)\n\
         \x20 gitops     {gitops} (bare repository: one commit per deploy)\n\
         \x20 config     {config} (edit, commit on main, trigger)\n\n\
         In another terminal:\n\
         \x20 . {tokens}\n\
         \x20 export GANTRY_SERVER={url}\n\
         \x20 gantry --token \"$RITA_TOKEN\" run {run}\n\
         \x20 gantry --token \"$RITA_TOKEN\" diff {run} prod\n\
         \x20 gantry --token \"$RITA_TOKEN\" approve {run} prod --comment \"looks good\"\n\
         \x20 gantry --token \"$SAM_TOKEN\" approve {run} prod\n\
         \x20 gantry quickstart --dir {dir} --commit     # another change to watch\n\n\
         (From the source tree, `scripts/gantry` runs `gantry`.) Ctrl-C stops the server; \
         `gantry quickstart --dir {dir}` serves it again.\n",
        holders = holders.join("\n"),
        registry = dir.join("registry/gateway").display(),
        gitops = dir.join("gitops.git").display(),
        config = dir.join("config").display(),
        dir = dir.display(),
    )
}

/// `--commit`: the next release of the configuration, committed by the
/// developer and triggered through the running server (or the store).
async fn another_commit(g: &Global, layout: &Layout) -> anyhow::Result<()> {
    if !layout.is_quickstart() {
        bail!(
            "{} holds no quickstart; run `gantry quickstart{}` first",
            layout.dir.display(),
            if layout.dir.ends_with("gantry-quickstart") {
                String::new()
            } else {
                format!(" --dir {}", layout.dir.display())
            }
        );
    }
    let repo_dir = layout.at("config");
    let values = repo_dir.join("gateway/values.yaml");
    let text = std::fs::read_to_string(&values)
        .with_context(|| format!("reading {}", values.display()))?;
    let (text, release) = next_release(&text);
    std::fs::write(&values, text).with_context(|| format!("writing {}", values.display()))?;
    let repo = git2::Repository::open(&repo_dir)
        .with_context(|| format!("opening {}", repo_dir.display()))?;
    let message = format!("Quickstart release {release}");
    let commit = git::commit_all(&repo, &HOLDERS[0], &message)?;
    let client = Client::for_settings(
        layout.settings(g),
        g.server.clone(),
        Some(layout.token("DANA_TOKEN")?),
    );
    let run = client
        .send(
            Method::POST,
            "/api/v1/runs",
            Some(trigger_body(Some(&commit), &message)),
        )
        .await?
        .json()
        .await?;
    println!(
        "committed {} ({message}) in {}\nrun {} started: `gantry run {}`, or the console",
        &commit[..12.min(commit.len())],
        repo_dir.display(),
        crate::commands::str_of(&run["run_id"]),
        crate::commands::str_of(&run["run_id"]),
    );
    Ok(())
}

/// `values.yaml` with `Quickstart.release` one higher (added when missing),
/// and the new number.
fn next_release(text: &str) -> (String, u64) {
    let mut release = None;
    let mut out: Vec<String> = text
        .lines()
        .map(|line| match line.strip_prefix("  release:") {
            Some(n) if release.is_none() => {
                let next = n.trim().parse::<u64>().unwrap_or(0) + 1;
                release = Some(next);
                format!("  release: {next}")
            }
            _ => line.to_owned(),
        })
        .collect();
    let release = release.unwrap_or_else(|| {
        out.push("Quickstart:".into());
        out.push("  release: 2".into());
        2
    });
    (out.join("\n") + "\n", release)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_commit_is_the_next_release() {
        let first = files::CONFIG
            .iter()
            .find(|(p, _)| *p == "gateway/values.yaml")
            .unwrap()
            .1;
        let (second, n) = next_release(first);
        assert_eq!(n, 2);
        assert!(second.contains("  release: 2\n"), "{second}");
        assert_eq!(next_release(&second).1, 3);
        assert_eq!(
            next_release("a: 1\n"),
            ("a: 1\nQuickstart:\n  release: 2\n".into(), 2)
        );
    }

    #[tokio::test]
    async fn a_fresh_directory_gets_every_part_and_private_tokens() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = Layout {
            dir: tmp.path().join("qs"),
        };
        create(&layout).await.unwrap();
        assert!(layout.is_quickstart());
        for part in [
            "config/.git",
            "config/gateway/values.yaml",
            "gitops.git/HEAD",
            "registry/apigw-emt/index.json",
            "api-tokens.yaml",
            "secrets/prod-db-password",
        ] {
            assert!(layout.at(part).exists(), "{part}");
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(layout.tokens_file())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let errors = gantry_pipeline::load_dir_partial(layout.at("pipelines")).1;
        assert!(errors.is_empty(), "{errors}");
        let spaced = Layout {
            dir: tmp.path().join("a dir"),
        };
        let err = create(&spaced).await.unwrap_err().to_string();
        assert!(err.contains("space in its path"), "{err}");
        // Not twice over a directory that has something in it.
        let other = Layout {
            dir: tmp.path().to_owned(),
        };
        let err = create(&other).await.unwrap_err().to_string();
        assert!(err.contains("is not empty"), "{err}");
    }
}
