//! Authentication by default (DESIGN.md 1.7): without API tokens, `gantry up`
//! and `gantry serve api|webhook` refuse a non-loopback listen address unless
//! anonymous access is asked for; the refusal says how to set up tokens.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn gantry(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gantry"));
    cmd.current_dir(dir).args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("GANTRY_") {
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
    let mut child = gantry(dir, args, env).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "gantry {args:?} did not refuse to start; it ran:\n{}",
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

/// A port free on every address a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `gantry up` and waits until it listens on `port`.
fn starts(dir: &Path, args: &[&str], env: &[(&str, &str)], port: u16) {
    let mut child: Child = gantry(dir, args, env).spawn().unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "gantry {args:?} exited with {status}:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "gantry {args:?} did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    let _ = child.wait();
}

#[test]
fn tokens_or_allow_anonymous_let_it_listen_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("pipelines")).unwrap();

    let port = free_port();
    let listen = format!("0.0.0.0:{port}");
    starts(
        dir.path(),
        &["up", "--listen", &listen, "--allow-anonymous"],
        &[],
        port,
    );

    let port = free_port();
    let listen = format!("0.0.0.0:{port}");
    starts(
        dir.path(),
        &["up", "--listen", &listen],
        &[("GANTRY_ALLOW_ANONYMOUS", "true")],
        port,
    );

    let tokens = dir.path().join("tokens.yaml");
    std::fs::write(
        &tokens,
        "tokens:\n  - user: rita\n    sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\n",
    )
    .unwrap();
    let port = free_port();
    let listen = format!("0.0.0.0:{port}");
    starts(
        dir.path(),
        &["up", "--listen", &listen],
        &[("GANTRY_API_TOKENS", tokens.to_str().unwrap())],
        port,
    );

    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    starts(dir.path(), &["up", "--listen", &listen], &[], port);
}
