//! Connections for distributed deployments (DESIGN.md 1.6): Postgres over
//! TLS, NATS with credentials (URL user/password or token, NKEY seed) and
//! TLS (private CA, client certificate), pool size and stream limits.

use std::time::Duration;

use gantry_proto::events::RunCancelled;
use gantry_proto::CloudEvent;
use gantry_store::bus::{NatsBus, NatsConnection, NatsSettings, StreamLimits};
use gantry_store::{EventStore, ExpectedVersion};
use gantry_tests::{fresh_postgres, unique_name, NatsConfig, NatsServer, TestPki};
use sqlx::Row;

/// Long enough for a connection; refused credentials fail at once, a
/// refused client certificate when the stream request times out.
const CONNECT: Duration = Duration::from_secs(20);

fn settings(url: String) -> NatsSettings {
    NatsSettings {
        prefix: unique_name("c"),
        stream: unique_name("CONN_"),
        ..NatsSettings::new(url)
    }
}

async fn connect(settings: NatsSettings) -> Result<NatsBus, String> {
    match tokio::time::timeout(CONNECT, NatsBus::connect(settings)).await {
        Ok(Ok(bus)) => Ok(bus),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no connection within {CONNECT:?}")),
    }
}

/// The client can use JetStream: the stream exists and answers.
async fn usable(bus: &NatsBus) {
    let mut stream = bus
        .jetstream()
        .get_stream(&bus.settings().stream)
        .await
        .expect("the stream exists");
    stream.info().await.expect("JetStream answers");
}

#[tokio::test]
async fn nats_user_and_password_in_the_url_authenticate() {
    let password = "pa$$:w@rd/+";
    let server = NatsServer::start_with(NatsConfig {
        user_password: Some(("gantry".into(), password.into())),
        ..Default::default()
    })
    .await
    .unwrap();
    let escaped = "pa%24%24%3Aw%40rd%2F%2B";
    let url = format!("nats://gantry:{escaped}@127.0.0.1:{}", server.port());
    let bus = connect(settings(url))
        .await
        .expect("user and password from the URL");
    usable(&bus).await;

    let wrong = format!("nats://gantry:not-it@127.0.0.1:{}", server.port());
    let e = connect(settings(wrong))
        .await
        .expect_err("a wrong password is refused");
    assert!(e.contains("authorization violation"), "said at start: {e}");
    assert!(!e.contains("not-it"), "no password in errors: {e}");
}

#[tokio::test]
async fn nats_token_in_the_url_authenticates() {
    let server = NatsServer::start_with(NatsConfig {
        token: Some("s3cr3t-token".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let url = format!("nats://s3cr3t-token@127.0.0.1:{}", server.port());
    let bus = connect(settings(url)).await.expect("token from the URL");
    usable(&bus).await;
}

#[tokio::test]
async fn nats_nkey_seed_file_authenticates() {
    let user = nkeys::KeyPair::new_user();
    let seed = user.seed().unwrap();
    let server = NatsServer::start_with(NatsConfig {
        nkey_user: Some(user.public_key()),
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let seed_file = dir.path().join("gantry.nk");
    std::fs::write(&seed_file, format!("{seed}\n")).unwrap();

    let mut with_seed = settings(server.url());
    with_seed.connection.nkey = Some(seed_file);
    let bus = connect(with_seed).await.expect("NKEY seed");
    usable(&bus).await;
    assert!(
        connect(settings(server.url())).await.is_err(),
        "without the seed the server refuses"
    );
}

#[tokio::test]
async fn nats_tls_with_a_private_ca_a_client_certificate_and_a_password() {
    let pki = TestPki::generate().unwrap();
    let server = NatsServer::start_with(NatsConfig {
        user_password: Some(("gantry".into(), "tls-password".into())),
        tls: Some(pki.clone()),
        verify_clients: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let url = format!("tls://gantry:tls-password@127.0.0.1:{}", server.port());
    let full = NatsConnection {
        ca: Some(pki.ca.clone()),
        cert: Some(pki.client_cert.clone()),
        key: Some(pki.client_key.clone()),
        ..Default::default()
    };
    let mut good = settings(url.clone());
    good.connection = full.clone();
    let bus = connect(good)
        .await
        .expect("TLS with CA, client certificate and password");
    usable(&bus).await;

    // The system's roots do not know the private CA.
    let mut no_ca = settings(url.clone());
    no_ca.connection = NatsConnection {
        ca: None,
        ..full.clone()
    };
    let e = connect(no_ca).await.expect_err("an unknown CA is refused");
    assert!(e.contains("certificate"), "said at start: {e}");
    // The server wants a client certificate.
    let mut no_cert = settings(url);
    no_cert.connection = NatsConnection {
        ca: Some(pki.ca.clone()),
        ..Default::default()
    };
    assert!(
        connect(no_cert).await.is_err(),
        "no client certificate, no connection"
    );
}

#[tokio::test]
async fn a_nats_url_without_tls_still_uses_tls_when_a_ca_is_given() {
    let pki = TestPki::generate().unwrap();
    let server = NatsServer::start_with(NatsConfig {
        tls: Some(pki.clone()),
        ..Default::default()
    })
    .await
    .unwrap();
    // `nats://` to a TLS server: upgraded, and checked against the CA.
    let mut s = settings(format!("nats://127.0.0.1:{}", server.port()));
    s.connection.ca = Some(pki.ca.clone());
    let bus = connect(s).await.expect("TLS upgrade with the CA");
    usable(&bus).await;
}

#[tokio::test]
async fn stream_replicas_and_limits_are_applied_and_updated() {
    let server = NatsServer::start().await.unwrap();
    let mut s = settings(server.url());
    s.limits = StreamLimits {
        replicas: 1,
        max_age: Some(Duration::from_secs(7 * 86_400)),
        max_bytes: Some(64 << 20),
    };
    let bus = connect(s.clone()).await.unwrap();
    let mut stream = bus.jetstream().get_stream(&s.stream).await.unwrap();
    let config = stream.info().await.unwrap().config.clone();
    assert_eq!(
        (config.num_replicas, config.max_age, config.max_bytes),
        (1, Duration::from_secs(7 * 86_400), 64 << 20)
    );

    // A process started with other limits brings the stream to them.
    s.limits.max_age = Some(Duration::from_secs(3600));
    s.limits.max_bytes = None;
    let bus = connect(s.clone()).await.unwrap();
    let mut stream = bus.jetstream().get_stream(&s.stream).await.unwrap();
    let config = stream.info().await.unwrap().config.clone();
    assert_eq!(
        (config.max_age, config.max_bytes),
        (Duration::from_secs(3600), -1)
    );

    // Replicas reach the server too (a single server, as here, records the
    // number; a cluster places that many copies).
    s.limits.replicas = 3;
    let bus = connect(s.clone()).await.unwrap();
    let mut stream = bus.jetstream().get_stream(&s.stream).await.unwrap();
    assert_eq!(stream.info().await.unwrap().config.num_replicas, 3);
}

/// Whether the test Postgres serves TLS (`SHOW ssl`), and its certificate file.
async fn server_tls(db: &gantry_tests::TestDb) -> Option<String> {
    let mut conn = db.connect().await.unwrap();
    let ssl: String = sqlx::query_scalar("SHOW ssl")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    if ssl != "on" {
        return None;
    }
    sqlx::query_scalar("SHOW ssl_cert_file")
        .fetch_one(&mut conn)
        .await
        .ok()
}

fn with_params(url: &str, params: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{params}")
}

/// What the server says about this session's encryption.
async fn session_ssl(store: &EventStore) -> bool {
    sqlx::query("SELECT CAST(ssl AS TEXT) FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(store.pool())
        .await
        .unwrap()
        .get::<String, _>(0)
        == "true"
}

#[tokio::test]
async fn postgres_over_tls_with_sslmode_and_sslrootcert() {
    let db = fresh_postgres().await.unwrap();
    let Some(cert_file) = server_tls(&db).await else {
        eprintln!(
            "SKIPPED postgres_over_tls_with_sslmode_and_sslrootcert: the test Postgres does not \
             serve TLS (`SHOW ssl` is off); scripts/test documents how to turn it on"
        );
        return;
    };
    let url = with_params(db.url(), "sslmode=require");
    let store = EventStore::connect(&url).await.expect("sslmode=require");
    store.migrate().await.unwrap();
    let event = CloudEvent::new(
        "test",
        "p",
        Some("tls-run"),
        &RunCancelled {
            user: "u".into(),
            reason: Some("over TLS".into()),
        },
    );
    store
        .append("tls-1", ExpectedVersion::NoStream, vec![event])
        .await
        .unwrap();
    assert!(session_ssl(&store).await, "the session is encrypted");

    // Verification against a CA that did not sign the server's certificate fails.
    let pki = TestPki::generate().unwrap();
    let wrong = with_params(
        db.url(),
        &format!("sslmode=verify-ca&sslrootcert={}", pki.ca.display()),
    );
    assert!(
        EventStore::connect(&wrong).await.is_err(),
        "verify-ca with another CA is refused"
    );

    // Debian's default certificate is self-signed for `localhost`: it is
    // its own CA, so verify-full works against it when we can read it.
    if std::fs::read(&cert_file).is_ok() {
        let mut full = url::Url::parse(db.url()).unwrap();
        full.set_host(Some("localhost")).unwrap();
        let full = with_params(
            full.as_str(),
            &format!("sslmode=verify-full&sslrootcert={cert_file}"),
        );
        let store = EventStore::connect(&full).await.expect("verify-full");
        assert!(session_ssl(&store).await);
    } else {
        eprintln!("verify-full not checked: cannot read the server certificate {cert_file}");
    }
}

#[tokio::test]
async fn the_database_pool_size_is_configurable() {
    let db = fresh_postgres().await.unwrap();
    let store = EventStore::connect_with_pool(db.url(), Some(5))
        .await
        .unwrap();
    assert_eq!(store.pool().options().get_max_connections(), 5);
    let store = EventStore::connect(db.url()).await.unwrap();
    assert_eq!(store.pool().options().get_max_connections(), 16);
}
