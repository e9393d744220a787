//! Reading API Manager and deciding what to change (no writes).

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Map, Value};

use super::access::{self, AccessReader, AccessSnapshot, Directory, GrantDelta, GrantInput};
use super::compare::{
    field_covers, is_policy_key, merge, merge_field, same_specification, simple_policy_key,
};
use super::rules::{self, Lifecycle, ORGANIZATION, SPECIFICATION, STATE};
use super::{
    desired_api_target, ApiAction, ApiStep, BreakingChange, EntityAction, EntityStep, Error,
    GrantPreview, Plan, ReconcileOptions,
};
use crate::client::{ApiManagerClient, ObjectExt};
use crate::desired::{ApiState, DesiredApi, DesiredState, GrantMode, SpecSource};

/// Proxy keys API Manager manages; never compared nor put.
pub(super) const SERVER_MANAGED: &[&str] = &[
    "id",
    "apiId",
    "organizationId",
    "state",
    "deprecated",
    "retired",
    "expired",
    "retirementDate",
    "createdOn",
    "createdBy",
];

// Config keys `DesiredApi` carries as typed fields (the loader removes them
// from `proxy_fields`; skipped should they appear anyway).
use crate::config::TYPED_KEYS;

/// Config keys that are not proxy fields and are not promoted.
const NOT_PROMOTED: &[&str] = &[
    "image",
    "applicationQuota",
    "systemQuota",
    "apiMethods",
    "remoteHost",
    "remotehost",
    "markdownLocal",
];

/// Organization keys API Manager manages.
const ORG_MANAGED: &[&str] = &["id", "name", "dn", "createdOn", "image"];
/// Application keys API Manager manages or Gantry does not promote.
const APP_MANAGED: &[&str] = &[
    "id",
    "name",
    "organization",
    "organizationId",
    "createdBy",
    "createdOn",
    "managedBy",
    "image",
];

/// The policy type (`GET /policies?type=`) of an outbound profile key.
fn policy_type(key: &str) -> &'static str {
    match key {
        "requestPolicy" => "request",
        "responsePolicy" => "response",
        "routePolicy" => "routing",
        _ => "faulthandler",
    }
}

struct Planner<'a> {
    client: &'a ApiManagerClient,
    options: &'a ReconcileOptions,
    /// API Manager's organizations and applications plus placeholders.
    dir: Directory,
    reader: AccessReader,
    problems: Vec<String>,
    warnings: Vec<String>,
    /// Policy name → key per type; `None`: API Manager does not list them.
    policies: HashMap<&'static str, Option<BTreeMap<String, String>>>,
}

pub(super) async fn plan(
    client: &ApiManagerClient,
    desired: &DesiredState,
    options: &ReconcileOptions,
) -> Result<Plan, Error> {
    let user = client.user().await.map_err(Error::Read)?;
    let mut warnings = Vec::new();
    if let Some(role) = user.role.as_deref().filter(|r| *r != "admin") {
        warnings.push(format!(
            "user {} has role {role:?}: publishing and granting need an API Manager administrator",
            client.username()
        ));
    }
    let orgs = client.organizations().await.map_err(Error::Read)?;
    let apps = client.applications().await.map_err(Error::Read)?;
    let actual_dir = Directory { orgs, apps };
    let mut p = Planner {
        client,
        options,
        dir: actual_dir.clone(),
        reader: AccessReader::default(),
        problems: Vec::new(),
        warnings,
        policies: HashMap::new(),
    };

    let organizations = p.plan_orgs(desired);
    let applications = p.plan_apps(desired);
    p.check_duplicate_apis(desired);
    let mut apis = Vec::new();
    let mut refused = Vec::new();
    for (index, api) in desired.apis.iter().enumerate() {
        let step = p.plan_api(index, api).await?;
        if step.action == ApiAction::Refused {
            refused.push(BreakingChange {
                target: step.target(),
                fields: step.breaking_fields.clone(),
            });
        }
        apis.push(step);
    }
    if !p.problems.is_empty() {
        return Err(Error::Invalid(p.problems));
    }
    Ok(Plan {
        options: options.clone(),
        organizations,
        applications,
        apis,
        refused,
        warnings: p.warnings,
        directory: actual_dir,
    })
}

impl Planner<'_> {
    fn plan_orgs(&mut self, desired: &DesiredState) -> Vec<EntityStep> {
        let mut steps = Vec::new();
        let mut seen: Vec<&str> = Vec::new();
        for org in &desired.organizations {
            if seen.contains(&org.name.as_str()) {
                self.problems
                    .push(format!("organization {:?} is configured twice", org.name));
                continue;
            }
            seen.push(&org.name);
            let fields = filtered(&org.fields, ORG_MANAGED);
            let step = match self.dir.org(&org.name) {
                None => {
                    let mut body = Map::new();
                    body.insert("name".to_owned(), json!(org.name));
                    body.extend(fields.clone());
                    self.dir.orgs.push(json!({"name": org.name}));
                    EntityStep {
                        name: org.name.clone(),
                        action: EntityAction::Create,
                        fields: fields.keys().cloned().collect(),
                        body: Value::Object(body),
                        current: None,
                        organization: None,
                    }
                }
                Some(actual) => entity_update(&org.name, actual, &fields, None),
            };
            steps.push(step);
        }
        steps
    }

    fn plan_apps(&mut self, desired: &DesiredState) -> Vec<EntityStep> {
        let mut steps = Vec::new();
        let mut seen: Vec<(&str, &str)> = Vec::new();
        for app in &desired.applications {
            let key = (app.name.as_str(), app.organization.as_str());
            if seen.contains(&key) {
                self.problems
                    .push(format!("application {:?} is configured twice", app.name));
                continue;
            }
            seen.push(key);
            if !self.dir.has_org(&app.organization) {
                self.problems.push(format!(
                    "application {:?}: organization {:?} exists neither in API Manager nor in the configuration",
                    app.name, app.organization
                ));
                continue;
            }
            let fields = filtered(&app.fields, APP_MANAGED);
            let existing: Vec<Value> = self
                .dir
                .apps
                .iter()
                .filter(|a| a.name() == Some(app.name.as_str()))
                .cloned()
                .collect();
            let in_org = existing
                .iter()
                .find(|a| self.dir.app_org_name(a).as_deref() == Some(app.organization.as_str()));
            let step = match in_org {
                Some(actual) => entity_update(&app.name, actual, &fields, Some(&app.organization)),
                None if !existing.is_empty() => {
                    let other = self
                        .dir
                        .app_org_name(&existing[0])
                        .unwrap_or_else(|| "?".to_owned());
                    self.problems.push(format!(
                        "application {:?} exists in organization {other:?}, the configuration puts it in {:?}: API Manager does not move applications",
                        app.name, app.organization
                    ));
                    continue;
                }
                None => {
                    let mut body = Map::new();
                    body.insert("name".to_owned(), json!(app.name));
                    body.extend(fields.clone());
                    self.dir
                        .apps
                        .push(json!({"name": app.name, "organization": app.organization}));
                    EntityStep {
                        name: app.name.clone(),
                        action: EntityAction::Create,
                        fields: fields.keys().cloned().collect(),
                        body: Value::Object(body),
                        current: None,
                        organization: Some(app.organization.clone()),
                    }
                }
            };
            steps.push(step);
        }
        steps
    }

    fn check_duplicate_apis(&mut self, desired: &DesiredState) {
        let mut seen: Vec<(&str, Option<&str>, Option<&str>)> = Vec::new();
        for api in &desired.apis {
            let key = (
                api.path.as_str(),
                api.vhost.as_deref(),
                api.api_routing_key.as_deref(),
            );
            if seen.contains(&key) {
                self.problems.push(format!(
                    "{} is configured twice (same path, vhost and apiRoutingKey)",
                    desired_api_target(api)
                ));
            }
            seen.push(key);
        }
    }

    async fn plan_api(&mut self, index: usize, api: &DesiredApi) -> Result<ApiStep, Error> {
        let target = desired_api_target(api);
        if !self.dir.has_org(&api.organization) {
            self.problems.push(format!(
                "{target}: organization {:?} exists neither in API Manager nor in the configuration",
                api.organization
            ));
        }
        let desired_fields = self.desired_fields(api).await?;
        let candidates = self
            .client
            .proxies_by_path(&api.path)
            .await
            .map_err(Error::Read)?;
        let actual = self.pick(api, candidates);

        let mut step = ApiStep {
            name: api.name.clone(),
            path: api.path.clone(),
            action: ApiAction::Unchanged,
            fields: Vec::new(),
            breaking_fields: Vec::new(),
            current_state: None,
            state_ops: Vec::new(),
            grants: GrantPreview::default(),
            index,
            actual: actual.clone(),
            desired_fields: desired_fields.clone(),
        };

        let Some(actual) = actual else {
            step.action = ApiAction::Create;
            step.fields = desired_fields
                .keys()
                .filter(|k| *k != "path")
                .cloned()
                .collect();
            step.state_ops = rules::transition(Lifecycle::Unpublished, api.state);
            step.grants = self.preview_grants(api, None, None).await?;
            return Ok(step);
        };

        let lifecycle = match (actual.state(), actual.is_deprecated()) {
            (Some("published"), true) => Lifecycle::Deprecated,
            (Some("published"), false) => Lifecycle::Published,
            (Some("unpublished"), _) => Lifecycle::Unpublished,
            (Some("pending"), _) => {
                self.problems.push(format!(
                    "{target} is pending approval in API Manager: approve or reject it first"
                ));
                Lifecycle::Pending
            }
            (other, _) => {
                self.problems.push(format!(
                    "{target}: API Manager reports the unknown state {:?}",
                    other.unwrap_or("none")
                ));
                Lifecycle::Pending
            }
        };
        step.current_state = Some(lifecycle);

        // Changed fields.
        let mut changed: Vec<String> = Vec::new();
        for (field, value) in &desired_fields {
            if field == "path" {
                continue;
            }
            let current = actual.get(field).unwrap_or(&Value::Null);
            if !field_covers(field, current, value) {
                changed.push(field.clone());
            }
        }
        if self.specification_changed(api, &actual).await? {
            changed.push(SPECIFICATION.to_owned());
        }
        if let Some(current_org) = actual.organization_id() {
            if self.dir.org_id(&api.organization).as_deref() != Some(current_org) {
                changed.push(ORGANIZATION.to_owned());
            }
        }
        let ops = rules::transition(lifecycle, api.state);

        // Breaking?
        let mut breaking: Vec<String> = Vec::new();
        if lifecycle.has_consumers() {
            breaking.extend(changed.iter().filter(|f| rules::rule(f).breaking).cloned());
            if ops.contains(&rules::StateOp::Unpublish) {
                breaking.push(STATE.to_owned());
            }
        }
        step.fields = changed.clone();
        step.breaking_fields = breaking.clone();
        step.state_ops = ops.clone();
        if !breaking.is_empty() && !self.options.allow_breaking {
            step.action = ApiAction::Refused;
            return Ok(step);
        }

        let write_state = if api.state == ApiState::Unpublished {
            Lifecycle::Unpublished
        } else {
            lifecycle
        };
        step.action = if changed.is_empty() {
            if ops.is_empty() {
                ApiAction::Unchanged
            } else {
                ApiAction::StateChange
            }
        } else if changed
            .iter()
            .all(|f| rules::rule(f).writable_in(write_state))
        {
            ApiAction::Update
        } else if changed.iter().any(|f| rules::rule(f).recreate) {
            ApiAction::Recreate
        } else {
            ApiAction::Republish
        };

        let id = actual.id().map(str::to_owned);
        step.grants = match step.action {
            ApiAction::Republish => {
                let prior = self.prior_access(api, id.as_deref()).await?;
                self.preview_grants(api, id.as_deref(), prior.as_ref())
                    .await?
            }
            ApiAction::Recreate => {
                let prior = self.prior_access(api, id.as_deref()).await?;
                self.preview_grants(api, None, prior.as_ref()).await?
            }
            _ => self.preview_grants(api, id.as_deref(), None).await?,
        };
        Ok(step)
    }

    /// The config's proxy fields in API Manager's form.
    async fn desired_fields(&mut self, api: &DesiredApi) -> Result<Map<String, Value>, Error> {
        let target = desired_api_target(api);
        let mut fields = Map::new();
        fields.insert("name".to_owned(), json!(api.name));
        fields.insert("path".to_owned(), json!(api.path));
        if let Some(v) = &api.version {
            fields.insert("version".to_owned(), json!(v));
        }
        if let Some(v) = &api.vhost {
            fields.insert("vhost".to_owned(), json!(v));
        }
        if let Some(v) = &api.api_routing_key {
            fields.insert("apiRoutingKey".to_owned(), json!(v));
        }
        for (key, value) in &api.proxy_fields {
            if SERVER_MANAGED.contains(&key.as_str()) || TYPED_KEYS.contains(&key.as_str()) {
                continue;
            }
            if NOT_PROMOTED.contains(&key.as_str()) {
                self.warnings
                    .push(format!("{target}: {key} is not promoted (ignored)"));
                continue;
            }
            fields.insert(key.clone(), value.clone());
        }
        if let Some(base) = &api.backend_basepath {
            let desired = json!({"_default": {"basePath": base}});
            merge_field(&mut fields, "serviceProfiles", &desired);
        }
        for key in ["inboundProfiles", "outboundProfiles"] {
            if let Some(Value::Object(profiles)) = fields.get(key) {
                let methods: Vec<&String> = profiles.keys().filter(|k| *k != "_default").collect();
                if !methods.is_empty() {
                    self.problems.push(format!(
                        "{target}: method-level {key} ({}) are not supported: only `_default`",
                        methods
                            .iter()
                            .map(|m| m.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
            }
        }
        // Policy names → API Manager's policy keys.
        let mut names: Vec<(String, String, String)> = Vec::new();
        if let Some(Value::Object(profiles)) = fields.get("outboundProfiles") {
            for (profile, body) in profiles {
                if let Value::Object(body) = body {
                    for (key, value) in body {
                        if let Value::String(name) = value {
                            if is_policy_key(key) && !name.trim_start().starts_with("<key") {
                                names.push((profile.clone(), key.clone(), name.clone()));
                            }
                        }
                    }
                }
            }
        }
        for (profile, key, name) in names {
            let resolved = self.policy_key(&target, &key, &name).await?;
            if let Some(slot) = fields
                .get_mut("outboundProfiles")
                .and_then(|p| p.get_mut(&profile))
                .and_then(|p| p.get_mut(&key))
            {
                *slot = json!(resolved);
            }
        }
        Ok(fields)
    }

    async fn policy_key(&mut self, target: &str, key: &str, name: &str) -> Result<String, Error> {
        let kind = policy_type(key);
        if !self.policies.contains_key(kind) {
            let listed = match self.client.policies(kind).await {
                Ok(list) => Some(
                    list.iter()
                        .filter_map(|p| Some((p.name()?.to_owned(), p.id()?.to_owned())))
                        .collect::<BTreeMap<_, _>>(),
                ),
                Err(e) if matches!(e.status(), Some(404 | 405 | 501)) => {
                    self.warnings.push(format!(
                        "API Manager does not list {kind} policies: policy names are written as top-level filter circuits"
                    ));
                    None
                }
                Err(e) => return Err(Error::Read(e)),
            };
            self.policies.insert(kind, listed);
        }
        match self.policies.get(kind).and_then(Option::as_ref) {
            Some(listed) => match listed.get(name) {
                Some(k) => Ok(k.clone()),
                None => {
                    self.problems.push(format!(
                        "{target}: outboundProfiles {key} {name:?} is not a {kind} policy API Manager knows"
                    ));
                    Ok(simple_policy_key(name))
                }
            },
            None => Ok(simple_policy_key(name)),
        }
    }

    /// Picks the proxy that is this API among those on its path.
    fn pick(&mut self, api: &DesiredApi, candidates: Vec<Value>) -> Option<Value> {
        let mut found: Vec<Value> = candidates
            .into_iter()
            .filter(|p| !p.is_retired())
            .filter(|p| api.vhost.is_none() || p.vhost() == api.vhost.as_deref())
            .filter(|p| {
                api.api_routing_key.is_none()
                    || p.api_routing_key() == api.api_routing_key.as_deref()
            })
            .collect();
        if found.len() > 1 {
            let want_deprecated = api.state == ApiState::Deprecated;
            found.sort_by_key(|p| {
                let exact = p.vhost() == api.vhost.as_deref()
                    && p.api_routing_key() == api.api_routing_key.as_deref();
                let version =
                    api.version.is_some() && p.str_field("version") == api.version.as_deref();
                let name = p.name() == Some(api.name.as_str());
                let deprecation = p.is_deprecated() == want_deprecated;
                std::cmp::Reverse((exact, version, name, deprecation, p.created_on()))
            });
            self.warnings.push(format!(
                "{}: {} proxies match path {}; using {}",
                desired_api_target(api),
                found.len(),
                api.path,
                found[0].id().unwrap_or("?")
            ));
        }
        found.into_iter().next()
    }

    async fn specification_changed(
        &mut self,
        api: &DesiredApi,
        actual: &Value,
    ) -> Result<bool, Error> {
        let target = desired_api_target(api);
        let SpecSource::File { content, .. } = &api.specification.source else {
            self.warnings.push(format!(
                "{target}: a specification API Manager fetches from a URL is not compared"
            ));
            return Ok(false);
        };
        let Some(backend) = actual.api_id() else {
            self.warnings.push(format!(
                "{target}: the proxy names no backend API; the specification is not compared"
            ));
            return Ok(false);
        };
        match self
            .client
            .download_backend_spec(backend)
            .await
            .map_err(Error::Read)?
        {
            Some(original) => Ok(!same_specification(content, &original)),
            None => {
                self.warnings.push(format!(
                    "{target}: API Manager serves no original specification; it is not compared"
                ));
                Ok(false)
            }
        }
    }

    /// Who has access now, when add mode keeps it across a re-publish or
    /// re-creation.
    async fn prior_access(
        &mut self,
        api: &DesiredApi,
        proxy_id: Option<&str>,
    ) -> Result<Option<AccessSnapshot>, Error> {
        let keep = api.client_orgs_mode == GrantMode::Add || api.client_apps_mode == GrantMode::Add;
        match proxy_id {
            Some(id) if keep => access::snapshot(self.client, &self.dir, &mut self.reader, id)
                .await
                .map(Some)
                .map_err(Error::Read),
            _ => Ok(None),
        }
    }

    async fn preview_grants(
        &mut self,
        api: &DesiredApi,
        proxy_id: Option<&str>,
        prior: Option<&AccessSnapshot>,
    ) -> Result<GrantPreview, Error> {
        let delta = access::grant_delta(
            self.client,
            &self.dir,
            &mut self.reader,
            GrantInput {
                api,
                proxy_id,
                final_state: api.state,
                prior,
            },
        )
        .await
        .map_err(Error::Read)?;
        Ok(self.preview(delta))
    }

    fn preview(&mut self, delta: GrantDelta) -> GrantPreview {
        self.problems.extend(delta.problems);
        self.warnings.extend(delta.warnings);
        GrantPreview {
            grant_orgs: delta.grant,
            revoke_orgs: delta.revoke.into_iter().map(|(name, _, _)| name).collect(),
            subscribe_apps: delta.subscribe.into_iter().map(|a| a.name).collect(),
            unsubscribe_apps: delta.unsubscribe.into_iter().map(|(a, _)| a.name).collect(),
        }
    }
}

fn filtered(fields: &Map<String, Value>, skip: &[&str]) -> Map<String, Value> {
    fields
        .iter()
        .filter(|(k, _)| !skip.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Update (or leave) an existing organization or application.
fn entity_update(
    name: &str,
    actual: &Value,
    fields: &Map<String, Value>,
    organization: Option<&str>,
) -> EntityStep {
    let changed: Vec<String> = fields
        .iter()
        .filter(|(k, v)| !field_covers(k, actual.get(k.as_str()).unwrap_or(&Value::Null), v))
        .map(|(k, _)| k.clone())
        .collect();
    let mut body = actual.clone();
    if let Value::Object(obj) = &mut body {
        for k in &changed {
            merge_field(obj, k, &fields[k.as_str()]);
        }
    } else {
        merge(&mut body, &Value::Object(fields.clone()));
    }
    EntityStep {
        name: name.to_owned(),
        action: if changed.is_empty() {
            EntityAction::Unchanged
        } else {
            EntityAction::Update
        },
        fields: changed,
        body,
        current: Some(actual.clone()),
        organization: organization.map(str::to_owned),
    }
}
