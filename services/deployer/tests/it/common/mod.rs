//! Shared helpers: a seeded deploy repository and a tiny health endpoint.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use gantry_tests::GitRepo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const VALUES_PATH: &str = "envs/test/values.yaml";

/// A values file as people write them: comments, blank lines, quoting.
pub const VALUES: &str = "\
# Test environment of the banking gateway.
# Gantry writes apitraffic.image; everything else is maintained by hand.

global:
  domainName: test.example.com   # ingress domain
  imagePullSecrets: []

apitraffic:
  enabled: true
  # Set by Gantry on every deploy.
  image: registry.example.com/apim/banking-gateway:initial # do not edit by hand
  replicas: 2
  resources:
    limits:
      cpu: \"2\"
      memory: 2Gi

anm:
  image: registry.example.com/axway/anm:7.7   # not ours
";

pub const IMAGE_LINE: &str =
    "  image: registry.example.com/apim/banking-gateway:initial # do not edit by hand\n";

/// `VALUES` with the Gantry line set to `image`.
pub fn values_with(image: &str) -> String {
    VALUES.replace(
        IMAGE_LINE,
        &format!("  image: {image} # do not edit by hand\n"),
    )
}

/// A bare remote with `VALUES` (and a README) on `main`.
pub struct DeployRepo {
    pub remote: GitRepo,
    pub seed: GitRepo,
}

impl DeployRepo {
    pub fn new() -> anyhow::Result<Self> {
        let remote = GitRepo::bare()?;
        let seed = GitRepo::init()?;
        seed.commit_files(
            &[(VALUES_PATH, VALUES), ("README.md", "deploy repo\n")],
            "seed the deploy repository",
        )?;
        seed.push(&remote.url(), "main")?;
        Ok(Self { remote, seed })
    }

    pub fn url(&self) -> String {
        self.remote.url()
    }

    /// The remote's `main` head.
    pub fn head(&self) -> String {
        self.remote.rev_parse("main").expect("remote main")
    }

    /// The exact bytes of `path` at the remote's `main`.
    pub fn file(&self, path: &str) -> String {
        let repo = git2::Repository::open_bare(self.remote.path()).expect("open remote");
        let commit = repo
            .revparse_single("refs/heads/main")
            .and_then(|o| o.peel_to_commit())
            .expect("main");
        let entry = commit
            .tree()
            .unwrap()
            .get_path(std::path::Path::new(path))
            .expect("file in tree");
        let blob = repo.find_blob(entry.id()).unwrap();
        String::from_utf8(blob.content().to_vec()).unwrap()
    }

    /// Someone else's push: fetch `main` into the seed clone, write the
    /// files, commit and push. Returns the new head.
    pub fn concurrent_push(&self, files: &[(&str, &str)], message: &str) -> String {
        let url = self.url();
        self.seed
            .git(["fetch", "--quiet", url.as_str(), "main"])
            .expect("fetch");
        self.seed
            .git(["reset", "--quiet", "--hard", "FETCH_HEAD"])
            .expect("reset");
        let sha = self.seed.commit_files(files, message).expect("commit");
        self.seed.push(&url, "main").expect("push");
        sha
    }
}

/// A loopback HTTP endpoint answering 503 to the first `healthy_after`
/// requests and 200 after (never 200 when `None`). Returns its URL and the
/// request counter.
pub async fn health_server(healthy_after: Option<usize>) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => buf.extend_from_slice(&chunk[..k]),
                    }
                }
                let healthy = healthy_after.is_some_and(|h| n > h);
                let resp = if healthy {
                    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                } else {
                    "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                };
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (format!("http://{addr}/healthcheck"), count)
}
