//! A stage's declared variables, resolved (DESIGN.md 1.7).
//!
//! The configuration repository is written by anyone who can push to it, so
//! its content must never reach Gantry's own environment or files. What it
//! may use is exactly what the pipeline file (trusted, written by the
//! platform team) declares under `stages[].env`: literals, and secret
//! references that Gantry reads on its side. Everything that resolves a name
//! for repository content (values files, `{{ env }}`, apim `${NAME}`) takes
//! a [`StageEnv`], never the process environment.

use std::collections::BTreeMap;

use super::model::Stage;
use super::secret::{EnvValue, Secret, SecretError, SecretRef};

/// The resolved `env` of one stage.
#[derive(Clone, Default)]
pub struct StageEnv {
    stage: String,
    vars: BTreeMap<String, Var>,
}

#[derive(Clone)]
struct Var {
    value: Secret,
    secret: bool,
}

/// A declared secret that could not be read. Names the field and the
/// reference, never a value.
#[derive(Debug, thiserror::Error)]
#[error("stages[{stage}].env.{name} ({reference}): {source}")]
pub struct StageEnvError {
    pub stage: String,
    pub name: String,
    pub reference: SecretRef,
    #[source]
    pub source: SecretError,
}

impl StageEnv {
    /// Reads every secret the stage declares. The first one that cannot be
    /// read is the error: a stage with a missing secret must not half-run.
    pub fn resolve(stage: &Stage) -> Result<StageEnv, StageEnvError> {
        let mut vars = BTreeMap::new();
        for (name, value) in &stage.env {
            let var = match value {
                EnvValue::Literal(v) => Var {
                    value: Secret::new(v.clone()),
                    secret: false,
                },
                EnvValue::Secret(r) => Var {
                    value: r.resolve().map_err(|source| StageEnvError {
                        stage: stage.name.clone(),
                        name: name.clone(),
                        reference: r.clone(),
                        source,
                    })?,
                    secret: true,
                },
            };
            vars.insert(name.clone(), var);
        }
        Ok(StageEnv {
            stage: stage.name.clone(),
            vars,
        })
    }

    /// An environment with these literal and secret values, for tests and
    /// tools that have no pipeline file.
    pub fn from_pairs<'a>(
        stage: &str,
        literals: impl IntoIterator<Item = (&'a str, &'a str)>,
        secrets: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> StageEnv {
        let mut vars = BTreeMap::new();
        for (secret, pairs) in [
            (false, literals.into_iter().collect::<Vec<_>>()),
            (true, secrets.into_iter().collect()),
        ] {
            for (k, v) in pairs {
                vars.insert(
                    k.to_owned(),
                    Var {
                        value: Secret::new(v),
                        secret,
                    },
                );
            }
        }
        StageEnv {
            stage: stage.to_owned(),
            vars,
        }
    }

    /// The stage these variables belong to.
    pub fn stage(&self) -> &str {
        &self.stage
    }

    /// The value of a declared variable.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(|v| v.value.expose())
    }

    /// Whether `name` was declared as a secret reference.
    pub fn is_secret(&self, name: &str) -> bool {
        self.vars.get(name).is_some_and(|v| v.secret)
    }

    /// Every `(name, value)`, for a deploy command's environment.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars
            .iter()
            .map(|(k, v)| (k.as_str(), v.value.expose()))
    }

    /// The values of the secret variables, for the masker.
    pub fn secret_values(&self) -> impl Iterator<Item = &str> {
        self.vars
            .values()
            .filter(|v| v.secret)
            .map(|v| v.value.expose())
    }

    /// The message for a name repository content used but the stage does not
    /// declare: it says where to declare it.
    pub fn undeclared(&self, name: &str) -> String {
        format!(
            "`{name}` is not declared for stage `{}`: declare it in the pipeline file under `stages[].env` \
             (`{name}: <literal>` or `{name}: env:GANTRY_SIDE_NAME`); repository content sees only declared variables",
            self.stage
        )
    }
}

impl std::fmt::Debug for StageEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut m = f.debug_map();
        for (k, v) in &self.vars {
            if v.secret {
                m.entry(k, &"***");
            } else {
                m.entry(k, &v.value.expose());
            }
        }
        m.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(yaml: &str) -> Stage {
        serde_saphyr::from_str(yaml).expect("stage parses")
    }

    #[test]
    fn resolves_literals_and_references_from_gantrys_side() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("tls.key");
        std::fs::write(&key, "KEYDATA\n").expect("write");
        let s = stage(&format!(
            "name: test\nenv:\n  HOST: orders.test.internal\n  TLS_KEY: file:{}\n  PATHY: env:PATH\n",
            key.display()
        ));
        let env = StageEnv::resolve(&s).expect("resolves");
        assert_eq!(env.get("HOST"), Some("orders.test.internal"));
        assert_eq!(env.get("TLS_KEY"), Some("KEYDATA"));
        assert!(env.is_secret("TLS_KEY") && !env.is_secret("HOST"));
        assert!(env.get("PATH").is_none(), "undeclared names are not read");
        let secrets: Vec<&str> = env.secret_values().collect();
        assert!(secrets.contains(&"KEYDATA") && !secrets.contains(&"orders.test.internal"));
        assert!(!format!("{env:?}").contains("KEYDATA"));
    }

    #[test]
    fn a_missing_secret_names_the_field_not_a_value() {
        let s = stage("name: prod\nenv:\n  DB: env:GANTRY_TEST_SURELY_UNSET_42\n");
        let err = StageEnv::resolve(&s).expect_err("unset");
        let msg = err.to_string();
        assert!(msg.contains("stages[prod].env.DB"), "{msg}");
        assert!(msg.contains("GANTRY_TEST_SURELY_UNSET_42"), "{msg}");
    }
}
