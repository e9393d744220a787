//! Recorded events as CDEvents: [`gantry_proto::cdevents`] plus the two
//! facts an `env.promoted` needs from the log (did the stage run a release
//! before; is the run a rollback run). The relay and the events route share
//! this, so NATS and SSE carry the same CDEvents.

use std::collections::HashMap;

use gantry_proto::cdevents::{self, CdEvent, Context};
use gantry_proto::events::{EnvPromoted, RunStarted, StageRolledBack};
use gantry_proto::{EventName, Trigger};

use crate::store::{decode_rows, EventStore, RecordedEvent, StoreError};

/// Rows read per query while looking back for a stage's earlier release.
const LOOKBACK_PAGE: i64 = 256;

pub struct CdeventsMapper {
    store: EventStore,
    public_url: String,
    /// (pipeline, stage) → a position at which the stage was promoted: any
    /// later `env.promoted` there is an upgrade, with no query.
    promoted_at: HashMap<(String, String), i64>,
}

impl CdeventsMapper {
    pub fn new(store: EventStore, public_url: &str) -> Self {
        Self {
            store,
            public_url: public_url.trim_end_matches('/').to_owned(),
            promoted_at: HashMap::new(),
        }
    }

    /// The CDEvents `recorded` stands for (see [`cdevents::from_event`]).
    pub async fn map(&mut self, recorded: &RecordedEvent) -> Result<Vec<CdEvent>, StoreError> {
        let mut cx = Context {
            public_url: self.public_url.clone(),
            ..Context::default()
        };
        if cdevents::needs_history(&recorded.event) {
            cx.rollback_run = self.is_rollback_run(recorded).await?;
            if let Ok(p) = recorded.event.decode::<EnvPromoted>() {
                cx.stage_had_release = self
                    .stage_had_release(&recorded.event.pipeline, &p.stage, recorded.position)
                    .await?;
                self.promoted_at
                    .entry((recorded.event.pipeline.clone(), p.stage))
                    .and_modify(|at| *at = (*at).min(recorded.position))
                    .or_insert(recorded.position);
            }
            if let Ok(r) = recorded.event.decode::<StageRolledBack>() {
                if let Some(to_run) = &r.to_run {
                    cx.restored = self
                        .store
                        .first_of_run::<EnvPromoted>(to_run, Some(&r.stage))
                        .await?
                        .map(|p| cdevents::release_purl(&recorded.event.pipeline, &p));
                }
            }
        }
        Ok(cdevents::from_event(&recorded.event, &cx))
    }

    async fn stage_had_release(
        &self,
        pipeline: &str,
        stage: &str,
        position: i64,
    ) -> Result<bool, StoreError> {
        if let Some(at) = self
            .promoted_at
            .get(&(pipeline.to_owned(), stage.to_owned()))
        {
            if *at < position {
                return Ok(true);
            }
        }
        // Backwards from this event: the stage's last release is usually
        // recent; only a stage's first promotion reads its whole history.
        let ty = EventName::EnvPromoted.type_name();
        let mut before = position;
        loop {
            let rows = sqlx::query(
                "SELECT position, stream_id, stream_version, recorded_at, event FROM events \
                 WHERE pipeline = $1 AND event_type = $2 AND position < $3 \
                 ORDER BY position DESC LIMIT $4",
            )
            .bind(pipeline)
            .bind(&ty)
            .bind(before)
            .bind(LOOKBACK_PAGE)
            .fetch_all(self.store.pool())
            .await?;
            let events = decode_rows(&rows)?;
            let Some(last) = events.last() else {
                return Ok(false);
            };
            before = last.position;
            if events.iter().any(|e| e.event.stage() == Some(stage)) {
                return Ok(true);
            }
        }
    }

    async fn is_rollback_run(&self, recorded: &RecordedEvent) -> Result<bool, StoreError> {
        let Some(run) = recorded.event.runid.as_deref() else {
            return Ok(false);
        };
        Ok(self
            .store
            .first_of_run::<RunStarted>(run, None)
            .await?
            .is_some_and(|s| s.trigger == Trigger::Rollback))
    }
}
