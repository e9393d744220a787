//! The `command` deploy target: run a program (argv, no shell) with the
//! release in its environment, under a timeout, capturing what it prints.
//!
//! The program runs with a clean environment (DESIGN.md 1.7): Gantry's own
//! `PATH` and `HOME`, the stage's declared `env` ([`CommandOptions::env`]),
//! and `GANTRY_IMAGE`, `GANTRY_DIGEST`, `GANTRY_STAGE`, `GANTRY_RUN`,
//! `GANTRY_COMMIT` and `GANTRY_PIPELINE`; nothing else of Gantry's (its
//! database URL, NATS credentials, the secrets other pipelines read from its
//! environment). It runs in its own process group: on timeout the whole
//! group is killed (a `sh -c` wrapper's children too), so nothing outlives
//! the step. Standard output and error are captured together, in the order
//! they arrive, and only the tail is kept (64 KiB by default). Every secret
//! of [`CommandOptions::masker`] is replaced with `***` before the output
//! leaves this module, including a secret cut in half by the truncation.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gantry_pipeline::format_duration;
use gantry_pipeline::mask::Masker;
use tokio::io::{AsyncRead, AsyncReadExt};

/// What a deploy command is told about the release.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeployEnv {
    /// `GANTRY_IMAGE`: `<repository>@<digest>` (empty when the pipeline has
    /// no image).
    pub image: String,
    /// `GANTRY_DIGEST`: the image's manifest digest.
    pub digest: String,
    /// `GANTRY_STAGE`
    pub stage: String,
    /// `GANTRY_RUN`: the run id.
    pub run: String,
    /// `GANTRY_COMMIT`: the source commit.
    pub commit: String,
    /// `GANTRY_PIPELINE`
    pub pipeline: String,
}

impl DeployEnv {
    /// The variables as set in the command's environment.
    pub fn vars(&self) -> [(&'static str, &str); 6] {
        [
            ("GANTRY_IMAGE", &self.image),
            ("GANTRY_DIGEST", &self.digest),
            ("GANTRY_STAGE", &self.stage),
            ("GANTRY_RUN", &self.run),
            ("GANTRY_COMMIT", &self.commit),
            ("GANTRY_PIPELINE", &self.pipeline),
        ]
    }
}

/// The variables of Gantry's own environment a command inherits; everything
/// else of Gantry's stays out of it.
pub const INHERITED_VARS: [&str; 2] = ["PATH", "HOME"];

/// How a command is run.
#[derive(Debug, Clone)]
pub struct CommandOptions {
    /// Killed (with its process group) after this long.
    pub timeout: Duration,
    /// What is replaced with `***` in the captured output.
    pub masker: Masker,
    /// The stage's declared variables (`stages[].env`, resolved), set in the
    /// command's environment after `PATH` and `HOME` and before the
    /// `GANTRY_*` ones (which win).
    pub env: Vec<(String, String)>,
    /// Bytes of output kept (the tail).
    pub max_output: usize,
    /// Working directory; the process's own when `None`.
    pub cwd: Option<PathBuf>,
}

impl CommandOptions {
    pub const DEFAULT_MAX_OUTPUT: usize = 64 * 1024;

    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            masker: Masker::default(),
            env: Vec::new(),
            max_output: Self::DEFAULT_MAX_OUTPUT,
            cwd: None,
        }
    }

    /// More strings to replace with `***` in the output.
    pub fn with_secrets(mut self, secrets: impl IntoIterator<Item = String>) -> Self {
        let secrets: Vec<String> = secrets.into_iter().collect();
        self.masker.extend(secrets.iter().map(String::as_str));
        self
    }

    /// Every secret of `masker` masked in the output too.
    pub fn with_masker(mut self, masker: &Masker) -> Self {
        self.masker = self.masker.merge(masker);
        self
    }

    /// The stage's declared variables, in the command's environment.
    pub fn with_env<K: Into<String>, V: Into<String>>(
        mut self,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.env
            .extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }
}

/// A command that exited 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutcome {
    /// Standard output and error, interleaved, tail kept, secrets masked.
    pub output: String,
    pub duration: Duration,
}

/// Why a deploy command failed. `output` (masked) is there when the
/// program ran.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("deploy.command is empty")]
    Empty,
    #[error("cannot start `{program}`: {message}")]
    Spawn { program: String, message: String },
    #[error("`{program}` {status}{}", last_line_suffix(.output))]
    Failed {
        program: String,
        /// `exited with code N` or `was killed by signal N`.
        status: String,
        code: Option<i32>,
        output: String,
    },
    #[error("`{program}` did not finish within {} and was killed", format_duration(*.timeout))]
    Timeout {
        program: String,
        timeout: Duration,
        output: String,
    },
    #[error("waiting for `{program}`: {message}")]
    Wait {
        program: String,
        message: String,
        output: String,
    },
}

fn last_line_suffix(output: &str) -> String {
    match output.lines().rev().map(str::trim).find(|l| !l.is_empty()) {
        Some(l) => {
            let l: String = l.chars().take(200).collect();
            format!(": {l}")
        }
        None => String::new(),
    }
}

impl CommandError {
    /// The captured (masked) output, when the program ran.
    pub fn output(&self) -> Option<&str> {
        match self {
            CommandError::Failed { output, .. }
            | CommandError::Timeout { output, .. }
            | CommandError::Wait { output, .. } => Some(output),
            _ => None,
        }
    }
}

/// How long the output pipes may stay open after the program exited (a
/// background child holding them) before the group is killed.
const PIPE_GRACE: Duration = Duration::from_secs(2);

/// Runs `argv` under `options` with a clean environment: `PATH` and `HOME`
/// of this process, `options.env`, and the `GANTRY_*` variables of `env`.
pub async fn run_command(
    argv: &[String],
    env: &DeployEnv,
    options: &CommandOptions,
) -> Result<CommandOutcome, CommandError> {
    let Some((program, args)) = argv.split_first() else {
        return Err(CommandError::Empty);
    };
    if program.trim().is_empty() {
        return Err(CommandError::Empty);
    }
    let masker = &options.masker;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0)
        .env_clear();
    for name in INHERITED_VARS {
        if let Some(value) = std::env::var_os(name) {
            cmd.env(name, value);
        }
    }
    for (k, v) in &options.env {
        cmd.env(k, v);
    }
    for (k, v) in env.vars() {
        cmd.env(k, v);
    }
    if let Some(dir) = &options.cwd {
        cmd.current_dir(dir);
    }
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|e| CommandError::Spawn {
        program: program.clone(),
        message: masker.mask(&e.to_string()),
    })?;
    let pgid = child.id();
    let capture = Arc::new(Mutex::new(Capture::new(
        options.max_output,
        masker.longest(),
    )));
    let mut readers = tokio::task::JoinSet::new();
    if let Some(out) = child.stdout.take() {
        readers.spawn(pump(out, capture.clone()));
    }
    if let Some(err) = child.stderr.take() {
        readers.spawn(pump(err, capture.clone()));
    }

    let waited = tokio::time::timeout(options.timeout, child.wait()).await;
    let timed_out = waited.is_err();
    if timed_out {
        kill_group(pgid);
        let _ = child.kill().await;
    }
    // Drain what is left in the pipes; a straggler holding them open is killed.
    let drained = tokio::time::timeout(PIPE_GRACE, async {
        while readers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        kill_group(pgid);
        readers.abort_all();
    }
    let output = capture
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .finish(masker);
    let duration = started.elapsed();
    let status = match waited {
        Err(_) => {
            return Err(CommandError::Timeout {
                program: program.clone(),
                timeout: options.timeout,
                output,
            })
        }
        Ok(Err(e)) => {
            return Err(CommandError::Wait {
                program: program.clone(),
                message: e.to_string(),
                output,
            })
        }
        Ok(Ok(status)) => status,
    };
    if status.success() {
        return Ok(CommandOutcome { output, duration });
    }
    use std::os::unix::process::ExitStatusExt;
    let described = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        (None, None) => format!("failed ({status})"),
    };
    Err(CommandError::Failed {
        program: program.clone(),
        status: described,
        code: status.code(),
        output,
    })
}

/// SIGKILL to the process group led by `pgid` (the command and its children).
fn kill_group(pgid: Option<u32>) {
    if let Some(pid) = pgid.and_then(|p| i32::try_from(p).ok()).filter(|&p| p > 0) {
        // SAFETY: kill(2) with a negative pid signals that process group; no
        // memory is involved. The group is the command's own (process_group(0)).
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}

async fn pump(mut from: impl AsyncRead + Unpin, capture: Arc<Mutex<Capture>>) {
    let mut buf = vec![0u8; 8192];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => capture
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(&buf[..n]),
        }
    }
}

/// The tail of a stream of bytes: `limit` bytes plus enough before them to
/// recognise a secret that straddles the cut.
#[derive(Debug)]
struct Capture {
    buf: Vec<u8>,
    limit: usize,
    margin: usize,
    dropped: u64,
}

impl Capture {
    fn new(limit: usize, longest_secret: usize) -> Self {
        Self {
            buf: Vec::new(),
            limit,
            margin: longest_secret,
            dropped: 0,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        let keep = self.limit + self.margin;
        // Trim in batches, not on every small write.
        if self.buf.len() > keep.saturating_mul(2).max(keep + 8192) {
            let excess = self.buf.len() - keep;
            self.buf.drain(..excess);
            self.dropped += excess as u64;
        }
    }

    fn finish(&mut self, masker: &Masker) -> String {
        let keep = self.limit + self.margin;
        if self.buf.len() > keep {
            let excess = self.buf.len() - keep;
            self.buf.drain(..excess);
            self.dropped += excess as u64;
        }
        let truncated = self.dropped > 0;
        // Bytes that may be the end of a secret begun before the kept part.
        let skip = if truncated {
            self.margin.saturating_sub(1).min(self.buf.len())
        } else {
            0
        };
        let masked = masker.mask_bytes(&self.buf, skip);
        let mut text = String::from_utf8_lossy(&masked).into_owned();
        let mut cut = truncated;
        if text.len() > self.limit {
            let mut start = text.len() - self.limit;
            while !text.is_char_boundary(start) {
                start += 1;
            }
            text.drain(..start);
            cut = true;
        }
        if cut {
            format!("[earlier output truncated]\n{text}")
        } else {
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_keeps_the_tail_and_masks_a_secret_cut_by_it() {
        let m = Masker::new(&["TOPSECRETVALUE"]);
        let mut c = Capture::new(20, m.longest());
        c.push(b"0123456789TOPSECRETVALUE-tail-of-output");
        let out = c.finish(&m);
        assert!(out.starts_with("[earlier output truncated]\n"), "{out}");
        assert!(!out.contains("SECRET") && !out.contains("VALUE"), "{out}");
        assert!(out.ends_with("-tail-of-output"), "{out}");
        let body = out.trim_start_matches("[earlier output truncated]\n");
        assert!(body.len() <= 20, "{body}");
    }

    #[test]
    fn capture_within_limit_is_whole() {
        let m = Masker::new(&["pw-secret"]);
        let mut c = Capture::new(100, m.longest());
        c.push(b"user pw-secret\n");
        c.push(b"done\n");
        assert_eq!(c.finish(&m), "user ***\ndone\n");
    }

    #[test]
    fn large_output_is_bounded() {
        let m = Masker::default();
        let mut c = Capture::new(1024, 0);
        for i in 0..10_000 {
            c.push(format!("line {i}\n").as_bytes());
        }
        let out = c.finish(&m);
        assert!(out.len() < 1100);
        assert!(out.ends_with("line 9999\n"));
    }

    #[test]
    fn failure_reason_names_the_last_line() {
        let e = CommandError::Failed {
            program: "helm".into(),
            status: "exited with code 3".into(),
            code: Some(3),
            output: "working\nError: release failed\n\n".into(),
        };
        assert_eq!(
            e.to_string(),
            "`helm` exited with code 3: Error: release failed"
        );
    }
}
