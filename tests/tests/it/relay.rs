//! The relay (services/store/src/relay.rs): the Postgres log published to
//! JetStream exactly once, in position order, `Nats-Msg-Id` = event id;
//! resuming from its checkpoint; surviving a NATS crash; one leader among
//! several relays. Every test has its own database, NATS server, prefix and
//! stream.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{event, store_at, wait_for, within, WAIT};
use async_nats::jetstream;
use futures::StreamExt;
use gantry_proto::{CloudEvent, EventName};
use gantry_store::bus::{NatsBus, NatsSettings};
use gantry_store::relay::Relay;
use gantry_store::{EventStore, ExpectedVersion, RecordedEvent};
use gantry_tests::{fresh_postgres, unique_name, NatsServer, TestDb};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const NAMES: [EventName; 4] = [
    EventName::RunCancelled,
    EventName::RunFailed,
    EventName::RunSucceeded,
    EventName::RunSuperseded,
];
const PIPELINES: [&str; 2] = ["alpha", "beta-2"];

/// Postgres + NATS + settings unique to one test.
struct Rig {
    db: TestDb,
    store: EventStore,
    nats: NatsServer,
    settings: NatsSettings,
    appended: usize,
}

impl Rig {
    async fn new() -> anyhow::Result<Rig> {
        let db = fresh_postgres().await?;
        let store = store_at(db.url()).await?;
        let nats = NatsServer::start().await?;
        let settings = NatsSettings {
            prefix: unique_name("r"),
            stream: unique_name("RELAY_"),
            ..NatsSettings::new(nats.url())
        };
        Ok(Rig {
            db,
            store,
            nats,
            settings,
            appended: 0,
        })
    }

    async fn bus(&self) -> anyhow::Result<NatsBus> {
        Ok(within(
            WAIT,
            "connecting to NATS",
            NatsBus::connect(self.settings.clone()),
        )
        .await??)
    }

    /// Starts a relay with its own store connection and NATS connection, as
    /// another process would.
    async fn spawn_relay(&self) -> anyhow::Result<RelayTask> {
        let store = EventStore::connect(self.db.url()).await?;
        let bus = self.bus().await?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(Relay::new(store, bus).run(stop.clone()));
        Ok(RelayTask { stop, task })
    }

    /// Appends `n` events (mixed names and pipelines), `per_append` at a time.
    async fn append(&mut self, n: usize, per_append: usize) -> anyhow::Result<()> {
        append_events(&self.store, self.appended, n, per_append).await?;
        self.appended += n;
        Ok(())
    }

    fn checkpoint_name(&self) -> String {
        format!("relay:{}:{}", self.settings.stream, self.settings.prefix)
    }

    async fn js(&self) -> anyhow::Result<jetstream::Context> {
        let client = within(
            WAIT,
            "connecting to NATS",
            async_nats::connect(self.nats.url()),
        )
        .await??;
        Ok(jetstream::new(client))
    }

    /// Messages in the stream now.
    async fn stream_len(&self, js: &jetstream::Context) -> anyhow::Result<u64> {
        let mut stream = js.get_stream(&self.settings.stream).await?;
        Ok(stream.info().await?.state.messages)
    }

    /// Waits until the stream holds `n` messages, then checks that no more
    /// arrive for a while.
    async fn wait_stream_len(&self, n: u64, limit: Duration) -> anyhow::Result<()> {
        let js = self.js().await?;
        wait_for(limit, &format!("{n} messages in the stream"), || async {
            Ok(match self.stream_len(&js).await {
                Ok(len) if len > n => {
                    anyhow::bail!("the stream holds {len} messages, more than {n}")
                }
                Ok(len) => (len == n).then_some(()),
                // JetStream may still be recovering after a restart.
                Err(_) => None,
            })
        })
        .await?;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let len = self.stream_len(&js).await?;
        anyhow::ensure!(
            len == n,
            "the stream grew to {len} messages after reaching {n}"
        );
        Ok(())
    }

    /// Every stream message, by sequence.
    async fn stream_messages(&self) -> anyhow::Result<Vec<jetstream::message::StreamMessage>> {
        let js = self.js().await?;
        let mut stream = js.get_stream(&self.settings.stream).await?;
        let state = stream.info().await?.state.clone();
        anyhow::ensure!(
            state.first_sequence <= 1,
            "messages were removed: {state:?}"
        );
        let mut out = Vec::new();
        for seq in 1..=state.last_sequence {
            out.push(stream.get_raw_message(seq).await?);
        }
        Ok(out)
    }

    async fn log(&self) -> anyhow::Result<Vec<RecordedEvent>> {
        Ok(self.store.read_all(0, 1_000_000).await?)
    }

    fn subject_of(&self, ev: &CloudEvent) -> String {
        let name = ev.name().expect("a Gantry event");
        format!(
            "{}.events.{}.{}",
            self.settings.prefix,
            ev.pipeline,
            name.as_str()
        )
    }

    /// The stream holds exactly the log, in position order: sequence N is
    /// position N, with `Nats-Msg-Id` = event id, the right subject and the
    /// event (with its position) as the payload.
    async fn assert_stream_is_log(&self) -> anyhow::Result<()> {
        let log = self.log().await?;
        let msgs = self.stream_messages().await?;
        assert_eq!(log.len(), self.appended);
        assert_eq!(
            msgs.len(),
            log.len(),
            "stream has {} messages, log has {} events",
            msgs.len(),
            log.len()
        );
        for (msg, rec) in msgs.iter().zip(&log) {
            assert_eq!(
                msg.sequence, rec.position as u64,
                "stream sequence vs log position"
            );
            let msg_id = msg
                .headers
                .get(async_nats::header::NATS_MESSAGE_ID)
                .map(|v| v.as_str().to_owned());
            assert_eq!(
                msg_id,
                Some(rec.event.id.to_string()),
                "Nats-Msg-Id at {}",
                msg.sequence
            );
            assert_eq!(msg.subject.as_str(), self.subject_of(&rec.event));
            let ev: CloudEvent = serde_json::from_slice(&msg.payload)?;
            assert_eq!(ev, rec.event, "payload at {}", msg.sequence);
            assert_eq!(ev.sequence, Some(rec.position));
        }
        Ok(())
    }
}

async fn append_events(
    store: &EventStore,
    start: usize,
    n: usize,
    per_append: usize,
) -> anyhow::Result<()> {
    let mut i = start;
    let end = start + n;
    while i < end {
        let k = per_append.min(end - i);
        let evs: Vec<CloudEvent> = (i..i + k)
            .map(|j| {
                event(
                    NAMES[j % NAMES.len()],
                    PIPELINES[(j / 3) % 2],
                    &format!("run-{}", j % 7),
                )
            })
            .collect();
        store
            .append(&format!("run-{}", i % 7), ExpectedVersion::Any, evs)
            .await?;
        i += k;
    }
    Ok(())
}

struct RelayTask {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl RelayTask {
    async fn stop(mut self) -> anyhow::Result<()> {
        self.stop.cancel();
        within(WAIT, "the relay to stop", &mut self.task).await??;
        Ok(())
    }
}

impl Drop for RelayTask {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// (subject, payload) of a message a [`CoreTap`] received.
type CoreMessage = (String, Vec<u8>);

/// A core-NATS subscriber on `<prefix>.events.>`: what the relay actually
/// sends, including re-publishes that JetStream drops as duplicates.
struct CoreTap {
    got: Arc<Mutex<Vec<CoreMessage>>>,
    task: JoinHandle<()>,
}

impl CoreTap {
    async fn start(url: &str, prefix: &str) -> anyhow::Result<CoreTap> {
        let client = within(WAIT, "connecting to NATS", async_nats::connect(url)).await??;
        let mut sub = client.subscribe(format!("{prefix}.events.>")).await?;
        client.flush().await?;
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        let task = tokio::spawn(async move {
            let _client = client;
            while let Some(msg) = sub.next().await {
                sink.lock()
                    .unwrap()
                    .push((msg.subject.to_string(), msg.payload.to_vec()));
            }
        });
        Ok(CoreTap { got, task })
    }

    fn len(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    async fn wait_len(&self, n: usize) -> anyhow::Result<()> {
        wait_for(WAIT, &format!("{n} core messages"), || async {
            let len = self.len();
            anyhow::ensure!(
                len <= n,
                "the core subscriber got {len} messages, more than {n}"
            );
            Ok((len == n).then_some(()))
        })
        .await?;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let len = self.len();
        anyhow::ensure!(
            len == n,
            "the core subscriber got {len} messages, expected exactly {n}"
        );
        Ok(())
    }

    /// The events received, in arrival order.
    fn events(&self) -> anyhow::Result<Vec<(String, CloudEvent)>> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|(s, p)| Ok((s.clone(), serde_json::from_slice(p)?)))
            .collect()
    }
}

impl Drop for CoreTap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_every_event_once_in_position_order() -> anyhow::Result<()> {
    let mut rig = Rig::new().await?;
    // More than one relay batch (512) is waiting when it starts...
    rig.append(700, 50).await?;
    let relay = rig.spawn_relay().await?;
    // ...and more arrives while it runs.
    for _ in 0..30 {
        rig.append(10, 10).await?;
    }
    rig.wait_stream_len(1000, WAIT).await?;
    rig.assert_stream_is_log().await?;
    assert_eq!(rig.store.checkpoint(&rig.checkpoint_name()).await?, 1000);
    relay.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_subscribers_get_cloudevent_json_on_the_event_subject() -> anyhow::Result<()> {
    let mut rig = Rig::new().await?;
    let tap = CoreTap::start(&rig.nats.url(), &rig.settings.prefix).await?;
    let relay = rig.spawn_relay().await?;
    rig.append(40, 4).await?;
    tap.wait_len(40).await?;
    let log = rig.log().await?;
    let got = tap.events()?;
    assert_eq!(got.len(), log.len());
    for ((subject, ev), rec) in got.iter().zip(&log) {
        assert_eq!(subject, &rig.subject_of(&rec.event));
        assert_eq!(
            subject,
            &format!(
                "{}.events.{}.{}",
                rig.settings.prefix,
                rec.event.pipeline,
                rec.event.name().unwrap().as_str()
            )
        );
        assert_eq!(ev, &rec.event, "position {}", rec.position);
    }
    // The raw JSON is a structured-mode CloudEvent with the position.
    let (_, raw) = tap.got.lock().unwrap()[0].clone();
    let json: serde_json::Value = serde_json::from_slice(&raw)?;
    assert_eq!(json["specversion"], "1.0");
    assert_eq!(json["id"], log[0].event.id.to_string());
    assert_eq!(json["type"], log[0].event.ty.as_str());
    assert_eq!(json["sequence"], 1);
    assert_eq!(json["pipeline"], log[0].event.pipeline.as_str());
    assert_eq!(json["datacontenttype"], "application/json");
    relay.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_from_its_checkpoint_after_a_restart() -> anyhow::Result<()> {
    let mut rig = Rig::new().await?;
    let tap = CoreTap::start(&rig.nats.url(), &rig.settings.prefix).await?;
    rig.append(100, 10).await?;
    let relay = rig.spawn_relay().await?;
    rig.wait_stream_len(100, WAIT).await?;
    relay.stop().await?;
    assert_eq!(rig.store.checkpoint(&rig.checkpoint_name()).await?, 100);

    rig.append(150, 10).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(tap.len(), 100, "nothing is published while no relay runs");
    let relay = rig.spawn_relay().await?;
    rig.wait_stream_len(250, WAIT).await?;
    rig.assert_stream_is_log().await?;
    // The restarted relay did not publish the first 100 again: the core
    // subscriber (which sees re-publishes JetStream drops) got each event once.
    tap.wait_len(250).await?;
    let log = rig.log().await?;
    assert_eq!(
        tap.events()?.iter().map(|(_, e)| e.id).collect::<Vec<_>>(),
        log.iter().map(|r| r.event.id).collect::<Vec<_>>()
    );
    assert_eq!(rig.store.checkpoint(&rig.checkpoint_name()).await?, 250);
    relay.stop().await
}

/// A relay that died after publishing but before saving its checkpoint
/// publishes again; JetStream drops the repeats by `Nats-Msg-Id`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn republished_events_are_dropped_by_msg_id() -> anyhow::Result<()> {
    let mut rig = Rig::new().await?;
    let tap = CoreTap::start(&rig.nats.url(), &rig.settings.prefix).await?;
    rig.append(50, 5).await?;
    let relay = rig.spawn_relay().await?;
    rig.wait_stream_len(50, WAIT).await?;
    relay.stop().await?;
    sqlx::query("DELETE FROM checkpoints WHERE name = $1")
        .bind(rig.checkpoint_name())
        .execute(rig.store.pool())
        .await?;

    let relay = rig.spawn_relay().await?;
    tap.wait_len(100).await?; // all 50 sent again
    rig.wait_stream_len(50, WAIT).await?; // but stored once
    rig.append(10, 10).await?;
    rig.wait_stream_len(60, WAIT).await?;
    rig.assert_stream_is_log().await?;
    relay.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_lands_once_when_nats_is_killed_mid_way() -> anyhow::Result<()> {
    const TOTAL: usize = 1000;
    let mut rig = Rig::new().await?;
    rig.append(200, 20).await?;
    let relay = rig.spawn_relay().await?;
    let appender = {
        let store = rig.store.clone();
        tokio::spawn(async move {
            for k in 0..80 {
                append_events(&store, 200 + k * 10, 10, 10).await?;
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            anyhow::Ok(())
        })
    };
    let js = rig.js().await?;
    wait_for(WAIT, "the relay to get going", || async {
        Ok((rig.stream_len(&js).await? >= 250).then_some(()))
    })
    .await?;
    let published_before_kill = rig.stream_len(&js).await?;
    drop(js);
    rig.nats.kill();
    let head_at_kill = rig.store.head().await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let head_at_restart = rig.store.head().await?;
    // Mid-way: not everything was published, and events were recorded while
    // NATS was down.
    assert!(
        (published_before_kill as usize) < TOTAL && head_at_restart > head_at_kill,
        "the kill was not mid-way: {published_before_kill} published, head {head_at_kill} \
         at the kill, {head_at_restart} at the restart"
    );
    within(WAIT, "restarting NATS", rig.nats.restart()).await??;
    within(WAIT, "the appender", appender).await???;
    rig.appended = TOTAL;

    rig.wait_stream_len(TOTAL as u64, Duration::from_secs(60))
        .await?;
    let log = rig.log().await?;
    let msgs = rig.stream_messages().await?;
    let mut in_stream: Vec<String> = msgs
        .iter()
        .map(|m| {
            m.headers
                .get(async_nats::header::NATS_MESSAGE_ID)
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default()
        })
        .collect();
    let in_log: Vec<String> = log.iter().map(|r| r.event.id.to_string()).collect();
    let stream_order = in_stream.clone();
    in_stream.sort();
    let mut sorted_log = in_log.clone();
    sorted_log.sort();
    assert_eq!(in_stream.len(), TOTAL);
    if in_stream != sorted_log {
        let log_set: HashSet<&String> = sorted_log.iter().collect();
        let mut counts: HashMap<&String, usize> = HashMap::new();
        for id in &in_stream {
            *counts.entry(id).or_default() += 1;
        }
        let missing = sorted_log
            .iter()
            .filter(|id| !counts.contains_key(id))
            .count();
        let doubled = counts.values().filter(|n| **n > 1).count();
        let foreign = in_stream.iter().filter(|id| !log_set.contains(id)).count();
        panic!(
            "the stream is not the log exactly once: {missing} events missing, {doubled} \
             stored more than once, {foreign} not in the log"
        );
    }
    // Payloads match their ids.
    for m in &msgs {
        let ev: CloudEvent = serde_json::from_slice(&m.payload)?;
        assert_eq!(
            Some(ev.id.to_string()),
            m.headers
                .get(async_nats::header::NATS_MESSAGE_ID)
                .map(|v| v.as_str().to_owned())
        );
    }
    // The relay promises position order ("in order, exactly as recorded").
    assert!(
        stream_order == in_log,
        "the stream is out of position order after the NATS restart; first difference at \
         sequence {}",
        stream_order
            .iter()
            .zip(&in_log)
            .position(|(a, b)| a != b)
            .map(|i| i + 1)
            .unwrap_or(0)
    );
    relay.stop().await
}

/// Two relays on one database and NATS (two `gantry serve` processes): one
/// leads, the other waits; when the leader stops, the other takes over from
/// the shared checkpoint. Each event is sent once, not only stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_publish_each_event_once() -> anyhow::Result<()> {
    let mut rig = Rig::new().await?;
    let tap = CoreTap::start(&rig.nats.url(), &rig.settings.prefix).await?;
    let first = rig.spawn_relay().await?;
    rig.append(100, 10).await?;
    rig.wait_stream_len(100, WAIT).await?;
    let second = rig.spawn_relay().await?;
    for _ in 0..20 {
        rig.append(10, 5).await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rig.wait_stream_len(300, WAIT).await?;
    tap.wait_len(300).await?;

    // The leader (the first, which got the lock first) stops: the second takes over.
    first.stop().await?;
    rig.append(100, 10).await?;
    rig.wait_stream_len(400, WAIT).await?;
    tap.wait_len(400).await?;
    rig.assert_stream_is_log().await?;
    let log = rig.log().await?;
    assert_eq!(
        tap.events()?.iter().map(|(_, e)| e.id).collect::<Vec<_>>(),
        log.iter().map(|r| r.event.id).collect::<Vec<_>>(),
        "the core subscriber saw each event once, in order"
    );
    second.stop().await
}
