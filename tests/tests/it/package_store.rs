//! The package store on a JetStream object store (services/store/src/packages.rs),
//! against a private `nats-server` (Debian's 2.9 here): put/get, idempotent
//! put, the digest verified on every read, a missing package, the bucket
//! created with its settings, a full bucket, and two processes with
//! different data dirs sharing packages through NATS.

use async_nats::jetstream;
use gantry_store::packages::{object_name, BucketSettings, PackageStore, PackageStoreError};
use gantry_tests::{unique_name, NatsServer};

async fn js(nats: &NatsServer) -> jetstream::Context {
    jetstream::new(async_nats::connect(nats.url()).await.unwrap())
}

fn settings(bucket: &str) -> BucketSettings {
    BucketSettings {
        bucket: bucket.to_owned(),
        ..BucketSettings::default()
    }
}

/// Incompressible-looking bytes larger than one object-store chunk (128 KiB).
fn package(len: usize, seed: u8) -> Vec<u8> {
    let mut x = u32::from(seed) + 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[tokio::test]
async fn put_get_and_idempotent_put_on_the_object_store() {
    let nats = NatsServer::start().await.unwrap();
    let js = js(&nats).await;
    let bucket = unique_name("PKG");
    let store = PackageStore::nats(&js, &settings(&bucket)).await.unwrap();
    assert_eq!(store.kind(), "nats");

    let bytes = package(300 * 1024, 1);
    let stored = store.put(&bytes).await.unwrap();
    assert!(stored.digest.starts_with("sha256:"));
    assert_eq!(stored.size, bytes.len() as u64);
    assert_eq!(
        stored.location,
        format!(
            "nats-object://{bucket}/{}",
            object_name(&stored.digest).unwrap()
        ),
        "a store-neutral reference, no host path"
    );
    assert_eq!(store.get(&stored.digest).await.unwrap(), bytes);

    // The same content again: same answer, nothing written (the object keeps
    // its first write: same internal id, same modification time).
    let raw = js.get_object_store(&bucket).await.unwrap();
    let name = object_name(&stored.digest).unwrap();
    let before = raw.info(&name).await.unwrap();
    assert_eq!(store.put(&bytes).await.unwrap(), stored);
    let after = raw.info(&name).await.unwrap();
    assert_eq!(before.nuid, after.nuid, "an idempotent put writes nothing");
    assert_eq!(before.modified, after.modified);

    // A second handle (another process) reads it; the bucket is not re-created.
    let other = PackageStore::nats(&js, &settings(&bucket)).await.unwrap();
    assert_eq!(other.get(&stored.digest).await.unwrap(), bytes);

    // Empty packages are packages too.
    let empty = store.put(b"").await.unwrap();
    assert_eq!(store.get(&empty.digest).await.unwrap(), b"");

    let listed = store.list().await.unwrap();
    let mut digests: Vec<_> = listed.iter().map(|p| p.digest.clone()).collect();
    digests.sort();
    let mut expected = vec![stored.digest.clone(), empty.digest.clone()];
    expected.sort();
    assert_eq!(digests, expected);
    assert!(listed.iter().all(|p| p.modified.is_some()));

    store.delete(&stored.digest).await.unwrap();
    store.delete(&stored.digest).await.unwrap();
    assert!(matches!(
        store.get(&stored.digest).await,
        Err(PackageStoreError::Missing { .. })
    ));
    assert_eq!(store.list().await.unwrap().len(), 1);
}

#[tokio::test]
async fn reads_are_verified_and_missing_packages_are_named() {
    let nats = NatsServer::start().await.unwrap();
    let js = js(&nats).await;
    let bucket = unique_name("PKG");
    let store = PackageStore::nats(&js, &settings(&bucket)).await.unwrap();

    let missing = format!("sha256:{}", "0".repeat(64));
    let err = store.get(&missing).await.unwrap_err();
    assert!(matches!(err, PackageStoreError::Missing { .. }), "{err}");
    assert!(!err.is_transient());
    let text = err.to_string();
    assert!(text.contains(&missing) && text.contains(&bucket), "{text}");

    assert!(matches!(
        store.get("sha256:not-hex").await,
        Err(PackageStoreError::BadDigest(_))
    ));

    // Someone writes other bytes under a package's name: the read refuses
    // them and names the digest.
    let stored = store.put(b"the real package").await.unwrap();
    let raw = js.get_object_store(&bucket).await.unwrap();
    let mut tampered: &[u8] = b"something else";
    raw.put(object_name(&stored.digest).unwrap().as_str(), &mut tampered)
        .await
        .unwrap();
    let err = store.get(&stored.digest).await.unwrap_err();
    assert!(matches!(err, PackageStoreError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains(&stored.digest), "{err}");
    assert!(!err.is_transient());

    // A put of the real content repairs it (the size differs, so it is written).
    store.put(b"the real package").await.unwrap();
    assert_eq!(
        store.get(&stored.digest).await.unwrap(),
        b"the real package"
    );

    // NATS gone: an error worth retrying, not a missing package.
    let mut nats = nats;
    nats.kill();
    let err = store.get(&stored.digest).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
}

#[tokio::test]
async fn the_bucket_is_created_with_its_settings_and_refuses_packages_when_full() {
    let nats = NatsServer::start().await.unwrap();
    let js = js(&nats).await;
    let bucket = unique_name("PKG");
    let store = PackageStore::nats(
        &js,
        &BucketSettings {
            bucket: bucket.clone(),
            replicas: 1,
            max_bytes: Some(1024 * 1024),
        },
    )
    .await
    .unwrap();
    let mut stream = js.get_stream(format!("OBJ_{bucket}")).await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.config.max_bytes, 1024 * 1024);
    assert_eq!(info.config.num_replicas, 1);
    assert_eq!(info.config.storage, jetstream::stream::StorageType::File);

    store.put(&package(600 * 1024, 1)).await.unwrap();
    // The bucket refuses what does not fit instead of dropping old packages.
    let err = store.put(&package(600 * 1024, 2)).await.unwrap_err();
    assert!(err.to_string().contains(&bucket), "{err}");
    assert_eq!(
        store
            .get(&store.list().await.unwrap()[0].digest)
            .await
            .unwrap(),
        package(600 * 1024, 1),
        "the first package is intact"
    );
}

#[tokio::test]
async fn two_data_dirs_share_packages_through_nats_but_not_through_disk() {
    let nats = NatsServer::start().await.unwrap();
    let bucket = unique_name("PKG");
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());

    // Embedded stores on two machines see nothing of each other.
    let stored = PackageStore::local(dir_a.path()).put(b"pkg").await.unwrap();
    assert!(matches!(
        PackageStore::local(dir_b.path()).get(&stored.digest).await,
        Err(PackageStoreError::Missing { .. })
    ));

    // Two App processes over the same NATS with their own data dirs do.
    let app = |dir: &std::path::Path| gantry_runtime::Settings {
        nats_url: Some(nats.url()),
        nats_prefix: unique_name("p"),
        nats_stream: unique_name("S"),
        packages_bucket: bucket.clone(),
        data_dir: dir.to_owned(),
        ..Default::default()
    };
    let a = gantry_runtime::App::start(app(dir_a.path())).await.unwrap();
    let b = gantry_runtime::App::start(app(dir_b.path())).await.unwrap();
    assert_eq!(a.packages.kind(), "nats");
    let stored = a.packages.put(&package(200 * 1024, 7)).await.unwrap();
    assert_eq!(
        b.packages.get(&stored.digest).await.unwrap(),
        package(200 * 1024, 7)
    );
}

/// The retention rule applied to a store and a log: the current release,
/// a running run's package and a fresh object stay; a finished run's
/// package and an unreferenced old object go.
#[tokio::test]
async fn prune_keeps_what_runs_can_reach_and_removes_the_rest() {
    use gantry_proto::events::*;
    use gantry_proto::{CloudEvent, EventPayload, Step, Trigger};
    use gantry_store::packages::retention::{prune, Keep, RetentionPolicy};
    use gantry_store::ExpectedVersion;

    let nats = NatsServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let app = gantry_runtime::App::start(gantry_runtime::Settings {
        nats_url: Some(nats.url()),
        nats_prefix: unique_name("p"),
        nats_stream: unique_name("S"),
        packages_bucket: unique_name("PKG"),
        data_dir: dir.path().to_owned(),
        ..Default::default()
    })
    .await
    .unwrap();
    let store = &app.packages;

    fn ev<P: EventPayload>(run: &str, p: P) -> CloudEvent {
        CloudEvent::new("test", "banking", Some(run), &p)
    }
    let mut digests = Vec::new();
    for (run, fate) in [
        ("released", "promoted"),
        ("failed", "failed"),
        ("running", ""),
    ] {
        let stored = store.put(run.as_bytes()).await.unwrap();
        let mut events = vec![
            ev(
                run,
                RunStarted {
                    run_id: run.into(),
                    commit: format!("{run}-commit"),
                    branch: "main".into(),
                    repository: "repo".into(),
                    message: None,
                    author: None,
                    authors: vec![],
                    trigger: Trigger::Manual,
                    stages: vec![StagePlan {
                        name: "test".into(),
                        after: None,
                        steps: vec![Step::Package],
                    }],
                    rollback: None,
                },
            ),
            ev(
                run,
                PackageBuilt {
                    stage: "test".into(),
                    digest: stored.digest.clone(),
                    size: stored.size,
                    files: 1,
                    format: "yaml".into(),
                    values_digest: None,
                    location: Some(stored.location.clone()),
                    commit: None,
                    committed_at: None,
                },
            ),
        ];
        match fate {
            "promoted" => {
                events.push(ev(
                    run,
                    EnvPromoted {
                        stage: "test".into(),
                        commit: format!("{run}-commit"),
                        image: None,
                        digest: None,
                    },
                ));
                events.push(ev(run, RunSucceeded {}));
            }
            "failed" => events.push(ev(
                run,
                RunFailed {
                    stage: None,
                    reason: "no".into(),
                },
            )),
            _ => {}
        }
        app.store
            .append(&format!("run-{run}"), ExpectedVersion::Any, events)
            .await
            .unwrap();
        digests.push(stored.digest);
    }
    let orphan = store.put(b"orphan").await.unwrap().digest;

    // With the default policy everything is recent: nothing goes.
    let plan = prune(store, &app.projections, &RetentionPolicy::default(), false)
        .await
        .unwrap();
    assert!(plan.remove.is_empty(), "{plan:?}");

    // A dry run with nothing recent says what would go and removes nothing.
    let strict = RetentionPolicy {
        keep_days: 0,
        grace: chrono::Duration::zero(),
    };
    let plan = prune(store, &app.projections, &strict, true).await.unwrap();
    let mut expected = vec![digests[1].clone(), orphan.clone()];
    expected.sort();
    assert_eq!(plan.remove, expected);
    assert_eq!(store.list().await.unwrap().len(), 4);
    assert!(matches!(plan.keep[&digests[0]], Keep::Released { .. }));
    assert!(matches!(plan.keep[&digests[2]], Keep::RunInProgress { .. }));

    prune(store, &app.projections, &strict, false)
        .await
        .unwrap();
    let mut left: Vec<_> = store
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.digest)
        .collect();
    left.sort();
    let mut expected = vec![digests[0].clone(), digests[2].clone()];
    expected.sort();
    assert_eq!(left, expected);
    assert!(matches!(
        store.get(&digests[1]).await,
        Err(PackageStoreError::Missing { .. })
    ));
}
