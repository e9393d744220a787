//! Helpers for end-to-end tests against real components: Postgres, NATS
//! JetStream, an OCI registry (Debian's `docker-registry`) and git.
//!
//! Every helper returns a guard that cleans up on `Drop`: a fresh database is
//! dropped, a spawned server is killed, a temporary directory is removed.
//!
//! Environment (exported by `scripts/test`):
//! - `GANTRY_TEST_DATABASE_URL` — an administrative Postgres URL used to create
//!   and drop per-test databases (default [`DEFAULT_DATABASE_URL`]).
//! - `GANTRY_TEST_NATS_URL` — a long-running shared NATS server with JetStream
//!   (default [`DEFAULT_NATS_URL`]); tests that need to kill NATS start their
//!   own with [`NatsServer::start`].
//! - `GANTRY_TEST_NATS_SERVER` / `GANTRY_TEST_REGISTRY_BIN` — optional paths of
//!   the `nats-server` and `docker-registry` binaries.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use sqlx::{Connection, Executor, PgConnection};
use tempfile::TempDir;

pub mod apimanager;
pub mod argocd;
pub mod kubernetes;
pub mod postgres;
pub mod wiremock;

pub use postgres::PostgresServer;

/// Default administrative Postgres URL when `GANTRY_TEST_DATABASE_URL` is unset.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// Default shared NATS URL when `GANTRY_TEST_NATS_URL` is unset.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// How long a spawned server gets to accept connections.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// Small utilities

/// The administrative Postgres URL: `GANTRY_TEST_DATABASE_URL` or the default.
pub fn database_url() -> String {
    env_or("GANTRY_TEST_DATABASE_URL", DEFAULT_DATABASE_URL)
}

/// The shared NATS server's URL: `GANTRY_TEST_NATS_URL` or the default.
pub fn shared_nats_url() -> String {
    env_or("GANTRY_TEST_NATS_URL", DEFAULT_NATS_URL)
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// A unique, NATS- and SQL-safe name with a prefix, e.g. `gantry_test_3f2a...`.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// A loopback TCP port that was free a moment ago (bound to `127.0.0.1:0`,
/// then released). Another process may take it before you do; servers spawned
/// here retry on a new port when that happens. For a server of our own, bind
/// `127.0.0.1:0` and keep the listener instead ([`pass_listener`] hands it to
/// a `gantry` process); this is for ports where nothing should listen, and
/// for servers that cannot take a socket.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0 to find a free port")
}

/// Hands `listener` to the process `cmd` starts as its fd 3, the way
/// socket activation passes it (`gantry up|serve` serve on it when
/// `LISTEN_FDS=1` is in their environment, which this sets: call it after
/// any `env_clear`). A test that
/// binds `127.0.0.1:0` and passes the listener knows the port without the
/// race of [`free_port`], and can start a process again on the same port.
#[cfg(unix)]
pub fn pass_listener(cmd: &mut Command, listener: &TcpListener) {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let fd = listener.as_raw_fd();
    cmd.env("LISTEN_FDS", "1").env_remove("LISTEN_PID");
    // SAFETY: between fork and exec only async-signal-safe calls (dup2,
    // fcntl) on descriptors of this process.
    unsafe {
        cmd.pre_exec(move || {
            let rc = if fd == 3 {
                // dup2 onto itself would keep close-on-exec: clear it.
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Waits until `addr` accepts TCP connections, polling every 50 ms.
pub async fn wait_for_port(addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) if Instant::now() >= deadline => {
                bail!("{addr} did not accept connections within {timeout:?}: {e}")
            }
            Err(_) if Instant::now() >= deadline => {
                bail!("{addr} did not accept connections within {timeout:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Waits until an HTTP `GET url` gets *any* response (whatever its status) and
/// returns that status. Connection errors are retried until `timeout`.
pub async fn wait_for_http(url: &str, timeout: Duration) -> anyhow::Result<reqwest::StatusCode> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let deadline = Instant::now() + timeout;
    loop {
        match client.get(url).send().await {
            Ok(resp) => return Ok(resp.status()),
            Err(e) if Instant::now() >= deadline => {
                bail!("GET {url} got no answer within {timeout:?}: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Finds an executable: an explicit override from `env`, then `PATH`, then
/// well-known locations.
fn find_binary(name: &str, env: &str, fallbacks: &[&str]) -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(env).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let in_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    in_path
        .into_iter()
        .chain(fallbacks.iter().map(PathBuf::from))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow!(
                "`{name}` not found in PATH nor in {fallbacks:?}; run scripts/test \
                 (it installs it with apt-get) or set {env}"
            )
        })
}

/// The last lines of a log file, for error messages.
fn log_tail(path: &Path) -> String {
    let Ok(text) = std::fs::read_to_string(path) else {
        return format!("(no log at {})", path.display());
    };
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(20);
    lines[start..].join("\n")
}

fn kill_child(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        // std's kill() is SIGKILL on Unix; wait() reaps it so the port is free.
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Spawns `cmd` and waits until `addr` accepts connections. Fails early (with
/// the log's tail) when the process exits first.
async fn spawn_and_wait(
    mut cmd: Command,
    addr: SocketAddr,
    log: &Path,
    what: &str,
) -> anyhow::Result<Child> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("spawning {what}: {cmd:?}"))?;
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "{what} exited with {status} before listening on {addr}; log:\n{}",
                log_tail(log)
            );
        }
        if let Ok(Ok(_)) = tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{what} did not listen on {addr} within {STARTUP_TIMEOUT:?}; log:\n{}",
                log_tail(log)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------
// Postgres

/// A uniquely named Postgres database, dropped (`WITH (FORCE)`) on `Drop`.
#[derive(Debug)]
pub struct TestDb {
    /// URL of the fresh database, e.g. `postgres://postgres@127.0.0.1:5432/gantry_test_…`.
    pub url: String,
    /// The database's name.
    pub name: String,
    admin_url: String,
}

/// Creates a fresh database `gantry_test_<uuid>` on the server at
/// `GANTRY_TEST_DATABASE_URL`. The returned guard drops it.
pub async fn fresh_postgres() -> anyhow::Result<TestDb> {
    let admin_url = database_url();
    let name = unique_name("gantry_test_");
    let mut conn = PgConnection::connect(&admin_url).await.with_context(|| {
        format!(
            "connecting to Postgres at {admin_url} (GANTRY_TEST_DATABASE_URL); \
             run the tests with scripts/test, which starts Postgres"
        )
    })?;
    conn.execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
        .await
        .with_context(|| format!("CREATE DATABASE {name}"))?;
    let _ = conn.close().await;

    let mut url = url::Url::parse(&admin_url)
        .with_context(|| format!("GANTRY_TEST_DATABASE_URL is not a URL: {admin_url}"))?;
    url.set_path(&format!("/{name}"));
    Ok(TestDb {
        url: url.to_string(),
        name,
        admin_url,
    })
}

impl TestDb {
    /// URL of the fresh database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A single connection to the fresh database.
    pub async fn connect(&self) -> anyhow::Result<PgConnection> {
        PgConnection::connect(&self.url)
            .await
            .with_context(|| format!("connecting to {}", self.url))
    }

    /// A small pool on the fresh database.
    pub async fn pool(&self) -> anyhow::Result<sqlx::PgPool> {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(5)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&self.url)
            .await
            .with_context(|| format!("connecting a pool to {}", self.url))
    }
}

/// Another session on a [`TestDb`], as the server sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbSession {
    /// `application_name` (`?application_name=` in the client's URL).
    pub application_name: String,
    /// Whether the session is encrypted (`pg_stat_ssl.ssl`).
    pub ssl: bool,
}

impl TestDb {
    /// Whether the server serves TLS at all (`SHOW ssl`).
    pub async fn server_ssl(&self) -> anyhow::Result<bool> {
        let mut conn = self.connect().await?;
        let ssl: String = sqlx::query_scalar("SHOW ssl").fetch_one(&mut conn).await?;
        let _ = conn.close().await;
        Ok(ssl == "on")
    }

    /// Every session on this database but the one asking: its application
    /// name and whether it is encrypted (`pg_stat_activity` joined with
    /// `pg_stat_ssl`).
    pub async fn sessions(&self) -> anyhow::Result<Vec<DbSession>> {
        let mut conn = self.connect().await?;
        let rows: Vec<(Option<String>, bool)> = sqlx::query_as(
            "SELECT a.application_name, s.ssl FROM pg_stat_activity a \
             JOIN pg_stat_ssl s USING (pid) \
             WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()",
        )
        .fetch_all(&mut conn)
        .await?;
        let _ = conn.close().await;
        Ok(rows
            .into_iter()
            .map(|(application_name, ssl)| DbSession {
                application_name: application_name.unwrap_or_default(),
                ssl,
            })
            .collect())
    }
}

/// Drops database `name` through `admin_url`, on its own runtime.
fn drop_database(admin_url: &str, name: &str) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut conn = PgConnection::connect(admin_url).await?;
        conn.execute(format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str())
            .await?;
        let _ = conn.close().await;
        Ok(())
    })
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // A separate thread with its own runtime: works whether or not Drop
        // runs inside a Tokio runtime (block_on inside one would panic).
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let result = std::thread::spawn(move || drop_database(&admin_url, &name)).join();
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: could not drop test database {}: {e:#}", self.name),
            Err(_) => eprintln!("warning: dropping test database {} panicked", self.name),
        }
    }
}

// ---------------------------------------------------------------------------
// NATS

/// A `nats-server` with JetStream (file storage in a temporary directory) on
/// its own loopback port, for tests that kill and restart NATS. Killed on
/// `Drop`; the store directory is removed then.
#[derive(Debug)]
pub struct NatsServer {
    port: u16,
    child: Option<Child>,
    binary: PathBuf,
    dir: TempDir,
    config: NatsConfig,
}

/// How a private [`NatsServer`] authenticates clients and whether it speaks
/// TLS (written to a configuration file; the default is an open server).
#[derive(Debug, Clone, Default)]
pub struct NatsConfig {
    /// `authorization { user, password }`.
    pub user_password: Option<(String, String)>,
    /// `authorization { token }`.
    pub token: Option<String>,
    /// `authorization { users = [ { nkey } ] }`: the user's public NKEY.
    pub nkey_user: Option<String>,
    /// TLS with this PKI's server certificate; client certificates are
    /// required when `verify_clients` is set.
    pub tls: Option<TestPki>,
    pub verify_clients: bool,
}

impl NatsConfig {
    fn is_open(&self) -> bool {
        self.user_password.is_none()
            && self.token.is_none()
            && self.nkey_user.is_none()
            && self.tls.is_none()
    }

    /// The configuration file's text for a server on `port` storing under `store`.
    fn render(&self, port: u16, store: &Path) -> String {
        let q = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
        let mut text = format!(
            "listen: {}\njetstream {{ store_dir: {} }}\n",
            q(&format!("127.0.0.1:{port}")),
            q(&store.display().to_string())
        );
        if let Some((user, password)) = &self.user_password {
            text.push_str(&format!(
                "authorization {{ user: {}, password: {} }}\n",
                q(user),
                q(password)
            ));
        }
        if let Some(token) = &self.token {
            text.push_str(&format!("authorization {{ token: {} }}\n", q(token)));
        }
        if let Some(nkey) = &self.nkey_user {
            text.push_str(&format!(
                "authorization {{ users = [ {{ nkey: {} }} ] }}\n",
                q(nkey)
            ));
        }
        if let Some(pki) = &self.tls {
            text.push_str(&format!(
                "tls {{ cert_file: {}, key_file: {}, ca_file: {}, verify: {}, timeout: 5 }}\n",
                q(&pki.server_cert.display().to_string()),
                q(&pki.server_key.display().to_string()),
                q(&pki.ca.display().to_string()),
                self.verify_clients
            ));
        }
        text
    }
}

/// A private CA with a server certificate for `localhost`/`127.0.0.1` and a
/// client certificate, as PEM files in a temporary directory (rcgen).
#[derive(Debug, Clone)]
pub struct TestPki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    _dir: std::sync::Arc<TempDir>,
}

impl TestPki {
    pub fn generate() -> anyhow::Result<TestPki> {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair, KeyUsagePurpose,
        };
        let dir = tempfile::Builder::new().prefix("gantry-pki-").tempdir()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Gantry test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
        let leaf = |names: Vec<String>, cn: &str, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(names)?;
            params.distinguished_name.push(DnType::CommonName, cn);
            params.extended_key_usages = vec![usage];
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            let cert = params.signed_by(&key, &*ca)?;
            anyhow::Ok((cert.pem(), key.serialize_pem()))
        };
        let (server_cert, server_key) = leaf(
            vec!["localhost".into(), "127.0.0.1".into()],
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let (client_cert, client_key) = leaf(
            vec!["gantry".into()],
            "gantry",
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        let write = |name: &str, text: &str| -> anyhow::Result<PathBuf> {
            let path = dir.path().join(name);
            std::fs::write(&path, text)?;
            Ok(path)
        };
        Ok(TestPki {
            ca: write("ca.pem", &ca.pem())?,
            server_cert: write("server.pem", &server_cert)?,
            server_key: write("server-key.pem", &server_key)?,
            client_cert: write("client.pem", &client_cert)?,
            client_key: write("client-key.pem", &client_key)?,
            _dir: std::sync::Arc::new(dir),
        })
    }
}

impl NatsServer {
    /// Starts a fresh server on a free port and waits until it accepts
    /// connections.
    pub async fn start() -> anyhow::Result<NatsServer> {
        Self::start_with(NatsConfig::default()).await
    }

    /// Starts a fresh server with authentication and/or TLS.
    pub async fn start_with(config: NatsConfig) -> anyhow::Result<NatsServer> {
        let binary = find_binary(
            "nats-server",
            "GANTRY_TEST_NATS_SERVER",
            &["/usr/sbin/nats-server", "/usr/bin/nats-server"],
        )?;
        let dir = tempfile::Builder::new().prefix("gantry-nats-").tempdir()?;
        let mut server = NatsServer {
            port: free_port(),
            child: None,
            binary,
            dir,
            config,
        };
        // A port can be taken between free_port() and the bind: retry.
        let mut attempt = 1;
        loop {
            match server.spawn().await {
                Ok(()) => return Ok(server),
                Err(e) if attempt >= 3 => return Err(e),
                Err(_) => {
                    attempt += 1;
                    server.port = free_port();
                }
            }
        }
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new(&self.binary);
        if self.config.is_open() {
            cmd.arg("-a")
                .arg("127.0.0.1")
                .arg("-p")
                .arg(self.port.to_string())
                .arg("-js")
                .arg("-sd")
                .arg(self.store_dir());
        } else {
            let file = self.dir.path().join("nats-server.conf");
            std::fs::write(&file, self.config.render(self.port, &self.store_dir()))?;
            cmd.arg("-c").arg(file);
        }
        cmd.arg("-l").arg(self.log_path());
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let child = spawn_and_wait(cmd, addr, &self.log_path(), "nats-server").await?;
        self.child = Some(child);
        Ok(())
    }

    /// `nats://127.0.0.1:<port>` (`tls://` for a TLS server), without credentials.
    pub fn url(&self) -> String {
        let scheme = if self.config.tls.is_some() {
            "tls"
        } else {
            "nats"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store directory (kept across [`NatsServer::restart`]).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("jetstream")
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats-server.log")
    }

    /// Whether the server process is running (not killed, not exited).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Kills the server with SIGKILL (no graceful shutdown, like a crash) and
    /// reaps it. What the server had written to its file store survives and
    /// is recovered by [`NatsServer::restart`].
    pub fn kill(&mut self) {
        kill_child(&mut self.child);
    }

    /// Kills the server if it is running, then starts it again on the same
    /// port with the same store directory, and waits until it accepts
    /// connections.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn().await
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------
// OCI registry

/// Debian's `docker-registry` (distribution 2.8) on its own loopback port,
/// storing blobs in a temporary directory. Plain HTTP. Killed on `Drop`.
#[derive(Debug)]
pub struct Registry {
    port: u16,
    child: Option<Child>,
    credentials: Option<(String, String)>,
    dir: TempDir,
}

impl Registry {
    /// Starts an open registry (no authentication).
    pub async fn start() -> anyhow::Result<Registry> {
        Self::start_inner(None).await
    }

    /// Starts a registry requiring HTTP basic authentication with this user
    /// and password (htpasswd with a bcrypt entry).
    pub async fn start_with_basic_auth(user: &str, password: &str) -> anyhow::Result<Registry> {
        Self::start_inner(Some((user.to_owned(), password.to_owned()))).await
    }

    async fn start_inner(credentials: Option<(String, String)>) -> anyhow::Result<Registry> {
        let binary = find_binary(
            "docker-registry",
            "GANTRY_TEST_REGISTRY_BIN",
            &["/usr/bin/docker-registry"],
        )?;
        let mut last_err = None;
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("gantry-registry-")
                .tempdir()?;
            let port = free_port();
            let config = dir.path().join("config.yml");
            let log = dir.path().join("registry.log");
            let storage = dir.path().join("storage");
            std::fs::create_dir_all(&storage)?;
            let mut yaml = format!(
                "version: 0.1\n\
                 log:\n  level: info\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: gantry-test-{secret}\n",
                storage = storage.display(),
                secret = uuid::Uuid::new_v4().simple(),
            );
            if let Some((user, password)) = &credentials {
                let htpasswd = dir.path().join("htpasswd");
                // Cost 4 (the minimum) keeps tests fast; the registry accepts any cost.
                let hash = bcrypt::hash(password, 4)?;
                std::fs::write(&htpasswd, format!("{user}:{hash}\n"))?;
                yaml.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: gantry-test\n    path: {}\n",
                    htpasswd.display()
                ));
            }
            std::fs::write(&config, yaml)?;

            let logfile = std::fs::File::create(&log)?;
            let mut cmd = Command::new(&binary);
            cmd.arg("serve").arg(&config);
            let mut child = cmd
                .stdin(Stdio::null())
                .stdout(logfile.try_clone()?)
                .stderr(logfile)
                .spawn()
                .with_context(|| format!("spawning {cmd:?}"))?;
            let mut registry = Registry {
                port,
                child: None,
                credentials: credentials.clone(),
                dir,
            };
            match wait_registry(&mut child, &registry.url(), &log).await {
                Ok(()) => {
                    registry.child = Some(child);
                    return Ok(registry);
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("docker-registry did not start")))
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.host_port())
    }

    /// `127.0.0.1:<port>`, the form used in image references
    /// (`127.0.0.1:<port>/gateway:1.0`).
    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The basic-auth user and password, when started with them.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// The registry's storage root directory.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// The registry's log file (stdout and stderr).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// Kills the registry (SIGKILL).
    pub fn kill(&mut self) {
        kill_child(&mut self.child);
    }
}

async fn wait_registry(child: &mut Child, base: &str, log: &Path) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let url = format!("{base}/v2/");
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "docker-registry exited with {status}; log:\n{}",
                log_tail(log)
            );
        }
        if client.get(&url).send().await.is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "docker-registry did not answer GET {url} within {STARTUP_TIMEOUT:?}; log:\n{}",
                log_tail(log)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------
// git

/// A real git repository in a temporary directory, driven through the `git`
/// CLI (user `Gantry Test <gantry-test@example.com>`, branch `main`, no global
/// or system configuration). Removed on `Drop`.
#[derive(Debug)]
pub struct GitRepo {
    dir: TempDir,
    bare: bool,
}

impl GitRepo {
    /// `git init -b main` with a committer configured; no commits yet.
    pub fn init() -> anyhow::Result<GitRepo> {
        Self::create(false)
    }

    /// `git init --bare -b main`: a repository to push to and clone from.
    pub fn bare() -> anyhow::Result<GitRepo> {
        Self::create(true)
    }

    fn create(bare: bool) -> anyhow::Result<GitRepo> {
        let dir = tempfile::Builder::new().prefix("gantry-git-").tempdir()?;
        let repo = GitRepo { dir, bare };
        if bare {
            repo.git(["init", "--quiet", "--bare", "-b", "main", "."])?;
        } else {
            repo.git(["init", "--quiet", "-b", "main", "."])?;
        }
        repo.git(["config", "user.name", "Gantry Test"])?;
        repo.git(["config", "user.email", "gantry-test@example.com"])?;
        repo.git(["config", "commit.gpgsign", "false"])?;
        Ok(repo)
    }

    /// The repository's directory (the work tree, or the git dir when bare).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn is_bare(&self) -> bool {
        self.bare
    }

    /// `file://` URL of the repository.
    pub fn url(&self) -> String {
        url::Url::from_directory_path(self.path())
            .map(|u| u.to_string().trim_end_matches('/').to_owned())
            .unwrap_or_else(|_| format!("file://{}", self.path().display()))
    }

    /// Runs `git -C <repo> <args>` with global and system config ignored;
    /// returns trimmed stdout, or an error carrying stderr.
    pub fn git<I, S>(&self, args: I) -> anyhow::Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let out = Command::new("git")
            .arg("-C")
            .arg(self.path())
            .args(&args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            .stdin(Stdio::null())
            .output()
            .context("running git (is it installed?)")?;
        if !out.status.success() {
            bail!(
                "git {:?} in {} failed ({}): {}",
                args,
                self.path().display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Writes a file (creating parent directories) in the work tree.
    pub fn write(&self, rel: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> anyhow::Result<()> {
        self.ensure_worktree()?;
        let path = self.path().join(rel.as_ref());
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))
    }

    /// Removes a file from the work tree.
    pub fn remove(&self, rel: impl AsRef<Path>) -> anyhow::Result<()> {
        self.ensure_worktree()?;
        let path = self.path().join(rel.as_ref());
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))
    }

    /// `git add -A && git commit -m message`; returns the new commit's sha.
    pub fn commit(&self, message: &str) -> anyhow::Result<String> {
        self.ensure_worktree()?;
        self.git(["add", "-A"])?;
        self.git([
            "commit",
            "--quiet",
            "--allow-empty",
            "--no-verify",
            "-m",
            message,
        ])?;
        self.head()
    }

    /// Writes each `(path, contents)` then commits; returns the sha.
    pub fn commit_files(&self, files: &[(&str, &str)], message: &str) -> anyhow::Result<String> {
        for (path, contents) in files {
            self.write(path, contents)?;
        }
        self.commit(message)
    }

    /// The sha of `HEAD`.
    pub fn head(&self) -> anyhow::Result<String> {
        self.rev_parse("HEAD")
    }

    /// `git rev-parse --verify <rev>^{commit}`.
    pub fn rev_parse(&self, rev: &str) -> anyhow::Result<String> {
        self.git(["rev-parse", "--verify", &format!("{rev}^{{commit}}")])
    }

    /// Creates (or resets) and checks out a branch.
    pub fn checkout_new_branch(&self, branch: &str) -> anyhow::Result<()> {
        self.ensure_worktree()?;
        self.git(["checkout", "--quiet", "-B", branch]).map(drop)
    }

    /// Pushes `refspec` (e.g. `main`, or `HEAD:refs/heads/release`) to a remote
    /// URL or path, forcing.
    pub fn push(&self, remote: &str, refspec: &str) -> anyhow::Result<()> {
        self.git(["push", "--quiet", "--force", remote, refspec])
            .map(drop)
    }

    fn ensure_worktree(&self) -> anyhow::Result<()> {
        if self.bare {
            bail!(
                "{} is a bare repository: no work tree",
                self.path().display()
            );
        }
        Ok(())
    }
}

/// Reads the first line a server sends on connect (NATS sends `INFO {...}`).
/// Useful to check that a NATS server has JetStream enabled.
pub fn nats_info_line(addr: SocketAddr, timeout: Duration) -> anyhow::Result<String> {
    let stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line.trim_end().to_owned())
}
