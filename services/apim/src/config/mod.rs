//! Reads apim-cli style API Manager configuration for one stage into a
//! [`DesiredState`].
//!
//! # Layout
//!
//! [`load_stage`] walks `repo_root/apis_dir` recursively in sorted order,
//! skipping hidden entries and not following symbolic links to directories.
//! In each directory:
//!
//! - `api-config.json` (or `.yaml` / `.yml`) is one API,
//! - `org-config.json` is one organization (or a list of them),
//! - `application-config.json` or `app-config.json` is one application (or
//!   a list of them).
//!
//! A directory may hold one of each kind; two files of one kind (say
//! `api-config.json` and `api-config.yaml`) are an error.
//!
//! The stage overlay of `<stem>.<ext>` is, in the same directory,
//! `<stem>.<stage>.<ext>`, `<stage>/<stem>.<ext>` or
//! `<stage>/<stem>.<stage>.<ext>` (any of the three extensions). apim-cli's
//! `Utils.getStageConfig` looks for the first and the third and silently
//! prefers the first; Gantry rejects more than one, naming them. Overlays
//! of lists of organizations or applications are rejected, as apim-cli's
//! `JSONOrgAdapter` and `JSONConfigClientAppAdapter` do.
//!
//! A subdirectory of a directory holding a config is that config's stage
//! overlay directory, and is not scanned for items, when it holds a file
//! named like one of the parent's configs (`api-config.json`,
//! `api-config.<dirname>.json`, ...). So `apis/petstore/prod/api-config.json`
//! below `apis/petstore/api-config.json` is the `prod` overlay whatever the
//! stage being loaded, while `apis/team/petstore/api-config.json` below
//! `apis/team/org-config.json` is an API of its own.
//!
//! Files the configs reference (`apiSpecification.resource`, `certFile`,
//! `markdownLocal`) are relative to the base config's directory, also when
//! the overlay names them (apim-cli resolves against
//! `apiConfigFile.getParent()`), and must stay inside the repository:
//! absolute paths, `..` above the root and symbolic links out of the
//! checkout are errors.
//!
//! # Merge semantics (verified in apim-cli's source)
//!
//! `APIImportConfigAdapter` reads the base file into its `DesiredAPI` bean,
//! then applies the stage file with Jackson's
//! `ObjectMapper.readerForUpdating(baseConfig)`; `JSONOrgAdapter` and
//! `JSONConfigClientAppAdapter` do the same with `Organization` and
//! `ClientApplication`. `readerForUpdating` updates the root bean only, and
//! none of these beans' properties is `@JsonMerge`, so:
//!
//! - a top-level key of the overlay replaces the base value as a whole;
//!   nested objects and lists are not merged (an overlay's
//!   `customProperties` or `securityProfiles` is the complete new value),
//! - keys the overlay leaves out keep the base value,
//! - an explicit `null` clears the key, except `securityProfiles`,
//!   `authenticationProfiles` and `applications`, which `API` annotates
//!   `@JsonSetter(nulls = Nulls.SKIP)`: there `null` keeps the base value.
//!
//! Gantry applies exactly this to the parsed JSON values.
//!
//! # `${VAR}` substitution
//!
//! apim-cli's `Utils.substituteVariables` runs commons-text's
//! `StringSubstitutor` over the raw file text, with the environment and then
//! the stage's properties, before parsing; unknown references stay as they
//! are. Gantry does the same over base and overlay, with the caller's
//! lookup ([`LoadOptions::vars`]), and differs in these points:
//!
//! - only `${NAME}` with `NAME` like an environment variable
//!   (`[A-Za-z_][A-Za-z0-9_]*`) is a reference; any other `${...}` (API
//!   Gateway selectors such as `${http.request.path}` or
//!   `${//oauth.token.client_id//}`, API Manager's `${env.X}`) stays as is;
//! - a reference without a value is an error naming the file, the variable
//!   and the line (JSON) or field (YAML), unless it has a default:
//!   `${NAME:-default}` (commons-text's syntax); `$${NAME}` is a literal
//!   `${NAME}` (its escape);
//! - JSON: in a JSON string, the value is escaped for the string (so `"`
//!   and `\` cannot break the document); outside strings (`"port": ${PORT}`)
//!   it is inserted as JSON text, as apim-cli does;
//! - YAML: the file is parsed first and the substitution runs inside each
//!   string (keys included), so values are always strings and never change
//!   the document's structure;
//! - values never appear in messages: a config value quoted in a message
//!   is hidden when it contains a substituted value, only the variable's
//!   name is shown.
//!
//! # API config keys
//!
//! Required: `name`, `path` (starting with `/`), `organization`, and the
//! specification: `apiSpecification.resource` (apim-cli's legacy in-file
//! `apiDefinition` string is taken when `apiSpecification` is absent; the
//! `-a` CLI argument has no equivalent). The specification is a file of the
//! checkout, whose content tells the kind (`swagger: "2.0"`, `openapi: 3.x`,
//! XML with a WSDL `definitions` root), or an `http(s)` URL that API Manager
//! fetches itself, accepted for WSDL only (`?wsdl`, `.wsdl`): for other
//! remote kinds, commit the file. `apiSpecification.filter` is an error:
//! ignoring it would expose what it excludes.
//!
//! Lifted into typed fields (`api::TYPED_KEYS`): `name`, `path`,
//! `version`, `state` (`unpublished` by default, `published`, `deprecated`;
//! apim-cli's `deleted` and `pending` are errors), `vhost`, `apiRoutingKey`
//! (empty counts as absent), `organization`, `backendBasepath`,
//! `apiSpecification`, `clientOrganizations` (names; `ALL` kept as is),
//! `applications` (`{ "name": ... }` only: apim-cli's `apiKey`,
//! `oauthClientId` and `extClientId` identify applications by credential and
//! are errors), `clientOrgsMode` / `clientAppsMode` (`add`, `replace`,
//! `ignore`; apim-cli takes them as CLI flags, Gantry from the config;
//! `ignore` drops the configured grants).
//!
//! Converted: `descriptionType: markdownLocal` reads the `markdownLocal`
//! files (and `ORIGINAL`, the specification's description) into
//! `descriptionManual` with `descriptionType: manual`, as apim-cli does; the
//! field the other description types need must be present. An `ssl`
//! authentication profile's `parameters.certFile` is read into
//! `parameters.pfx` (base64), as apim-cli does. `caCerts` entries with a
//! `certBlob` pass; those with only a `certFile` need API Manager's
//! certificate parsing and are dropped with a warning.
//!
//! Ignored with a warning (`api::IGNORED_KEYS`): `image`, `apiMethods`,
//! `applicationQuota`, `systemQuota`, `remoteHost`, `retirementDate`,
//! `deprecated`, and the ids API Manager assigns.
//!
//! Everything else passes into [`DesiredApi::proxy_fields`] as is: apim-cli's
//! proxy fields carry API Manager's own names (`summary`, `descriptionType`,
//! `descriptionManual`, `descriptionMarkdown`, `descriptionUrl`, `tags`,
//! `customProperties`, `securityProfiles`, `authenticationProfiles`,
//! `inboundProfiles`, `outboundProfiles` (policies by name), `corsProfiles`,
//! `serviceProfiles`, `caCerts`). Gantry adds none of apim-cli's implicit
//! defaults (pass-through security profile, default CORS profile, ...).
//!
//! # Organization and application configs
//!
//! Organizations need `name`; applications `name` and `organization`. Other
//! keys go into `fields` as is, except, with a warning: an organization's
//! `image` and `apis`; an application's credentials (`credentials`,
//! `apiKey`, `oauthClientId`, `extClientId`: Gantry leaves them untouched),
//! `image`, `appQuota` / `quota`, `apis`, `permissions`, `appScopes`; and
//! the ids API Manager assigns.
//!
//! Two APIs with the same `path`, `vhost` and `apiRoutingKey`, two
//! organizations or two applications with the same name are errors naming
//! both files. All problems are collected into [`ConfigErrors`].

mod api;
pub(crate) use api::TYPED_KEYS;
mod files;
mod party;
mod spec;
mod vars;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use files::{Kind, Repo};

use crate::desired::{DesiredApi, DesiredState};

/// How to read one stage.
pub struct LoadOptions<'a> {
    /// Stage name, e.g. "test", selects overlays.
    pub stage: &'a str,
    /// ${VAR} lookup: the stage's values first, then the process
    /// environment. Provided by the caller.
    pub vars: &'a dyn Fn(&str) -> Option<String>,
}

/// One problem in the configuration. Never holds a substituted value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {}{}", .file.display(), field_prefix(.field), .message)]
pub struct ConfigError {
    /// The file, relative to the repository root.
    pub file: PathBuf,
    /// The field, JSON-pointer-ish: `apiSpecification.resource`,
    /// `clientOrganizations[1]`.
    pub field: Option<String>,
    pub message: String,
}

fn field_prefix(field: &Option<String>) -> String {
    field
        .as_ref()
        .map(|field| format!("field `{field}`: "))
        .unwrap_or_default()
}

/// Every problem found in one stage's configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render_errors(.errors))]
pub struct ConfigErrors {
    pub errors: Vec<ConfigError>,
}

fn render_errors(errors: &[ConfigError]) -> String {
    let count = match errors.len() {
        1 => "1 problem".to_owned(),
        n => format!("{n} problems"),
    };
    let mut text = format!("{count} in the API Manager configuration:");
    for error in errors {
        text.push_str("\n  ");
        text.push_str(&error.to_string());
    }
    text
}

/// Collects errors and warnings while reading.
#[derive(Debug, Default)]
struct Sink {
    errors: Vec<ConfigError>,
    warnings: Vec<String>,
}

impl Sink {
    fn error(&mut self, file: &Path, field: Option<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: file.to_owned(),
            field,
            message: message.into(),
        });
    }

    fn warn(&mut self, file: &Path, field: Option<String>, message: impl Into<String>) {
        let warning = ConfigError {
            file: file.to_owned(),
            field,
            message: message.into(),
        };
        self.warnings.push(warning.to_string());
    }
}

/// Reads the APIs, organizations and applications one stage should have.
///
/// `repo_root` is a checkout of the run's commit; `apis_dir` is the
/// pipeline's `apis.path` relative to it (e.g. "apis/").
pub fn load_stage(
    repo_root: &Path,
    apis_dir: &Path,
    options: &LoadOptions,
) -> Result<DesiredState, ConfigErrors> {
    let mut sink = Sink::default();
    let mut state = DesiredState::default();
    if let Some((repo, dir)) = open(repo_root, apis_dir, options.stage, &mut sink) {
        let mut found = Vec::new();
        files::discover(&repo, &dir, options.stage, &mut sink, &mut found);
        for config in &found {
            for item in files::load_items(&repo, config, options.vars, &mut sink) {
                match item.kind {
                    Kind::Api => state.apis.extend(api::desired_api(&repo, item, &mut sink)),
                    Kind::Org => state
                        .organizations
                        .extend(party::desired_organization(item, &mut sink)),
                    Kind::App => state
                        .applications
                        .extend(party::desired_application(item, &mut sink)),
                }
            }
        }
        duplicates(&state, &mut sink);
    }
    if sink.errors.is_empty() {
        state.warnings = sink.warnings;
        Ok(state)
    } else {
        Err(ConfigErrors {
            errors: sink.errors,
        })
    }
}

/// The checkout and `apis_dir` normalised, after checking the stage name.
fn open(
    repo_root: &Path,
    apis_dir: &Path,
    stage: &str,
    sink: &mut Sink,
) -> Option<(Repo, PathBuf)> {
    // The stage becomes part of file names.
    if stage.is_empty() || stage.starts_with('.') || stage.contains(['/', '\\']) {
        sink.error(
            apis_dir,
            None,
            format!(
                "stage name `{stage}` cannot name overlay files: use letters, digits, `-` or `_`"
            ),
        );
        return None;
    }
    let dir = match apis_dir.to_str() {
        Some("" | "." | "./") => PathBuf::new(),
        Some(text) => match files::resolve(Path::new(""), text) {
            Ok(dir) => dir,
            Err(message) => {
                sink.error(apis_dir, None, format!("the APIs directory {message}"));
                return None;
            }
        },
        None => {
            sink.error(apis_dir, None, "the APIs directory must be a UTF-8 path");
            return None;
        }
    };
    let repo = match Repo::open(repo_root) {
        Ok(repo) => repo,
        Err(e) => {
            sink.error(apis_dir, None, format!("cannot open the checkout: {e}"));
            return None;
        }
    };
    if !repo.is_dir(&dir) {
        sink.error(
            apis_dir,
            None,
            "the APIs directory does not exist in the commit",
        );
        return None;
    }
    Some((repo, dir))
}

fn duplicates(state: &DesiredState, sink: &mut Sink) {
    let mut apis: HashMap<(&str, Option<&str>, Option<&str>), &DesiredApi> = HashMap::new();
    for api in &state.apis {
        let key = (
            api.path.as_str(),
            api.vhost.as_deref(),
            api.api_routing_key.as_deref(),
        );
        match apis.get(&key) {
            Some(first) => sink.error(
                &api.source,
                Some("path".into()),
                format!(
                    "duplicate API: same path, vhost and apiRoutingKey as `{}`",
                    first.source.display()
                ),
            ),
            None => {
                apis.insert(key, api);
            }
        }
    }
    let orgs = state
        .organizations
        .iter()
        .map(|o| (o.name.as_str(), &o.source));
    unique_names("organization", orgs, sink);
    let apps = state
        .applications
        .iter()
        .map(|a| (a.name.as_str(), &a.source));
    unique_names("application", apps, sink);
}

fn unique_names<'a>(
    what: &str,
    items: impl Iterator<Item = (&'a str, &'a PathBuf)>,
    sink: &mut Sink,
) {
    let mut seen: HashMap<&str, &PathBuf> = HashMap::new();
    for (name, source) in items {
        match seen.get(name) {
            Some(first) => sink.error(
                source,
                Some("name".into()),
                format!("duplicate {what}: same name as `{}`", first.display()),
            ),
            None => {
                seen.insert(name, source);
            }
        }
    }
}
