//! Organizations, applications and who has access to which API: reading it
//! and computing the grants to add and remove.
//!
//! Rules, from apim-cli's `ManageClientOrgs` and `ManageClientApps`
//! (module `apis`) and `APIManagerAPIAccessAdapter`:
//! - an API's owning organization always has access: it is never granted
//!   nor revoked;
//! - organizations are granted only to APIs that end up published or
//!   deprecated (`ManageClientOrgs` returns early for unpublished ones);
//!   `ALL` grants every organization (`action=all_orgs`);
//! - add mode grants the missing ones; replace mode also revokes the
//!   organizations not listed (never the owner; nothing with `ALL`);
//! - an application can subscribe when its organization owns the API or has
//!   been granted it (`hasClientAppPermission`); apim-cli logs and skips the
//!   others. Gantry fails the plan instead when the API ends up published
//!   (the config is inconsistent: add the organization to
//!   `clientOrganizations`), and skips with a warning when it stays
//!   unpublished;
//! - when an API is re-published or re-created in add mode, the
//!   organizations and applications that had access before keep it
//!   (`RepublishToUpdateAPI` merges them into the desired lists; API Manager
//!   drops access on unpublish).
//!
//! Who has access is read per organization (`GET /organizations/{id}/apis`)
//! and per application (`GET /applications/{id}/apis`), as apim-cli does,
//! and cached until a write changes it.

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;

use crate::client::{ApiAccess, ApiManagerClient, Error as ClientError, ObjectExt};
use crate::desired::{ApiState, DesiredApi, GrantMode};

/// The name that stands for every organization in `clientOrganizations`.
pub const ALL_ORGS: &str = "ALL";

/// Organizations and applications known to the run: API Manager's, plus
/// (while planning) placeholders without `id` for those the run will create.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    pub orgs: Vec<Value>,
    pub apps: Vec<Value>,
}

impl Directory {
    pub fn org(&self, name: &str) -> Option<&Value> {
        self.orgs.iter().find(|o| o.name() == Some(name))
    }

    pub fn has_org(&self, name: &str) -> bool {
        self.org(name).is_some()
    }

    /// The id of an existing organization (`None` also for one to be created).
    pub fn org_id(&self, name: &str) -> Option<String> {
        self.org(name).and_then(|o| o.id()).map(str::to_owned)
    }

    pub fn org_name(&self, id: &str) -> Option<String> {
        self.orgs
            .iter()
            .find(|o| o.id() == Some(id))
            .and_then(|o| o.name())
            .map(str::to_owned)
    }

    pub fn org_names(&self) -> Vec<String> {
        self.orgs
            .iter()
            .filter_map(|o| o.name())
            .map(str::to_owned)
            .collect()
    }

    /// Existing organizations as `(name, id)`.
    pub fn org_ids(&self) -> Vec<(String, String)> {
        self.orgs
            .iter()
            .filter_map(|o| Some((o.name()?.to_owned(), o.id()?.to_owned())))
            .collect()
    }

    pub fn upsert_org(&mut self, org: Value) {
        let name = org.name().map(str::to_owned);
        match self.orgs.iter_mut().find(|o| o.name() == name.as_deref()) {
            Some(slot) => *slot = org,
            None => self.orgs.push(org),
        }
    }

    /// The application called `name`, preferring the one in organization
    /// `org_name`. `Err` when several match and none is in that organization.
    pub fn app(&self, name: &str, org_name: Option<&str>) -> Result<Option<&Value>, String> {
        let matches: Vec<&Value> = self
            .apps
            .iter()
            .filter(|a| a.name() == Some(name))
            .collect();
        if matches.len() <= 1 {
            return Ok(matches.into_iter().next());
        }
        if let Some(org) = org_name {
            let in_org: Vec<&Value> = matches
                .iter()
                .copied()
                .filter(|a| self.app_org_name(a).as_deref() == Some(org))
                .collect();
            if in_org.len() == 1 {
                return Ok(Some(in_org[0]));
            }
        }
        Err(format!(
            "{} applications are called {name:?}; give each a distinct name",
            matches.len()
        ))
    }

    /// The organization name of an application (placeholders carry
    /// `organization` by name, real ones `organizationId`).
    pub fn app_org_name(&self, app: &Value) -> Option<String> {
        if let Some(name) = app.str_field("organization") {
            return Some(name.to_owned());
        }
        app.organization_id().and_then(|id| self.org_name(id))
    }

    pub fn upsert_app(&mut self, app: Value) {
        let id = app.id().map(str::to_owned);
        let name = app.name().map(str::to_owned);
        let slot = self.apps.iter_mut().position(|a| match (&id, a.id()) {
            (Some(id), Some(other)) => id == other,
            _ => a.id().is_none() && a.name() == name.as_deref(),
        });
        match slot {
            Some(i) => self.apps[i] = app,
            None => self.apps.push(app),
        }
    }

    /// Existing applications as `(name, id)`.
    pub fn app_ids(&self) -> Vec<(String, String)> {
        self.apps
            .iter()
            .filter_map(|a| Some((a.name()?.to_owned(), a.id()?.to_owned())))
            .collect()
    }
}

/// Caches the access lists of organizations and applications.
#[derive(Debug, Default)]
pub struct AccessReader {
    org: HashMap<String, Vec<ApiAccess>>,
    app: HashMap<String, Vec<ApiAccess>>,
}

impl AccessReader {
    pub async fn org(
        &mut self,
        client: &ApiManagerClient,
        id: &str,
    ) -> Result<&[ApiAccess], ClientError> {
        if !self.org.contains_key(id) {
            let list = client.org_api_access(id).await?;
            self.org.insert(id.to_owned(), list);
        }
        Ok(self.org.get(id).map(Vec::as_slice).unwrap_or_default())
    }

    pub async fn app(
        &mut self,
        client: &ApiManagerClient,
        id: &str,
    ) -> Result<&[ApiAccess], ClientError> {
        if !self.app.contains_key(id) {
            let list = client.app_api_access(id).await?;
            self.app.insert(id.to_owned(), list);
        }
        Ok(self.app.get(id).map(Vec::as_slice).unwrap_or_default())
    }

    pub fn forget_org(&mut self, id: &str) {
        self.org.remove(id);
    }

    pub fn forget_app(&mut self, id: &str) {
        self.app.remove(id);
    }

    pub fn clear(&mut self) {
        self.org.clear();
        self.app.clear();
    }
}

/// Who has access to one proxy: organization names and application ids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessSnapshot {
    pub orgs: BTreeSet<String>,
    pub apps: BTreeSet<String>,
}

/// Reads who has access to `proxy_id` (every organization's and
/// application's access list).
pub async fn snapshot(
    client: &ApiManagerClient,
    dir: &Directory,
    reader: &mut AccessReader,
    proxy_id: &str,
) -> Result<AccessSnapshot, ClientError> {
    let mut snap = AccessSnapshot::default();
    for (name, id) in dir.org_ids() {
        if reader
            .org(client, &id)
            .await?
            .iter()
            .any(|a| a.api_id == proxy_id)
        {
            snap.orgs.insert(name);
        }
    }
    for (_, id) in dir.app_ids() {
        if reader
            .app(client, &id)
            .await?
            .iter()
            .any(|a| a.api_id == proxy_id)
        {
            snap.apps.insert(id);
        }
    }
    Ok(snap)
}

/// An application the grants name: existing (`id`) or to be created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppRef {
    pub name: String,
    pub id: Option<String>,
}

/// What to change so the proxy's access matches the config.
#[derive(Debug, Clone, Default)]
pub struct GrantDelta {
    /// Grant with `action=all_orgs` instead of naming them.
    pub grant_all: bool,
    /// Organization names to grant.
    pub grant: Vec<String>,
    /// Organizations to revoke: name, id, access entry ids.
    pub revoke: Vec<(String, String, Vec<String>)>,
    pub subscribe: Vec<AppRef>,
    /// Applications to unsubscribe: the application, access entry ids.
    pub unsubscribe: Vec<(AppRef, Vec<String>)>,
    /// Configuration problems (nothing may be written).
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
}

/// The inputs of [`grant_delta`] for one API.
pub struct GrantInput<'a> {
    pub api: &'a DesiredApi,
    /// The proxy whose access is compared; `None` for one not created yet.
    pub proxy_id: Option<&'a str>,
    /// The state the API ends up in.
    pub final_state: ApiState,
    /// Access the API had before a re-publish or re-creation (kept in add mode).
    pub prior: Option<&'a AccessSnapshot>,
}

/// Computes the grants and subscriptions to add and remove for one API.
pub async fn grant_delta(
    client: &ApiManagerClient,
    dir: &Directory,
    reader: &mut AccessReader,
    input: GrantInput<'_>,
) -> Result<GrantDelta, ClientError> {
    let api = input.api;
    let owner = api.organization.as_str();
    let target = format!("api {} {}", api.name, api.path);
    let mut delta = GrantDelta::default();
    let published = input.final_state != ApiState::Unpublished;
    let all = api.client_organizations.iter().any(|o| o == ALL_ORGS);
    let replace_orgs = api.client_orgs_mode == GrantMode::Replace;

    // -- organizations -------------------------------------------------------
    let mut want: BTreeSet<String> = BTreeSet::new();
    if all {
        want.extend(dir.org_names());
    } else {
        for name in &api.client_organizations {
            if dir.has_org(name) {
                want.insert(name.clone());
            } else {
                delta.problems.push(format!(
                    "{target}: client organization {name:?} exists neither in API Manager nor in the configuration"
                ));
            }
        }
    }
    if api.client_orgs_mode == GrantMode::Add {
        if let Some(prior) = input.prior {
            want.extend(prior.orgs.iter().cloned());
        }
    }
    want.remove(owner);

    // Organizations with access now.
    let mut granted: BTreeSet<String> = BTreeSet::new();
    let mut granted_entries: HashMap<String, (String, Vec<String>)> = HashMap::new();
    if let Some(proxy_id) = input.proxy_id {
        let candidates: Vec<(String, String)> = if replace_orgs || all {
            dir.org_ids()
        } else {
            dir.org_ids()
                .into_iter()
                .filter(|(name, _)| want.contains(name))
                .collect()
        };
        for (name, id) in candidates {
            let entries: Vec<String> = reader
                .org(client, &id)
                .await?
                .iter()
                .filter(|a| a.api_id == proxy_id)
                .map(|a| a.id.clone())
                .collect();
            if !entries.is_empty() {
                granted.insert(name.clone());
                granted_entries.insert(name, (id, entries));
            }
        }
    }

    let mut final_orgs = granted.clone();
    if published {
        delta.grant = want.difference(&granted).cloned().collect();
        delta.grant_all = all && !delta.grant.is_empty();
        final_orgs.extend(delta.grant.iter().cloned());
        if replace_orgs && !all {
            for name in granted.difference(&want) {
                if name == owner {
                    continue;
                }
                if let Some((id, entries)) = granted_entries.get(name) {
                    delta
                        .revoke
                        .push((name.clone(), id.clone(), entries.clone()));
                    final_orgs.remove(name);
                }
            }
        }
    } else if !api.client_organizations.is_empty() {
        delta.warnings.push(format!(
            "{target}: clientOrganizations are not granted while the API is unpublished"
        ));
    }

    // -- applications ----------------------------------------------------------
    let replace_apps = api.client_apps_mode == GrantMode::Replace;
    let allowed = |org: Option<&str>| -> bool {
        match org {
            Some(o) if o == owner => true,
            Some(o) => published && (all || final_orgs.contains(o)),
            None => false,
        }
    };
    let mut want_apps: Vec<AppRef> = Vec::new();
    for name in &api.applications {
        let app = match dir.app(name, None) {
            Ok(Some(app)) => app,
            Ok(None) => {
                delta.problems.push(format!(
                    "{target}: application {name:?} exists neither in API Manager nor in the configuration"
                ));
                continue;
            }
            Err(e) => {
                delta.problems.push(format!("{target}: {e}"));
                continue;
            }
        };
        let org = dir.app_org_name(app);
        if !allowed(org.as_deref()) {
            let org = org.unwrap_or_else(|| "?".to_owned());
            if published {
                delta.problems.push(format!(
                    "{target}: application {name:?} belongs to organization {org:?}, which has no access to the API: add it to clientOrganizations"
                ));
            } else {
                delta.warnings.push(format!(
                    "{target}: application {name:?} of organization {org:?} is not subscribed while the API is unpublished"
                ));
            }
            continue;
        }
        let r = AppRef {
            name: name.clone(),
            id: app.id().map(str::to_owned),
        };
        if !want_apps.contains(&r) {
            want_apps.push(r);
        }
    }
    if api.client_apps_mode == GrantMode::Add {
        if let Some(prior) = input.prior {
            for id in &prior.apps {
                let Some(app) = dir.apps.iter().find(|a| a.id() == Some(id.as_str())) else {
                    continue;
                };
                if !allowed(dir.app_org_name(app).as_deref()) {
                    continue;
                }
                let r = AppRef {
                    name: app.name().unwrap_or_default().to_owned(),
                    id: Some(id.clone()),
                };
                if !want_apps.contains(&r) {
                    want_apps.push(r);
                }
            }
        }
    }

    // Applications subscribed now: (app, access ids).
    let mut subscribed: Vec<(AppRef, Vec<String>)> = Vec::new();
    if let Some(proxy_id) = input.proxy_id {
        let candidates: Vec<(String, String)> = if replace_apps {
            dir.app_ids()
        } else {
            want_apps
                .iter()
                .filter_map(|a| Some((a.name.clone(), a.id.clone()?)))
                .collect()
        };
        for (name, id) in candidates {
            let entries: Vec<String> = reader
                .app(client, &id)
                .await?
                .iter()
                .filter(|a| a.api_id == proxy_id)
                .map(|a| a.id.clone())
                .collect();
            if !entries.is_empty() {
                subscribed.push((AppRef { name, id: Some(id) }, entries));
            }
        }
    }
    for app in &want_apps {
        if !subscribed.iter().any(|(s, _)| s == app) {
            delta.subscribe.push(app.clone());
        }
    }
    if replace_apps {
        for (app, entries) in subscribed {
            if !want_apps.contains(&app) {
                delta.unsubscribe.push((app, entries));
            }
        }
    }
    Ok(delta)
}
