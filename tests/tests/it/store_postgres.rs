//! The event store's guarantees on a real Postgres (DESIGN.md 2.2): positions
//! and versions, optimistic concurrency, idempotent appends, multi-stream
//! atomicity, handled-once, and the proof that a concurrent reader tailing the
//! log never skips an event that commits late.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::{cancelled, store_at, within};
use gantry_proto::CloudEvent;
use gantry_store::store::Backend;
use gantry_store::{EventStore, ExpectedVersion, NewEvents, StoreError};
use gantry_tests::fresh_postgres;
use uuid::Uuid;

async fn count_rows(store: &EventStore) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT COUNT(*) FROM events")
        .fetch_one(store.pool())
        .await?)
}

fn ids(events: &[gantry_store::RecordedEvent]) -> Vec<Uuid> {
    events.iter().map(|e| e.event.id).collect()
}

#[tokio::test]
async fn positions_and_versions_are_consecutive() -> anyhow::Result<()> {
    let db = fresh_postgres().await?;
    let store = store_at(db.url()).await?;
    assert_eq!(store.backend(), Backend::Postgres);
    assert_eq!(store.head().await?, 0);
    assert!(store.read_all(0, 100).await?.is_empty());

    let (a1, a2, b1, a3) = (
        cancelled("a"),
        cancelled("a"),
        cancelled("b"),
        cancelled("a"),
    );
    let r = store
        .append(
            "run-a",
            ExpectedVersion::NoStream,
            vec![a1.clone(), a2.clone()],
        )
        .await?;
    assert_eq!(r.positions, vec![1, 2]);
    assert!(!r.duplicate);
    let r = store
        .append("run-b", ExpectedVersion::NoStream, vec![b1.clone()])
        .await?;
    assert_eq!(r.positions, vec![3]);
    let r = store
        .append("run-a", ExpectedVersion::Exact(2), vec![a3.clone()])
        .await?;
    assert_eq!(r.positions, vec![4]);
    assert_eq!(r.last_position(), Some(4));

    let all = store.read_all(0, 100).await?;
    assert_eq!(
        all.iter().map(|e| e.position).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert_eq!(ids(&all), vec![a1.id, a2.id, b1.id, a3.id]);
    assert_eq!(
        all.iter()
            .map(|e| (e.stream_id.as_str(), e.stream_version))
            .collect::<Vec<_>>(),
        vec![("run-a", 1), ("run-a", 2), ("run-b", 1), ("run-a", 3)]
    );
    for e in &all {
        assert_eq!(
            e.event.sequence,
            Some(e.position),
            "sequence is the position"
        );
    }
    // The stored event is the appended one (apart from the assigned sequence).
    let mut first = all[0].event.clone();
    first.sequence = None;
    assert_eq!(first, a1);

    assert_eq!(ids(&store.read_all(1, 2).await?), vec![a2.id, b1.id]);
    assert!(store.read_all(4, 10).await?.is_empty());
    assert_eq!(
        ids(&store.read_stream("run-a").await?),
        vec![a1.id, a2.id, a3.id]
    );
    assert_eq!(
        store
            .read_stream("run-a")
            .await?
            .iter()
            .map(|e| e.stream_version)
            .collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(ids(&store.read_run("a").await?), vec![a1.id, a2.id, a3.id]);
    assert_eq!(ids(&store.read_run("b").await?), vec![b1.id]);
    assert_eq!(store.stream_version("run-a").await?, 3);
    assert_eq!(store.stream_version("run-b").await?, 1);
    assert_eq!(store.stream_version("nope").await?, 0);
    assert_eq!(store.head().await?, 4);
    assert_eq!(store.get(b1.id).await?.map(|e| e.position), Some(3));
    assert_eq!(store.get(Uuid::now_v7()).await?, None);
    Ok(())
}

#[tokio::test]
async fn optimistic_concurrency_rejects_stale_writers_and_writes_nothing() -> anyhow::Result<()> {
    let db = fresh_postgres().await?;
    let store = store_at(db.url()).await?;
    store
        .append("s", ExpectedVersion::NoStream, vec![cancelled("1")])
        .await?;

    let cases = [
        (ExpectedVersion::NoStream, 1),
        (ExpectedVersion::Exact(0), 1),
        (ExpectedVersion::Exact(2), 1),
    ];
    for (expected, actual_version) in cases {
        let stale = cancelled("1");
        let err = store
            .append("s", expected, vec![stale.clone()])
            .await
            .expect_err("a stale expectation must conflict");
        assert!(err.is_conflict(), "{err}");
        match err {
            StoreError::Conflict {
                stream_id,
                expected: e,
                actual,
            } => {
                assert_eq!(stream_id, "s");
                assert_eq!(e, expected);
                assert_eq!(actual, actual_version);
            }
            other => panic!("expected a conflict, got {other}"),
        }
        assert_eq!(
            store.get(stale.id).await?,
            None,
            "a conflicting append writes nothing"
        );
    }
    assert_eq!(count_rows(&store).await?, 1);
    assert_eq!(store.head().await?, 1);

    // The right expectation, and Any, succeed.
    assert_eq!(
        store
            .append("s", ExpectedVersion::Exact(1), vec![cancelled("1")])
            .await?
            .positions,
        vec![2]
    );
    assert_eq!(
        store
            .append("s", ExpectedVersion::Any, vec![cancelled("1")])
            .await?
            .positions,
        vec![3]
    );
    assert_eq!(store.stream_version("s").await?, 3);
    Ok(())
}

#[tokio::test]
async fn reappending_the_same_event_id_is_a_duplicate_and_writes_nothing() -> anyhow::Result<()> {
    let db = fresh_postgres().await?;
    let store = store_at(db.url()).await?;
    let (e1, e2) = (cancelled("r"), cancelled("r"));
    let first = store
        .append("r", ExpectedVersion::NoStream, vec![e1.clone(), e2.clone()])
        .await?;
    assert_eq!(first.positions, vec![1, 2]);
    assert!(!first.duplicate);

    // A retry of the same append, even with its now-stale expectation, reports
    // the original positions and writes nothing.
    let again = store
        .append("r", ExpectedVersion::NoStream, vec![e1.clone(), e2.clone()])
        .await?;
    assert_eq!(again.positions, vec![1, 2]);
    assert!(again.duplicate);
    let single = store
        .append("r", ExpectedVersion::Any, vec![e2.clone()])
        .await?;
    assert_eq!(single.positions, vec![2]);
    assert!(single.duplicate);
    assert_eq!(count_rows(&store).await?, 2);
    assert_eq!(store.head().await?, 2);
    assert_eq!(store.stream_version("r").await?, 2);

    // Same id in another stream: refused.
    let err = store
        .append("other", ExpectedVersion::Any, vec![e1.clone()])
        .await
        .expect_err("an id recorded in another stream");
    assert!(
        matches!(&err, StoreError::IdReused { event_id, recorded, requested }
            if *event_id == e1.id && recorded == "r" && requested == "other"),
        "{err}"
    );
    assert_eq!(count_rows(&store).await?, 2);

    // Partly known: only the new event is written.
    let e3 = cancelled("r");
    let partial = store
        .append("r", ExpectedVersion::Any, vec![e2.clone(), e3.clone()])
        .await?;
    assert_eq!(partial.positions, vec![2, 3]);
    assert!(!partial.duplicate);
    assert_eq!(
        ids(&store.read_all(0, 100).await?),
        vec![e1.id, e2.id, e3.id]
    );
    assert_eq!(
        store
            .read_stream("r")
            .await?
            .iter()
            .map(|e| e.stream_version)
            .collect::<Vec<_>>(),
        vec![1, 2, 3]
    );

    // Concurrent re-appends of one new event from separate connections: one row.
    let e4 = cancelled("r");
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let store = EventStore::connect(db.url()).await?;
        let e4 = e4.clone();
        tasks.push(tokio::spawn(async move {
            store.append("r", ExpectedVersion::Any, vec![e4]).await
        }));
    }
    let mut fresh = 0;
    for t in tasks {
        let a = t.await??;
        assert_eq!(a.positions, vec![4]);
        if !a.duplicate {
            fresh += 1;
        }
    }
    assert_eq!(fresh, 1, "exactly one concurrent append writes the event");
    assert_eq!(count_rows(&store).await?, 4);
    Ok(())
}

#[tokio::test]
async fn append_many_is_all_or_nothing() -> anyhow::Result<()> {
    let db = fresh_postgres().await?;
    let store = store_at(db.url()).await?;
    let a1 = cancelled("a");
    store
        .append("a", ExpectedVersion::NoStream, vec![a1.clone()])
        .await?;

    // The second stream's expectation fails: the first stream's events are not written.
    let (b1, b2, a_stale) = (cancelled("b"), cancelled("b"), cancelled("a"));
    let err = store
        .append_many(vec![
            NewEvents::new("b", ExpectedVersion::NoStream, vec![b1.clone(), b2.clone()]),
            NewEvents::new("a", ExpectedVersion::Exact(0), vec![a_stale.clone()]),
        ])
        .await
        .expect_err("stream a is at version 1");
    assert!(err.is_conflict(), "{err}");
    assert_eq!(store.get(b1.id).await?, None);
    assert_eq!(store.get(b2.id).await?, None);
    assert_eq!(store.stream_version("b").await?, 0);
    assert_eq!(count_rows(&store).await?, 1);

    // A reused id in the last stream also undoes everything before it.
    let c1 = cancelled("c");
    let err = store
        .append_many(vec![
            NewEvents::new("c", ExpectedVersion::NoStream, vec![c1.clone()]),
            NewEvents::new("b", ExpectedVersion::NoStream, vec![a1.clone()]),
        ])
        .await
        .expect_err("a1 is recorded in stream a");
    assert!(matches!(err, StoreError::IdReused { .. }), "{err}");
    assert_eq!(store.get(c1.id).await?, None);
    assert_eq!(count_rows(&store).await?, 1);

    // The right expectations: everything, consecutively, in the given order.
    let a2 = cancelled("a");
    let ok = store
        .append_many(vec![
            NewEvents::new("b", ExpectedVersion::NoStream, vec![b1.clone(), b2.clone()]),
            NewEvents::new("a", ExpectedVersion::Exact(1), vec![a2.clone()]),
            NewEvents::new("c", ExpectedVersion::NoStream, vec![c1.clone()]),
        ])
        .await?;
    assert_eq!(ok.positions, vec![2, 3, 4, 5]);
    assert_eq!(
        ids(&store.read_all(0, 100).await?),
        vec![a1.id, b1.id, b2.id, a2.id, c1.id]
    );
    assert_eq!(store.stream_version("a").await?, 2);
    assert_eq!(store.stream_version("b").await?, 2);
    assert_eq!(store.stream_version("c").await?, 1);
    Ok(())
}

#[tokio::test]
async fn append_handled_records_a_handler_effect_once() -> anyhow::Result<()> {
    let db = fresh_postgres().await?;
    let store = store_at(db.url()).await?;
    let cause = cancelled("r");
    store
        .append("r", ExpectedVersion::NoStream, vec![cause.clone()])
        .await?;
    assert!(!store.is_handled("h", cause.id).await?);

    let result1 = cancelled("r").caused_by(&cause);
    let first = store
        .append_handled(
            "h",
            cause.id,
            vec![NewEvents::new(
                "results",
                ExpectedVersion::Any,
                vec![result1.clone()],
            )],
        )
        .await?
        .expect("first handling is recorded");
    assert_eq!(first.positions, vec![2]);
    assert!(store.is_handled("h", cause.id).await?);

    // Handling again (with a different result) writes nothing.
    let result2 = cancelled("r").caused_by(&cause);
    let second = store
        .append_handled(
            "h",
            cause.id,
            vec![NewEvents::new(
                "results",
                ExpectedVersion::Any,
                vec![result2.clone()],
            )],
        )
        .await?;
    assert_eq!(second, None);
    assert_eq!(store.get(result2.id).await?, None);
    assert_eq!(ids(&store.read_stream("results").await?), vec![result1.id]);

    // Another handler is independent.
    assert!(!store.is_handled("h2", cause.id).await?);
    assert!(store
        .append_handled("h2", cause.id, vec![])
        .await?
        .is_some());
    assert!(store
        .append_handled("h2", cause.id, vec![])
        .await?
        .is_none());

    // A failed append leaves the event unhandled.
    let err = store
        .append_handled(
            "h3",
            cause.id,
            vec![NewEvents::new(
                "r",
                ExpectedVersion::NoStream,
                vec![cancelled("r")],
            )],
        )
        .await
        .expect_err("stream r exists");
    assert!(err.is_conflict(), "{err}");
    assert!(!store.is_handled("h3", cause.id).await?);

    // Racing handlers on separate connections: exactly one records its result.
    let racing: Vec<CloudEvent> = (0..8).map(|_| cancelled("r").caused_by(&cause)).collect();
    let mut tasks = Vec::new();
    for ev in &racing {
        let store = EventStore::connect(db.url()).await?;
        let batch = vec![NewEvents::new(
            "race",
            ExpectedVersion::Any,
            vec![ev.clone()],
        )];
        tasks.push(tokio::spawn(async move {
            store.append_handled("racer", cause.id, batch).await
        }));
    }
    let mut winners = 0;
    for t in tasks {
        if t.await??.is_some() {
            winners += 1;
        }
    }
    assert_eq!(winners, 1);
    let race = store.read_stream("race").await?;
    assert_eq!(race.len(), 1);
    assert!(racing.iter().any(|e| e.id == race[0].event.id));
    Ok(())
}

#[tokio::test]
async fn checkpoints_only_move_forward() -> anyhow::Result<()> {
    let db = fresh_postgres().await?;
    let store = store_at(db.url()).await?;
    assert_eq!(store.checkpoint("c").await?, 0);
    store.save_checkpoint("c", 5).await?;
    assert_eq!(store.checkpoint("c").await?, 5);
    store.save_checkpoint("c", 3).await?;
    assert_eq!(store.checkpoint("c").await?, 5);
    store.save_checkpoint("c", 9).await?;
    assert_eq!(store.checkpoint("c").await?, 9);
    assert_eq!(store.checkpoint("other").await?, 0);
    Ok(())
}

/// Wakeups from another process's append arrive through LISTEN/NOTIFY.
#[tokio::test]
async fn wakeups_see_appends_from_other_connections() -> anyhow::Result<()> {
    let db = fresh_postgres().await?;
    let store = store_at(db.url()).await?;
    let other = EventStore::connect(db.url()).await?;
    let mut wake = store.wakeups();
    // Let the listener start (it connects lazily), then append elsewhere.
    tokio::time::sleep(Duration::from_millis(300)).await;
    other
        .append(
            "s",
            ExpectedVersion::Any,
            vec![cancelled("1"), cancelled("1")],
        )
        .await?;
    let head = within(crate::support::WAIT, "a wakeup", async {
        loop {
            let h = wake.wait_beyond(0).await;
            if h > 0 {
                return h;
            }
        }
    })
    .await?;
    assert_eq!(head, 2);
    Ok(())
}

const OWN_WRITERS: usize = 16;
const OWN_BATCHES: usize = 100;
const SHARED_WRITERS: usize = 8;
const SHARED_APPENDS: usize = 25;
/// Writers spread over this many `EventStore`s (separate pools), so appends
/// really race in Postgres instead of queuing on one process's mutex.
const WRITER_STORES: usize = 4;

/// THE concurrency proof: many writers on many connections, one reader tailing
/// `read_all(after, 100)`. The reader must see every event exactly once, with
/// positions 1, 2, 3, ... and nothing that commits later below what it saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_never_make_a_tailing_reader_skip() -> anyhow::Result<()> {
    let db = fresh_postgres().await?;
    let setup = store_at(db.url()).await?;
    let mut writer_stores = Vec::new();
    for _ in 0..WRITER_STORES {
        writer_stores.push(EventStore::connect(db.url()).await?);
    }
    let reader_store = EventStore::connect(db.url()).await?;
    let writers_done = Arc::new(AtomicBool::new(false));
    let conflicts = Arc::new(AtomicUsize::new(0));

    // The reader starts first and tails until the writers are done and it has
    // caught up with the final head.
    let reader = {
        let done = writers_done.clone();
        let store = reader_store.clone();
        tokio::spawn(async move {
            let mut after = 0i64;
            let mut seen: Vec<(i64, Uuid, String, i64)> = Vec::new();
            let mut nonempty_reads = 0usize;
            loop {
                let finished = done.load(Ordering::SeqCst);
                let page = store.read_all(after, 100).await?;
                if page.is_empty() {
                    if finished {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                nonempty_reads += 1;
                for (i, e) in page.iter().enumerate() {
                    let want = after + 1 + i as i64;
                    anyhow::ensure!(
                        e.position == want,
                        "reader skipped: after {after} it got position {} where {want} was due \
                         (page {:?})",
                        e.position,
                        page.iter().map(|e| e.position).collect::<Vec<_>>()
                    );
                    seen.push((
                        e.position,
                        e.event.id,
                        e.stream_id.clone(),
                        e.stream_version,
                    ));
                }
                after = page.last().map(|e| e.position).unwrap_or(after);
            }
            anyhow::Ok((seen, nonempty_reads))
        })
    };

    let mut tasks: Vec<tokio::task::JoinHandle<anyhow::Result<Vec<Uuid>>>> = Vec::new();
    for w in 0..OWN_WRITERS {
        let store = writer_stores[w % WRITER_STORES].clone();
        tasks.push(tokio::spawn(async move {
            let stream = format!("own-{w}");
            let mut committed = Vec::new();
            let mut version = 0i64;
            for b in 0..OWN_BATCHES {
                // Every seventh batch carries three events.
                let n = if b % 7 == 3 { 3 } else { 1 };
                let events: Vec<CloudEvent> = (0..n).map(|_| cancelled(&stream)).collect();
                let a = store
                    .append(&stream, ExpectedVersion::Exact(version), events.clone())
                    .await?;
                anyhow::ensure!(!a.duplicate, "fresh events reported as duplicates");
                anyhow::ensure!(
                    a.positions.windows(2).all(|p| p[1] == p[0] + 1),
                    "one batch got non-consecutive positions {:?}",
                    a.positions
                );
                version += n as i64;
                committed.extend(events.iter().map(|e| e.id));
            }
            Ok(committed)
        }));
    }
    for w in 0..SHARED_WRITERS {
        let store = writer_stores[w % WRITER_STORES].clone();
        let conflicts = conflicts.clone();
        tasks.push(tokio::spawn(async move {
            let mut committed = Vec::new();
            for _ in 0..SHARED_APPENDS {
                let ev = cancelled("shared");
                loop {
                    let v = store.stream_version("shared").await?;
                    match store
                        .append("shared", ExpectedVersion::Exact(v), vec![ev.clone()])
                        .await
                    {
                        Ok(a) => {
                            anyhow::ensure!(!a.duplicate);
                            break;
                        }
                        Err(e) if e.is_conflict() => {
                            conflicts.fetch_add(1, Ordering::Relaxed);
                            tokio::task::yield_now().await;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                committed.push(ev.id);
            }
            Ok(committed)
        }));
    }

    let written = within(Duration::from_secs(180), "the writers", async {
        let mut all = HashSet::new();
        for t in tasks {
            for id in t.await?? {
                anyhow::ensure!(all.insert(id), "event id {id} committed twice");
            }
        }
        anyhow::Ok(all)
    })
    .await??;
    writers_done.store(true, Ordering::SeqCst);
    let (seen, nonempty_reads) = within(Duration::from_secs(60), "the reader", reader).await???;

    let own_events: usize = (0..OWN_BATCHES)
        .map(|b| if b % 7 == 3 { 3 } else { 1 })
        .sum::<usize>()
        * OWN_WRITERS;
    let total = own_events + SHARED_WRITERS * SHARED_APPENDS;
    assert_eq!(written.len(), total);

    // The reader saw each committed event exactly once, at positions 1..=total.
    assert_eq!(
        seen.len(),
        total,
        "the reader saw {} of {total} events",
        seen.len()
    );
    assert_eq!(
        seen.iter().map(|s| s.0).collect::<Vec<_>>(),
        (1..=total as i64).collect::<Vec<_>>()
    );
    let seen_ids: HashSet<Uuid> = seen.iter().map(|s| s.1).collect();
    assert_eq!(seen_ids.len(), total, "the reader saw an event twice");
    assert_eq!(seen_ids, written);

    // ...and exactly what the finished log holds, in the same order.
    let final_log = setup.read_all(0, 1_000_000).await?;
    assert_eq!(
        final_log
            .iter()
            .map(|e| (
                e.position,
                e.event.id,
                e.stream_id.clone(),
                e.stream_version
            ))
            .collect::<Vec<_>>(),
        seen
    );
    assert_eq!(setup.head().await?, total as i64);

    // Every stream's versions are 1..=N without gaps, in position order.
    let mut versions: HashMap<&str, Vec<i64>> = HashMap::new();
    for (_, _, stream, version) in &seen {
        versions.entry(stream.as_str()).or_default().push(*version);
    }
    let shared = versions.remove("shared").unwrap_or_default();
    assert_eq!(
        shared,
        (1..=(SHARED_WRITERS * SHARED_APPENDS) as i64).collect::<Vec<_>>()
    );
    assert_eq!(versions.len(), OWN_WRITERS);
    for (stream, v) in &versions {
        assert_eq!(
            v,
            &(1..=(own_events / OWN_WRITERS) as i64).collect::<Vec<_>>(),
            "stream {stream}"
        );
    }
    let shared_store: BTreeSet<i64> = setup
        .read_stream("shared")
        .await?
        .iter()
        .map(|e| e.stream_version)
        .collect();
    assert_eq!(shared_store.len(), SHARED_WRITERS * SHARED_APPENDS);

    // The reader really ran alongside the writers, and the writers really contended.
    assert!(
        nonempty_reads > 20,
        "the reader caught the log in only {nonempty_reads} reads: not a concurrent test"
    );
    eprintln!(
        "concurrency proof: {total} events, {nonempty_reads} reads, {} conflicts on the shared stream",
        conflicts.load(Ordering::Relaxed)
    );
    Ok(())
}

/// A statistic of `events` once every backend has reported: backends report
/// their counters about once a second when idle, so read until two reads a
/// second apart agree (10 s at most).
async fn settled_stat(store: &EventStore, sql: &str) -> anyhow::Result<i64> {
    let read = || async {
        sqlx::query("SELECT pg_stat_clear_snapshot()")
            .execute(store.pool())
            .await?;
        anyhow::Ok(
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(store.pool())
                .await?,
        )
    };
    let mut last = read().await?;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let now = read().await?;
        if now == last {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}

/// Sequential scans of `events` so far.
async fn seq_scans(store: &EventStore) -> anyhow::Result<i64> {
    settled_stat(
        store,
        "SELECT COALESCE(seq_scan, 0)::BIGINT FROM pg_stat_user_tables WHERE relname = 'events'",
    )
    .await
}

/// Index entries read from `events`' indexes so far.
async fn index_tuples_read(store: &EventStore) -> anyhow::Result<i64> {
    settled_stat(
        store,
        "SELECT COALESCE(SUM(idx_tup_read), 0)::BIGINT FROM pg_stat_user_indexes WHERE relname = 'events'",
    )
    .await
}

/// An append costs the same into a log of any length: every query of the
/// append path is an index lookup from the first event on, whatever plan
/// Postgres cached while the table was empty (issue 17).
#[tokio::test]
async fn appends_never_scan_the_whole_log() -> anyhow::Result<()> {
    let db = fresh_postgres().await?;
    // The migration builds the indexes, and each build scans the table. A
    // backend reports its statistics lazily (up to 10 s when idle), so the
    // migration runs on connections that are closed before counting starts.
    store_at(db.url()).await?.pool().close().await;
    let store = EventStore::connect(db.url()).await?;
    // While the table is small, each statement is prepared and executed
    // often enough for Postgres to settle on a generic plan.
    for i in 0..20 {
        store
            .append(
                &format!("run-{i}"),
                ExpectedVersion::NoStream,
                vec![cancelled("x")],
            )
            .await?;
    }
    let before = seq_scans(&store).await?;
    let tuples_before = index_tuples_read(&store).await?;
    let mut handles = Vec::new();
    for w in 0..8 {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..125 {
                // Writer 0 grows one long stream: its version lookup must
                // not read the whole stream either.
                let stream = if w == 0 {
                    "run-long".to_owned()
                } else {
                    format!("run-w{w}-{}", i / 5)
                };
                store
                    .append(
                        &stream,
                        ExpectedVersion::Any,
                        vec![cancelled("x"), cancelled("x")],
                    )
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for h in handles {
        h.await??;
    }
    // A redelivered event takes the idempotency path only.
    let again = cancelled("x");
    store
        .append("run-again", ExpectedVersion::Any, vec![again.clone()])
        .await?;
    store
        .append("run-again", ExpectedVersion::Any, vec![again])
        .await?;
    assert_eq!(store.head().await?, 20 + 2_000 + 1);
    let after = seq_scans(&store).await?;
    assert_eq!(
        after - before,
        0,
        "{} sequential scans of `events` during 1,002 appends",
        after - before
    );
    // Each append reads a handful of index entries (its ids, its stream's
    // last version, the log's last position), not a range growing with the
    // log or the stream.
    let tuples = index_tuples_read(&store).await? - tuples_before;
    eprintln!("{tuples} index entries read for 1,002 appends");
    assert!(
        tuples < 1_002 * 5,
        "{tuples} index entries read for 1,002 appends"
    );
    Ok(())
}
