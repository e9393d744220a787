//! A private Postgres server for tests that stop and restart the database
//! (the shared one at `GANTRY_TEST_DATABASE_URL` must stay up for every
//! other test).
//!
//! `initdb` into a temporary directory and `postgres` on a free loopback port,
//! from Debian's `postgresql` package (`/usr/lib/postgresql/<version>/bin`).
//! Postgres refuses to run as root, so as root both run as the `postgres`
//! system user the package creates (set on the child itself, so signals
//! reach the postmaster, not a wrapper).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use anyhow::{anyhow, bail, Context};
use tempfile::TempDir;

use crate::{free_port, spawn_and_wait};

/// A Postgres cluster of its own, trust auth, user `postgres`. Stopped on
/// `Drop`.
#[derive(Debug)]
pub struct PostgresServer {
    bin: PathBuf,
    port: u16,
    child: Option<Child>,
    dir: TempDir,
    /// The `postgres` user's (uid, gid) when this process is root.
    run_as: Option<(u32, u32)>,
}

impl PostgresServer {
    /// Creates a cluster and starts it; ready once it accepts connections.
    pub async fn start() -> anyhow::Result<PostgresServer> {
        let bin = postgres_bin_dir()?;
        let dir = tempfile::Builder::new().prefix("gantry-pg-").tempdir()?;
        let server = PostgresServer {
            bin,
            port: free_port(),
            child: None,
            dir,
            run_as: if is_root() {
                Some(postgres_user()?)
            } else {
                None
            },
        };
        if server.run_as.is_some() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(server.dir.path())
                .status()
                .context("chown of the cluster directory")?;
            if !status.success() {
                bail!("chown postgres {} failed", server.dir.path().display());
            }
        }
        let mut initdb = server.command("initdb");
        initdb.arg("-D").arg(server.data_dir()).args([
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
        ]);
        let out = initdb.output().context("running initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let mut server = server;
        server.spawn().await?;
        Ok(server)
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server the way a crash would: SIGQUIT, Postgres's
    /// "immediate" shutdown (no checkpoint; the next start recovers from the
    /// WAL), then waits for it to exit.
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling a child process this struct owns.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGQUIT);
            }
            let _ = child.wait();
        }
    }

    /// [`PostgresServer::crash`], then starts it again on the same port and
    /// data directory.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.crash();
        self.spawn().await
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let mut cmd = self.command("postgres");
        cmd.arg("-D")
            .arg(self.data_dir())
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(self.dir.path())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                // The machine does not crash under a test, only the process:
                // the page cache keeps what was written.
                "-c",
                "fsync=off",
                "-c",
                "max_connections=200",
            ]);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        cmd.args(["-c", "logging_collector=on", "-c", "log_directory=.."])
            .args(["-c", "log_filename=postgres.log"]);
        let child = spawn_and_wait(cmd, addr, &self.log_path(), "postgres").await?;
        self.child = Some(child);
        Ok(())
    }

    /// `bin/<tool>`, as the `postgres` user when this process is root.
    fn command(&self, tool: &str) -> Command {
        use std::os::unix::process::CommandExt as _;
        let mut cmd = Command::new(self.bin.join(tool));
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.crash();
    }
}

/// The (uid, gid) of the `postgres` system user.
fn postgres_user() -> anyhow::Result<(u32, u32)> {
    let name = std::ffi::CString::new("postgres").expect("no NUL");
    // SAFETY: getpwnam returns null or a pointer to a static passwd entry,
    // read at once, before any other call could overwrite it.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    if entry.is_null() {
        bail!("no `postgres` user: is Debian's postgresql installed?");
    }
    // SAFETY: checked non-null above.
    let entry = unsafe { &*entry };
    Ok((entry.pw_uid, entry.pw_gid))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The newest `/usr/lib/postgresql/<version>/bin` holding `initdb`.
fn postgres_bin_dir() -> anyhow::Result<PathBuf> {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .with_context(|| format!("{}: is Debian's postgresql installed?", root.display()))?
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| anyhow!("no initdb under {}", root.display()))
}
