//! NATS subjects: `<prefix>.events.<pipeline>.<name>` (DESIGN.md 1.3).

use crate::EventName;

/// Builds subjects and filters for one installation's prefix (`GANTRY_NATS_PREFIX`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Default for Subjects {
    fn default() -> Self {
        Self::new("gantry")
    }
}

impl Subjects {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The subject an event of `pipeline` is published on. Characters NATS
    /// treats specially never reach it: pipeline names are `[a-z0-9-]`, and
    /// anything else is replaced by `_`.
    pub fn event(&self, pipeline: &str, name: &str) -> String {
        format!("{}.events.{}.{}", self.prefix, token(pipeline), name)
    }

    /// Every event of every pipeline: what the JetStream stream captures.
    pub fn all(&self) -> String {
        format!("{}.events.>", self.prefix)
    }

    /// The subject a CDEvent of type `ty` (`dev.cdevents.service.deployed.0.3.0`)
    /// is published on: `<prefix>.cdevents.<ty>` (DESIGN.md 1.9).
    pub fn cdevent(&self, ty: &str) -> String {
        format!("{}.cdevents.{ty}", self.prefix)
    }

    /// Every CDEvent: what the CDEvents stream captures.
    pub fn cdevents_all(&self) -> String {
        format!("{}.cdevents.>", self.prefix)
    }

    /// One event name across all pipelines, for a consumer's filter.
    pub fn filter(&self, name: EventName) -> String {
        format!("{}.events.*.{}", self.prefix, name.as_str())
    }
}

fn token(s: &str) -> String {
    if s.is_empty() {
        return "_".to_owned();
    }
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_follow_the_contract() {
        let s = Subjects::default();
        assert_eq!(
            s.event("banking", "package.built"),
            "gantry.events.banking.package.built"
        );
        assert_eq!(s.all(), "gantry.events.>");
        assert_eq!(
            s.filter(EventName::RunStarted),
            "gantry.events.*.run.started"
        );
        let t = Subjects::new("t42");
        assert_eq!(
            t.event("a.b*", "run.started"),
            "t42.events.a_b_.run.started"
        );
    }
}
