//! Authentication by default (DESIGN.md 1.7): without API tokens, `gantry up`
//! and `gantry serve api|webhook` refuse a non-loopback listen address unless
//! anonymous access is asked for; the refusal says how to set up tokens. The
//! same holds for a socket a supervisor passes (`LISTEN_FDS`).

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn gantry(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gantry"));
    cmd.current_dir(dir).args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("GANTRY_") || k.starts_with("LISTEN_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs to its end (at most 15 s; a server that starts is killed and fails).
fn refused(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let child = gantry(dir, args, env).spawn().unwrap();
    wait_refused(child, &format!("{args:?}"))
}

fn wait_refused(mut child: Child, what: &str) -> Output {
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "gantry {what} did not refuse to start; it ran:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn assert_refusal(out: &Output, listen: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for needle in [
        listen,
        "without API tokens",
        "GANTRY_API_TOKENS",
        "tokens:",
        "sha256: ",
        "printf %s",
        "sha256sum",
        "--allow-anonymous",
        "GANTRY_ALLOW_ANONYMOUS=true",
    ] {
        assert!(
            stderr.contains(needle),
            "`{needle}` missing from:\n{stderr}"
        );
    }
}

#[test]
fn up_refuses_a_reachable_address_without_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let out = refused(dir.path(), &["up", "--listen", "0.0.0.0:0"], &[]);
    assert_refusal(&out, "0.0.0.0:0");
    assert!(
        !dir.path().join(".gantry").exists(),
        "the refusal comes before anything is opened"
    );
    let out = refused(dir.path(), &["up"], &[("GANTRY_LISTEN", "[::]:0")]);
    assert_refusal(&out, "[::]:0");
    // `false` is not a yes.
    let out = refused(
        dir.path(),
        &["up", "--listen", "0.0.0.0:0"],
        &[("GANTRY_ALLOW_ANONYMOUS", "false")],
    );
    assert_refusal(&out, "0.0.0.0:0");
}

#[test]
fn serve_api_and_webhook_refuse_a_reachable_address_without_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("GANTRY_DATABASE_URL", "postgres://nobody@127.0.0.1:1/none"),
        ("GANTRY_NATS_URL", "nats://127.0.0.1:1"),
        ("GANTRY_LISTEN", "0.0.0.0:0"),
    ];
    for service in ["api", "webhook"] {
        let out = refused(dir.path(), &["serve", service], &env);
        assert_refusal(&out, "0.0.0.0:0");
    }
}

/// Starts `gantry <args>`, waits until it says where it listens, checks
/// that a client reaches it there on loopback, and stops it. Port 0: the
/// kernel picks a free port, the process names it in its log.
fn starts(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> SocketAddr {
    starts_with(gantry(dir, args, env), args)
}

fn starts_with(mut cmd: Command, args: &[&str]) -> SocketAddr {
    let mut child: Child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut log = String::new();
    let addr: SocketAddr = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                log.push_str(&line);
                log.push('\n');
                if let Some(rest) = line.split("gantry is up at http://").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or_default();
                    break addr
                        .parse()
                        .unwrap_or_else(|e| panic!("{addr}: {e}\n{log}"));
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                child.kill().unwrap();
                panic!("gantry {args:?} did not listen within 20 s:\n{log}");
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait().unwrap();
                panic!("gantry {args:?} exited with {status}:\n{log}");
            }
        }
    };
    let local = SocketAddr::from(([127, 0, 0, 1], addr.port()));
    let served = TcpStream::connect_timeout(&local, Duration::from_secs(5));
    child.kill().unwrap();
    let _ = child.wait();
    served.unwrap_or_else(|e| panic!("gantry {args:?} says {addr} but {local} refuses: {e}"));
    addr
}

fn tokens_file(dir: &Path) -> std::path::PathBuf {
    let tokens = dir.join("tokens.yaml");
    std::fs::write(
        &tokens,
        "tokens:\n  - user: rita\n    sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\n",
    )
    .unwrap();
    tokens
}

#[test]
fn tokens_or_allow_anonymous_let_it_listen_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("pipelines")).unwrap();

    let up = ["up", "--listen", "0.0.0.0:0"];
    let addr = starts(dir.path(), &[&up[..], &["--allow-anonymous"]].concat(), &[]);
    assert!(addr.ip().is_unspecified(), "{addr}");
    starts(dir.path(), &up, &[("GANTRY_ALLOW_ANONYMOUS", "true")]);
    let tokens = tokens_file(dir.path());
    starts(
        dir.path(),
        &up,
        &[("GANTRY_API_TOKENS", tokens.to_str().unwrap())],
    );
    let addr = starts(dir.path(), &["up", "--listen", "127.0.0.1:0"], &[]);
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
}

/// A socket a supervisor passes (`LISTEN_FDS`) is served instead of
/// `--listen`, under the same rule: reachable from elsewhere only with
/// tokens or anonymous access asked for.
#[test]
fn a_passed_socket_is_served_under_the_same_rule() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("pipelines")).unwrap();
    let everywhere = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = everywhere.local_addr().unwrap().port();

    let mut cmd = gantry(dir.path(), &["up"], &[]);
    gantry_tests::pass_listener(&mut cmd, &everywhere);
    let child = cmd.spawn().unwrap();
    let out = wait_refused(child, "up with a passed 0.0.0.0 socket");
    assert_refusal(&out, &format!("0.0.0.0:{port}"));
    assert!(!dir.path().join(".gantry").exists(), "nothing opened");

    // With tokens, the passed socket is served, not --listen.
    let tokens = tokens_file(dir.path());
    let mut cmd = gantry(
        dir.path(),
        &["up", "--listen", "127.0.0.1:1"],
        &[("GANTRY_API_TOKENS", tokens.to_str().unwrap())],
    );
    gantry_tests::pass_listener(&mut cmd, &everywhere);
    assert_eq!(starts_with(cmd, &["up"]).port(), port);

    // A loopback socket needs nothing.
    let loopback = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cmd = gantry(dir.path(), &["up"], &[]);
    gantry_tests::pass_listener(&mut cmd, &loopback);
    assert_eq!(starts_with(cmd, &["up"]), loopback.local_addr().unwrap());
}

#[test]
fn listen_fds_without_a_socket_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    for (fds, needle) in [
        ("1", "fd 3 is not a listening socket"),
        ("2", "pass exactly one"),
        ("x", "not a number of sockets"),
    ] {
        let out = refused(dir.path(), &["up"], &[("LISTEN_FDS", fds)]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(needle), "LISTEN_FDS={fds}: {stderr}");
    }
    // Meant for another process: ignored, --listen is served.
    let addr = starts(
        dir.path(),
        &["up", "--listen", "127.0.0.1:0"],
        &[("LISTEN_FDS", "1"), ("LISTEN_PID", "1")],
    );
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
}
