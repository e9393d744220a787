//! The API Manager reconciler against the stateful API Manager double
//! (`gantry_tests::apimanager`): create, idempotence, in-place updates,
//! republish, breaking changes refused, re-creation with upgraded access,
//! grants in add and replace mode, rollback, credentials, TLS, v1.3.

use std::path::PathBuf;
use std::time::Duration;

use gantry_apim::client::{ApiManagerClient, ClientConfig, Error as ClientError, ObjectExt};
use gantry_apim::desired::{
    ApiSpecification, ApiState, DesiredApi, DesiredApplication, DesiredOrganization, DesiredState,
    GrantMode, SpecKind, SpecSource,
};
use gantry_apim::reconcile::{self, ApiAction, Error, ReconcileOptions, ReplacedApi};
use gantry_pipeline::ApimVersion;
use gantry_proto::events::ApiChange;
use gantry_tests::apimanager::{ApiManagerDouble, DEFAULT_PASSWORD, DEFAULT_USER};
use serde_json::{json, Map, Value};

const OWNER: &str = "API Development";
const CONSUMERS: &str = "Consumers";
const PARTNERS: &str = "Partners";
const APP: &str = "Consumer App";
const PATH: &str = "/petstore/v1";

fn petstore_bytes() -> Vec<u8> {
    let path = gantry_tests::wiremock::default_fixture_dir().join("../examples/petstore.json");
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn petstore() -> ApiSpecification {
    ApiSpecification {
        source: SpecSource::File {
            path: PathBuf::from("apis/petstore/petstore.json"),
            content: petstore_bytes(),
        },
        kind: SpecKind::Swagger,
    }
}

/// The petstore spec with one more operation (a different document).
fn petstore_changed() -> ApiSpecification {
    let mut doc: Value = serde_json::from_slice(&petstore_bytes()).unwrap();
    doc["paths"]["/health"] = json!({"get": {"responses": {"200": {"description": "ok"}}}});
    ApiSpecification {
        source: SpecSource::File {
            path: PathBuf::from("apis/petstore/petstore.json"),
            content: serde_json::to_vec_pretty(&doc).unwrap(),
        },
        kind: SpecKind::Swagger,
    }
}

fn fields(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

fn petstore_api(state: ApiState) -> DesiredApi {
    DesiredApi {
        source: PathBuf::from("apis/petstore/api-config.json"),
        name: "Petstore".into(),
        path: PATH.into(),
        version: Some("1.0.0".into()),
        state,
        vhost: None,
        api_routing_key: None,
        organization: OWNER.into(),
        backend_basepath: Some("https://petstore.example.com:8443".into()),
        specification: petstore(),
        client_organizations: vec![CONSUMERS.into()],
        applications: vec![APP.into()],
        client_orgs_mode: GrantMode::Add,
        client_apps_mode: GrantMode::Add,
        proxy_fields: fields(json!({
            "summary": "Pets",
            "descriptionType": "manual",
            "descriptionManual": "All about pets",
            "tags": {"team": ["pets"]},
        })),
    }
}

fn consumers_org() -> DesiredOrganization {
    DesiredOrganization {
        source: PathBuf::from("orgs/consumers/org-config.json"),
        name: CONSUMERS.into(),
        fields: fields(json!({"description": "API consumers", "email": "consumers@example.com"})),
    }
}

fn consumer_app() -> DesiredApplication {
    DesiredApplication {
        source: PathBuf::from("apps/consumer/application-config.json"),
        name: APP.into(),
        organization: CONSUMERS.into(),
        fields: fields(json!({"description": "Consumes pets", "enabled": true})),
    }
}

fn state(api: DesiredApi) -> DesiredState {
    DesiredState {
        apis: vec![api],
        organizations: vec![consumers_org()],
        applications: vec![consumer_app()],
        ..DesiredState::default()
    }
}

async fn start() -> ApiManagerDouble {
    let double = ApiManagerDouble::start().await.unwrap();
    double.add_organization(OWNER);
    double
}

fn config(url: &str) -> ClientConfig {
    ClientConfig::new(url, ApimVersion::V1_4, DEFAULT_USER, DEFAULT_PASSWORD)
        .with_retries(3, Duration::from_millis(10))
        .with_timeouts(Duration::from_secs(5), Duration::from_secs(10))
}

fn client(double: &ApiManagerDouble) -> ApiManagerClient {
    ApiManagerClient::new(config(&double.url())).unwrap()
}

fn allow() -> ReconcileOptions {
    ReconcileOptions {
        allow_breaking: true,
        ..ReconcileOptions::default()
    }
}

fn actions(changes: &[ApiChange]) -> Vec<String> {
    changes
        .iter()
        .map(|c| format!("{} {}", c.action, c.target))
        .collect()
}

fn org_id(double: &ApiManagerDouble, name: &str) -> String {
    double
        .organizations()
        .iter()
        .find(|o| o["name"] == name)
        .and_then(|o| o.id().map(str::to_owned))
        .unwrap_or_else(|| panic!("no organization {name}"))
}

fn app_id(double: &ApiManagerDouble, name: &str) -> String {
    double
        .applications()
        .iter()
        .find(|a| a["name"] == name)
        .and_then(|a| a.id().map(str::to_owned))
        .unwrap_or_else(|| panic!("no application {name}"))
}

/// The live (not retired) proxies on `PATH`.
fn live_proxies(double: &ApiManagerDouble) -> Vec<Value> {
    double
        .proxies()
        .into_iter()
        .filter(|p| p["path"] == PATH && p["retired"] != true)
        .collect()
}

fn the_proxy(double: &ApiManagerDouble) -> Value {
    let live = live_proxies(double);
    assert_eq!(live.len(), 1, "proxies: {live:#?}");
    live.into_iter().next().unwrap()
}

/// Creates the published petstore with its grants; returns the proxy id.
async fn create_published(double: &ApiManagerDouble, c: &ApiManagerClient) -> String {
    reconcile::reconcile(
        c,
        &state(petstore_api(ApiState::Published)),
        &ReconcileOptions::default(),
    )
    .await
    .unwrap();
    text(&the_proxy(double)["id"])
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

async fn assert_second_run_is_noop(
    double: &ApiManagerDouble,
    c: &ApiManagerClient,
    desired: &DesiredState,
    options: &ReconcileOptions,
) {
    double.clear_requests();
    let plan = reconcile::plan(c, desired, options).await.unwrap();
    assert!(plan.is_noop(), "plan: {:#?}", plan.changes());
    let changes = reconcile::apply(c, desired, &plan).await.unwrap();
    assert!(changes.is_empty(), "changes: {changes:#?}");
    assert_eq!(double.write_calls(), Vec::<String>::new());
}

#[tokio::test]
async fn creates_everything_then_an_unchanged_state_writes_nothing() {
    let double = start().await;
    let c = client(&double);
    let desired = state(petstore_api(ApiState::Published));

    let plan = reconcile::plan(&c, &desired, &ReconcileOptions::default())
        .await
        .unwrap();
    assert_eq!(plan.apis[0].action, ApiAction::Create);
    assert!(
        double.write_calls().is_empty(),
        "planning wrote: {:?}",
        double.write_calls()
    );

    let changes = reconcile::apply(&c, &desired, &plan).await.unwrap();
    let acts = actions(&changes);
    assert_eq!(
        acts,
        vec![
            "create organization Consumers",
            "create api Petstore /petstore/v1",
            "publish api Petstore /petstore/v1",
            "create application Consumer App",
            "grant api Petstore /petstore/v1",
            "subscribe api Petstore /petstore/v1",
        ],
        "{changes:#?}"
    );
    assert_eq!(plan.changes(), changes, "the plan's preview matches");
    // Field names only, never values.
    let create = &changes[1];
    assert!(create.fields.contains(&"summary".to_owned()));
    assert!(create.fields.contains(&"serviceProfiles".to_owned()));
    let rendered = serde_json::to_string(&changes).unwrap();
    assert!(!rendered.contains("All about pets") && !rendered.contains("petstore.example.com"));

    let proxy = the_proxy(&double);
    assert_eq!(proxy["state"], "published");
    assert_eq!(proxy["name"], "Petstore");
    assert_eq!(proxy["summary"], "Pets");
    assert_eq!(proxy["tags"], json!({"team": ["pets"]}));
    assert_eq!(proxy["descriptionManual"], "All about pets");
    assert_eq!(
        proxy["serviceProfiles"]["_default"]["basePath"],
        "https://petstore.example.com:8443"
    );
    assert_eq!(proxy["organizationId"], org_id(&double, OWNER).as_str());
    let id = text(&proxy["id"]);
    assert_eq!(double.org_access(&id), vec![org_id(&double, CONSUMERS)]);
    assert_eq!(double.app_access(&app_id(&double, APP)), vec![id.clone()]);
    assert_eq!(double.backends().len(), 1);
    let consumers = double
        .organizations()
        .into_iter()
        .find(|o| o["name"] == CONSUMERS)
        .unwrap();
    assert_eq!(consumers["email"], "consumers@example.com");

    // Every write carried the session and the CSRF token.
    for r in double.requests() {
        if r.method != "GET" && !r.path.ends_with("/login") {
            assert!(
                r.csrf.is_some(),
                "{} {} without CSRF token",
                r.method,
                r.path
            );
        }
        if !r.path.ends_with("/login") {
            assert!(r.has_session, "{} {} without session", r.method, r.path);
        }
    }

    assert_second_run_is_noop(&double, &c, &desired, &ReconcileOptions::default()).await;
}

#[tokio::test]
async fn description_changes_in_place_on_a_published_api() {
    let double = start().await;
    let c = client(&double);
    let id = create_published(&double, &c).await;

    let mut api = petstore_api(ApiState::Published);
    api.proxy_fields
        .insert("descriptionManual".into(), json!("Pets, updated"));
    let desired = state(api);
    double.clear_requests();
    let changes = reconcile::reconcile(&c, &desired, &ReconcileOptions::default())
        .await
        .unwrap();
    assert_eq!(actions(&changes), vec!["update api Petstore /petstore/v1"]);
    assert_eq!(changes[0].fields, vec!["descriptionManual".to_owned()]);
    assert_eq!(
        double.write_calls(),
        vec![format!("PUT /api/portal/v1.4/proxies/{id}")]
    );
    let proxy = the_proxy(&double);
    assert_eq!(proxy["id"], id.as_str());
    assert_eq!(proxy["state"], "published");
    assert_eq!(proxy["descriptionManual"], "Pets, updated");
    assert_second_run_is_noop(&double, &c, &desired, &ReconcileOptions::default()).await;
}

/// apim-cli's `API` model lets `summary` and `tags` change only while an API
/// is unpublished (not breaking, so no `-force`): they are applied by
/// republishing, and the access the API had is kept.
#[tokio::test]
async fn summary_and_tags_on_a_published_api_republish_without_breaking_permission() {
    let double = start().await;
    let c = client(&double);
    let id = create_published(&double, &c).await;

    let mut api = petstore_api(ApiState::Published);
    api.proxy_fields
        .insert("summary".into(), json!("All the pets"));
    api.proxy_fields
        .insert("tags".into(), json!({"team": ["pets"], "tier": ["gold"]}));
    let desired = state(api);
    let plan = reconcile::plan(&c, &desired, &ReconcileOptions::default())
        .await
        .unwrap();
    assert_eq!(plan.apis[0].action, ApiAction::Republish);
    assert!(plan.apis[0].breaking_fields.is_empty());
    double.clear_requests();
    let changes = reconcile::apply(&c, &desired, &plan).await.unwrap();
    assert_eq!(
        actions(&changes),
        vec!["republish api Petstore /petstore/v1"]
    );
    let mut changed = changes[0].fields.clone();
    changed.sort();
    assert_eq!(changed, vec!["summary", "tags"]);
    assert_eq!(
        double.write_calls(),
        vec![
            format!("POST /api/portal/v1.4/proxies/{id}/unpublish"),
            format!("PUT /api/portal/v1.4/proxies/{id}"),
            format!("POST /api/portal/v1.4/proxies/{id}/publish"),
        ]
    );
    let proxy = the_proxy(&double);
    assert_eq!(proxy["state"], "published");
    assert_eq!(proxy["summary"], "All the pets");
    assert_eq!(proxy["tags"], json!({"team": ["pets"], "tier": ["gold"]}));
    assert_eq!(double.org_access(&id), vec![org_id(&double, CONSUMERS)]);
    assert_eq!(double.app_access(&app_id(&double, APP)), vec![id]);
    assert_second_run_is_noop(&double, &c, &desired, &ReconcileOptions::default()).await;
}

#[tokio::test]
async fn summary_and_tags_change_in_place_on_an_unpublished_api() {
    let double = start().await;
    let c = client(&double);
    let mut api = petstore_api(ApiState::Unpublished);
    api.client_organizations.clear();
    reconcile::reconcile(&c, &state(api.clone()), &ReconcileOptions::default())
        .await
        .unwrap();
    let id = text(&the_proxy(&double)["id"]);

    api.proxy_fields
        .insert("summary".into(), json!("All the pets"));
    api.proxy_fields
        .insert("tags".into(), json!({"team": ["cats"]}));
    let desired = state(api);
    double.clear_requests();
    let changes = reconcile::reconcile(&c, &desired, &ReconcileOptions::default())
        .await
        .unwrap();
    assert_eq!(actions(&changes), vec!["update api Petstore /petstore/v1"]);
    assert_eq!(
        double.write_calls(),
        vec![format!("PUT /api/portal/v1.4/proxies/{id}")]
    );
    assert_eq!(the_proxy(&double)["tags"], json!({"team": ["cats"]}));
    assert_second_run_is_noop(&double, &c, &desired, &ReconcileOptions::default()).await;
}

fn passthrough_security() -> Value {
    json!([{
        "name": "_default",
        "isDefault": true,
        "devices": [{"name": "Pass Through", "type": "passThrough", "order": 0,
                     "properties": {"subjectIdFieldName": "Pass Through", "removeCredentialsOnSuccess": "true"}}]
    }])
}

#[tokio::test]
async fn breaking_change_is_refused_without_permission_and_writes_nothing() {
    let double = start().await;
    let c = client(&double);
    let id = create_published(&double, &c).await;

    let mut api = petstore_api(ApiState::Published);
    api.proxy_fields
        .insert("securityProfiles".into(), passthrough_security());
    let desired = state(api);
    double.clear_requests();
    let err = reconcile::reconcile(&c, &desired, &ReconcileOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Breaking(_)), "{err}");
    assert_eq!(err.breaking_fields(), vec!["securityProfiles"]);
    let message = err.to_string();
    assert!(
        message.contains("api Petstore /petstore/v1 (securityProfiles)"),
        "{message}"
    );
    assert!(message.contains("breaking_changes"), "{message}");
    assert_eq!(double.write_calls(), Vec::<String>::new());
    assert_eq!(the_proxy(&double)["id"], id.as_str());

    // Unpublishing is breaking too.
    let err = reconcile::reconcile(
        &c,
        &state(petstore_api(ApiState::Unpublished)),
        &ReconcileOptions::default(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.breaking_fields(), vec!["state"]);
    assert_eq!(double.write_calls(), Vec::<String>::new());
}

#[tokio::test]
async fn breaking_change_republishes_when_allowed() {
    let double = start().await;
    let c = client(&double);
    let id = create_published(&double, &c).await;

    let mut api = petstore_api(ApiState::Published);
    api.proxy_fields
        .insert("securityProfiles".into(), passthrough_security());
    let desired = state(api);
    double.clear_requests();
    let changes = reconcile::reconcile(&c, &desired, &allow()).await.unwrap();
    assert_eq!(
        actions(&changes),
        vec!["republish api Petstore /petstore/v1"]
    );
    assert_eq!(changes[0].fields, vec!["securityProfiles"]);
    let writes = double.write_calls();
    assert_eq!(
        writes[0],
        format!("POST /api/portal/v1.4/proxies/{id}/unpublish")
    );
    assert_eq!(writes[1], format!("PUT /api/portal/v1.4/proxies/{id}"));
    assert_eq!(
        writes[2],
        format!("POST /api/portal/v1.4/proxies/{id}/publish")
    );
    let proxy = the_proxy(&double);
    assert_eq!(proxy["id"], id.as_str());
    assert_eq!(proxy["state"], "published");
    assert_eq!(
        proxy["securityProfiles"][0]["devices"][0]["type"],
        "passThrough"
    );
    assert_eq!(double.org_access(&id), vec![org_id(&double, CONSUMERS)]);
    assert_eq!(double.app_access(&app_id(&double, APP)), vec![id]);
    assert_second_run_is_noop(&double, &c, &desired, &allow()).await;
}

#[tokio::test]
async fn changed_specification_recreates_the_api_and_moves_its_consumers() {
    let double = start().await;
    double.add_organization(PARTNERS);
    let c = client(&double);
    let old_id = create_published(&double, &c).await;
    let old_backend = text(&the_proxy(&double)["apiId"]);
    // Access granted outside the config survives in add mode.
    c.grant_org_access(&old_id, &[org_id(&double, PARTNERS)])
        .await
        .unwrap();

    let mut api = petstore_api(ApiState::Published);
    api.specification = petstore_changed();
    let desired = state(api);

    // Without permission: refused, nothing written.
    double.clear_requests();
    let err = reconcile::reconcile(&c, &desired, &ReconcileOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.breaking_fields(), vec!["apiSpecification"]);
    assert!(double.write_calls().is_empty());

    let changes = reconcile::reconcile(&c, &desired, &allow()).await.unwrap();
    assert_eq!(
        actions(&changes),
        vec!["recreate api Petstore /petstore/v1"],
        "{changes:#?}"
    );
    assert_eq!(changes[0].fields, vec!["apiSpecification"]);

    let proxy = the_proxy(&double);
    let new_id = text(&proxy["id"]);
    assert_ne!(new_id, old_id);
    assert_eq!(proxy["state"], "published");
    assert!(
        double.proxies().iter().all(|p| p["id"] != old_id.as_str()),
        "old proxy deleted"
    );
    assert!(
        double
            .backends()
            .iter()
            .all(|b| b["id"] != old_backend.as_str()),
        "old backend deleted"
    );
    assert_eq!(double.backends().len(), 1);
    let mut granted = double.org_access(&new_id);
    granted.sort();
    let mut expected = vec![org_id(&double, CONSUMERS), org_id(&double, PARTNERS)];
    expected.sort();
    assert_eq!(granted, expected);
    assert_eq!(
        double.app_access(&app_id(&double, APP)),
        vec![new_id.clone()]
    );
    let writes = double.write_calls();
    assert!(
        writes
            .iter()
            .any(|w| w.starts_with(&format!("POST /api/portal/v1.4/proxies/upgrade/{old_id}"))),
        "{writes:#?}"
    );
    assert_second_run_is_noop(&double, &c, &desired, &allow()).await;
}

#[tokio::test]
async fn recreation_can_retire_the_old_api_instead_of_deleting_it() {
    let double = start().await;
    let c = client(&double);
    let old_id = create_published(&double, &c).await;

    let mut api = petstore_api(ApiState::Published);
    api.specification = petstore_changed();
    let desired = state(api);
    let options = ReconcileOptions {
        allow_breaking: true,
        replaced_api: ReplacedApi::Retire {
            after: Duration::from_secs(30 * 24 * 3600),
        },
    };
    reconcile::reconcile(&c, &desired, &options).await.unwrap();
    let old = double
        .proxies()
        .into_iter()
        .find(|p| p["id"] == old_id.as_str())
        .expect("old proxy kept");
    assert_eq!(old["retired"], true);
    assert_eq!(old["deprecated"], true);
    let new = the_proxy(&double);
    assert_ne!(new["id"], old_id.as_str());
    assert_eq!(
        double.app_access(&app_id(&double, APP)),
        vec![text(&new["id"])]
    );
    assert_second_run_is_noop(&double, &c, &desired, &options).await;
}

#[tokio::test]
async fn unpublished_api_is_recreated_without_breaking_permission() {
    let double = start().await;
    let c = client(&double);
    let mut api = petstore_api(ApiState::Unpublished);
    api.client_organizations.clear();
    api.applications.clear();
    reconcile::reconcile(&c, &state(api.clone()), &ReconcileOptions::default())
        .await
        .unwrap();
    let old_id = text(&the_proxy(&double)["id"]);
    api.specification = petstore_changed();
    let changes = reconcile::reconcile(&c, &state(api), &ReconcileOptions::default())
        .await
        .unwrap();
    assert_eq!(
        actions(&changes),
        vec!["recreate api Petstore /petstore/v1"]
    );
    assert_ne!(the_proxy(&double)["id"], old_id.as_str());
    assert_eq!(double.proxies().len(), 1);
}

#[tokio::test]
async fn state_changes_are_their_own_actions() {
    let double = start().await;
    let c = client(&double);
    let id = create_published(&double, &c).await;

    let changes = reconcile::reconcile(
        &c,
        &state(petstore_api(ApiState::Deprecated)),
        &ReconcileOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        actions(&changes),
        vec!["deprecate api Petstore /petstore/v1"]
    );
    assert_eq!(the_proxy(&double)["deprecated"], true);

    let changes = reconcile::reconcile(
        &c,
        &state(petstore_api(ApiState::Published)),
        &ReconcileOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        actions(&changes),
        vec!["undeprecate api Petstore /petstore/v1"]
    );

    let changes = reconcile::reconcile(&c, &state(petstore_api(ApiState::Unpublished)), &allow())
        .await
        .unwrap();
    assert_eq!(
        actions(&changes),
        vec!["unpublish api Petstore /petstore/v1"]
    );
    let proxy = the_proxy(&double);
    assert_eq!(proxy["id"], id.as_str());
    assert_eq!(proxy["state"], "unpublished");
}

#[tokio::test]
async fn organization_grants_in_add_and_replace_mode() {
    let double = start().await;
    double.add_organization(PARTNERS);
    let c = client(&double);
    let id = create_published(&double, &c).await;
    let partners = org_id(&double, PARTNERS);
    let consumers = org_id(&double, CONSUMERS);
    c.grant_org_access(&id, std::slice::from_ref(&partners))
        .await
        .unwrap();

    // Add mode keeps the grant the config does not list.
    let desired = state(petstore_api(ApiState::Published));
    assert_second_run_is_noop(&double, &c, &desired, &ReconcileOptions::default()).await;

    // Replace mode revokes it.
    let mut api = petstore_api(ApiState::Published);
    api.client_orgs_mode = GrantMode::Replace;
    let desired = state(api);
    let changes = reconcile::reconcile(&c, &desired, &ReconcileOptions::default())
        .await
        .unwrap();
    assert_eq!(actions(&changes), vec!["revoke api Petstore /petstore/v1"]);
    assert_eq!(changes[0].fields, vec![PARTNERS]);
    assert_eq!(double.org_access(&id), vec![consumers.clone()]);
    assert_second_run_is_noop(&double, &c, &desired, &ReconcileOptions::default()).await;

    // ALL grants every organization.
    let mut api = petstore_api(ApiState::Published);
    api.client_organizations = vec!["ALL".into()];
    let changes = reconcile::reconcile(&c, &state(api.clone()), &ReconcileOptions::default())
        .await
        .unwrap();
    assert_eq!(actions(&changes), vec!["grant api Petstore /petstore/v1"]);
    assert_eq!(changes[0].fields, vec![PARTNERS]);
    assert!(double.org_access(&id).contains(&partners));
    assert!(double
        .write_calls()
        .iter()
        .any(|w| w == "POST /api/portal/v1.4/proxies/grantaccess"));
    let grant_body = double
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.path.ends_with("/proxies/grantaccess"))
        .and_then(|r| r.body)
        .unwrap();
    assert!(grant_body.contains("action=all_orgs"), "{grant_body}");
    assert_second_run_is_noop(&double, &c, &state(api), &ReconcileOptions::default()).await;
}

#[tokio::test]
async fn application_subscriptions_in_add_and_replace_mode() {
    let double = start().await;
    let c = client(&double);
    let id = create_published(&double, &c).await;
    // An application of the consumers' organization subscribed by hand.
    let other = double.add_application("Other App", CONSUMERS);
    c.subscribe_app(&other, &id).await.unwrap();

    let desired = state(petstore_api(ApiState::Published));
    assert_second_run_is_noop(&double, &c, &desired, &ReconcileOptions::default()).await;
    assert_eq!(double.app_access(&other), vec![id.clone()]);

    let mut api = petstore_api(ApiState::Published);
    api.client_apps_mode = GrantMode::Replace;
    let desired = state(api);
    let changes = reconcile::reconcile(&c, &desired, &ReconcileOptions::default())
        .await
        .unwrap();
    assert_eq!(
        actions(&changes),
        vec!["unsubscribe api Petstore /petstore/v1"]
    );
    assert_eq!(changes[0].fields, vec!["Other App"]);
    assert!(double.app_access(&other).is_empty());
    assert_eq!(double.app_access(&app_id(&double, APP)), vec![id]);
    assert_second_run_is_noop(&double, &c, &desired, &ReconcileOptions::default()).await;
}

#[tokio::test]
async fn application_of_an_organization_without_access_is_a_config_error() {
    let double = start().await;
    double.add_organization(PARTNERS);
    double.add_application("Partner App", PARTNERS);
    let c = client(&double);
    let mut api = petstore_api(ApiState::Published);
    api.applications.push("Partner App".into());
    let err = reconcile::reconcile(&c, &state(api), &ReconcileOptions::default())
        .await
        .unwrap_err();
    let Error::Invalid(problems) = &err else {
        panic!("expected Invalid, got {err}");
    };
    assert!(
        problems
            .iter()
            .any(|p| p.contains("Partner App") && p.contains(PARTNERS)),
        "{problems:?}"
    );
    assert!(double.write_calls().is_empty());
}

#[tokio::test]
async fn failure_mid_way_undoes_what_the_run_created() {
    let double = start().await;
    let c = client(&double);
    double.fail_next("POST", "/publish", 500, 1);
    let err = reconcile::reconcile(
        &c,
        &state(petstore_api(ApiState::Published)),
        &ReconcileOptions::default(),
    )
    .await
    .unwrap_err();
    let Error::Apply(failure) = &err else {
        panic!("expected Apply, got {err}");
    };
    assert_eq!(failure.step, "publish api Petstore /petstore/v1");
    assert_eq!(failure.status, Some(500));
    assert!(failure.not_undone.is_empty(), "{:?}", failure.not_undone);
    let undone = failure.undone.join(" | ");
    assert!(undone.contains("deleted created proxy"), "{undone}");
    assert!(undone.contains("deleted created backend"), "{undone}");
    assert!(
        undone.contains("deleted created organization Consumers"),
        "{undone}"
    );
    let message = err.to_string();
    assert!(
        message.contains("step `publish api Petstore /petstore/v1` failed"),
        "{message}"
    );
    assert!(message.contains("500"), "{message}");
    assert!(message.contains("undone:"), "{message}");
    assert_eq!(
        failure
            .applied
            .iter()
            .map(|c| c.action.as_str())
            .collect::<Vec<_>>(),
        vec!["create"],
        "only the organization had been reported"
    );

    assert!(double.proxies().is_empty(), "{:#?}", double.proxies());
    assert!(double.backends().is_empty());
    assert!(double
        .organizations()
        .iter()
        .all(|o| o["name"] != CONSUMERS));
    // The publish was not retried: a POST that reached API Manager may have been applied.
    let publishes = double
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/publish"))
        .count();
    assert_eq!(publishes, 1);

    // The next run starts clean and succeeds.
    reconcile::reconcile(
        &c,
        &state(petstore_api(ApiState::Published)),
        &ReconcileOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(the_proxy(&double)["state"], "published");
}

#[tokio::test]
async fn failure_after_unpublishing_publishes_again_with_the_access() {
    let double = start().await;
    let c = client(&double);
    let id = create_published(&double, &c).await;
    let mut api = petstore_api(ApiState::Published);
    api.proxy_fields
        .insert("securityProfiles".into(), passthrough_security());
    double.fail_next("PUT", &format!("/proxies/{id}"), 400, 1);
    let err = reconcile::reconcile(&c, &state(api), &allow())
        .await
        .unwrap_err();
    let Error::Apply(failure) = &err else {
        panic!("expected Apply, got {err}");
    };
    assert_eq!(failure.step, "update api Petstore /petstore/v1");
    assert!(
        failure
            .undone
            .iter()
            .any(|u| u.contains("published api Petstore")),
        "{failure:?}"
    );
    let proxy = the_proxy(&double);
    assert_eq!(proxy["state"], "published");
    assert_eq!(proxy["securityProfiles"][0]["devices"][0]["type"], "apiKey");
    assert_eq!(double.org_access(&id), vec![org_id(&double, CONSUMERS)]);
    assert_eq!(double.app_access(&app_id(&double, APP)), vec![id]);
}

#[tokio::test]
async fn server_errors_on_reads_are_retried() {
    let double = start().await;
    let c = client(&double);
    c.login().await.unwrap();
    double.fail_next("GET", "/organizations", 503, 2);
    let plan = reconcile::plan(
        &c,
        &state(petstore_api(ApiState::Published)),
        &ReconcileOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(plan.apis[0].action, ApiAction::Create);
}

#[tokio::test]
async fn wrong_password_is_a_clear_unauthorized_error() {
    let double = start().await;
    double.set_credentials(DEFAULT_USER, "another-password");
    let c = client(&double);
    let err = c.login().await.unwrap_err();
    assert!(matches!(err, ClientError::Unauthorized { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.starts_with(&format!(
            "API Manager at {} refused user apiadmin: check username/password",
            double.url()
        )),
        "{message}"
    );
    assert!(!message.contains(DEFAULT_PASSWORD));

    // Through the reconciler (which logs in on first use): a read error.
    let err = reconcile::reconcile(
        &c,
        &state(petstore_api(ApiState::Published)),
        &ReconcileOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, Error::Read(ClientError::Unauthorized { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("check username/password"));
}

#[tokio::test]
async fn tls_with_a_trusted_ca_or_insecure() {
    let double = ApiManagerDouble::start_tls().await.unwrap();
    double.add_organization(OWNER);
    let url = double.url();
    assert!(url.starts_with("https://"));
    let ca = double.ca_pem().unwrap();

    let trusted = ApiManagerClient::new(config(&url).with_ca_pem(ca.into_bytes())).unwrap();
    reconcile::reconcile(
        &trusted,
        &state(petstore_api(ApiState::Published)),
        &ReconcileOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(the_proxy(&double)["state"], "published");

    let insecure = ApiManagerClient::new(config(&url).insecure()).unwrap();
    insecure.login().await.unwrap();
    assert!(insecure.csrf_token().is_some());

    let untrusted = ApiManagerClient::new(config(&url)).unwrap();
    let err = untrusted.login().await.unwrap_err();
    assert!(matches!(err, ClientError::Transport { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("POST /login"), "{message}");
    assert!(message.contains("certificate"), "{message}");
    assert!(
        message.contains("(after 1 attempt(s))"),
        "not retried: {message}"
    );
}

#[tokio::test]
async fn v1_3_base_path() {
    let double = start().await;
    let c = ApiManagerClient::new(
        ClientConfig::new(
            double.url(),
            ApimVersion::V1_3,
            DEFAULT_USER,
            DEFAULT_PASSWORD,
        )
        .with_retries(3, Duration::from_millis(10)),
    )
    .unwrap();
    reconcile::reconcile(
        &c,
        &state(petstore_api(ApiState::Published)),
        &ReconcileOptions::default(),
    )
    .await
    .unwrap();
    let requests = double.requests();
    assert!(!requests.is_empty());
    assert!(
        requests
            .iter()
            .all(|r| r.path.starts_with("/api/portal/v1.3/")),
        "{:#?}",
        requests.iter().map(|r| &r.path).collect::<Vec<_>>()
    );
    assert_eq!(the_proxy(&double)["state"], "published");
}

#[tokio::test]
async fn logout_ends_the_session() {
    let double = start().await;
    let c = client(&double);
    c.login().await.unwrap();
    c.logout().await.unwrap();
    let last = double.requests().pop().unwrap();
    assert_eq!(last.method, "DELETE");
    assert_eq!(last.path, "/api/portal/v1.4/login");
    // A later call logs in again by itself.
    let orgs = c.organizations().await.unwrap();
    assert_eq!(orgs.len(), 1);
}

#[tokio::test]
async fn policy_names_vhost_and_url_specifications_are_idempotent() {
    let double = start().await;
    let c = client(&double);
    let mut api = petstore_api(ApiState::Published);
    api.vhost = Some("api.example.com".into());
    api.proxy_fields.insert(
        "outboundProfiles".into(),
        json!({"_default": {"requestPolicy": "Validate Size & Token", "routeType": "proxy"}}),
    );
    let mut wsdl = petstore_api(ApiState::Unpublished);
    wsdl.name = "Calculator".into();
    wsdl.path = "/calculator".into();
    wsdl.client_organizations.clear();
    wsdl.applications.clear();
    wsdl.backend_basepath = None;
    wsdl.specification = ApiSpecification {
        source: SpecSource::Url("http://www.dneonline.com/calculator.asmx?wsdl".into()),
        kind: SpecKind::Wsdl,
    };
    let desired = DesiredState {
        apis: vec![api, wsdl],
        ..state(petstore_api(ApiState::Published))
    };
    let plan = reconcile::plan(&c, &desired, &ReconcileOptions::default())
        .await
        .unwrap();
    assert!(
        plan.warnings.iter().any(|w| w.contains("policies")),
        "the double lists no policies: {:?}",
        plan.warnings
    );
    reconcile::apply(&c, &desired, &plan).await.unwrap();

    let proxy = the_proxy(&double);
    assert_eq!(proxy["vhost"], "api.example.com");
    assert_eq!(
        proxy["outboundProfiles"]["_default"]["requestPolicy"],
        "<key type='FilterCircuit'><id field='name' value='Validate Size &amp; Token'/></key>"
    );
    let publish = double
        .requests()
        .into_iter()
        .find(|r| r.path.ends_with("/publish"))
        .unwrap();
    assert_eq!(publish.body.as_deref(), Some("vhost=api.example.com"));
    let calculator = double
        .proxies()
        .into_iter()
        .find(|p| p["path"] == "/calculator")
        .expect("the WSDL API");
    assert_eq!(calculator["state"], "unpublished");
    assert!(double
        .requests()
        .iter()
        .any(|r| r.path.ends_with("/apirepo/importFromUrl/")));

    assert_second_run_is_noop(&double, &c, &desired, &ReconcileOptions::default()).await;
}

#[tokio::test]
async fn backend_base_path_is_a_breaking_service_profile_change() {
    let double = start().await;
    let c = client(&double);
    let id = create_published(&double, &c).await;
    let mut api = petstore_api(ApiState::Published);
    api.backend_basepath = Some("https://pets-v2.example.com".into());
    let desired = state(api);
    let err = reconcile::reconcile(&c, &desired, &ReconcileOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.breaking_fields(), vec!["serviceProfiles"]);
    let changes = reconcile::reconcile(&c, &desired, &allow()).await.unwrap();
    assert_eq!(
        actions(&changes),
        vec!["republish api Petstore /petstore/v1"]
    );
    let proxy = the_proxy(&double);
    assert_eq!(proxy["id"], id.as_str());
    assert_eq!(
        proxy["serviceProfiles"]["_default"]["basePath"],
        "https://pets-v2.example.com"
    );
    assert_eq!(
        proxy["serviceProfiles"]["_default"]["apiId"], proxy["apiId"],
        "the backend reference is kept"
    );
    assert_second_run_is_noop(&double, &c, &desired, &allow()).await;
}

#[tokio::test]
async fn failed_recreation_leaves_the_old_api_serving_its_consumers() {
    let double = start().await;
    let c = client(&double);
    let old_id = create_published(&double, &c).await;
    let mut api = petstore_api(ApiState::Published);
    api.specification = petstore_changed();
    // Deleting the replaced proxy fails (DELETE is retried: fail every attempt).
    double.fail_next("DELETE", &format!("/proxies/{old_id}"), 500, 3);
    let err = reconcile::reconcile(&c, &state(api), &allow())
        .await
        .unwrap_err();
    let Error::Apply(failure) = &err else {
        panic!("expected Apply, got {err}");
    };
    assert!(
        failure.step.starts_with("delete the replaced proxy"),
        "{err}"
    );
    assert!(failure.not_undone.is_empty(), "{err}");
    let undone = failure.undone.join(" | ");
    assert!(undone.contains("moved access back"), "{undone}");
    assert!(undone.contains("deleted created proxy"), "{undone}");

    let proxy = the_proxy(&double);
    assert_eq!(proxy["id"], old_id.as_str());
    assert_eq!(proxy["state"], "published");
    assert_eq!(double.backends().len(), 1);
    assert_eq!(double.org_access(&old_id), vec![org_id(&double, CONSUMERS)]);
    assert_eq!(double.app_access(&app_id(&double, APP)), vec![old_id]);
}

/// A promotion that died between importing the backend and creating the
/// proxy (no undo ran) is delivered again: the leftover backend is reused,
/// not imported a second time. A backend with another specification, or one
/// a proxy uses, is never taken.
#[tokio::test]
async fn a_redelivered_promotion_reuses_the_backend_an_interrupted_one_imported() {
    let double = start().await;
    let c = client(&double);
    let owner = org_id(&double, OWNER);
    // The interrupted attempt: the import, then nothing.
    let leftover = c
        .import_backend("Petstore", &owner, &petstore())
        .await
        .unwrap();
    let leftover = leftover.id().unwrap().to_owned();
    // Noise: same name, other specification; same name, used by a proxy.
    let other_spec = c
        .import_backend("Petstore", &owner, &petstore_changed())
        .await
        .unwrap();
    let other_spec = other_spec.id().unwrap().to_owned();
    double.clear_requests();

    let desired = state(petstore_api(ApiState::Published));
    reconcile::reconcile(&c, &desired, &ReconcileOptions::default())
        .await
        .unwrap();
    let proxy = the_proxy(&double);
    assert_eq!(
        proxy["apiId"],
        leftover.as_str(),
        "the leftover backend was used"
    );
    assert!(
        !double
            .write_calls()
            .iter()
            .any(|w| w.contains("/apirepo/import")),
        "nothing imported again: {:?}",
        double.write_calls()
    );
    assert_eq!(double.backends().len(), 2, "no new backend");
    assert!(double
        .backends()
        .iter()
        .any(|b| b["id"] == other_spec.as_str()));

    // Another API of the same name in another path gets its own backend: the
    // leftover is in use now.
    let mut second = petstore_api(ApiState::Unpublished);
    second.path = "/petstore/v2".into();
    double.clear_requests();
    reconcile::reconcile(&c, &state(second), &ReconcileOptions::default())
        .await
        .unwrap();
    assert!(
        double
            .write_calls()
            .iter()
            .any(|w| w.contains("/apirepo/import")),
        "{:?}",
        double.write_calls()
    );
    assert_eq!(double.backends().len(), 3);
}
