//! Hiding secrets in text that leaves the process (events, logs, API
//! answers, diffs, plans, command output): every occurrence of every secret
//! becomes `***` (DESIGN.md 1.7).
//!
//! There is one [`Masker`] type and one process-wide set of secrets
//! ([`register`], [`process`]): every secret reference of every loaded
//! pipeline, resolved on this process's side. The event store masks each
//! event's data with it before the append and the log writer masks each line
//! with it, so a secret is hidden however it reached an event or a log line.
//! A process can only leak a secret it can read, and those are exactly the
//! ones it registers. Places that hold secrets the pipelines do not name
//! (values resolved from a stage's declared `env`, say) add them with
//! [`Masker::with`].

use std::sync::{Arc, OnceLock, RwLock};

use serde_json::Value;

use crate::{Pipeline, PipelineSet, StageEnv};

/// What a secret becomes.
pub const MASK: &str = "***";

/// Values shorter than this are not masked: hiding every `1` or `on` in a
/// text would shred it without protecting anything (no credential is that
/// short).
pub const MIN_SECRET_LEN: usize = 4;

/// Replaces secrets with `***`.
#[derive(Debug, Clone, Default)]
pub struct Masker {
    /// Longest first, so that a secret containing another is masked whole.
    secrets: Vec<Vec<u8>>,
}

impl Masker {
    /// A masker for these secrets (too short and duplicate ones are dropped).
    pub fn new<S: AsRef<str>>(secrets: &[S]) -> Self {
        Masker::default().with(secrets.iter().map(AsRef::as_ref))
    }

    /// This masker with more secrets.
    pub fn with<'a>(mut self, secrets: impl IntoIterator<Item = &'a str>) -> Self {
        self.extend(secrets);
        self
    }

    /// This masker with every secret of `other` too.
    pub fn merge(mut self, other: &Masker) -> Self {
        for s in &other.secrets {
            if !self.secrets.contains(s) {
                self.secrets.push(s.clone());
            }
        }
        self.secrets
            .sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        self
    }

    /// Adds secrets.
    pub fn extend<'a>(&mut self, secrets: impl IntoIterator<Item = &'a str>) {
        for s in secrets {
            // A secret file's trailing newline is not part of the secret.
            let s = s.trim_end_matches(['\n', '\r']);
            if s.len() >= MIN_SECRET_LEN && !self.secrets.iter().any(|k| k == s.as_bytes()) {
                self.secrets.push(s.as_bytes().to_vec());
            }
        }
        self.secrets
            .sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    }

    /// Every secret the pipeline references that this process can read
    /// (what it cannot read it cannot leak).
    pub fn for_pipeline(pipeline: &Pipeline) -> Self {
        let mut m = Masker::default();
        m.add_refs(pipeline.secret_refs());
        m
    }

    /// What a stage's output (command output, smoke results, diffs) is
    /// masked with: the pipeline's secrets, those of the stage's declared
    /// `env` when it could be resolved (a secret that cannot be read cannot
    /// leak), and every secret this process knows ([`process`]).
    pub fn for_stage(pipeline: &Pipeline, env: Option<&StageEnv>) -> Self {
        let mut m = Masker::for_pipeline(pipeline);
        if let Some(env) = env {
            m.extend(env.secret_values());
        }
        m.merge(&process())
    }

    /// Every secret of every pipeline in the set.
    pub fn for_pipelines(set: &PipelineSet) -> Self {
        let mut m = Masker::default();
        for p in set.iter() {
            m.add_refs(p.secret_refs());
        }
        m
    }

    fn add_refs<'a>(&mut self, refs: impl IntoIterator<Item = &'a crate::SecretRef>) {
        let values: Vec<_> = refs.into_iter().filter_map(|r| r.resolve().ok()).collect();
        self.extend(values.iter().map(|s| s.expose()));
    }

    /// Whether no secret is known.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// The number of secrets known.
    pub fn len(&self) -> usize {
        self.secrets.len()
    }

    /// The length of the longest secret: how much of a cut-off text a
    /// secret can hide in.
    pub fn longest(&self) -> usize {
        self.secrets.first().map_or(0, Vec::len)
    }

    /// `text` with every occurrence of every secret replaced with `***`.
    pub fn mask(&self, text: &str) -> String {
        if !self.occurs_in(text.as_bytes()) {
            return text.to_owned();
        }
        String::from_utf8_lossy(&self.mask_bytes(text.as_bytes(), 0)).into_owned()
    }

    /// Masks a diagnostic's message and field.
    pub fn mask_diagnostic(&self, d: &mut gantry_proto::events::Diagnostic) {
        if self.secrets.is_empty() {
            return;
        }
        d.message = self.mask(&d.message);
        if let Some(f) = d.field.as_mut() {
            *f = self.mask(f);
        }
    }

    /// The secrets, to hand to code that masks in its own way (a diff
    /// masks line by line). Never log them.
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        self.secrets
            .iter()
            .filter_map(|s| std::str::from_utf8(s).ok())
    }

    /// Masks every string (and object key) of a JSON value in place.
    /// Returns whether anything was masked.
    pub fn mask_json(&self, value: &mut Value) -> bool {
        if self.secrets.is_empty() {
            return false;
        }
        match value {
            Value::String(s) if self.occurs_in(s.as_bytes()) => {
                *s = self.mask(s);
                true
            }
            Value::Array(items) => items
                .iter_mut()
                .fold(false, |hit, v| self.mask_json(v) | hit),
            Value::Object(map) => {
                let mut hit = false;
                if map.keys().any(|k| self.occurs_in(k.as_bytes())) {
                    let old = std::mem::take(map);
                    for (k, v) in old {
                        map.insert(self.mask(&k), v);
                    }
                    hit = true;
                }
                map.values_mut().fold(hit, |hit, v| self.mask_json(v) | hit)
            }
            _ => false,
        }
    }

    fn occurs_in(&self, bytes: &[u8]) -> bool {
        self.secrets
            .iter()
            .any(|s| bytes.windows(s.len()).any(|w| w == s.as_slice()))
    }

    /// Masks `bytes`, leaving out the first `skip` bytes (a secret that
    /// starts in them is still masked where it goes on).
    pub fn mask_bytes(&self, bytes: &[u8], skip: usize) -> Vec<u8> {
        let mut hidden = vec![false; bytes.len()];
        for s in &self.secrets {
            if s.len() > bytes.len() {
                continue;
            }
            for i in 0..=bytes.len() - s.len() {
                if bytes[i..].starts_with(s) {
                    hidden[i..i + s.len()].iter_mut().for_each(|h| *h = true);
                }
            }
        }
        let mut out = Vec::with_capacity(bytes.len());
        let mut in_secret = false;
        for (i, &b) in bytes.iter().enumerate().skip(skip) {
            if hidden[i] {
                if !in_secret {
                    out.extend_from_slice(MASK.as_bytes());
                }
                in_secret = true;
            } else {
                in_secret = false;
                out.push(b);
            }
        }
        out
    }
}

fn registry() -> &'static RwLock<Arc<Masker>> {
    static REGISTRY: OnceLock<RwLock<Arc<Masker>>> = OnceLock::new();
    REGISTRY.get_or_init(|| RwLock::new(Arc::new(Masker::default())))
}

/// Secrets of the process's own connections (database and NATS passwords,
/// NKEY seeds): kept when the pipelines' secrets are replaced on reload.
fn permanent() -> &'static RwLock<Masker> {
    static PERMANENT: OnceLock<RwLock<Masker>> = OnceLock::new();
    PERMANENT.get_or_init(|| RwLock::new(Masker::default()))
}

/// Adds secrets that stay masked for the life of the process, whatever
/// pipelines are loaded later.
pub fn register_permanent<'a>(secrets: impl IntoIterator<Item = &'a str> + Clone) {
    match permanent().write() {
        Ok(mut g) => g.extend(secrets.clone()),
        Err(p) => p.into_inner().extend(secrets.clone()),
    }
    register_more(secrets);
}

fn with_permanent(masker: Masker) -> Masker {
    match permanent().read() {
        Ok(g) => masker.merge(&g),
        Err(p) => masker.merge(&p.into_inner()),
    }
}

/// Sets the process's secrets (called whenever pipelines are loaded), plus
/// the [permanent](register_permanent) ones.
pub fn register(masker: Masker) {
    let masker = Arc::new(with_permanent(masker));
    match registry().write() {
        Ok(mut g) => *g = masker,
        Err(p) => *p.into_inner() = masker,
    }
}

/// Adds secrets to the process's set.
pub fn register_more<'a>(secrets: impl IntoIterator<Item = &'a str>) {
    let mut guard = match registry().write() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    let mut next = (**guard).clone();
    next.extend(secrets);
    *guard = Arc::new(next);
}

/// The process's secrets: what events and log lines are masked with.
pub fn process() -> Arc<Masker> {
    registry()
        .read()
        .map(|g| g.clone())
        .unwrap_or_else(|p| p.into_inner().clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn masks_every_occurrence_longest_first() {
        let m = Masker::new(&["s3cret", "s3cret-longer", ""]);
        assert_eq!(
            m.mask("a s3cret b s3cret-longer c s3cre"),
            "a *** b *** c s3cre"
        );
        assert_eq!(Masker::new::<&str>(&[]).mask("x"), "x");
    }

    #[test]
    fn adjacent_secrets_make_one_mask() {
        let m = Masker::new(&["abcd"]);
        assert_eq!(m.mask("xabcdabcdy"), "x***y");
    }

    #[test]
    fn short_values_are_not_secrets() {
        let m = Masker::new(&["on", "abc", "abcd\n"]);
        assert_eq!(m.len(), 1);
        assert_eq!(m.mask("on abc abcd"), "on abc ***");
    }

    #[test]
    fn masks_json_strings_and_keys_without_breaking_the_json() {
        let m = Masker::new(&["hunter22", "quote\"d"]);
        let mut v = json!({
            "a": "x hunter22 y",
            "b": [1, "hunter22", {"hunter22": true}],
            "c": "with quote\"d inside",
            "n": 42
        });
        assert!(m.mask_json(&mut v));
        assert_eq!(
            v,
            json!({"a": "x *** y", "b": [1, "***", {"***": true}], "c": "with *** inside", "n": 42})
        );
        assert!(!m.mask_json(&mut v), "nothing left to mask");
    }

    #[test]
    fn permanent_secrets_survive_a_pipeline_reload() {
        register_permanent(["connection-password"]);
        assert_eq!(process().mask("connection-password"), "***");
        // What `register` installs when the pipelines are loaded again
        // (not installed here: other tests share the process's set).
        let reloaded = with_permanent(Masker::new(&["pipeline-secret"]));
        assert_eq!(
            reloaded.mask("connection-password pipeline-secret"),
            "*** ***"
        );
    }

    #[test]
    fn the_process_registry_grows() {
        // Other tests of this process register secrets too: add, never reset.
        register_more(["first-secret"]);
        register_more(["second-secret"]);
        assert_eq!(process().mask("first-secret second-secret"), "*** ***");
    }
}
