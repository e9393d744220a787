//! Distributed delivery over NATS JetStream.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use gantry_proto::cdevents::CdEvent;
use gantry_proto::{CloudEvent, EventName, Subjects};

use super::connect::NatsConnection;
use super::{BusError, Delivery, EventBus, Settle, Subscription};

/// Where Gantry's events live on NATS (`GANTRY_NATS_PREFIX`, `GANTRY_NATS_STREAM`)
/// and how to reach it.
#[derive(Clone)]
pub struct NatsSettings {
    /// One server or several separated by commas; may carry credentials.
    pub url: String,
    pub prefix: String,
    pub stream: String,
    /// Credentials and TLS files besides the URL.
    pub connection: NatsConnection,
    /// Replicas and limits of the stream.
    pub limits: StreamLimits,
}

/// The JetStream stream's replicas and limits (`GANTRY_NATS_REPLICAS`,
/// `GANTRY_NATS_MAX_AGE`, `GANTRY_NATS_MAX_BYTES`). The SQL log stays the
/// record: a limit only bounds what a consumer that was away can catch up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    pub replicas: usize,
    /// Messages older than this are removed; `None`: kept.
    pub max_age: Option<Duration>,
    /// The oldest messages are removed beyond this size; `None`: no limit.
    pub max_bytes: Option<i64>,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            replicas: 1,
            max_age: None,
            max_bytes: None,
        }
    }
}

impl std::fmt::Debug for NatsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSettings")
            .field("url", &crate::store::redact_url(&self.url))
            .field("prefix", &self.prefix)
            .field("stream", &self.stream)
            .field("connection", &self.connection)
            .field("limits", &self.limits)
            .finish()
    }
}

impl NatsSettings {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "gantry".into(),
            stream: "GANTRY_EVENTS".into(),
            connection: NatsConnection::default(),
            limits: StreamLimits::default(),
        }
    }

    /// A client for these settings: the one way Gantry connects to NATS
    /// (credentials, TLS; see [`super::connect`]).
    pub async fn client(&self) -> Result<async_nats::Client, BusError> {
        use async_nats::ConnectErrorKind as Kind;
        // One attempt first: refused credentials and certificates are
        // configuration errors, reported at start with the server's reason
        // instead of retried forever in the background.
        let (once, servers) = super::connect::options(&self.url, &self.connection, false)
            .await
            .map_err(BusError::nats)?;
        let error = match once.connect(servers).await {
            Ok(client) => return Ok(client),
            Err(e) => e,
        };
        let tls_refused = std::error::Error::source(&error)
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .is_some_and(|io| io.kind() == std::io::ErrorKind::InvalidData);
        if matches!(
            error.kind(),
            Kind::AuthorizationViolation | Kind::Authentication | Kind::Tls | Kind::ServerParse
        ) || tls_refused
        {
            return Err(BusError::Nats(error.to_string()));
        }
        // Not reachable yet (NATS may start after Gantry): keep trying.
        tracing::warn!(error = %error, "NATS is not reachable yet; retrying");
        let (retrying, servers) = super::connect::options(&self.url, &self.connection, true)
            .await
            .map_err(BusError::nats)?;
        retrying.connect(servers).await.map_err(BusError::nats)
    }

    pub fn subjects(&self) -> Subjects {
        Subjects::new(self.prefix.clone())
    }
}

/// An unacknowledged event is offered again after this long. Short, so a
/// consumer that died mid-event is replaced quickly; a consumer still
/// working says so every [`PROGRESS_EVERY`](super::PROGRESS_EVERY).
pub const ACK_WAIT: Duration = Duration::from_secs(15);

/// How long one pull request waits for messages, and the idle heartbeat
/// within it.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
const PULL_HEARTBEAT: Duration = Duration::from_secs(2);
/// Window in which JetStream drops a re-published `Nats-Msg-Id`; longer than
/// any relay restart, so a relay that dies between publish and checkpoint
/// does not duplicate.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(15 * 60);

/// The NATS [`EventBus`].
#[derive(Clone)]
pub struct NatsBus {
    client: async_nats::Client,
    js: jetstream::Context,
    settings: NatsSettings,
}

impl std::fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBus")
            .field("stream", &self.settings.stream)
            .finish_non_exhaustive()
    }
}

impl NatsBus {
    /// Connects and makes sure the stream exists (file storage).
    pub async fn connect(settings: NatsSettings) -> Result<Self, BusError> {
        let client = settings.client().await?;
        let js = jetstream::new(client.clone());
        let bus = Self {
            client,
            js,
            settings,
        };
        bus.ensure_stream().await?;
        bus.ensure(bus.cdevents_stream_config()).await?;
        Ok(bus)
    }

    pub fn settings(&self) -> &NatsSettings {
        &self.settings
    }

    /// The JetStream durable consumer behind the Gantry consumer `consumer`.
    pub fn durable_name(&self, consumer: &str) -> String {
        format!("{}-{}", self.settings.prefix, consumer.replace('.', "_"))
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    fn stream_config(&self) -> stream::Config {
        self.limited_stream(self.settings.stream.clone(), self.settings.subjects().all())
    }

    /// The stream of the log's CDEvents (`<stream>_CDEVENTS`, subjects
    /// `<prefix>.cdevents.>`), apart from Gantry's own so no consumer of
    /// the log sees them; same limits.
    fn cdevents_stream_config(&self) -> stream::Config {
        self.limited_stream(
            self.cdevents_stream_name(),
            self.settings.subjects().cdevents_all(),
        )
    }

    /// The JetStream stream the CDEvents are kept in.
    pub fn cdevents_stream_name(&self) -> String {
        format!("{}_CDEVENTS", self.settings.stream)
    }

    fn limited_stream(&self, name: String, subject: String) -> stream::Config {
        let limits = &self.settings.limits;
        stream::Config {
            name,
            subjects: vec![subject],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            duplicate_window: DUPLICATE_WINDOW,
            num_replicas: limits.replicas.max(1),
            // Zero and -1 are JetStream's "no limit".
            max_age: limits.max_age.unwrap_or(Duration::ZERO),
            max_bytes: limits.max_bytes.unwrap_or(-1),
            ..Default::default()
        }
    }

    async fn ensure_stream(&self) -> Result<stream::Stream, BusError> {
        self.ensure(self.stream_config()).await
    }

    async fn ensure(&self, config: stream::Config) -> Result<stream::Stream, BusError> {
        let mut stream = self
            .js
            .get_or_create_stream(config.clone())
            .await
            .map_err(BusError::nats)?;
        // A stream made earlier keeps its settings: bring replicas and
        // limits to what this process is configured with, so changing
        // GANTRY_NATS_REPLICAS or a limit takes effect on the next start.
        let existing = &stream.cached_info().config;
        if existing.num_replicas != config.num_replicas
            || existing.max_age != config.max_age
            || existing.max_bytes != config.max_bytes
        {
            tracing::info!(
                stream = %config.name,
                replicas = config.num_replicas,
                max_age = ?config.max_age,
                max_bytes = config.max_bytes,
                "updating the JetStream stream's replicas and limits"
            );
            let info = self.js.update_stream(config.clone()).await.map_err(|e| {
                BusError::Nats(format!(
                    "the JetStream stream {} cannot take {} replica(s), max_age {:?}, \
                         max_bytes {}: {e}",
                    config.name, config.num_replicas, config.max_age, config.max_bytes
                ))
            })?;
            stream = self
                .js
                .get_stream(&info.config.name)
                .await
                .map_err(BusError::nats)?;
        }
        Ok(stream)
    }

    /// Publishes a recorded event with `Nats-Msg-Id` = event id; the returned
    /// future resolves when JetStream has stored it (or dropped it as a duplicate).
    pub async fn publish(
        &self,
        event: &CloudEvent,
    ) -> Result<jetstream::context::PublishAckFuture, BusError> {
        let name = event.name().map(|n| n.as_str()).unwrap_or("unknown");
        let subject = self.settings.subjects().event(&event.pipeline, name);
        let payload = serde_json::to_vec(event).map_err(|e| BusError::Malformed {
            subject: subject.clone(),
            message: e.to_string(),
        })?;
        self.js
            .send_publish(
                subject,
                jetstream::context::Publish::build()
                    .payload(payload.into())
                    .message_id(event.id.to_string()),
            )
            .await
            .map_err(BusError::nats)
    }

    /// Publishes a CDEvent on `<prefix>.cdevents.<type>` in the CloudEvents
    /// NATS binding's binary mode: the body is the CDEvent, `ce-*` headers
    /// carry its CloudEvent attributes, `Nats-Msg-Id` its id (stable per
    /// Gantry event, so a relay that publishes again duplicates nothing).
    pub async fn publish_cdevent(
        &self,
        cd: &CdEvent,
    ) -> Result<jetstream::context::PublishAckFuture, BusError> {
        let subject = self.settings.subjects().cdevent(cd.ty);
        let payload = serde_json::to_vec(&cd.json).map_err(|e| BusError::Malformed {
            subject: subject.clone(),
            message: e.to_string(),
        })?;
        let context = &cd.json["context"];
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("ce-specversion", "1.0");
        headers.insert("ce-id", cd.id.to_string().as_str());
        headers.insert("ce-type", cd.ty);
        headers.insert("ce-source", context["source"].as_str().unwrap_or("/gantry"));
        if let Some(time) = context["timestamp"].as_str() {
            headers.insert("ce-time", time);
        }
        headers.insert("content-type", "application/json");
        self.js
            .send_publish(
                subject,
                jetstream::context::Publish::build()
                    .payload(payload.into())
                    .headers(headers)
                    .message_id(cd.id.to_string()),
            )
            .await
            .map_err(BusError::nats)
    }
}

#[async_trait]
impl EventBus for NatsBus {
    async fn subscribe(
        &self,
        consumer_name: &str,
        names: &[EventName],
    ) -> Result<Box<dyn Subscription>, BusError> {
        let stream = self.ensure_stream().await?;
        let subjects = self.settings.subjects();
        // NATS 2.9 (Debian's) allows one filter subject per consumer. A
        // consumer of one name filters on it; a consumer of several takes the
        // whole stream and skips the rest, so it still sees the log in order
        // (one consumer per name, merged, would not).
        let filter = match names {
            [one] => subjects.filter(*one),
            _ => subjects.all(),
        };
        let durable = self.durable_name(consumer_name);
        let config = consumer::pull::Config {
            durable_name: Some(durable.clone()),
            filter_subject: filter,
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            // Unbounded: JetStream would drop an event silently after its
            // last delivery. The consumer runner retries a failing event in
            // place and gives up after `MAX_DELIVER` tries, or when an event
            // comes back more often than that (each earlier delivery died
            // unanswered), recording the step's failure (`Handler::gave_up`).
            max_deliver: -1,
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        };
        let mut consumer: consumer::PullConsumer = stream
            .get_or_create_consumer(&durable, config.clone())
            .await
            .map_err(BusError::nats)?;
        // A durable consumer made by an earlier version keeps its settings:
        // bring the ones that can change (the events a service handles, how
        // long a delivery may take, how often it is retried) up to date, so
        // an upgrade neither misses new event names nor keeps old timeouts.
        let existing = &consumer.cached_info().config;
        if existing.filter_subject != config.filter_subject
            || existing.ack_wait != config.ack_wait
            || existing.max_deliver != config.max_deliver
        {
            tracing::info!(
                consumer = %durable,
                from_filter = %existing.filter_subject,
                to_filter = %config.filter_subject,
                "updating the JetStream consumer's settings"
            );
            consumer = stream
                .update_consumer(config)
                .await
                .map_err(|e| {
                    BusError::Nats(format!(
                        "the JetStream consumer {durable} has other settings than this version \
                         needs and cannot be updated ({e}); delete it (`nats consumer rm {} {durable}`) \
                         and it is re-created, resuming from the start of the stream",
                        self.settings.stream
                    ))
                })?;
        }
        let messages = consumer
            .stream()
            .max_messages_per_batch(64)
            // A pull request outlives the process that made it until it
            // expires, and the server may hand it new events meanwhile (they
            // come back after ACK_WAIT). Short pulls keep that window small
            // after a restart.
            .heartbeat(PULL_HEARTBEAT)
            .expires(PULL_EXPIRES)
            .messages()
            .await
            .map_err(BusError::nats)?;
        Ok(Box::new(NatsSubscription {
            feed: messages.map(|m| m.map_err(BusError::nats)).boxed(),
            wanted: names.iter().map(|n| n.type_name()).collect(),
        }))
    }

    async fn ready(&self) -> Result<(), BusError> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            state => Err(BusError::Nats(format!("not connected ({state:?})"))),
        }
    }

    fn kind(&self) -> &'static str {
        "nats"
    }
}

struct NatsSubscription {
    feed: BoxStream<'static, Result<jetstream::Message, BusError>>,
    /// CloudEvents types this consumer handles; others are acked and skipped.
    wanted: Vec<String>,
}

#[async_trait]
impl Subscription for NatsSubscription {
    async fn next(&mut self) -> Result<Option<Delivery>, BusError> {
        loop {
            let Some(msg) = self.feed.next().await else {
                return Ok(None);
            };
            let msg = match msg {
                Ok(m) => m,
                // Heartbeat misses and reconnects surface here; the pull
                // stream recovers by itself.
                Err(e) => {
                    tracing::warn!(error = %e, "NATS consumer stream error; continuing");
                    continue;
                }
            };
            let attempt = msg.info().map(|i| i.delivered).unwrap_or(1);
            match serde_json::from_slice::<CloudEvent>(&msg.payload) {
                Ok(event) if !self.wanted.contains(&event.ty) => {
                    msg.ack().await.map_err(BusError::nats)?;
                }
                Ok(event) => {
                    return Ok(Some(Delivery {
                        event,
                        attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
                        settle: Settle::Nats(Box::new(msg)),
                    }))
                }
                Err(e) => {
                    // Not ours to handle; terminate it so it is not redelivered.
                    tracing::error!(subject = %msg.subject, error = %e, "dropping malformed message");
                    let _ = msg.ack_with(jetstream::AckKind::Term).await;
                }
            }
        }
    }
}
