//! Carrying out a plan, journaling every write with its undo.

use gantry_proto::events::ApiChange;
use serde_json::{json, Map, Value};

use super::access::{self, AccessReader, AccessSnapshot, Directory, GrantInput};
use super::compare::{self, merge_field};
use super::rules::{self, Lifecycle, StateOp};
use super::{
    api_target, app_target, change, org_target, ApiAction, ApiStep, ApplyFailure, EntityAction,
    Error, Plan, ReplacedApi,
};
use crate::client::{self, ApiManagerClient, ObjectExt};
use crate::desired::{ApiState, DesiredApi, DesiredState, GrantMode, SpecSource};

pub(super) async fn apply(
    client: &ApiManagerClient,
    desired: &DesiredState,
    plan: &Plan,
) -> Result<Vec<ApiChange>, Error> {
    if !plan.refused.is_empty() {
        return Err(Error::Breaking(plan.refused.clone()));
    }
    check_plan_matches(desired, plan)?;
    let mut run = Run {
        client,
        plan,
        dir: plan.directory.clone(),
        reader: AccessReader::default(),
        journal: Vec::new(),
        changes: Vec::new(),
        outcomes: Vec::new(),
        replaced: Vec::new(),
    };
    match run.execute(desired).await {
        Ok(()) => Ok(run.changes),
        Err(failure) => Err(run.rollback(failure).await),
    }
}

fn check_plan_matches(desired: &DesiredState, plan: &Plan) -> Result<(), Error> {
    let same_apis = plan.apis.len() == desired.apis.len()
        && plan.apis.iter().all(|s| {
            desired
                .apis
                .get(s.index)
                .is_some_and(|a| a.name == s.name && a.path == s.path)
        });
    let same_orgs = plan.organizations.len() == desired.organizations.len();
    let same_apps = plan.applications.len() == desired.applications.len();
    if same_apis && same_orgs && same_apps {
        Ok(())
    } else {
        Err(Error::Invalid(vec![
            "the plan was made from another desired state".to_owned(),
        ]))
    }
}

/// A failed step, before rollback.
struct Failure {
    step: String,
    cause: String,
    status: Option<u16>,
}

/// The proxy a plan found for an update, republish or re-creation; a plan
/// without one was not made by `plan` for this state.
fn existing(step: &ApiStep, target: &str) -> Result<Value, Failure> {
    step.actual.clone().ok_or_else(|| Failure {
        step: format!("update {target}"),
        cause: "the plan holds no existing proxy for this API; plan again".into(),
        status: None,
    })
}

fn failed(step: impl Into<String>) -> impl FnOnce(client::Error) -> Failure {
    let step = step.into();
    move |e| Failure {
        step,
        status: e.status(),
        cause: e.to_string(),
    }
}

/// How to undo one write.
enum Undo {
    DeleteOrganization {
        id: String,
        name: String,
    },
    RestoreOrganization {
        previous: Value,
        name: String,
    },
    DeleteApplication {
        id: String,
        name: String,
    },
    RestoreApplication {
        previous: Value,
        name: String,
    },
    DeleteBackend {
        id: String,
        target: String,
    },
    /// Unpublish when published, then delete.
    DeleteProxy {
        id: String,
        target: String,
    },
    RestoreProxy {
        previous: Value,
        target: String,
    },
    /// Publish again; then give back the access it had.
    Publish {
        id: String,
        vhost: Option<String>,
        target: String,
        restore: Option<AccessSnapshot>,
    },
    Unpublish {
        id: String,
        target: String,
    },
    Deprecate {
        id: String,
        target: String,
    },
    Undeprecate {
        id: String,
        target: String,
    },
    /// Move access back from `from` to `to`.
    UpgradeBack {
        from: String,
        to: String,
        target: String,
    },
    /// Revoke these organizations' access to the proxy.
    RevokeOrgs {
        proxy_id: String,
        orgs: Vec<(String, String)>,
        target: String,
    },
    RegrantOrg {
        proxy_id: String,
        org_id: String,
        org_name: String,
        target: String,
    },
    Unsubscribe {
        app_id: String,
        app_name: String,
        proxy_id: String,
        target: String,
    },
    Resubscribe {
        app_id: String,
        app_name: String,
        proxy_id: String,
        target: String,
    },
}

impl Undo {
    fn describe(&self) -> String {
        match self {
            Undo::DeleteOrganization { name, .. } => format!("deleted created organization {name}"),
            Undo::RestoreOrganization { name, .. } => format!("restored organization {name}"),
            Undo::DeleteApplication { name, .. } => format!("deleted created application {name}"),
            Undo::RestoreApplication { name, .. } => format!("restored application {name}"),
            Undo::DeleteBackend { id, target } => {
                format!("deleted created backend {id} of {target}")
            }
            Undo::DeleteProxy { id, target } => format!("deleted created proxy {id} of {target}"),
            Undo::RestoreProxy { target, .. } => format!("restored the fields of {target}"),
            Undo::Publish { target, .. } => format!("published {target} again"),
            Undo::Unpublish { target, .. } => format!("unpublished {target}"),
            Undo::Deprecate { target, .. } => format!("deprecated {target} again"),
            Undo::Undeprecate { target, .. } => format!("undeprecated {target}"),
            Undo::UpgradeBack { target, .. } => {
                format!("moved access back to the old proxy of {target}")
            }
            Undo::RevokeOrgs { orgs, target, .. } => format!(
                "revoked the grant of {target} to {}",
                orgs.iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Undo::RegrantOrg {
                org_name, target, ..
            } => {
                format!("granted {target} to {org_name} again")
            }
            Undo::Unsubscribe {
                app_name, target, ..
            } => {
                format!("unsubscribed {app_name} from {target}")
            }
            Undo::Resubscribe {
                app_name, target, ..
            } => {
                format!("subscribed {app_name} to {target} again")
            }
        }
    }

    async fn run(&self, client: &ApiManagerClient) -> Result<(), String> {
        let e = |e: client::Error| e.to_string();
        match self {
            Undo::DeleteOrganization { id, .. } => {
                ignore_missing(client.delete_organization(id).await).map_err(e)
            }
            Undo::RestoreOrganization { previous, .. } => client
                .update_organization(previous)
                .await
                .map(drop)
                .map_err(e),
            Undo::DeleteApplication { id, .. } => {
                ignore_missing(client.delete_application(id).await).map_err(e)
            }
            Undo::RestoreApplication { previous, .. } => client
                .update_application(previous)
                .await
                .map(drop)
                .map_err(e),
            Undo::DeleteBackend { id, .. } => {
                ignore_missing(client.delete_backend(id).await).map_err(e)
            }
            Undo::DeleteProxy { id, .. } => {
                let proxy = match client.proxy(id).await {
                    Ok(p) => p,
                    Err(err) if err.is_not_found() => return Ok(()),
                    Err(err) => return Err(e(err)),
                };
                if proxy.state() == Some("published") {
                    client.unpublish(id).await.map_err(e)?;
                }
                ignore_missing(client.delete_proxy(id).await).map_err(e)
            }
            Undo::RestoreProxy { previous, .. } => {
                client.update_proxy(previous).await.map(drop).map_err(e)
            }
            Undo::Publish {
                id, vhost, restore, ..
            } => {
                client
                    .publish(id, None, vhost.as_deref())
                    .await
                    .map_err(e)?;
                if let Some(snapshot) = restore {
                    restore_access(client, id, snapshot).await.map_err(e)?;
                }
                Ok(())
            }
            Undo::Unpublish { id, .. } => client.unpublish(id).await.map(drop).map_err(e),
            Undo::Deprecate { id, .. } => client.deprecate(id, None).await.map(drop).map_err(e),
            Undo::Undeprecate { id, .. } => client.undeprecate(id).await.map(drop).map_err(e),
            Undo::UpgradeBack { from, to, .. } => client
                .upgrade_access(from, to, None, None, None)
                .await
                .map_err(e),
            Undo::RevokeOrgs { proxy_id, orgs, .. } => {
                for (_, org_id) in orgs {
                    let entries = client.org_api_access(org_id).await.map_err(e)?;
                    for entry in entries.iter().filter(|a| &a.api_id == proxy_id) {
                        ignore_missing(client.revoke_org_access(org_id, &entry.id).await)
                            .map_err(e)?;
                    }
                }
                Ok(())
            }
            Undo::RegrantOrg {
                proxy_id, org_id, ..
            } => client
                .grant_org_access(proxy_id, std::slice::from_ref(org_id))
                .await
                .map_err(e),
            Undo::Unsubscribe {
                app_id, proxy_id, ..
            } => {
                let entries = client.app_api_access(app_id).await.map_err(e)?;
                for entry in entries.iter().filter(|a| &a.api_id == proxy_id) {
                    ignore_missing(client.unsubscribe_app(app_id, &entry.id).await).map_err(e)?;
                }
                Ok(())
            }
            Undo::Resubscribe {
                app_id, proxy_id, ..
            } => client
                .subscribe_app(app_id, proxy_id)
                .await
                .map(drop)
                .map_err(e),
        }
    }
}

fn ignore_missing(r: Result<(), client::Error>) -> Result<(), client::Error> {
    match r {
        Err(e) if e.is_not_found() => Ok(()),
        other => other,
    }
}

/// Gives `proxy_id` back the access of a snapshot (org names are resolved
/// through API Manager, as the snapshot stores names).
async fn restore_access(
    client: &ApiManagerClient,
    proxy_id: &str,
    snapshot: &AccessSnapshot,
) -> Result<(), client::Error> {
    if !snapshot.orgs.is_empty() {
        let orgs = client.organizations().await?;
        let mut missing = Vec::new();
        for org in orgs
            .iter()
            .filter(|o| o.name().is_some_and(|n| snapshot.orgs.contains(n)))
        {
            let Some(id) = org.id() else { continue };
            let has = client
                .org_api_access(id)
                .await?
                .iter()
                .any(|a| a.api_id == proxy_id);
            if !has {
                missing.push(id.to_owned());
            }
        }
        client.grant_org_access(proxy_id, &missing).await?;
    }
    for app_id in &snapshot.apps {
        let has = client
            .app_api_access(app_id)
            .await?
            .iter()
            .any(|a| a.api_id == proxy_id);
        if !has {
            client.subscribe_app(app_id, proxy_id).await?;
        }
    }
    Ok(())
}

/// What the API phase left for the grants phase.
struct ApiOutcome {
    index: usize,
    proxy_id: String,
    prior: Option<AccessSnapshot>,
}

/// A proxy replaced by a re-created API, handled last.
struct Replaced {
    target: String,
    old: Value,
    lifecycle: Lifecycle,
}

struct Run<'a> {
    client: &'a ApiManagerClient,
    plan: &'a Plan,
    dir: Directory,
    reader: AccessReader,
    journal: Vec<Undo>,
    changes: Vec<ApiChange>,
    outcomes: Vec<ApiOutcome>,
    replaced: Vec<Replaced>,
}

impl Run<'_> {
    async fn execute(&mut self, desired: &DesiredState) -> Result<(), Failure> {
        self.organizations().await?;
        for step in &self.plan.apis {
            let api = &desired.apis[step.index];
            self.api(api, step).await?;
        }
        self.applications().await?;
        self.reader.clear();
        let outcomes = std::mem::take(&mut self.outcomes);
        for outcome in &outcomes {
            let api = &desired.apis[outcome.index];
            self.grants(api, outcome).await?;
        }
        self.finish_replaced().await
    }

    async fn rollback(self, failure: Failure) -> Error {
        let mut undone = Vec::new();
        let mut not_undone = Vec::new();
        for undo in self.journal.iter().rev() {
            match undo.run(self.client).await {
                Ok(()) => undone.push(undo.describe()),
                Err(reason) => not_undone.push(format!("{} ({reason})", undo.describe())),
            }
        }
        tracing::warn!(
            step = %failure.step,
            undone = undone.len(),
            not_undone = not_undone.len(),
            "API Manager reconciliation failed; rolled back"
        );
        Error::Apply(Box::new(ApplyFailure {
            step: failure.step,
            cause: failure.cause,
            status: failure.status,
            applied: self.changes,
            undone,
            not_undone,
        }))
    }

    // -- organizations and applications ------------------------------------------

    async fn organizations(&mut self) -> Result<(), Failure> {
        for step in &self.plan.organizations {
            let target = org_target(&step.name);
            match step.action {
                EntityAction::Unchanged => {}
                EntityAction::Create => {
                    let created = self
                        .client
                        .create_organization(&step.body)
                        .await
                        .map_err(failed(format!("create {target}")))?;
                    let created = self
                        .found_or_fetch_org(created, &step.name, &target)
                        .await?;
                    let id = created.id().unwrap_or_default().to_owned();
                    self.journal.push(Undo::DeleteOrganization {
                        id,
                        name: step.name.clone(),
                    });
                    self.dir.upsert_org(created);
                    self.changes.push(change(target, "create", &step.fields));
                }
                EntityAction::Update => {
                    let updated = self
                        .client
                        .update_organization(&step.body)
                        .await
                        .map_err(failed(format!("update {target}")))?;
                    if let Some(previous) = &step.current {
                        self.journal.push(Undo::RestoreOrganization {
                            previous: previous.clone(),
                            name: step.name.clone(),
                        });
                    }
                    if updated.id().is_some() {
                        self.dir.upsert_org(updated);
                    }
                    self.changes.push(change(target, "update", &step.fields));
                }
            }
        }
        Ok(())
    }

    /// The created object, or (when API Manager answered without one) the
    /// object read back by name.
    async fn found_or_fetch_org(
        &self,
        created: Value,
        name: &str,
        target: &str,
    ) -> Result<Value, Failure> {
        if created.id().is_some() {
            return Ok(created);
        }
        self.client
            .organization_by_name(name)
            .await
            .map_err(failed(format!("read created {target}")))?
            .ok_or_else(|| Failure {
                step: format!("create {target}"),
                cause: "API Manager answered but the organization cannot be found".to_owned(),
                status: None,
            })
    }

    async fn applications(&mut self) -> Result<(), Failure> {
        for step in &self.plan.applications {
            let target = app_target(&step.name);
            match step.action {
                EntityAction::Unchanged => {}
                EntityAction::Create => {
                    let org_name = step.organization.clone().unwrap_or_default();
                    let org_id = self.dir.org_id(&org_name).ok_or_else(|| Failure {
                        step: format!("create {target}"),
                        cause: format!("organization {org_name:?} does not exist"),
                        status: None,
                    })?;
                    let mut body = step.body.clone();
                    body["organizationId"] = json!(org_id);
                    let created = self
                        .client
                        .create_application(&body)
                        .await
                        .map_err(failed(format!("create {target}")))?;
                    let created = if created.id().is_some() {
                        created
                    } else {
                        self.client
                            .applications_by_name(&step.name)
                            .await
                            .map_err(failed(format!("read created {target}")))?
                            .into_iter()
                            .find(|a| a.organization_id() == Some(org_id.as_str()))
                            .ok_or_else(|| Failure {
                                step: format!("create {target}"),
                                cause: "API Manager answered but the application cannot be found"
                                    .to_owned(),
                                status: None,
                            })?
                    };
                    self.journal.push(Undo::DeleteApplication {
                        id: created.id().unwrap_or_default().to_owned(),
                        name: step.name.clone(),
                    });
                    self.dir.upsert_app(created);
                    self.changes.push(change(target, "create", &step.fields));
                }
                EntityAction::Update => {
                    let updated = self
                        .client
                        .update_application(&step.body)
                        .await
                        .map_err(failed(format!("update {target}")))?;
                    if let Some(previous) = &step.current {
                        self.journal.push(Undo::RestoreApplication {
                            previous: previous.clone(),
                            name: step.name.clone(),
                        });
                    }
                    if updated.id().is_some() {
                        self.dir.upsert_app(updated);
                    }
                    self.changes.push(change(target, "update", &step.fields));
                }
            }
        }
        Ok(())
    }

    // -- APIs ------------------------------------------------------------------------

    async fn api(&mut self, api: &DesiredApi, step: &ApiStep) -> Result<(), Failure> {
        let target = api_target(&api.name, &api.path);
        match step.action {
            ApiAction::Refused => unreachable!("refused plans are not applied"),
            ApiAction::Create => {
                let proxy_id = self.create(api, step, &target).await?;
                self.changes
                    .push(change(target.clone(), "create", &step.fields));
                self.report_ops(&target, &step.state_ops);
                self.outcomes.push(ApiOutcome {
                    index: step.index,
                    proxy_id,
                    prior: None,
                });
            }
            ApiAction::Unchanged | ApiAction::StateChange | ApiAction::Update => {
                let actual = existing(step, &target)?;
                let id = actual.id().unwrap_or_default().to_owned();
                let mut ops = step.state_ops.clone();
                // Unpublish first: the fields become writable.
                if ops.first() == Some(&StateOp::Unpublish) {
                    ops.remove(0);
                    let snapshot = access::snapshot(self.client, &self.dir, &mut self.reader, &id)
                        .await
                        .map_err(failed(format!("read access of {target}")))?;
                    self.state_op(&id, StateOp::Unpublish, api, &target, Some(snapshot))
                        .await?;
                }
                if step.action == ApiAction::Update {
                    self.put_fields(&actual, step, &target).await?;
                    self.changes
                        .push(change(target.clone(), "update", &step.fields));
                }
                for op in ops {
                    self.state_op(&id, op, api, &target, None).await?;
                }
                self.report_ops(&target, &step.state_ops);
                self.outcomes.push(ApiOutcome {
                    index: step.index,
                    proxy_id: id,
                    prior: None,
                });
            }
            ApiAction::Republish => {
                let actual = existing(step, &target)?;
                let id = actual.id().unwrap_or_default().to_owned();
                let snapshot = access::snapshot(self.client, &self.dir, &mut self.reader, &id)
                    .await
                    .map_err(failed(format!("read access of {target}")))?;
                let restore_vhost = actual.vhost().map(str::to_owned);
                self.client
                    .unpublish(&id)
                    .await
                    .map_err(failed(format!("unpublish {target} (republish)")))?;
                self.journal.push(Undo::Publish {
                    id: id.clone(),
                    vhost: restore_vhost,
                    target: target.clone(),
                    restore: Some(snapshot.clone()),
                });
                self.reader.clear();
                self.put_fields(&actual, step, &target).await?;
                for op in rules::transition(Lifecycle::Unpublished, api.state) {
                    self.state_op(&id, op, api, &target, None).await?;
                }
                self.changes
                    .push(change(target.clone(), "republish", &step.fields));
                self.report_ops(&target, &step.state_ops);
                let prior = add_mode(api).then_some(snapshot);
                self.outcomes.push(ApiOutcome {
                    index: step.index,
                    proxy_id: id,
                    prior,
                });
            }
            ApiAction::Recreate => {
                let old = existing(step, &target)?;
                let old_id = old.id().unwrap_or_default().to_owned();
                let lifecycle = step.current_state.unwrap_or(Lifecycle::Unpublished);
                let prior = if add_mode(api) {
                    Some(
                        access::snapshot(self.client, &self.dir, &mut self.reader, &old_id)
                            .await
                            .map_err(failed(format!("read access of {target}")))?,
                    )
                } else {
                    None
                };
                let new_id = self.create(api, step, &target).await?;
                if lifecycle.has_consumers() && api.state != ApiState::Unpublished {
                    let (deprecate, retire, date) = match &self.plan.options.replaced_api {
                        ReplacedApi::Delete => (None, None, None),
                        ReplacedApi::Retire { after } => {
                            (Some(true), Some(true), Some(retirement_date(*after)))
                        }
                    };
                    self.client
                        .upgrade_access(&old_id, &new_id, deprecate, retire, date.as_deref())
                        .await
                        .map_err(failed(format!(
                            "upgrade access of {target} to the new proxy"
                        )))?;
                    self.journal.push(Undo::UpgradeBack {
                        from: new_id.clone(),
                        to: old_id.clone(),
                        target: target.clone(),
                    });
                    if deprecate == Some(true) && lifecycle == Lifecycle::Published {
                        self.journal.push(Undo::Undeprecate {
                            id: old_id.clone(),
                            target: format!("the replaced proxy of {target}"),
                        });
                    }
                    self.reader.clear();
                }
                self.changes
                    .push(change(target.clone(), "recreate", &step.fields));
                self.report_ops(&target, &step.state_ops);
                self.replaced.push(Replaced {
                    target: target.clone(),
                    old,
                    lifecycle,
                });
                self.outcomes.push(ApiOutcome {
                    index: step.index,
                    proxy_id: new_id,
                    prior,
                });
            }
        }
        Ok(())
    }

    /// Imports the backend, creates the proxy, puts the fields and moves it
    /// to the desired state. Returns the proxy id.
    async fn create(
        &mut self,
        api: &DesiredApi,
        step: &ApiStep,
        target: &str,
    ) -> Result<String, Failure> {
        let org_id = self.dir.org_id(&api.organization).ok_or_else(|| Failure {
            step: format!("create {target}"),
            cause: format!("organization {:?} does not exist", api.organization),
            status: None,
        })?;
        let backend_id = match self.leftover_backend(api, &org_id).await {
            Some(id) => id,
            None => {
                let backend = self
                    .client
                    .import_backend(&api.name, &org_id, &api.specification)
                    .await
                    .map_err(failed(format!("import the specification of {target}")))?;
                backend
                    .id()
                    .ok_or_else(|| Failure {
                        step: format!("import the specification of {target}"),
                        cause: "API Manager's answer holds no backend id".to_owned(),
                        status: None,
                    })?
                    .to_owned()
            }
        };
        self.journal.push(Undo::DeleteBackend {
            id: backend_id.clone(),
            target: target.to_owned(),
        });
        let proxy = self
            .client
            .create_proxy(&backend_id, &org_id)
            .await
            .map_err(failed(format!("create the proxy of {target}")))?;
        let proxy_id = proxy
            .id()
            .ok_or_else(|| Failure {
                step: format!("create the proxy of {target}"),
                cause: "API Manager's answer holds no proxy id".to_owned(),
                status: None,
            })?
            .to_owned();
        self.journal.push(Undo::DeleteProxy {
            id: proxy_id.clone(),
            target: target.to_owned(),
        });
        let mut body = proxy.clone();
        if let Value::Object(obj) = &mut body {
            put_desired(obj, &step.desired_fields, None);
        }
        self.client
            .update_proxy(&body)
            .await
            .map_err(failed(format!("update the new proxy of {target}")))?;
        for op in rules::transition(Lifecycle::Unpublished, api.state) {
            self.state_op(&proxy_id, op, api, target, None).await?;
        }
        Ok(proxy_id)
    }

    /// A backend API that an interrupted earlier promotion imported and did
    /// not get to put a proxy on (the process died between the two calls,
    /// so its undo never ran): same name, same organization, the same
    /// specification, and no proxy using it. Reusing it keeps a redelivered
    /// promotion from importing twice. Any doubt (a read fails, the
    /// specification cannot be downloaded) means a fresh import.
    async fn leftover_backend(&self, api: &DesiredApi, org_id: &str) -> Option<String> {
        let SpecSource::File { content, .. } = &api.specification.source else {
            return None;
        };
        let candidates = self.client.backends_by_name(&api.name).await.ok()?;
        for backend in candidates {
            let (Some(id), Some(org)) = (
                backend.id(),
                backend.get("organizationId").and_then(Value::as_str),
            ) else {
                continue;
            };
            if org != org_id {
                continue;
            }
            let Ok(users) = self.client.find_proxies("apiId", "eq", id).await else {
                continue;
            };
            if !users.is_empty() {
                continue;
            }
            if let Ok(Some(actual)) = self.client.download_backend_spec(id).await {
                if compare::same_specification(content, &actual) {
                    tracing::info!(backend = id, api = %api.name, "reusing the backend API an interrupted promotion imported");
                    return Some(id.to_owned());
                }
            }
        }
        None
    }

    /// `PUT` the changed fields into the proxy as it was read.
    async fn put_fields(
        &mut self,
        actual: &Value,
        step: &ApiStep,
        target: &str,
    ) -> Result<(), Failure> {
        let mut body = actual.clone();
        if let Value::Object(obj) = &mut body {
            put_desired(obj, &step.desired_fields, Some(&step.fields));
        }
        self.client
            .update_proxy(&body)
            .await
            .map_err(failed(format!("update {target}")))?;
        self.journal.push(Undo::RestoreProxy {
            previous: actual.clone(),
            target: target.to_owned(),
        });
        Ok(())
    }

    async fn state_op(
        &mut self,
        id: &str,
        op: StateOp,
        api: &DesiredApi,
        target: &str,
        restore: Option<AccessSnapshot>,
    ) -> Result<(), Failure> {
        let step = format!("{} {target}", op.as_str());
        let client = self.client;
        let undo = match op {
            StateOp::Publish => {
                client
                    .publish(id, None, api.vhost.as_deref())
                    .await
                    .map_err(failed(step))?;
                Undo::Unpublish {
                    id: id.to_owned(),
                    target: target.to_owned(),
                }
            }
            StateOp::Unpublish => {
                let vhost = client
                    .proxy(id)
                    .await
                    .ok()
                    .and_then(|p| p.vhost().map(str::to_owned));
                client.unpublish(id).await.map_err(failed(step))?;
                self.reader.clear();
                Undo::Publish {
                    id: id.to_owned(),
                    vhost,
                    target: target.to_owned(),
                    restore,
                }
            }
            StateOp::Deprecate => {
                client.deprecate(id, None).await.map_err(failed(step))?;
                Undo::Undeprecate {
                    id: id.to_owned(),
                    target: target.to_owned(),
                }
            }
            StateOp::Undeprecate => {
                client.undeprecate(id).await.map_err(failed(step))?;
                Undo::Deprecate {
                    id: id.to_owned(),
                    target: target.to_owned(),
                }
            }
        };
        self.journal.push(undo);
        Ok(())
    }

    fn report_ops(&mut self, target: &str, ops: &[StateOp]) {
        for op in ops {
            self.changes
                .push(change(target.to_owned(), op.as_str(), &[]));
        }
    }

    // -- grants ------------------------------------------------------------------------

    async fn grants(&mut self, api: &DesiredApi, outcome: &ApiOutcome) -> Result<(), Failure> {
        let target = api_target(&api.name, &api.path);
        let client = self.client;
        let delta = access::grant_delta(
            client,
            &self.dir,
            &mut self.reader,
            GrantInput {
                api,
                proxy_id: Some(&outcome.proxy_id),
                final_state: api.state,
                prior: outcome.prior.as_ref(),
            },
        )
        .await
        .map_err(failed(format!("read access of {target}")))?;
        if let Some(problem) = delta.problems.first() {
            return Err(Failure {
                step: format!("grants of {target}"),
                cause: problem.clone(),
                status: None,
            });
        }
        let proxy = outcome.proxy_id.as_str();

        if !delta.grant.is_empty() {
            let orgs: Vec<(String, String)> = delta
                .grant
                .iter()
                .filter_map(|name| Some((name.clone(), self.dir.org_id(name)?)))
                .collect();
            let step = format!("grant {target} to {}", delta.grant.join(", "));
            if delta.grant_all {
                client
                    .grant_all_orgs_access(proxy)
                    .await
                    .map_err(failed(step))?;
            } else {
                let ids: Vec<String> = orgs.iter().map(|(_, id)| id.clone()).collect();
                client
                    .grant_org_access(proxy, &ids)
                    .await
                    .map_err(failed(step))?;
            }
            for (_, id) in &orgs {
                self.reader.forget_org(id);
            }
            self.journal.push(Undo::RevokeOrgs {
                proxy_id: proxy.to_owned(),
                orgs,
                target: target.clone(),
            });
            self.changes
                .push(change(target.clone(), "grant", &delta.grant));
        }
        if !delta.revoke.is_empty() {
            let mut names = Vec::new();
            for (name, org_id, entries) in &delta.revoke {
                for entry in entries {
                    client
                        .revoke_org_access(org_id, entry)
                        .await
                        .map_err(failed(format!("revoke the grant of {target} to {name}")))?;
                }
                self.reader.forget_org(org_id);
                self.journal.push(Undo::RegrantOrg {
                    proxy_id: proxy.to_owned(),
                    org_id: org_id.clone(),
                    org_name: name.clone(),
                    target: target.clone(),
                });
                names.push(name.clone());
            }
            self.changes.push(change(target.clone(), "revoke", &names));
        }
        if !delta.subscribe.is_empty() {
            let mut names = Vec::new();
            for app in &delta.subscribe {
                let app_id = match &app.id {
                    Some(id) => id.clone(),
                    None => self
                        .dir
                        .app(&app.name, None)
                        .ok()
                        .flatten()
                        .and_then(|a| a.id())
                        .map(str::to_owned)
                        .ok_or_else(|| Failure {
                            step: format!("subscribe {} to {target}", app.name),
                            cause: format!("application {:?} does not exist", app.name),
                            status: None,
                        })?,
                };
                client
                    .subscribe_app(&app_id, proxy)
                    .await
                    .map_err(failed(format!("subscribe {} to {target}", app.name)))?;
                self.reader.forget_app(&app_id);
                self.journal.push(Undo::Unsubscribe {
                    app_id,
                    app_name: app.name.clone(),
                    proxy_id: proxy.to_owned(),
                    target: target.clone(),
                });
                names.push(app.name.clone());
            }
            self.changes
                .push(change(target.clone(), "subscribe", &names));
        }
        if !delta.unsubscribe.is_empty() {
            let mut names = Vec::new();
            for (app, entries) in &delta.unsubscribe {
                let app_id = app.id.clone().unwrap_or_default();
                for entry in entries {
                    client
                        .unsubscribe_app(&app_id, entry)
                        .await
                        .map_err(failed(format!("unsubscribe {} from {target}", app.name)))?;
                }
                self.reader.forget_app(&app_id);
                self.journal.push(Undo::Resubscribe {
                    app_id,
                    app_name: app.name.clone(),
                    proxy_id: proxy.to_owned(),
                    target: target.clone(),
                });
                names.push(app.name.clone());
            }
            self.changes.push(change(target, "unsubscribe", &names));
        }
        Ok(())
    }

    // -- replaced proxies ----------------------------------------------------------------

    /// Deletes (or leaves to retirement) the proxies replaced by re-created
    /// APIs. Deleting one cannot be undone, so it commits the run: the
    /// journal is cleared and a later failure only undoes what follows. A
    /// backend that cannot be deleted is left behind with a warning (it
    /// serves nothing).
    async fn finish_replaced(&mut self) -> Result<(), Failure> {
        let replaced = std::mem::take(&mut self.replaced);
        for r in replaced {
            let old_id = r.old.id().unwrap_or_default().to_owned();
            let retire = matches!(self.plan.options.replaced_api, ReplacedApi::Retire { .. });
            if retire && r.lifecycle.has_consumers() {
                // Deprecated and retired by the upgrade; API Manager retires it.
                continue;
            }
            let label = format!("the replaced proxy {old_id} of {}", r.target);
            if r.old.state() == Some("published") {
                self.client
                    .unpublish(&old_id)
                    .await
                    .map_err(failed(format!("unpublish {label}")))?;
                self.journal.push(Undo::Publish {
                    id: old_id.clone(),
                    vhost: r.old.vhost().map(str::to_owned),
                    target: label.clone(),
                    restore: None,
                });
            }
            self.client
                .delete_proxy(&old_id)
                .await
                .map_err(failed(format!("delete {label}")))?;
            // The new API is now the only one: keep everything done so far.
            self.journal.clear();
            if let Some(backend) = r.old.api_id() {
                if let Err(e) = ignore_missing(self.client.delete_backend(backend).await) {
                    tracing::warn!(
                        backend, target = %r.target, error = %e,
                        "the backend of a replaced API could not be deleted; it is left behind"
                    );
                }
            }
        }
        Ok(())
    }
}

fn add_mode(api: &DesiredApi) -> bool {
    api.client_orgs_mode == GrantMode::Add || api.client_apps_mode == GrantMode::Add
}

/// Copies the desired fields (all, or only `only`) into a proxy object.
fn put_desired(
    obj: &mut Map<String, Value>,
    desired: &Map<String, Value>,
    only: Option<&[String]>,
) {
    for (field, value) in desired {
        if only.is_some_and(|only| !only.iter().any(|f| f == field)) {
            continue;
        }
        merge_field(obj, field, value);
    }
}

/// `now + after` as apim-cli formats retirement dates: `yyyy-MM-ddTHH:mm:ssZ`.
fn retirement_date(after: std::time::Duration) -> String {
    let when = chrono::Utc::now()
        + chrono::Duration::from_std(after).unwrap_or_else(|_| chrono::Duration::days(365));
    when.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}
