//! Exercises every helper in `gantry-tests` against the real component.

use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, stream};
use gantry_tests::{
    free_port, fresh_postgres, shared_nats_url, wait_for_http, GitRepo, NatsServer, Registry,
};
use sqlx::{Connection, Executor, PgConnection, Row};

#[tokio::test]
async fn fresh_postgres_is_isolated_and_dropped() -> anyhow::Result<()> {
    let db = fresh_postgres().await?;
    assert!(db.name.starts_with("gantry_test_"), "{}", db.name);
    assert!(db.url.ends_with(&db.name), "{}", db.url);

    let mut conn = db.connect().await?;
    conn.execute("CREATE TABLE t (id BIGINT PRIMARY KEY, v TEXT NOT NULL)")
        .await?;
    conn.execute("INSERT INTO t VALUES (1, 'one')").await?;
    let row = sqlx::query("SELECT current_database() AS db, v FROM t WHERE id = 1")
        .fetch_one(&mut conn)
        .await?;
    assert_eq!(row.get::<String, _>("db"), db.name);
    assert_eq!(row.get::<String, _>("v"), "one");

    // A second fresh database does not see the first one's table.
    let other = fresh_postgres().await?;
    assert_ne!(other.name, db.name);
    let pool = other.pool().await?;
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM information_schema.tables WHERE table_name = 't'")
            .fetch_one(&pool)
            .await?;
    assert_eq!(n, 0);
    pool.close().await;

    // Dropping the guard drops the database, even with a connection still open.
    let name = db.name.clone();
    drop(db);
    let mut admin = PgConnection::connect(&gantry_tests::database_url()).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
    assert!(!exists, "database {name} still exists after drop");
    drop(conn);
    Ok(())
}

#[tokio::test]
async fn nats_server_keeps_jetstream_data_across_kill_and_restart() -> anyhow::Result<()> {
    let mut nats = NatsServer::start().await?;
    assert!(nats.is_running());
    let client = async_nats::connect(nats.url()).await?;
    let js = jetstream::new(client.clone());
    js.create_stream(stream::Config {
        name: "HARNESS".into(),
        subjects: vec!["harness.>".into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    for i in 1..=3 {
        let ack = js
            .publish(format!("harness.{i}"), format!("message {i}").into())
            .await?
            .await?;
        assert_eq!(ack.sequence, i);
    }
    // Margin for the server's file writes before the hard kill (2.9 writes
    // before acking by default; this keeps the test independent of that).
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(client);

    nats.kill();
    assert!(!nats.is_running());
    assert!(
        async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_millis(500))
            .connect(nats.url())
            .await
            .is_err(),
        "connected to a killed server"
    );

    let port = nats.port();
    nats.restart().await?;
    assert_eq!(nats.port(), port);
    let client = async_nats::connect(nats.url()).await?;
    let js = jetstream::new(client);
    let mut stream = js.get_stream("HARNESS").await?;
    let info = stream.info().await?;
    assert_eq!(info.state.messages, 3);
    let msg = stream.get_raw_message(2).await?;
    assert_eq!(msg.subject.as_str(), "harness.2");
    assert_eq!(&msg.payload[..], b"message 2");

    // Restart works on a running server too, and still keeps the data.
    nats.restart().await?;
    let client = async_nats::connect(nats.url()).await?;
    let mut stream = jetstream::new(client).get_stream("HARNESS").await?;
    assert_eq!(stream.info().await?.state.messages, 3);
    Ok(())
}

#[tokio::test]
async fn shared_nats_answers_with_jetstream() -> anyhow::Result<()> {
    let url = shared_nats_url();
    let client = async_nats::connect(&url)
        .await
        .with_context(|| format!("connecting to GANTRY_TEST_NATS_URL {url}"))?;
    let js = jetstream::new(client);
    // Unique names: several test runs may share this server.
    let name = gantry_tests::unique_name("HARNESS_");
    let subject = format!("{}.x", name.to_lowercase());
    let mut stream = js
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            storage: stream::StorageType::Memory,
            ..Default::default()
        })
        .await?;
    js.publish(subject, "hi".into()).await?.await?;
    assert_eq!(stream.info().await?.state.messages, 1);
    js.delete_stream(&name).await?;
    Ok(())
}

#[tokio::test]
async fn registry_answers_v2() -> anyhow::Result<()> {
    let registry = Registry::start().await?;
    assert!(registry.url().ends_with(&registry.host_port()));
    let resp = reqwest::get(format!("{}/v2/", registry.url())).await?;
    assert_eq!(resp.status(), 200);
    let status = wait_for_http(
        &format!("{}/v2/_catalog", registry.url()),
        Duration::from_secs(5),
    )
    .await?;
    assert_eq!(status, 200);
    Ok(())
}

#[tokio::test]
async fn registry_with_basic_auth_rejects_without_credentials() -> anyhow::Result<()> {
    let registry = Registry::start_with_basic_auth("gantry", "s3cret").await?;
    assert_eq!(registry.credentials(), Some(("gantry", "s3cret")));
    let client = reqwest::Client::new();
    let url = format!("{}/v2/", registry.url());

    let anonymous = client.get(&url).send().await?;
    assert_eq!(anonymous.status(), 401);
    assert!(anonymous
        .headers()
        .get("www-authenticate")
        .is_some_and(|v| v.to_str().unwrap_or("").starts_with("Basic")));

    let wrong = client
        .get(&url)
        .basic_auth("gantry", Some("nope"))
        .send()
        .await?;
    assert_eq!(wrong.status(), 401);

    let ok = client
        .get(&url)
        .basic_auth("gantry", Some("s3cret"))
        .send()
        .await?;
    assert_eq!(ok.status(), 200);
    Ok(())
}

#[tokio::test]
async fn wait_for_http_times_out_on_a_closed_port() {
    let url = format!("http://127.0.0.1:{}/", free_port());
    let err = wait_for_http(&url, Duration::from_millis(300)).await;
    assert!(err.is_err());
}

#[test]
fn git_repo_commits_and_pushes() -> anyhow::Result<()> {
    let repo = GitRepo::init()?;
    repo.write("config/gateway.yaml", "name: gw\n")?;
    let first = repo.commit("first")?;
    assert_eq!(first.len(), 40, "{first}");
    assert!(first.chars().all(|c| c.is_ascii_hexdigit()), "{first}");

    let second = repo.commit_files(&[("README", "hello\n"), ("a/b/c.txt", "c\n")], "second")?;
    assert_ne!(first, second);
    assert_eq!(repo.head()?, second);
    assert_eq!(repo.rev_parse("main~1")?, first);
    assert_eq!(
        repo.git(["show", "-s", "--format=%an <%ae>"])?,
        "Gantry Test <gantry-test@example.com>"
    );
    assert!(repo.url().starts_with("file:///"), "{}", repo.url());

    let remote = GitRepo::bare()?;
    assert!(remote.is_bare());
    assert!(remote.write("x", "y").is_err());
    repo.push(&remote.url(), "main")?;
    assert_eq!(remote.rev_parse("refs/heads/main")?, second);

    repo.checkout_new_branch("release")?;
    repo.remove("README")?;
    let third = repo.commit("remove readme")?;
    repo.push(&remote.path().display().to_string(), "release")?;
    assert_eq!(remote.rev_parse("release")?, third);
    Ok(())
}
