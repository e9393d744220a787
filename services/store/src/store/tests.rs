use super::*;
use gantry_proto::events::RunCancelled;

pub(crate) async fn sqlite_store() -> (EventStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("gantry.db").display());
    let store = EventStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    (store, dir)
}

fn event(run: &str) -> CloudEvent {
    CloudEvent::new(
        "test",
        "p",
        Some(run),
        &RunCancelled {
            user: "u".into(),
            reason: None,
        },
    )
}

#[tokio::test]
async fn append_assigns_consecutive_positions_and_versions() {
    let (store, _dir) = sqlite_store().await;
    let a = store
        .append(
            "run-1",
            ExpectedVersion::NoStream,
            vec![event("1"), event("1")],
        )
        .await
        .unwrap();
    assert_eq!(a.positions, vec![1, 2]);
    let b = store
        .append("run-2", ExpectedVersion::NoStream, vec![event("2")])
        .await
        .unwrap();
    assert_eq!(b.positions, vec![3]);
    let stream = store.read_stream("run-1").await.unwrap();
    assert_eq!(
        stream.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        vec![1, 2]
    );
    let all = store.read_all(0, 100).await.unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[2].event.sequence, Some(3), "sequence is the position");
    assert_eq!(store.head().await.unwrap(), 3);
    assert_eq!(store.read_run("1").await.unwrap().len(), 2);
}

#[tokio::test]
async fn optimistic_concurrency_rejects_stale_writers() {
    let (store, _dir) = sqlite_store().await;
    store
        .append("s", ExpectedVersion::NoStream, vec![event("1")])
        .await
        .unwrap();
    let err = store
        .append("s", ExpectedVersion::NoStream, vec![event("1")])
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "{err}");
    let err = store
        .append("s", ExpectedVersion::Exact(0), vec![event("1")])
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "{err}");
    store
        .append("s", ExpectedVersion::Exact(1), vec![event("1")])
        .await
        .unwrap();
    assert_eq!(store.stream_version("s").await.unwrap(), 2);
    assert_eq!(
        store.head().await.unwrap(),
        2,
        "rejected appends wrote nothing"
    );
}

#[tokio::test]
async fn appending_the_same_event_twice_is_a_no_op() {
    let (store, _dir) = sqlite_store().await;
    let ev = event("1");
    let first = store
        .append("s", ExpectedVersion::NoStream, vec![ev.clone()])
        .await
        .unwrap();
    // Even with an expectation that no longer holds: the event is already there.
    let again = store
        .append("s", ExpectedVersion::NoStream, vec![ev.clone()])
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.positions, first.positions);
    assert_eq!(store.head().await.unwrap(), 1);
    let err = store
        .append("other", ExpectedVersion::Any, vec![ev])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::IdReused { .. }), "{err}");
}

#[tokio::test]
async fn multi_stream_appends_are_atomic() {
    let (store, _dir) = sqlite_store().await;
    store
        .append("b", ExpectedVersion::NoStream, vec![event("1")])
        .await
        .unwrap();
    let err = store
        .append_many(vec![
            NewEvents::new("a", ExpectedVersion::NoStream, vec![event("1")]),
            NewEvents::new("b", ExpectedVersion::NoStream, vec![event("1")]),
        ])
        .await
        .unwrap_err();
    assert!(err.is_conflict());
    assert_eq!(
        store.stream_version("a").await.unwrap(),
        0,
        "nothing of the batch landed"
    );
}

#[tokio::test]
async fn handled_effects_happen_once() {
    let (store, _dir) = sqlite_store().await;
    let cause = event("1");
    let first = store
        .append_handled(
            "h",
            cause.id,
            vec![NewEvents::new("s", ExpectedVersion::Any, vec![event("1")])],
        )
        .await
        .unwrap();
    assert!(first.is_some());
    assert!(store.is_handled("h", cause.id).await.unwrap());
    let second = store
        .append_handled(
            "h",
            cause.id,
            vec![NewEvents::new("s", ExpectedVersion::Any, vec![event("1")])],
        )
        .await
        .unwrap();
    assert!(second.is_none());
    assert_eq!(store.head().await.unwrap(), 1);
    assert!(!store.is_handled("other", cause.id).await.unwrap());
}

#[tokio::test]
async fn checkpoints_only_move_forward() {
    let (store, _dir) = sqlite_store().await;
    assert_eq!(store.checkpoint("c").await.unwrap(), 0);
    store.save_checkpoint("c", 5).await.unwrap();
    store.save_checkpoint("c", 3).await.unwrap();
    assert_eq!(store.checkpoint("c").await.unwrap(), 5);
}

#[tokio::test]
async fn wakeups_fire_on_append() {
    let (store, _dir) = sqlite_store().await;
    let mut wake = store.wakeups();
    let waiter = tokio::spawn(async move { wake.wait_beyond(0).await });
    tokio::task::yield_now().await;
    store
        .append("s", ExpectedVersion::Any, vec![event("1")])
        .await
        .unwrap();
    assert_eq!(waiter.await.unwrap(), 1);
}

#[test]
fn urls_are_redacted() {
    assert_eq!(
        redact_url("postgres://u:secret@h/db"),
        "postgres://u:***@h/db"
    );
    assert_eq!(redact_url("sqlite://x.db"), "sqlite://x.db");
}

#[test]
fn nats_tokens_and_server_lists_are_redacted() {
    assert_eq!(redact_url("nats://tok3n-value@h:4222"), "nats://***@h:4222");
    assert_eq!(
        redact_url("nats://u:p1@a:4222,nats://u:p2@b:4222"),
        "nats://u:***@a:4222,nats://u:***@b:4222"
    );
    // The user alone is no secret in a database URL.
    assert_eq!(
        redact_url("postgres://gantry@h/db?sslmode=require"),
        "postgres://gantry@h/db?sslmode=require"
    );
    // `@` in a password written unescaped.
    assert_eq!(
        redact_url("postgres://u:p@ss@h/db"),
        "postgres://u:***@h/db"
    );
}

/// Whatever code put a secret into an event, the log never holds it: the
/// store masks every appended event's data with the process's secrets.
#[tokio::test]
async fn appended_events_are_masked_with_the_process_secrets() {
    let (store, _dir) = sqlite_store().await;
    gantry_pipeline::mask::register_more(["store-test-secret-7731"]);
    let leaky = CloudEvent::new(
        "test",
        "p",
        Some("r-mask"),
        &RunCancelled {
            user: "u".into(),
            reason: Some("the password is store-test-secret-7731, oops".into()),
        },
    );
    store
        .append("run-r-mask", ExpectedVersion::Any, vec![leaky])
        .await
        .unwrap();
    let recorded = store.read_stream("run-r-mask").await.unwrap();
    let text = recorded[0].event.data.to_string();
    assert!(!text.contains("store-test-secret-7731"), "{text}");
    assert!(text.contains("the password is ***, oops"), "{text}");
}

/// An append larger than one lookup query's bind budget is looked up in
/// several queries, and its repetition is still recognised as a duplicate.
#[tokio::test]
async fn an_append_past_the_lookup_budget_is_written_once() {
    let (store, _dir) = sqlite_store().await;
    let events: Vec<CloudEvent> = (0..2_500).map(|_| event("r-big")).collect();
    let first = store
        .append("run-r-big", ExpectedVersion::NoStream, events.clone())
        .await
        .unwrap();
    assert_eq!(first.positions, (1..=2_500).collect::<Vec<i64>>());
    assert!(!first.duplicate);
    let again = store
        .append("run-r-big", ExpectedVersion::Any, events)
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.positions, first.positions);
    assert_eq!(store.head().await.unwrap(), 2_500);
}
