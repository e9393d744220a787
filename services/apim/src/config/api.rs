//! `api-config.json` (merged) → [`DesiredApi`].

use base64::Engine as _;
use serde_json::{Map, Value};

use super::files::{self, Item, Repo};
use super::spec::{self, Resolved};
use super::Sink;
use crate::desired::{ApiState, DesiredApi, GrantMode, SpecSource};

/// Keys lifted into typed fields of [`DesiredApi`] (`apiDefinition` is
/// apim-cli's legacy in-file spec reference, used when `apiSpecification`
/// is absent).
pub const TYPED_KEYS: &[&str] = &[
    "name",
    "path",
    "version",
    "state",
    "vhost",
    "apiRoutingKey",
    "organization",
    "backendBasepath",
    "apiSpecification",
    "apiDefinition",
    "clientOrganizations",
    "applications",
    "clientOrgsMode",
    "clientAppsMode",
];

/// Keys Gantry reads but does not promote, with the warning's reason.
pub const IGNORED_KEYS: &[(&str, &str)] = &[
    ("image", "API images are not promoted"),
    (
        "apiMethods",
        "method-level settings (summaries, descriptions, tags) are not promoted",
    ),
    ("applicationQuota", "API quotas are not promoted"),
    ("systemQuota", "API quotas are not promoted"),
    ("remoteHost", "remote hosts are not promoted"),
    ("remotehost", "remote hosts are not promoted"),
    ("retirementDate", "retirement dates are not promoted"),
    ("deprecated", "use `state: deprecated`"),
    ("id", "API Manager assigns it"),
    ("apiId", "API Manager assigns it"),
    ("createdOn", "API Manager assigns it"),
    ("createdBy", "API Manager assigns it"),
];

/// A problem was already reported to the sink.
struct Reported;

/// A string field; numbers are taken as text (as Jackson coerces them
/// into apim-cli's `String` properties), `null` as absent.
fn take_text(item: &mut Item, key: &str, sink: &mut Sink) -> Result<Option<String>, Reported> {
    match item.config.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(Value::Number(number)) => Ok(Some(number.to_string())),
        Some(_) => {
            item.error(sink, key, "must be a string");
            Err(Reported)
        }
    }
}

pub(super) fn required_text(item: &mut Item, key: &str, sink: &mut Sink) -> Option<String> {
    match take_text(item, key, sink) {
        Ok(Some(text)) if !text.trim().is_empty() => Some(text),
        Ok(_) => {
            item.error(sink, key, "is required");
            None
        }
        Err(Reported) => None,
    }
}

/// Optional string; empty counts as absent (apim-cli's `handleVhost`).
fn optional_text(item: &mut Item, key: &str, sink: &mut Sink) -> Result<Option<String>, Reported> {
    Ok(take_text(item, key, sink)?.filter(|text| !text.is_empty()))
}

pub(super) fn desired_api(repo: &Repo, mut item: Item, sink: &mut Sink) -> Option<DesiredApi> {
    let errors_before = sink.errors.len();

    let name = required_text(&mut item, "name", sink);
    let path = required_text(&mut item, "path", sink).filter(|path| {
        let ok = path.starts_with('/');
        if !ok {
            item.error(sink, "path", "must start with /");
        }
        ok
    });
    let version = take_text(&mut item, "version", sink);
    let state = state(&mut item, sink);
    let vhost = optional_text(&mut item, "vhost", sink);
    let api_routing_key = optional_text(&mut item, "apiRoutingKey", sink);
    let organization = required_text(&mut item, "organization", sink);
    let backend_basepath = optional_text(&mut item, "backendBasepath", sink);
    let resolved = specification(repo, &mut item, sink);
    let client_organizations = client_organizations(&mut item, sink);
    let applications = applications(&mut item, sink);
    let orgs_mode = grant_mode(&mut item, "clientOrgsMode", sink);
    let apps_mode = grant_mode(&mut item, "clientAppsMode", sink);

    debug_assert!(TYPED_KEYS.iter().all(|key| !item.config.contains_key(*key)));

    description(repo, &mut item, resolved.as_ref(), sink);
    client_certificates(repo, &mut item, sink);
    ca_certs(&mut item, sink);
    for (key, reason) in IGNORED_KEYS {
        if item.config.remove(*key).is_some() {
            item.warn(sink, key, format!("ignored: {reason}"));
        }
    }

    if sink.errors.len() > errors_before {
        return None;
    }
    let (
        Some(name),
        Some(path),
        Ok(version),
        Some(state),
        Ok(vhost),
        Ok(api_routing_key),
        Some(organization),
        Ok(backend_basepath),
        Some(resolved),
        Some(client_organizations),
        Some(applications),
        Some(orgs_mode),
        Some(apps_mode),
    ) = (
        name,
        path,
        version,
        state,
        vhost,
        api_routing_key,
        organization,
        backend_basepath,
        resolved,
        client_organizations,
        applications,
        orgs_mode,
        apps_mode,
    )
    else {
        return None;
    };
    let (client_organizations, client_orgs_mode) = orgs_mode.apply(client_organizations);
    let (applications, client_apps_mode) = apps_mode.apply(applications);
    Some(DesiredApi {
        source: item.base.clone(),
        name,
        path,
        version,
        state,
        vhost,
        api_routing_key,
        organization,
        backend_basepath,
        specification: resolved.spec,
        client_organizations,
        applications,
        client_orgs_mode,
        client_apps_mode,
        proxy_fields: std::mem::take(&mut item.config),
    })
}

fn state(item: &mut Item, sink: &mut Sink) -> Option<ApiState> {
    let text = take_text(item, "state", sink).ok()?;
    match text.as_deref() {
        None | Some("unpublished") => Some(ApiState::Unpublished),
        Some("published") => Some(ApiState::Published),
        Some("deprecated") => Some(ApiState::Deprecated),
        Some(other) => {
            let shown = item.secrets.show(other);
            item.error(
                sink,
                "state",
                format!(
                    "{shown} is not a state Gantry promotes: use unpublished, published or \
                     deprecated (apim-cli's `deleted` and `pending` are not supported)"
                ),
            );
            None
        }
    }
}

fn specification(repo: &Repo, item: &mut Item, sink: &mut Sink) -> Option<Resolved> {
    let legacy = item.config.remove("apiDefinition");
    let (resource, field) = match item.config.remove("apiSpecification") {
        Some(Value::Object(mut spec)) => {
            if spec.remove("filter").is_some_and(|f| !f.is_null()) {
                // Ignoring it would expose what the filter excludes.
                item.error(
                    sink,
                    "apiSpecification.filter",
                    "is not supported by Gantry: commit the filtered specification instead",
                );
            }
            let resource = spec.remove("resource");
            for key in spec.keys() {
                item.warn(
                    sink,
                    &format!("apiSpecification.{key}"),
                    "ignored: unknown field",
                );
            }
            match resource {
                Some(Value::String(resource)) if !resource.is_empty() => {
                    (resource, "apiSpecification.resource")
                }
                None | Some(Value::Null) | Some(Value::String(_)) => {
                    item.error(sink, "apiSpecification.resource", "is required");
                    return None;
                }
                Some(_) => {
                    item.error(sink, "apiSpecification.resource", "must be a string");
                    return None;
                }
            }
        }
        None | Some(Value::Null) => match legacy {
            Some(Value::String(resource)) if !resource.is_empty() => (resource, "apiDefinition"),
            _ => {
                item.error(
                    sink,
                    "apiSpecification.resource",
                    "is required: the API's specification, as a path relative to this file or a URL",
                );
                return None;
            }
        },
        Some(_) => {
            item.error(
                sink,
                "apiSpecification",
                "must be an object with `resource`",
            );
            return None;
        }
    };
    match spec::resolve(repo, &item.dir, &resource, &item.secrets) {
        Ok(resolved) => Some(resolved),
        Err(message) => {
            item.error(sink, field, message);
            None
        }
    }
}

/// A list of names; `{ "name": ... }` objects are taken too.
fn client_organizations(item: &mut Item, sink: &mut Sink) -> Option<Vec<String>> {
    let key = "clientOrganizations";
    let list = match item.config.remove(key) {
        None | Some(Value::Null) => return Some(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(_) => {
            item.error(
                sink,
                key,
                "must be a list of organization names (or [\"ALL\"])",
            );
            return None;
        }
    };
    let mut names = Vec::new();
    let mut ok = true;
    for (index, entry) in list.iter().enumerate() {
        let name = match entry {
            Value::String(name) => Some(name),
            Value::Object(org) => match org.get("name") {
                Some(Value::String(name)) => Some(name),
                _ => None,
            },
            _ => None,
        };
        match name {
            Some(name) if !name.is_empty() => names.push(name.clone()),
            _ => {
                item.error(
                    sink,
                    &format!("{key}[{index}]"),
                    "must be an organization name",
                );
                ok = false;
            }
        }
    }
    ok.then_some(names)
}

/// Application subscriptions, by name only: apim-cli's other identifiers
/// are credentials, which Gantry does not handle.
fn applications(item: &mut Item, sink: &mut Sink) -> Option<Vec<String>> {
    let key = "applications";
    let list = match item.config.remove(key) {
        None | Some(Value::Null) => return Some(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(_) => {
            item.error(
                sink,
                key,
                "must be a list of objects like { \"name\": \"App\" }",
            );
            return None;
        }
    };
    let mut names = Vec::new();
    let mut ok = true;
    for (index, entry) in list.iter().enumerate() {
        let field = format!("{key}[{index}]");
        match entry {
            Value::Object(app) => match app.get("name") {
                Some(Value::String(name)) if !name.is_empty() => names.push(name.clone()),
                _ => {
                    ok = false;
                    match ["apiKey", "oauthClientId", "extClientId"]
                        .into_iter()
                        .find(|k| app.contains_key(*k))
                    {
                        Some(credential) => item.error(
                            sink,
                            &format!("{field}.{credential}"),
                            "identifies the application by a credential: Gantry only supports `name`",
                        ),
                        None => item.error(sink, &field, "must have a `name`"),
                    }
                }
            },
            _ => {
                ok = false;
                item.error(sink, &field, "must be an object like { \"name\": \"App\" }");
            }
        }
    }
    ok.then_some(names)
}

/// apim-cli takes these as CLI flags (`-clientOrgsMode`, `-clientAppsMode`);
/// Gantry reads them from the config.
#[derive(Debug, Clone, Copy)]
enum Mode {
    Grant(GrantMode),
    /// apim-cli's `ignore`: the configured grants are not applied.
    Ignore,
}

impl Mode {
    fn apply(self, names: Vec<String>) -> (Vec<String>, GrantMode) {
        match self {
            Mode::Grant(mode) => (names, mode),
            Mode::Ignore => (Vec::new(), GrantMode::Add),
        }
    }
}

fn grant_mode(item: &mut Item, key: &str, sink: &mut Sink) -> Option<Mode> {
    let text = take_text(item, key, sink).ok()?;
    match text.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("add") => Some(Mode::Grant(GrantMode::Add)),
        Some("replace") => Some(Mode::Grant(GrantMode::Replace)),
        Some("ignore") => {
            item.warn(sink, key, "`ignore`: the configured grants are not applied");
            Some(Mode::Ignore)
        }
        Some(_) => {
            item.error(sink, key, "must be `add`, `replace` or `ignore`");
            None
        }
    }
}

/// apim-cli's `validateDescription`: the field a `descriptionType` needs
/// must be there; `markdownLocal` files are read into `descriptionManual`.
fn description(repo: &Repo, item: &mut Item, spec: Option<&Resolved>, sink: &mut Sink) {
    let kind = match item.config.get("descriptionType") {
        None | Some(Value::Null) => None,
        Some(Value::String(kind)) => Some(kind.clone()),
        Some(_) => {
            item.error(sink, "descriptionType", "must be a string");
            return;
        }
    };
    let needs = match kind.as_deref() {
        None | Some("original") => None,
        Some("manual") => Some("descriptionManual"),
        Some("url") => Some("descriptionUrl"),
        Some("markdown") => Some("descriptionMarkdown"),
        Some("markdownLocal") => {
            markdown_local(repo, item, spec, sink);
            return;
        }
        Some(other) => {
            let shown = item.secrets.show(other);
            item.error(
                sink,
                "descriptionType",
                format!("{shown} is unknown: use original, manual, url, markdown or markdownLocal"),
            );
            return;
        }
    };
    if let Some(needed) = needs {
        if item.config.get(needed).is_none_or(Value::is_null) {
            item.error(sink, needed, "is required by the descriptionType");
        }
    }
    if item.config.remove("markdownLocal").is_some() {
        item.warn(
            sink,
            "markdownLocal",
            "ignored: descriptionType is not markdownLocal",
        );
    }
}

fn markdown_local(repo: &Repo, item: &mut Item, spec: Option<&Resolved>, sink: &mut Sink) {
    let key = "markdownLocal";
    let names: Vec<String> = match item.config.remove(key) {
        Some(Value::String(name)) => vec![name],
        Some(Value::Array(list)) if list.iter().all(Value::is_string) => list
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        None | Some(Value::Null) => {
            item.error(sink, key, "is required by descriptionType markdownLocal");
            return;
        }
        Some(_) => {
            item.error(sink, key, "must be a file name or a list of file names");
            return;
        }
    };
    let mut parts = Vec::new();
    for (index, name) in names.iter().enumerate() {
        let field = format!("{key}[{index}]");
        if name == "ORIGINAL" {
            // The specification's own description.
            match spec.map(|s| (&s.spec.source, &s.description)) {
                Some((SpecSource::File { .. }, Some(description))) => {
                    parts.push(description.clone())
                }
                Some(_) => item.error(
                    sink,
                    &field,
                    "the specification has no description to include",
                ),
                None => {}
            }
            continue;
        }
        let shown = item.secrets.show(name);
        let read = files::resolve(&item.dir, name)
            .map_err(|m| format!("{shown}: {m}"))
            .and_then(|rel| repo.read(&rel).map_err(|e| e.message(&shown)))
            .and_then(|bytes| {
                String::from_utf8(bytes).map_err(|_| format!("{shown} is not UTF-8 text"))
            });
        match read {
            Ok(text) => parts.push(text),
            Err(message) => item.error(sink, &field, message),
        }
    }
    item.config
        .insert("descriptionType".into(), Value::String("manual".into()));
    item.config.insert(
        "descriptionManual".into(),
        Value::String(parts.join("\n\n")),
    );
}

/// apim-cli loads an outbound client certificate (`type: ssl`,
/// `parameters.certFile`) into `parameters.pfx`, base64-encoded; so does
/// Gantry, from the checkout.
fn client_certificates(repo: &Repo, item: &mut Item, sink: &mut Sink) {
    let key = "authenticationProfiles";
    let mut profiles = match item.config.remove(key) {
        Some(Value::Array(profiles)) => profiles,
        Some(other) => {
            item.config.insert(key.into(), other);
            return;
        }
        None => return,
    };
    for (index, profile) in profiles.iter_mut().enumerate() {
        let field = format!("{key}[{index}].parameters.certFile");
        let Some(parameters) = ssl_parameters(profile) else {
            continue;
        };
        let Some(cert_file) = parameters.remove("certFile") else {
            continue;
        };
        let Value::String(cert_file) = cert_file else {
            item.error(sink, &field, "must be a string");
            continue;
        };
        // apim-cli's deprecated `<keystore>:<type>` form.
        let name = cert_file.split(':').next().unwrap_or(&cert_file);
        let shown = item.secrets.show(name);
        let bytes = files::resolve(&item.dir, name)
            .map_err(|m| format!("{shown}: {m}"))
            .and_then(|rel| repo.read(&rel).map_err(|e| e.message(&shown)));
        match bytes {
            Ok(bytes) => {
                let pfx = base64::engine::general_purpose::STANDARD.encode(bytes);
                parameters.insert("pfx".into(), Value::String(pfx));
            }
            Err(message) => item.error(sink, &field, message),
        }
    }
    item.config.insert(key.into(), Value::Array(profiles));
}

fn ssl_parameters(profile: &mut Value) -> Option<&mut Map<String, Value>> {
    let profile = profile.as_object_mut()?;
    if profile.get("type").and_then(Value::as_str) != Some("ssl") {
        return None;
    }
    profile.get_mut("parameters")?.as_object_mut()
}

/// `caCerts` entries that carry the certificate (`certBlob`, as API Manager
/// exports them) pass; apim-cli's `certFile` entries need API Manager's
/// certificate parsing, which Gantry does not do: they are dropped.
fn ca_certs(item: &mut Item, sink: &mut Sink) {
    let key = "caCerts";
    let certs = match item.config.remove(key) {
        Some(Value::Array(certs)) => certs,
        Some(other) => {
            item.config.insert(key.into(), other);
            return;
        }
        None => return,
    };
    let mut kept = Vec::new();
    for (index, cert) in certs.into_iter().enumerate() {
        if cert.get("certBlob").is_some_and(Value::is_string) {
            kept.push(cert);
        } else {
            item.warn(
                sink,
                &format!("{key}[{index}]"),
                "ignored: certificates are promoted only with `certBlob`, not from `certFile`",
            );
        }
    }
    if !kept.is_empty() {
        item.config.insert(key.into(), Value::Array(kept));
    }
}
