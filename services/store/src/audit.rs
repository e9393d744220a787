//! The audit chain: the log of record as JSON lines an auditor can verify
//! without Gantry (DESIGN.md 1.9), and load back into an empty store after a
//! disaster.
//!
//! Each line is one event, in log order:
//!
//! ```json
//! {"position":1,"stream":"commit-banking-0f3a…","event":{…},"prev":"000…000","hash":"9b1c…"}
//! ```
//!
//! - `event` is the CloudEvent exactly as the log holds it;
//! - `hash` = lowercase hex SHA-256 of the 64 ASCII characters of `prev`
//!   followed by the event's canonical JSON (RFC 8785, JCS);
//! - `prev` is the `hash` of the line before, 64 zeros before position 1;
//! - `stream` is the log stream the event was appended to. It is not part of
//!   the hash (the facts are the events); `import` needs it to rebuild the
//!   streams' versions.
//!
//! An export with `--from N` still chains from position 1, so its first
//! `prev` is the hash of position N-1 in every export of that log.

use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{EventStore, ExpectedVersion, NewEvents, StoreError};

/// `prev` of the log's first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The checkpoint below which imported history counts as delivered: the
/// relay and the embedded consumers start after it, so an imported log is
/// not deployed again (the projections still rebuild from the start).
pub const IMPORT_FLOOR: &str = "import";

/// Events read from the store per query while exporting.
const PAGE: i64 = 10_000;

/// One line of an export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditLine {
    pub position: i64,
    pub stream: String,
    pub event: Value,
    pub prev: String,
    pub hash: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writing the export: {0}")]
    Write(#[source] std::io::Error),
    #[error("reading line {line}: {source}")]
    Read {
        line: usize,
        #[source]
        source: std::io::Error,
    },
    /// The first line that breaks: its hash does not match its event, it
    /// does not chain to the line before, or it is not valid at all.
    #[error("line {line} (position {position}): {reason}")]
    Broken {
        line: usize,
        position: i64,
        reason: String,
    },
    #[error("position {position}: the stored event is not JSON: {message}")]
    Corrupt { position: i64, message: String },
    #[error("import needs an empty store; this one holds {0} events")]
    NotEmpty(i64),
    #[error("import needs a whole log from position 1; the file starts at position {0}")]
    NotWhole(i64),
}

/// What an export or a verification covered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Lines written or checked.
    pub events: u64,
    pub first_position: Option<i64>,
    pub last_position: Option<i64>,
    /// The last line's hash: the whole chain's fingerprint.
    pub head_hash: Option<String>,
}

impl Summary {
    fn add(&mut self, position: i64, hash: &str) {
        self.events += 1;
        self.first_position.get_or_insert(position);
        self.last_position = Some(position);
        self.head_hash = Some(hash.to_owned());
    }
}

/// `sha256(prev || JCS(event))` as lowercase hex; an error for a value
/// JCS cannot write (a number outside what I-JSON allows, say).
pub fn chain_hash(prev: &str, event: &Value) -> Result<String, serde_json::Error> {
    let canonical = serde_json_canonicalizer::to_vec(event)?;
    let mut hasher = Sha256::new();
    hasher.update(prev.as_bytes());
    hasher.update(&canonical);
    Ok(hex::encode(hasher.finalize()))
}

/// Writes the log from position `from` as audit lines to `out`.
pub async fn export(
    store: &EventStore,
    from: i64,
    out: &mut impl Write,
) -> Result<Summary, AuditError> {
    // The next page is read while this one is hashed and written.
    let (pages, mut next) = tokio::sync::mpsc::channel(2);
    let reader = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut after = 0;
            loop {
                let page = match store.read_raw(after, PAGE).await {
                    Ok(page) => page,
                    Err(e) => {
                        let _ = pages.send(Err(e)).await;
                        return;
                    }
                };
                let Some(last) = page.last() else { return };
                after = last.0;
                if pages.send(Ok(page)).await.is_err() {
                    return;
                }
            }
        })
    };
    let mut summary = Summary::default();
    let mut prev = GENESIS.to_owned();
    let mut line = Vec::with_capacity(4096);
    while let Some(page) = next.recv().await {
        for (position, stream, text) in page? {
            let event: Value = serde_json::from_str(&text).map_err(|e| AuditError::Corrupt {
                position,
                message: e.to_string(),
            })?;
            let hash = chain_hash(&prev, &event).map_err(|e| AuditError::Corrupt {
                position,
                message: e.to_string(),
            })?;
            if position >= from {
                let audit = AuditLine {
                    position,
                    stream,
                    event,
                    prev,
                    hash: hash.clone(),
                };
                line.clear();
                serde_json::to_writer(&mut line, &audit).expect("an audit line serializes");
                line.push(b'\n');
                out.write_all(&line).map_err(AuditError::Write)?;
                summary.add(position, &hash);
            }
            prev = hash;
        }
    }
    reader.abort();
    out.flush().map_err(AuditError::Write)?;
    Ok(summary)
}

/// Checks every line of an export: its hash matches its event, and it
/// chains to the line before (positions one apart, `prev` the previous
/// `hash`). The first line's `prev` is taken as given unless it is
/// position 1, whose `prev` must be [`GENESIS`].
pub fn verify(input: impl BufRead) -> Result<Summary, AuditError> {
    let mut chain = Chain::default();
    for line in numbered_lines(input) {
        let (number, text) = line?;
        chain.check(number, &text)?;
    }
    Ok(chain.summary)
}

/// The input's lines with their 1-based numbers; a read error names its line.
fn numbered_lines(
    input: impl BufRead,
) -> impl Iterator<Item = Result<(usize, String), AuditError>> {
    input.lines().enumerate().map(|(index, text)| {
        let line = index + 1;
        text.map(|text| (line, text))
            .map_err(|source| AuditError::Read { line, source })
    })
}

/// The state of a verification: the line before and what was checked.
#[derive(Debug, Default)]
struct Chain {
    before: Option<(i64, String)>,
    summary: Summary,
}

impl Chain {
    /// Checks line `number` (`text`); `None` for a blank line.
    fn check(&mut self, number: usize, text: &str) -> Result<Option<AuditLine>, AuditError> {
        if text.trim().is_empty() {
            return Ok(None);
        }
        let broken = |position: i64, reason: String| AuditError::Broken {
            line: number,
            position,
            reason,
        };
        let expected = self.before.as_ref().map_or(0, |b| b.0 + 1);
        let line: AuditLine = serde_json::from_str(text)
            .map_err(|e| broken(expected, format!("not an audit line: {e}")))?;
        match &self.before {
            Some((position, hash)) => {
                if line.position != position + 1 {
                    return Err(broken(
                        line.position,
                        format!("follows position {position}: a line is missing or out of order"),
                    ));
                }
                if &line.prev != hash {
                    return Err(broken(
                        line.position,
                        format!("`prev` is not the hash of position {position}"),
                    ));
                }
            }
            None if line.position == 1 && line.prev != GENESIS => {
                return Err(broken(
                    1,
                    "position 1 must chain to the genesis hash (64 zeros)".into(),
                ));
            }
            None => {}
        }
        let hash = chain_hash(&line.prev, &line.event).map_err(|e| {
            broken(
                line.position,
                format!("its event has no canonical form: {e}"),
            )
        })?;
        if hash != line.hash {
            return Err(broken(
                line.position,
                "its hash does not match its event".into(),
            ));
        }
        self.summary.add(line.position, &hash);
        self.before = Some((line.position, hash));
        Ok(Some(line))
    }
}

/// Loads a whole-log export into an empty store, at the same positions and
/// in the same streams, then sets [`IMPORT_FLOOR`] so that nothing imported
/// is delivered to a worker again. `reopen` gives the input a second time:
/// all of it is verified (chain and CloudEvents) before anything is written.
pub async fn import<R: BufRead>(
    store: &EventStore,
    mut reopen: impl FnMut() -> std::io::Result<R>,
) -> Result<Summary, AuditError> {
    let open = |r: std::io::Result<R>| r.map_err(|source| AuditError::Read { line: 0, source });
    let mut chain = Chain::default();
    for line in numbered_lines(open(reopen())?) {
        let (number, text) = line?;
        if let Some(line) = chain.check(number, &text)? {
            if chain.summary.events == 1 && line.position != 1 {
                return Err(AuditError::NotWhole(line.position));
            }
            if let Err(e) = serde_json::from_value::<gantry_proto::CloudEvent>(line.event) {
                return Err(AuditError::Broken {
                    line: number,
                    position: line.position,
                    reason: format!("not a CloudEvent: {e}"),
                });
            }
        }
    }
    let head = store.head().await?;
    if head != 0 {
        return Err(AuditError::NotEmpty(head));
    }
    let mut batch: Vec<NewEvents> = Vec::new();
    let mut pending = 0;
    let mut again = Chain::default();
    for line in numbered_lines(open(reopen())?) {
        let (number, text) = line?;
        // Checked again: the file may have changed since the first pass.
        let Some(line) = again.check(number, &text)? else {
            continue;
        };
        let event = serde_json::from_value(line.event).map_err(|e| AuditError::Broken {
            line: number,
            position: line.position,
            reason: format!("not a CloudEvent: {e}"),
        })?;
        match batch.last_mut() {
            Some(last) if last.stream_id == line.stream => last.events.push(event),
            _ => batch.push(NewEvents::new(
                &line.stream,
                ExpectedVersion::Any,
                vec![event],
            )),
        }
        pending += 1;
        if pending >= 1_000 {
            store.append_many(std::mem::take(&mut batch)).await?;
            pending = 0;
        }
    }
    if !batch.is_empty() {
        store.append_many(batch).await?;
    }
    if let Some(last) = again.summary.last_position {
        store.save_checkpoint(IMPORT_FLOOR, last).await?;
    }
    Ok(again.summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_covers_prev_and_the_canonical_event_only() {
        // Key order and whitespace do not matter; RFC 8785 fixes them.
        let a: Value =
            serde_json::from_str(r#"{ "b": [1, "é\n"], "a": {"y": null, "x": true} }"#).unwrap();
        let canonical = r#"{"a":{"x":true,"y":null},"b":[1,"é\n"]}"#;
        let expected = hex::encode(Sha256::digest(format!("{GENESIS}{canonical}").as_bytes()));
        assert_eq!(chain_hash(GENESIS, &a).unwrap(), expected);
        assert_ne!(chain_hash(&"1".repeat(64), &a).unwrap(), expected);
    }

    #[test]
    fn verify_names_the_first_broken_position() {
        let events = [
            serde_json::json!({"n": 1}),
            serde_json::json!({"n": 2}),
            serde_json::json!({"n": 3}),
        ];
        let mut prev = GENESIS.to_owned();
        let mut lines = Vec::new();
        for (i, event) in events.iter().enumerate() {
            let hash = chain_hash(&prev, event).unwrap();
            let line = AuditLine {
                position: i as i64 + 1,
                stream: "s".into(),
                event: event.clone(),
                prev: prev.clone(),
                hash: hash.clone(),
            };
            lines.push(serde_json::to_string(&line).unwrap());
            prev = hash;
        }
        let ok = verify(lines.join("\n").as_bytes()).unwrap();
        assert_eq!((ok.events, ok.last_position), (3, Some(3)));
        let mut changed = lines.clone();
        changed[1] = changed[1].replace("\"n\":2", "\"n\":4");
        let err = verify(changed.join("\n").as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("position 2") && err.contains("hash"), "{err}");
        let mut genesis = lines.clone();
        genesis[0] = genesis[0].replace(GENESIS, &"1".repeat(64));
        let err = verify(genesis.join("\n").as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("genesis"), "{err}");
    }
}
