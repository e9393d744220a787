//! One set of consumer tests, run against every `EventBus`: `SqlBus` over
//! SQLite, `SqlBus` over Postgres, and `NatsBus` (Postgres log + its own NATS
//! server + a running relay). DESIGN.md 2.2: "One `EventBus` trait, two
//! implementations, the same consumer code and the same tests."

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{event, store_at, wait_for, within, WAIT};
use async_trait::async_trait;
use gantry_proto::{CloudEvent, EventName};
use gantry_store::bus::{Delivery, EventBus, NatsBus, NatsSettings, SqlBus, Subscription};
use gantry_store::consumer::{self, Handler, HandlerError};
use gantry_store::relay::Relay;
use gantry_store::{EventStore, ExpectedVersion, NewEvents};
use gantry_tests::{fresh_postgres, unique_name, NatsServer, TestDb};
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Subscribed names in these tests.
const A: EventName = EventName::RunCancelled;
const B: EventName = EventName::RunFailed;
/// Never subscribed: noise that must not be delivered.
const C: EventName = EventName::RunSuperseded;
/// What test handlers append as their result.
const RESULT: EventName = EventName::RunSucceeded;

/// How long "nothing more arrives" is watched for.
const QUIET: Duration = Duration::from_millis(1500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    SqlOnSqlite,
    SqlOnPostgres,
    Nats,
}

/// A bus under test with everything it needs; stops the relay on drop.
struct Env {
    kind: Kind,
    store: EventStore,
    bus: Arc<dyn EventBus>,
    nats: Option<NatsBus>,
    cancel: CancellationToken,
    _relay: Option<JoinHandle<()>>,
    _nats_server: Option<NatsServer>,
    _db: Option<TestDb>,
    _dir: Option<TempDir>,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Env {
    async fn sql_on_sqlite() -> anyhow::Result<Env> {
        let (store, dir) = crate::support::sqlite_store().await?;
        Ok(Env {
            kind: Kind::SqlOnSqlite,
            bus: Arc::new(SqlBus::new(store.clone())),
            store,
            nats: None,
            cancel: CancellationToken::new(),
            _relay: None,
            _nats_server: None,
            _db: None,
            _dir: Some(dir),
        })
    }

    async fn sql_on_postgres() -> anyhow::Result<Env> {
        let db = fresh_postgres().await?;
        let store = store_at(db.url()).await?;
        Ok(Env {
            kind: Kind::SqlOnPostgres,
            bus: Arc::new(SqlBus::new(store.clone())),
            store,
            nats: None,
            cancel: CancellationToken::new(),
            _relay: None,
            _nats_server: None,
            _db: Some(db),
            _dir: None,
        })
    }

    async fn nats() -> anyhow::Result<Env> {
        let db = fresh_postgres().await?;
        let store = store_at(db.url()).await?;
        let server = NatsServer::start().await?;
        let settings = NatsSettings {
            prefix: unique_name("t"),
            stream: unique_name("EVENTS_"),
            ..NatsSettings::new(server.url())
        };
        let nats = within(WAIT, "connecting to NATS", NatsBus::connect(settings)).await??;
        let cancel = CancellationToken::new();
        let relay = tokio::spawn(Relay::new(store.clone(), nats.clone()).run(cancel.child_token()));
        Ok(Env {
            kind: Kind::Nats,
            bus: Arc::new(nats.clone()),
            store,
            nats: Some(nats),
            cancel,
            _relay: Some(relay),
            _nats_server: Some(server),
            _db: Some(db),
            _dir: None,
        })
    }

    fn is_sql(&self) -> bool {
        matches!(self.kind, Kind::SqlOnSqlite | Kind::SqlOnPostgres)
    }

    /// Appends one event in its own append; returns it with its position set.
    async fn append(&self, stream: &str, ev: CloudEvent) -> anyhow::Result<CloudEvent> {
        let mut out = self.append_all(stream, vec![ev]).await?;
        Ok(out.remove(0))
    }

    /// Appends events in one append; returns them with their positions set.
    async fn append_all(
        &self,
        stream: &str,
        evs: Vec<CloudEvent>,
    ) -> anyhow::Result<Vec<CloudEvent>> {
        let a = self
            .store
            .append(stream, ExpectedVersion::Any, evs.clone())
            .await?;
        anyhow::ensure!(!a.duplicate);
        Ok(evs
            .into_iter()
            .zip(a.positions)
            .map(|(mut e, p)| {
                e.sequence = Some(p);
                e
            })
            .collect())
    }

    /// Forgets where consumer `consumer` got to, so that it sees the whole log
    /// again: a crash that lost every ack, or a bus that delivers twice.
    async fn rewind(&self, consumer: &str) -> anyhow::Result<()> {
        match &self.nats {
            None => {
                sqlx::query("DELETE FROM checkpoints WHERE name = $1")
                    .bind(format!("consumer:{consumer}"))
                    .execute(self.store.pool())
                    .await?;
            }
            Some(nats) => {
                let stream = nats.jetstream().get_stream(&nats.settings().stream).await?;
                stream.delete_consumer(&nats.durable_name(consumer)).await?;
            }
        }
        Ok(())
    }
}

/// The next delivery, within [`WAIT`].
async fn next(sub: &mut Box<dyn Subscription>) -> anyhow::Result<Delivery> {
    within(WAIT, "the next delivery", sub.next())
        .await??
        .ok_or_else(|| anyhow::anyhow!("the subscription ended"))
}

/// Takes `n` deliveries, acking each; returns (event, attempt) in delivery order.
async fn take_acked(
    sub: &mut Box<dyn Subscription>,
    n: usize,
) -> anyhow::Result<Vec<(CloudEvent, u32)>> {
    let mut out = Vec::new();
    for _ in 0..n {
        let d = next(sub).await?;
        let item = (d.event.clone(), d.attempt);
        anyhow::ensure!(
            d.position() == d.event.sequence.unwrap_or(-1),
            "position() is the event's sequence"
        );
        d.ack().await?;
        out.push(item);
    }
    Ok(out)
}

/// Fails when anything is delivered within [`QUIET`].
async fn expect_quiet(sub: &mut Box<dyn Subscription>) -> anyhow::Result<()> {
    match tokio::time::timeout(QUIET, sub.next()).await {
        Err(_) => Ok(()),
        Ok(Ok(Some(d))) => anyhow::bail!(
            "unexpected delivery of {} ({}) at position {}, attempt {}",
            d.event.id,
            d.event.ty,
            d.position(),
            d.attempt
        ),
        Ok(Ok(None)) => anyhow::bail!("the subscription ended"),
        Ok(Err(e)) => Err(e.into()),
    }
}

fn ids_positions(events: &[CloudEvent]) -> Vec<(Uuid, Option<i64>)> {
    events.iter().map(|e| (e.id, e.sequence)).collect()
}

fn delivered(d: &[(CloudEvent, u32)]) -> Vec<(Uuid, Option<i64>)> {
    d.iter().map(|(e, _)| (e.id, e.sequence)).collect()
}

// ---------------------------------------------------------------------------
// (a) Delivery of subscribed names only, in log order

/// One subscribed name among noise; backlog first, then live appends.
async fn delivers_one_name_in_log_order_and_nothing_else(env: &Env) -> anyhow::Result<()> {
    let mut expected = Vec::new();
    for i in 0..12 {
        let name = [A, C, B][i % 3];
        let pipeline = ["p1", "p2"][i % 2];
        let ev = env
            .append(
                &format!("s{}", i % 4),
                event(name, pipeline, &format!("r{i}")),
            )
            .await?;
        if name == A {
            expected.push(ev);
        }
    }
    let mut sub = env.bus.subscribe("one-name", &[A]).await?;
    let got = take_acked(&mut sub, expected.len()).await?;
    assert_eq!(delivered(&got), ids_positions(&expected));
    assert!(got.iter().all(|(_, attempt)| *attempt == 1));
    // The payload arrives intact.
    let mut sent = expected[0].clone();
    sent.sequence = got[0].0.sequence;
    assert_eq!(got[0].0, sent);

    // Live: appended while subscribed.
    let live = env
        .append_all(
            "s9",
            vec![
                event(C, "p1", "x"),
                event(A, "p2", "x"),
                event(B, "p1", "x"),
                event(A, "p1", "x"),
            ],
        )
        .await?;
    let got = take_acked(&mut sub, 2).await?;
    assert_eq!(
        delivered(&got),
        ids_positions(&[live[1].clone(), live[3].clone()])
    );
    expect_quiet(&mut sub).await
}

/// Two subscribed names, interleaved with each other and with noise: one
/// consumer sees them in log order ("in log order per consumer", bus/mod.rs).
async fn delivers_several_names_in_log_order(env: &Env) -> anyhow::Result<()> {
    let pattern = [A, A, C, B, B, A, C, B, A, A, B, C, B, A];
    let mut expected = Vec::new();
    for (i, name) in pattern.iter().enumerate() {
        let ev = env
            .append(
                &format!("s{}", i % 3),
                event(*name, ["p1", "p2"][i % 2], "r"),
            )
            .await?;
        if *name != C {
            expected.push(ev);
        }
    }
    let mut sub = env.bus.subscribe("two-names", &[A, B]).await?;
    let got = take_acked(&mut sub, expected.len()).await?;
    assert_eq!(
        delivered(&got),
        ids_positions(&expected),
        "deliveries out of log order: positions {:?}",
        got.iter()
            .map(|(e, _)| e.sequence.unwrap_or(-1))
            .collect::<Vec<_>>()
    );

    let live = env
        .append_all(
            "live",
            vec![
                event(B, "p1", "y"),
                event(C, "p1", "y"),
                event(A, "p1", "y"),
                event(B, "p2", "y"),
            ],
        )
        .await?;
    let got = take_acked(&mut sub, 3).await?;
    assert_eq!(
        delivered(&got),
        ids_positions(&[live[0].clone(), live[2].clone(), live[3].clone()]),
        "live deliveries out of log order: positions {:?}",
        got.iter()
            .map(|(e, _)| e.sequence.unwrap_or(-1))
            .collect::<Vec<_>>()
    );
    expect_quiet(&mut sub).await
}

/// A consumer that handles more event names after an upgrade resumes where
/// it got to and gets the new names from there on (a NATS durable consumer
/// made by the earlier version has its filter brought up to date).
async fn a_consumer_that_handles_more_names_resumes_with_them(env: &Env) -> anyhow::Result<()> {
    let first = env.append("u", event(A, "p1", "r")).await?;
    {
        let mut sub = env.bus.subscribe("upgraded", &[A]).await?;
        let got = take_acked(&mut sub, 1).await?;
        assert_eq!(delivered(&got), ids_positions(&[first]));
        expect_quiet(&mut sub).await?;
    }
    if env.kind == Kind::Nats {
        // The old version is gone for a while: its last pull request at the
        // server has expired (until then the server may hand it events for
        // the old filter, moving the consumer past the rest).
        tokio::time::sleep(Duration::from_secs(6)).await;
    }
    let later = env
        .append_all(
            "u",
            vec![
                event(B, "p1", "s"),
                event(C, "p1", "s"),
                event(A, "p1", "s"),
            ],
        )
        .await?;
    let mut sub = env.bus.subscribe("upgraded", &[A, B]).await?;
    let got = take_acked(&mut sub, 2).await?;
    assert_eq!(
        delivered(&got),
        ids_positions(&[later[0].clone(), later[2].clone()]),
        "after the upgrade: the new name too, from where the consumer got to"
    );
    expect_quiet(&mut sub).await
}

/// Writers append concurrently while the consumer tails: every subscribed
/// event arrives exactly once, in log order; no event is skipped.
async fn delivers_every_event_while_writers_append(env: &Env) -> anyhow::Result<()> {
    const WRITERS: usize = 4;
    const PER_WRITER: usize = 150;
    let mut sub = env.bus.subscribe("tail", &[A]).await?;
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = env.store.clone();
        writers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for i in 0..PER_WRITER {
                // Two in three are noise, so the subscriber's scans skip ahead.
                let name = if i % 3 == 0 { A } else { C };
                let ev = event(name, "p", &format!("w{w}"));
                let a = store
                    .append(&format!("w{w}"), ExpectedVersion::Any, vec![ev.clone()])
                    .await?;
                if name == A {
                    mine.push((a.positions[0], ev.id));
                }
                if i % 10 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            anyhow::Ok(mine)
        }));
    }
    let want_count = WRITERS * PER_WRITER.div_ceil(3);
    let mut got: Vec<(i64, Uuid)> = Vec::new();
    let outcome = async {
        while got.len() < want_count {
            let d = next(&mut sub).await?;
            got.push((d.position(), d.event.id));
            d.ack().await?;
        }
        anyhow::Ok(())
    }
    .await;
    let mut want = Vec::new();
    for w in writers {
        want.extend(within(WAIT, "a writer", w).await???);
    }
    want.sort();
    if let Err(e) = outcome {
        let got_ids: std::collections::HashSet<Uuid> = got.iter().map(|g| g.1).collect();
        let missing: Vec<i64> = want
            .iter()
            .filter(|w| !got_ids.contains(&w.1))
            .map(|w| w.0)
            .collect();
        anyhow::bail!(
            "{e:#}: got {} of {} events; never delivered: positions {missing:?}",
            got.len(),
            want.len()
        );
    }
    assert_eq!(
        got, want,
        "deliveries differ from the log's events in position order"
    );
    expect_quiet(&mut sub).await
}

// ---------------------------------------------------------------------------
// (b) Acks survive restarts; retries come back

/// A consumer that acked everything and restarts gets only what is new.
async fn acked_events_are_not_redelivered_after_resubscribing(env: &Env) -> anyhow::Result<()> {
    let mut first = Vec::new();
    for i in 0..5 {
        first.push(env.append("s", event(A, "p", &format!("r{i}"))).await?);
    }
    let mut sub = env.bus.subscribe("restart", &[A]).await?;
    let got = take_acked(&mut sub, 5).await?;
    assert_eq!(delivered(&got), ids_positions(&first));
    drop(sub);

    let mut second = Vec::new();
    for i in 0..3 {
        second.push(env.append("s", event(A, "p", &format!("n{i}"))).await?);
    }
    let mut sub = env.bus.subscribe("restart", &[A]).await?;
    let got = take_acked(&mut sub, 3).await?;
    assert_eq!(delivered(&got), ids_positions(&second), "after restart");
    assert!(got.iter().all(|(_, attempt)| *attempt == 1));
    expect_quiet(&mut sub).await?;

    // Another consumer name has its own position: it gets everything.
    let mut other = env.bus.subscribe("restart-other", &[A]).await?;
    let got = take_acked(&mut other, 8).await?;
    let all: Vec<CloudEvent> = first.into_iter().chain(second).collect();
    assert_eq!(delivered(&got), ids_positions(&all));
    expect_quiet(&mut other).await
}

/// `Delivery::retry` offers the event again, as attempt 2; acked events are
/// not offered again.
async fn retried_delivery_comes_back_as_attempt_2(env: &Env) -> anyhow::Result<()> {
    let e1 = env.append("s", event(A, "p", "r1")).await?;
    let e2 = env.append("s", event(A, "p", "r2")).await?;
    let mut sub = env.bus.subscribe("retry", &[A]).await?;
    let d = next(&mut sub).await?;
    assert_eq!((d.event.id, d.attempt), (e1.id, 1));
    d.retry().await?;

    let mut seen = Vec::new();
    for _ in 0..2 {
        let d = next(&mut sub).await?;
        seen.push((d.event.id, d.attempt));
        d.ack().await?;
    }
    if env.is_sql() {
        // The SQL bus holds later events back until the retried one is settled.
        assert_eq!(seen, vec![(e1.id, 2), (e2.id, 1)]);
    } else {
        // JetStream offers later events while the retried one waits out its delay.
        let mut sorted = seen.clone();
        sorted.sort();
        let mut want = vec![(e1.id, 2), (e2.id, 1)];
        want.sort();
        assert_eq!(sorted, want);
    }
    expect_quiet(&mut sub).await
}

/// SQL bus only (JetStream waits `ack_wait`, 60 s, before redelivering): an
/// event delivered but not acked when the consumer stops is delivered again.
async fn unacked_event_is_redelivered_after_resubscribing(env: &Env) -> anyhow::Result<()> {
    let evs: Vec<CloudEvent> = (0..3).map(|i| event(A, "p", &format!("r{i}"))).collect();
    let evs = env.append_all("s", evs).await?;
    let mut sub = env.bus.subscribe("unacked", &[A]).await?;
    let d = next(&mut sub).await?;
    assert_eq!(d.event.id, evs[0].id);
    d.ack().await?;
    let d = next(&mut sub).await?;
    assert_eq!(d.event.id, evs[1].id);
    drop(d); // not acked: the consumer "crashed" while handling it
    drop(sub);

    let mut sub = env.bus.subscribe("unacked", &[A]).await?;
    let got = take_acked(&mut sub, 2).await?;
    assert_eq!(delivered(&got), ids_positions(&evs[1..]));
    expect_quiet(&mut sub).await
}

// ---------------------------------------------------------------------------
// (c), (d) consumer::run: idempotent handling, retries

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    Succeed,
    TransientOnce,
    Permanent,
}

/// Appends one `RESULT` event (caused by the input) per input event.
struct Recorder {
    behaviour: Behaviour,
    calls: Mutex<HashMap<Uuid, u32>>,
}

impl Recorder {
    fn new(behaviour: Behaviour) -> Arc<Recorder> {
        Arc::new(Recorder {
            behaviour,
            calls: Mutex::new(HashMap::new()),
        })
    }

    fn calls(&self) -> HashMap<Uuid, u32> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait]
impl Handler for Recorder {
    fn name(&self) -> &'static str {
        "recorder"
    }

    fn events(&self) -> &'static [EventName] {
        &[EventName::RunCancelled]
    }

    async fn handle(&self, event: &CloudEvent) -> Result<Vec<NewEvents>, HandlerError> {
        let n = {
            let mut calls = self.calls.lock().unwrap();
            let n = calls.entry(event.id).or_default();
            *n += 1;
            *n
        };
        match self.behaviour {
            Behaviour::TransientOnce if n == 1 => {
                return Err(HandlerError::transient("first attempt fails"))
            }
            Behaviour::Permanent => return Err(HandlerError::permanent("never works")),
            _ => {}
        }
        let result = crate::support::event(RESULT, "results", "results").caused_by(event);
        Ok(vec![NewEvents::new(
            "results",
            ExpectedVersion::Any,
            vec![result],
        )])
    }
}

fn spawn_consumer(
    env: &Env,
    handler: Arc<Recorder>,
    stop: &CancellationToken,
) -> JoinHandle<Result<(), gantry_store::bus::BusError>> {
    tokio::spawn(consumer::run(
        env.store.clone(),
        env.bus.clone(),
        handler,
        stop.child_token(),
    ))
}

/// How many results each cause has.
async fn results_by_cause(store: &EventStore) -> anyhow::Result<BTreeMap<Uuid, usize>> {
    let mut out = BTreeMap::new();
    for r in store.read_stream("results").await? {
        let cause = r
            .event
            .causationid
            .ok_or_else(|| anyhow::anyhow!("result without causationid"))?;
        *out.entry(cause).or_default() += 1;
    }
    Ok(out)
}

async fn wait_results(store: &EventStore, n: usize) -> anyhow::Result<BTreeMap<Uuid, usize>> {
    wait_for(WAIT, &format!("{n} results"), || async {
        let r = results_by_cause(store).await?;
        Ok((r.values().sum::<usize>() >= n).then_some(r))
    })
    .await
}

async fn stop_consumers(
    stop: CancellationToken,
    tasks: Vec<JoinHandle<Result<(), gantry_store::bus::BusError>>>,
) -> anyhow::Result<()> {
    stop.cancel();
    for t in tasks {
        within(WAIT, "a consumer to stop", t).await???;
    }
    Ok(())
}

/// Each input event gets exactly one result even when it is delivered twice:
/// two consumer loops at once (the SQL bus gives both every event), then a
/// rewound consumer that sees the whole log again.
async fn consumer_records_one_result_per_event_despite_redelivery(env: &Env) -> anyhow::Result<()> {
    let mut inputs = Vec::new();
    for i in 0..3 {
        inputs.push(env.append("in", event(A, "p", &format!("r{i}"))).await?.id);
        env.append("noise", event(C, "p", "n")).await?;
    }
    let handler = Recorder::new(Behaviour::Succeed);
    let stop = CancellationToken::new();
    let tasks = vec![
        spawn_consumer(env, handler.clone(), &stop),
        spawn_consumer(env, handler.clone(), &stop),
    ];
    wait_results(&env.store, 3).await?;
    // A later input is a barrier: once its result exists, both loops are past the others.
    inputs.push(env.append("in", event(A, "p", "barrier")).await?.id);
    wait_results(&env.store, 4).await?;
    tokio::time::sleep(QUIET).await;
    stop_consumers(stop, tasks).await?;
    let want: BTreeMap<Uuid, usize> = inputs.iter().map(|id| (*id, 1)).collect();
    assert_eq!(
        results_by_cause(&env.store).await?,
        want,
        "two loops at once"
    );
    for id in &inputs {
        assert!(env.store.is_handled("recorder", *id).await?);
    }

    // Redeliver the whole log: already-handled events are acked without
    // calling the handler again.
    let calls_before = handler.calls();
    env.rewind("recorder").await?;
    let stop = CancellationToken::new();
    let tasks = vec![spawn_consumer(env, handler.clone(), &stop)];
    inputs.push(env.append("in", event(A, "p", "barrier2")).await?.id);
    wait_results(&env.store, 5).await?;
    tokio::time::sleep(QUIET).await;
    stop_consumers(stop, tasks).await?;
    let want: BTreeMap<Uuid, usize> = inputs.iter().map(|id| (*id, 1)).collect();
    assert_eq!(
        results_by_cause(&env.store).await?,
        want,
        "after redelivery"
    );
    let mut calls_after = handler.calls();
    assert_eq!(calls_after.remove(&inputs[4]), Some(1));
    assert_eq!(
        calls_after, calls_before,
        "the handler ran again for handled events"
    );
    Ok(())
}

/// A transient failure gets the event again; its result is recorded once.
async fn consumer_retries_transient_failures(env: &Env) -> anyhow::Result<()> {
    let e1 = env.append("in", event(A, "p", "r1")).await?.id;
    env.append("noise", event(C, "p", "n")).await?;
    let e2 = env.append("in", event(A, "p", "r2")).await?.id;
    let handler = Recorder::new(Behaviour::TransientOnce);
    let stop = CancellationToken::new();
    let tasks = vec![spawn_consumer(env, handler.clone(), &stop)];
    wait_results(&env.store, 2).await?;
    tokio::time::sleep(QUIET).await;
    stop_consumers(stop, tasks).await?;
    assert_eq!(
        results_by_cause(&env.store).await?,
        BTreeMap::from([(e1, 1), (e2, 1)])
    );
    assert_eq!(handler.calls(), HashMap::from([(e1, 2), (e2, 2)]));
    Ok(())
}

/// A permanent failure is recorded as handled (no result) and not retried.
async fn consumer_does_not_retry_permanent_failures(env: &Env) -> anyhow::Result<()> {
    let e1 = env.append("in", event(A, "p", "r1")).await?.id;
    let e2 = env.append("in", event(A, "p", "r2")).await?.id;
    let handler = Recorder::new(Behaviour::Permanent);
    let stop = CancellationToken::new();
    let tasks = vec![spawn_consumer(env, handler.clone(), &stop)];
    wait_for(WAIT, "both events handled", || async {
        Ok((env.store.is_handled("recorder", e1).await?
            && env.store.is_handled("recorder", e2).await?)
            .then_some(()))
    })
    .await?;
    tokio::time::sleep(QUIET).await;
    stop_consumers(stop, tasks).await?;
    assert_eq!(handler.calls(), HashMap::from([(e1, 1), (e2, 1)]));
    assert!(results_by_cause(&env.store).await?.is_empty());
    Ok(())
}

/// Always fails for now; says what its giving up means.
struct Poisoned {
    calls: Mutex<u32>,
}

#[async_trait]
impl Handler for Poisoned {
    fn name(&self) -> &'static str {
        "poisoned"
    }

    fn events(&self) -> &'static [EventName] {
        &[A]
    }

    async fn handle(&self, _event: &CloudEvent) -> Result<Vec<NewEvents>, HandlerError> {
        *self.calls.lock().unwrap() += 1;
        Err(HandlerError::transient_from(
            "cannot push the image",
            std::io::Error::other("registry said no"),
        ))
    }

    async fn gave_up(
        &self,
        event: &CloudEvent,
        error: &str,
    ) -> Result<Vec<NewEvents>, HandlerError> {
        let failed = CloudEvent::new(
            "test",
            "results",
            Some("results"),
            &gantry_proto::events::RunFailed {
                stage: None,
                reason: error.to_owned(),
            },
        )
        .caused_by(event);
        Ok(vec![NewEvents::new(
            "results",
            ExpectedVersion::Any,
            vec![failed],
        )])
    }
}

/// Issue 18: after its last attempt a failing event is not dropped with a
/// log line: what the handler says its failure means (a step's `*.failed`)
/// is recorded, caused by the event, with the handler's last error.
async fn the_last_failed_attempt_is_recorded(env: &Env) -> anyhow::Result<()> {
    let e1 = env.append("in", event(A, "p", "r1")).await?.id;
    let handler = Arc::new(Poisoned {
        calls: Mutex::new(0),
    });
    let stop = CancellationToken::new();
    let options = consumer::RunOptions {
        retries: consumer::Retries {
            attempts: 3,
            backoff: Duration::from_millis(10),
        },
        ..consumer::RunOptions::default()
    };
    let task = tokio::spawn(consumer::run_with(
        env.store.clone(),
        env.bus.clone(),
        handler.clone(),
        stop.child_token(),
        options,
    ));
    let results = wait_results(&env.store, 1).await?;
    tokio::time::sleep(QUIET).await;
    stop_consumers(stop, vec![task]).await?;
    assert_eq!(results, BTreeMap::from([(e1, 1)]));
    assert_eq!(*handler.calls.lock().unwrap(), 3, "tried, then given up");
    let recorded = env.store.read_stream("results").await?;
    let reason = recorded[0].event.data["reason"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(reason, "cannot push the image: registry said no");
    assert!(env.store.is_handled("poisoned", e1).await?);
    Ok(())
}

/// Handles `p`'s events at once; `stuck`'s wait until released.
struct OneStuck {
    release: CancellationToken,
}

#[async_trait]
impl Handler for OneStuck {
    fn name(&self) -> &'static str {
        "one-stuck"
    }

    fn events(&self) -> &'static [EventName] {
        &[A]
    }

    async fn handle(&self, event: &CloudEvent) -> Result<Vec<NewEvents>, HandlerError> {
        if event.pipeline == "stuck" {
            self.release.cancelled().await;
        }
        let result = crate::support::event(RESULT, "results", "results").caused_by(event);
        Ok(vec![NewEvents::new(
            "results",
            ExpectedVersion::Any,
            vec![result],
        )])
    }
}

/// Issue 18: a pipeline whose event is stuck in its handler does not hold
/// back another pipeline's events, which are handled in log order.
async fn a_stuck_pipeline_does_not_hold_back_another(env: &Env) -> anyhow::Result<()> {
    let stuck = env.append("in", event(A, "stuck", "s1")).await?.id;
    let mut others = Vec::new();
    for i in 0..3 {
        others.push(env.append("in", event(A, "p", &format!("r{i}"))).await?.id);
    }
    let handler = Arc::new(OneStuck {
        release: CancellationToken::new(),
    });
    let stop = CancellationToken::new();
    let task = tokio::spawn(consumer::run(
        env.store.clone(),
        env.bus.clone(),
        handler.clone(),
        stop.child_token(),
    ));
    wait_results(&env.store, 3).await?;
    let order: Vec<Uuid> = env
        .store
        .read_stream("results")
        .await?
        .iter()
        .filter_map(|r| r.event.causationid)
        .collect();
    assert_eq!(order, others, "the other pipeline, in log order");
    handler.release.cancel();
    wait_results(&env.store, 4).await?;
    stop_consumers(stop, vec![task]).await?;
    assert!(env.store.is_handled("one-stuck", stuck).await?);
    Ok(())
}

// ---------------------------------------------------------------------------
// One #[tokio::test] per (backend, body)

macro_rules! contract_tests {
    ($backend:ident, $make:expr, [$($body:ident),* $(,)?]) => {
        mod $backend {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $body() -> anyhow::Result<()> {
                    let env = within(WAIT, "the test environment", $make).await??;
                    within(Duration::from_secs(120), stringify!($body), super::$body(&env)).await?
                }
            )*
        }
    };
}

contract_tests!(
    sql_sqlite,
    Env::sql_on_sqlite(),
    [
        delivers_one_name_in_log_order_and_nothing_else,
        delivers_several_names_in_log_order,
        a_consumer_that_handles_more_names_resumes_with_them,
        delivers_every_event_while_writers_append,
        acked_events_are_not_redelivered_after_resubscribing,
        retried_delivery_comes_back_as_attempt_2,
        unacked_event_is_redelivered_after_resubscribing,
        consumer_records_one_result_per_event_despite_redelivery,
        consumer_retries_transient_failures,
        consumer_does_not_retry_permanent_failures,
        the_last_failed_attempt_is_recorded,
        a_stuck_pipeline_does_not_hold_back_another,
    ]
);

contract_tests!(
    sql_postgres,
    Env::sql_on_postgres(),
    [
        delivers_one_name_in_log_order_and_nothing_else,
        delivers_several_names_in_log_order,
        a_consumer_that_handles_more_names_resumes_with_them,
        delivers_every_event_while_writers_append,
        acked_events_are_not_redelivered_after_resubscribing,
        retried_delivery_comes_back_as_attempt_2,
        unacked_event_is_redelivered_after_resubscribing,
        consumer_records_one_result_per_event_despite_redelivery,
        consumer_retries_transient_failures,
        consumer_does_not_retry_permanent_failures,
        the_last_failed_attempt_is_recorded,
        a_stuck_pipeline_does_not_hold_back_another,
    ]
);

contract_tests!(
    nats,
    Env::nats(),
    [
        delivers_one_name_in_log_order_and_nothing_else,
        delivers_several_names_in_log_order,
        a_consumer_that_handles_more_names_resumes_with_them,
        delivers_every_event_while_writers_append,
        acked_events_are_not_redelivered_after_resubscribing,
        retried_delivery_comes_back_as_attempt_2,
        consumer_records_one_result_per_event_despite_redelivery,
        consumer_retries_transient_failures,
        consumer_does_not_retry_permanent_failures,
        the_last_failed_attempt_is_recorded,
        a_stuck_pipeline_does_not_hold_back_another,
    ]
);
