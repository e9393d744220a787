//! The API Manager test double (`gantry_tests::apimanager`) and the WireMock
//! stub server (`gantry_tests::wiremock`), driven with plain reqwest: session
//! and CSRF rules, backend import from the real petstore spec, the proxy
//! lifecycle and its state rules, filters, organization access, application
//! subscriptions, upgrades, fault injection, request recording, TLS, and
//! apim-cli's own stubs.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use gantry_tests::apimanager::{ApiManagerDouble, BASE_PATH, CSRF_HEADER, SESSION_COOKIE};
use gantry_tests::wiremock::{default_fixture_dir, WireMockStubs};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------
// Helpers

fn fixture_bytes(rel: &str) -> Vec<u8> {
    let path = default_fixture_dir().join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn fixture(rel: &str) -> Value {
    serde_json::from_slice(&fixture_bytes(rel)).expect("fixture is JSON")
}

fn petstore() -> Vec<u8> {
    fixture_bytes("../examples/petstore.json")
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

fn s(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("not a string: {v}"))
        .to_owned()
}

/// A reqwest client with a cookie store, logged in or not, and the CSRF token.
struct Api {
    http: reqwest::Client,
    base: String,
    csrf: Option<String>,
}

impl Api {
    fn new(base: &str) -> Api {
        Api::with(
            base,
            reqwest::Client::builder()
                .cookie_store(true)
                .build()
                .unwrap(),
        )
    }

    fn with(base: &str, http: reqwest::Client) -> Api {
        Api {
            http,
            base: base.to_owned(),
            csrf: None,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{BASE_PATH}{path}", self.base)
    }

    async fn login_as(&self, user: &str, password: &str) -> reqwest::Response {
        self.http
            .post(self.url("/login"))
            .form(&[("username", user), ("password", password)])
            .send()
            .await
            .unwrap()
    }

    /// Logs in as apiadmin and fetches the CSRF token from /currentuser.
    async fn login(mut self) -> Api {
        let resp = self.login_as("apiadmin", "changeme").await;
        assert_eq!(resp.status(), StatusCode::SEE_OTHER);
        let resp = self
            .http
            .get(self.url("/currentuser"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        self.csrf = resp
            .headers()
            .get(CSRF_HEADER)
            .map(|v| v.to_str().unwrap().to_owned());
        assert!(self.csrf.is_some(), "no CSRF-Token header on /currentuser");
        self
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut req = self.http.request(method, self.url(path));
        if let Some(csrf) = &self.csrf {
            req = req.header(CSRF_HEADER, csrf);
        }
        req
    }

    async fn call(req: reqwest::RequestBuilder) -> (u16, Value) {
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        Self::call(self.request(Method::GET, path)).await
    }

    async fn post_json(&self, path: &str, body: Value) -> (u16, Value) {
        Self::call(self.request(Method::POST, path).json(&body)).await
    }

    async fn put_json(&self, path: &str, body: Value) -> (u16, Value) {
        Self::call(self.request(Method::PUT, path).json(&body)).await
    }

    async fn post_form(&self, path: &str, form: &[(&str, &str)]) -> (u16, Value) {
        Self::call(self.request(Method::POST, path).form(form)).await
    }

    async fn delete(&self, path: &str) -> (u16, Value) {
        Self::call(self.request(Method::DELETE, path)).await
    }

    /// Imports the petstore spec as a backend API; returns its JSON.
    async fn import_petstore(&self, name: &str, org: &str) -> Value {
        let form = reqwest::multipart::Form::new()
            .text("name", name.to_owned())
            .text("type", "swagger")
            .part(
                "file",
                reqwest::multipart::Part::bytes(petstore())
                    .file_name("petstore.json")
                    .mime_str("application/json")
                    .unwrap(),
            )
            .text("fileName", "XYZ")
            .text("organizationId", org.to_owned())
            .text("integral", "false")
            .text("uploadType", "html5");
        let (status, backend) = Self::call(
            self.request(Method::POST, "/apirepo/import/")
                .multipart(form),
        )
        .await;
        assert_eq!(status, 201, "{backend}");
        backend
    }

    /// Creates an unpublished proxy for `backend` in `org`; returns its JSON.
    async fn create_proxy(&self, backend: &Value, org: &str) -> Value {
        let (status, proxy) = self
            .post_json(
                "/proxies",
                json!({"apiId": backend["id"], "organizationId": org}),
            )
            .await;
        assert_eq!(status, 201, "{proxy}");
        proxy
    }

    async fn publish(&self, proxy: &Value) {
        let (status, body) = self
            .post_form(&format!("/proxies/{}/publish", s(&proxy["id"])), &[])
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["state"], "published");
    }
}

fn error_code(body: &Value) -> u64 {
    body["errors"][0]["code"]
        .as_u64()
        .unwrap_or_else(|| panic!("not an API Manager error body: {body}"))
}

// ---------------------------------------------------------------------------
// API Manager double

#[tokio::test]
async fn session_and_csrf_rules() {
    let double = ApiManagerDouble::start().await.unwrap();
    let anonymous = Api::new(&double.url());

    let (status, body) = anonymous.get("/proxies").await;
    assert_eq!(status, 401);
    assert_eq!(error_code(&body), 401);

    let resp = anonymous.login_as("apiadmin", "wrong").await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.headers().get("set-cookie").is_none());

    let resp = anonymous.login_as("apiadmin", "changeme").await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert!(resp.headers().get("location").is_none());
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.starts_with(&format!("{SESSION_COOKIE}=")),
        "{cookie}"
    );
    assert!(cookie.contains("HttpOnly"), "{cookie}");

    // Logged in but without the CSRF token: reads work, writes are refused.
    let (status, _) = anonymous.get("/organizations").await;
    assert_eq!(status, 200);
    let (status, body) = anonymous
        .post_json("/organizations", json!({"name": "no-csrf"}))
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(double.organizations().is_empty());

    let resp = anonymous
        .http
        .get(anonymous.url("/currentuser"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let csrf = resp.headers()[CSRF_HEADER].to_str().unwrap().to_owned();
    let user: Value = resp.json().await.unwrap();
    assert_eq!(user["loginName"], "apiadmin");
    assert_eq!(user["role"], "admin");

    let mut api = anonymous;
    api.csrf = Some("not-the-token".to_owned());
    let (status, _) = api
        .post_json("/organizations", json!({"name": "wrong-csrf"}))
        .await;
    assert_eq!(status, 403);
    api.csrf = Some(csrf.clone());
    let (status, org) = api
        .post_json("/organizations", json!({"name": "with-csrf"}))
        .await;
    assert_eq!(status, 201, "{org}");
    assert_eq!(double.organizations().len(), 1);

    // v1.3 is served too.
    let resp = api
        .http
        .get(format!("{}/api/portal/v1.3/organizations", double.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.json::<Value>()
            .await
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let last = double.requests().pop().unwrap();
    assert!(last.has_session);
    let post = double
        .requests()
        .into_iter()
        .find(|r| {
            r.method == "POST"
                && r.path.ends_with("/organizations")
                && r.csrf.as_deref() == Some(csrf.as_str())
        })
        .expect("the accepted POST was recorded with its CSRF token");
    assert_eq!(post.body.as_deref(), Some(r#"{"name":"with-csrf"}"#));

    // Logout ends the session.
    let (status, _) = api.delete("/login").await;
    assert_eq!(status, 204);
    let (status, _) = api.get("/organizations").await;
    assert_eq!(status, 401);
    assert!(!double.requests().pop().unwrap().has_session);
    // ... on the server side too: replaying the old cookie does not work.
    let session = cookie.split(';').next().unwrap().to_owned();
    let resp = reqwest::Client::new()
        .get(api.url("/organizations"))
        .header("Cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // Other credentials.
    double.set_credentials("deployer", "s3cret");
    let other = Api::new(&double.url());
    assert_eq!(
        other.login_as("apiadmin", "changeme").await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        other.login_as("deployer", "s3cret").await.status(),
        StatusCode::SEE_OTHER
    );
    let (_, user) = other.get("/currentuser").await;
    assert_eq!(user["loginName"], "deployer");
}

#[tokio::test]
async fn backend_import_and_proxy_lifecycle() {
    let double = ApiManagerDouble::start().await.unwrap();
    let org = double.add_organization("API Development");
    let api = Api::new(&double.url()).login().await;

    let backend = api.import_petstore("Petstore", &org).await;
    assert_eq!(backend["name"], "Petstore");
    assert_eq!(backend["basePath"], "https://petstore.swagger.io");
    assert_eq!(backend["resourcePath"], "/v2");
    assert_eq!(backend["version"], "1.0.0");
    assert_eq!(backend["serviceType"], "rest");
    assert_eq!(backend["organizationId"], org.as_str());
    assert_eq!(backend["properties"]["ResourceType"], "swagger20");
    assert_eq!(backend["properties"]["info.title"], "Swagger Petstore");
    let urls: Vec<String> =
        serde_json::from_str(backend["properties"]["backendUrls"].as_str().unwrap()).unwrap();
    assert_eq!(
        urls,
        [
            "https://petstore.swagger.io/v2",
            "http://petstore.swagger.io/v2"
        ]
    );
    assert!(backend["models"]["Pet"].is_object());
    let backend_id = s(&backend["id"]);
    assert_eq!(double.backends(), vec![backend.clone()]);

    // The original spec comes back byte for byte.
    let resp = api
        .request(
            Method::GET,
            &format!("/apirepo/{backend_id}/download?original=true"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let disposition = resp.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        disposition.contains("filename=\"petstore.json\""),
        "{disposition}"
    );
    assert_eq!(resp.bytes().await.unwrap().to_vec(), petstore());
    let (status, got) = api.get(&format!("/apirepo/{backend_id}")).await;
    assert_eq!((status, &got), (200, &backend));

    // Create: unpublished, derived from the backend.
    let proxy = api.create_proxy(&backend, &org).await;
    let id = s(&proxy["id"]);
    assert_eq!(proxy["state"], "unpublished");
    assert_eq!(proxy["path"], "/v2");
    assert_eq!(proxy["name"], "Petstore");
    assert_eq!(proxy["version"], "1.0.0");
    assert_eq!(proxy["apiId"], backend_id.as_str());
    assert_eq!(
        proxy["serviceProfiles"]["_default"]["basePath"],
        "https://petstore.swagger.io"
    );

    // Unpublished: anything may change; managed fields stay.
    let mut desired = proxy.clone();
    desired["path"] = json!("/petstore/v1");
    desired["securityProfiles"][0]["devices"] = json!([{
        "name": "Pass Through", "type": "passThrough", "order": 0,
        "properties": {"subjectIdFieldName": "Pass Through", "removeCredentialsOnSuccess": "true"}
    }]);
    desired["state"] = json!("published");
    let (status, updated) = api.put_json(&format!("/proxies/{id}"), desired).await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["path"], "/petstore/v1");
    assert_eq!(
        updated["securityProfiles"][0]["devices"][0]["type"],
        "passThrough"
    );
    assert_eq!(
        updated["state"], "unpublished",
        "state only changes via publish"
    );

    api.publish(&updated).await;
    let (status, body) = api.post_form(&format!("/proxies/{id}/publish"), &[]).await;
    assert_eq!(status, 403, "publishing twice: {body}");

    // Published: breaking changes are refused and change nothing.
    let (_, published) = api.get(&format!("/proxies/{id}")).await;
    let mut breaking = published.clone();
    breaking["path"] = json!("/elsewhere");
    let (status, body) = api.put_json(&format!("/proxies/{id}"), breaking).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("path"));
    let mut breaking = published.clone();
    breaking["inboundProfiles"]["_default"]["monitorAPI"] = json!(false);
    let (status, _) = api.put_json(&format!("/proxies/{id}"), breaking).await;
    assert_eq!(status, 403);
    assert_eq!(double.proxies()[0], published);

    // ... non-breaking ones are allowed.
    let mut harmless = published.clone();
    harmless["summary"] = json!("Pets, the API");
    harmless["descriptionManual"] = json!("All about pets");
    harmless["customProperty1"] = json!("blue");
    let (status, body) = api.put_json(&format!("/proxies/{id}"), harmless).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(double.proxies()[0]["summary"], "Pets, the API");
    assert_eq!(double.proxies()[0]["customProperty1"], "blue");

    let (status, _) = api.delete(&format!("/proxies/{id}")).await;
    assert_eq!(status, 403, "a published API cannot be deleted");

    // Deprecation is a flag on a published API.
    let (status, body) = api
        .post_form(
            &format!("/proxies/{id}/deprecate"),
            &[("retirementDate", "2030-01-01T00:00:00Z")],
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["state"], "published");
    assert_eq!(body["deprecated"], true);
    assert_eq!(body["retirementDate"], 1_893_456_000_000i64);
    let mut breaking = body.clone();
    breaking["vhost"] = json!("api.example.com");
    let (status, _) = api.put_json(&format!("/proxies/{id}"), breaking).await;
    assert_eq!(status, 403, "deprecated is still published");
    let (status, body) = api
        .post_form(&format!("/proxies/{id}/undeprecate"), &[])
        .await;
    assert_eq!(status, 201);
    assert_eq!(body["deprecated"], false);

    let (status, body) = api
        .post_form(&format!("/proxies/{id}/unpublish"), &[])
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "unpublished");
    let (status, body) = api
        .post_form(&format!("/proxies/{id}/unpublish"), &[])
        .await;
    assert_eq!(status, 403);
    assert_eq!(body["errors"][0]["message"], "API is already unpublished");

    let (status, _) = api.delete(&format!("/proxies/{id}")).await;
    assert_eq!(status, 204);
    let (status, body) = api.get(&format!("/proxies/{id}")).await;
    assert_eq!(status, 404);
    assert_eq!(body["errors"][0]["message"], "Unknown API");
    assert!(double.proxies().is_empty());

    let (status, _) = api.delete(&format!("/apirepo/{backend_id}")).await;
    assert_eq!(status, 204);
    assert!(double.backends().is_empty());
}

#[tokio::test]
async fn proxy_and_organization_filters_follow_apim_cli_queries() {
    let double = ApiManagerDouble::start().await.unwrap();
    let org = double.add_organization("orga");
    let api = Api::new(&double.url()).login().await;
    let backend = api.import_petstore("petstore", &org).await;
    let first = api.create_proxy(&backend, &org).await;
    let second = api.create_proxy(&backend, &org).await;
    let mut moved = second.clone();
    moved["path"] = json!("/v1/api");
    moved["name"] = json!("Petstore Two");
    assert_eq!(
        api.put_json(&format!("/proxies/{}", s(&second["id"])), moved)
            .await
            .0,
        200
    );
    api.publish(&second).await;

    let ids = |body: &Value| -> Vec<String> {
        body.as_array()
            .unwrap_or_else(|| panic!("not a list: {body}"))
            .iter()
            .map(|p| s(&p["id"]))
            .collect()
    };
    let query = |q: &'static str| format!("/proxies?{q}");
    let (_, all) = api.get("/proxies").await;
    assert_eq!(ids(&all).len(), 2);
    let (_, by_path) = api.get(&query("field=path&op=eq&value=%2Fv1%2Fapi")).await;
    assert_eq!(ids(&by_path), [s(&second["id"])]);
    let (_, by_name) = api.get(&query("field=name&op=eq&value=petstore")).await;
    assert_eq!(ids(&by_name), [s(&first["id"])]);
    let (_, by_api) = api
        .get(&format!(
            "/proxies?field=apiid&op=eq&value={}",
            s(&backend["id"])
        ))
        .await;
    assert_eq!(ids(&by_api).len(), 2);
    let (_, published) = api
        .get(&query(
            "field=path&op=eq&value=%2Fv1%2Fapi&field=state&op=eq&value=published",
        ))
        .await;
    assert_eq!(ids(&published), [s(&second["id"])]);
    let (_, not_published) = api
        .get(&query(
            "field=path&op=eq&value=%2Fv1%2Fapi&field=state&op=ne&value=published",
        ))
        .await;
    assert!(ids(&not_published).is_empty());
    let (_, like) = api.get(&query("field=name&op=like&value=*two*")).await;
    assert_eq!(ids(&like), [s(&second["id"])]);
    let (status, body) = api.get(&query("field=name&op=regex&value=x")).await;
    assert_eq!((status, error_code(&body)), (400, 400));

    let (_, orgs) = api.get("/organizations?field=name&op=eq&value=orga").await;
    assert_eq!(ids(&orgs), vec![org.clone()]);
    let (_, none) = api.get("/organizations?field=name&op=eq&value=orgb").await;
    assert!(ids(&none).is_empty());
}

#[tokio::test]
async fn organization_access_and_application_subscriptions() {
    let double = ApiManagerDouble::start().await.unwrap();
    let owner = double.add_organization("Owners");
    let consumer = double.add_organization("Consumers");
    let app = double.add_application("Consumer App", "Consumers");
    let own_app = double.add_application("Owner App", &owner);
    assert_eq!(
        double.applications()[0]["organizationId"],
        consumer.as_str()
    );
    let api = Api::new(&double.url()).login().await;
    let backend = api.import_petstore("petstore", &owner).await;
    let proxy = api.create_proxy(&backend, &owner).await;
    api.publish(&proxy).await;
    let pid = s(&proxy["id"]);

    // The consumer organization has no access yet: its app cannot subscribe.
    let (status, body) = api
        .post_json(
            &format!("/applications/{app}/apis"),
            json!({"apiId": pid, "enabled": true}),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(double.app_access(&app).is_empty());
    // The owning organization's app may.
    let (status, _) = api
        .post_json(
            &format!("/applications/{own_app}/apis"),
            json!({"apiId": pid}),
        )
        .await;
    assert_eq!(status, 201);

    let (status, _) = api
        .post_form(
            "/proxies/grantaccess",
            &[
                ("action", "orgs"),
                ("apiId", &pid),
                ("grantOrgId", &consumer),
            ],
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(double.org_access(&pid), vec![consumer.clone()]);
    let (status, entries) = api.get(&format!("/organizations/{consumer}/apis")).await;
    assert_eq!(status, 200);
    assert_eq!(entries.as_array().unwrap().len(), 1);
    assert_eq!(entries[0]["apiId"], pid.as_str());
    assert_eq!(entries[0]["state"], "approved");

    let (status, access) = api
        .post_json(
            &format!("/applications/{app}/apis"),
            json!({"apiId": pid, "enabled": true}),
        )
        .await;
    assert_eq!(status, 201, "{access}");
    assert_eq!(access["apiId"], pid.as_str());
    assert_eq!(double.app_access(&app), vec![pid.clone()]);
    let (status, _) = api
        .post_json(&format!("/applications/{app}/apis"), json!({"apiId": pid}))
        .await;
    assert_eq!(status, 409, "subscribing twice");

    let (_, api_access) = api.get(&format!("/proxies/{pid}/apiaccess")).await;
    assert_eq!(api_access[0]["organizationId"], consumer.as_str());
    assert_eq!(api_access[0]["organizationName"], "Consumers");
    assert_eq!(
        api_access[0]["applications"][0]["applicationId"],
        app.as_str()
    );
    let (_, subscribed) = api.get(&format!("/proxies/{pid}/applications")).await;
    let mut names: Vec<String> = subscribed
        .as_array()
        .unwrap()
        .iter()
        .map(|a| s(&a["name"]))
        .collect();
    names.sort();
    assert_eq!(names, ["Consumer App", "Owner App"]);

    let (_, listed) = api.get(&format!("/applications/{app}/apis")).await;
    assert_eq!(listed, json!([access.clone()]));
    let (status, _) = api
        .delete(&format!("/applications/{app}/apis/{}", s(&access["id"])))
        .await;
    assert_eq!(status, 204);
    assert!(double.app_access(&app).is_empty());

    let (status, _) = api
        .delete(&format!(
            "/proxies/{pid}/apiaccess?organizationId={consumer}"
        ))
        .await;
    assert_eq!(status, 204);
    assert!(double.org_access(&pid).is_empty());

    let (status, _) = api
        .post_form(
            "/proxies/grantaccess",
            &[("action", "all_orgs"), ("apiId", &pid)],
        )
        .await;
    assert_eq!(status, 204);
    let mut granted = double.org_access(&pid);
    granted.sort();
    let mut all = vec![owner.clone(), consumer.clone()];
    all.sort();
    assert_eq!(granted, all);

    // Org access through /organizations/{id}/apis, and its removal.
    let second = api.create_proxy(&backend, &owner).await;
    let sid = s(&second["id"]);
    let (status, entry) = api
        .post_json(
            &format!("/organizations/{consumer}/apis"),
            json!({"apiId": sid, "enabled": true}),
        )
        .await;
    assert_eq!(status, 200, "{entry}");
    assert_eq!(double.org_access(&sid), vec![consumer.clone()]);
    let (status, _) = api
        .delete(&format!(
            "/organizations/{consumer}/apis/{}",
            s(&entry["id"])
        ))
        .await;
    assert_eq!(status, 204);
    assert!(double.org_access(&sid).is_empty());

    let (status, body) = api
        .post_form(
            "/proxies/grantaccess",
            &[
                ("action", "orgs"),
                ("apiId", "no-such-api"),
                ("grantOrgId", &consumer),
            ],
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(body["errors"][0]["message"], "Unknown API");
}

#[tokio::test]
async fn upgrade_moves_access_and_subscriptions_to_the_new_api() {
    let double = ApiManagerDouble::start().await.unwrap();
    let owner = double.add_organization("Owners");
    let consumer = double.add_organization("Consumers");
    let app = double.add_application("Consumer App", &consumer);
    let api = Api::new(&double.url()).login().await;
    let backend = api.import_petstore("petstore", &owner).await;
    let old = api.create_proxy(&backend, &owner).await;
    let new = api.create_proxy(&backend, &owner).await;
    let (old_id, new_id) = (s(&old["id"]), s(&new["id"]));
    api.publish(&old).await;
    api.publish(&new).await;
    api.post_form(
        "/proxies/grantaccess",
        &[
            ("action", "orgs"),
            ("apiId", &old_id),
            ("grantOrgId", &consumer),
        ],
    )
    .await;
    let (status, _) = api
        .post_json(
            &format!("/applications/{app}/apis"),
            json!({"apiId": old_id}),
        )
        .await;
    assert_eq!(status, 201);

    let (status, body) = api
        .post_form(
            &format!("/proxies/upgrade/{old_id}"),
            &[
                ("upgradeApiId", new_id.as_str()),
                ("deprecate", "true"),
                ("retire", "false"),
                ("retirementDate", "2031-06-30T00:00:00Z"),
            ],
        )
        .await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(double.org_access(&new_id), vec![consumer.clone()]);
    assert!(double.org_access(&old_id).is_empty());
    assert_eq!(double.app_access(&app), vec![new_id.clone()]);
    let (_, old_now) = api.get(&format!("/proxies/{old_id}")).await;
    assert_eq!(old_now["deprecated"], true);
    assert_eq!(old_now["retired"], false);
    assert_ne!(old_now["retirementDate"], 0);

    let (status, _) = api
        .post_form(
            "/proxies/upgrade/no-such-api",
            &[("upgradeApiId", new_id.as_str())],
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn fail_next_injects_errors_without_changing_state() {
    let double = ApiManagerDouble::start().await.unwrap();
    let api = Api::new(&double.url()).login().await;

    double.fail_next("post", "/organizations", 503, 1);
    let (status, body) = api.post_json("/organizations", json!({"name": "a"})).await;
    assert_eq!(status, 503);
    assert_eq!(error_code(&body), 503);
    assert!(double.organizations().is_empty());
    let (status, _) = api.post_json("/organizations", json!({"name": "a"})).await;
    assert_eq!(status, 201, "only one failure was asked for");
    assert_eq!(double.organizations().len(), 1);

    double.fail_next("GET", "/proxies", 500, 2);
    assert_eq!(
        api.get("/organizations").await.0,
        200,
        "other paths unaffected"
    );
    assert_eq!(api.get("/proxies").await.0, 500);
    assert_eq!(api.get("/proxies?field=name&op=eq&value=x").await.0, 500);
    assert_eq!(api.get("/proxies").await.0, 200);

    // Before authentication: even an anonymous request gets the fault.
    double.fail_next("*", "/currentuser", 502, 1);
    let anonymous = Api::new(&double.url());
    assert_eq!(anonymous.get("/currentuser").await.0, 502);
    assert_eq!(anonymous.get("/currentuser").await.0, 401);
}

#[tokio::test]
async fn write_calls_list_only_writes_and_requests_can_be_cleared() {
    let double = ApiManagerDouble::start().await.unwrap();
    let api = Api::new(&double.url()).login().await;
    let (_, org) = api.post_json("/organizations", json!({"name": "a"})).await;
    let id = s(&org["id"]);
    api.get("/organizations").await;
    let (status, renamed) = api
        .put_json(
            &format!("/organizations/{id}"),
            json!({"name": "b", "email": "b@example.com"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(renamed["dn"], "o=b,ou=organizations,ou=APIPortal");
    assert_eq!(renamed["email"], "b@example.com");
    assert_eq!(api.delete(&format!("/organizations/{id}")).await.0, 204);
    assert_eq!(api.delete("/login").await.0, 204);

    assert_eq!(
        double.write_calls(),
        [
            format!("POST {BASE_PATH}/organizations"),
            format!("PUT {BASE_PATH}/organizations/{id}"),
            format!("DELETE {BASE_PATH}/organizations/{id}"),
        ]
    );
    let methods: Vec<String> = double.requests().iter().map(|r| r.method.clone()).collect();
    assert_eq!(
        methods,
        ["POST", "GET", "POST", "GET", "PUT", "DELETE", "DELETE"]
    );
    double.clear_requests();
    assert!(double.requests().is_empty());
    assert!(double.write_calls().is_empty());
}

#[tokio::test]
async fn objects_have_the_field_sets_of_api_manager() {
    let double = ApiManagerDouble::start().await.unwrap();
    let org = double.add_organization("orga");
    let app = double.add_application("app", &org);
    let api = Api::new(&double.url()).login().await;
    let backend = api.import_petstore("petstore", &org).await;
    let proxy = api.create_proxy(&backend, &org).await;
    let pid = s(&proxy["id"]);
    api.post_form(
        "/proxies/grantaccess",
        &[("action", "orgs"), ("apiId", &pid), ("grantOrgId", &org)],
    )
    .await;
    let (_, app_access) = api
        .post_json(&format!("/applications/{app}/apis"), json!({"apiId": pid}))
        .await;
    let (_, user) = api.get("/currentuser").await;
    let (_, org_access) = api.get(&format!("/organizations/{org}/apis")).await;
    let (_, api_access) = api.get(&format!("/proxies/{pid}/apiaccess")).await;

    let f = |name: &str| fixture(&format!("__files/{name}"));
    assert_eq!(keys(&proxy), keys(&f("frontend_api_unpublished.json")));
    assert_eq!(keys(&proxy), keys(&f("frontend_api_by_id.json")));
    assert_eq!(keys(&backend), keys(&f("backend_api_by_id.json")));
    assert_eq!(
        keys(&double.organizations()[0]),
        keys(&f("organization_by_id.json"))
    );
    assert_eq!(
        keys(&double.applications()[0]),
        keys(&f("application.json"))
    );
    assert_eq!(keys(&user), keys(&f("current_user.json")));
    assert_eq!(
        keys(&user["authAttrs"]),
        keys(&f("current_user.json")["authAttrs"])
    );
    assert_eq!(
        keys(&org_access[0]),
        keys(&f("organization_subscriptions_frontend_api_by_id.json")[0])
    );
    assert_eq!(
        keys(&app_access),
        keys(&f("grantApplicationToAccessApis.json")[0])
    );
    assert!(keys(&app_access).is_superset(&keys(&f("createApplicationAccessToApi.json"))));
    let fixture_access = f("api_access.json");
    assert_eq!(keys(&api_access[0]), keys(&fixture_access[3]));
    assert_eq!(
        keys(&api_access[0]["applications"][0]),
        keys(&fixture_access[3]["applications"][0])
    );
    assert_eq!(
        keys(&proxy["inboundProfiles"]["_default"]),
        keys(&f("frontend_api_unpublished.json")["inboundProfiles"]["_default"])
    );
    assert_eq!(
        keys(&proxy["outboundProfiles"]["_default"]),
        keys(&f("frontend_api_unpublished.json")["outboundProfiles"]["_default"])
    );
}

#[tokio::test]
async fn tls_works_with_the_ca_and_fails_without_it() {
    let double = ApiManagerDouble::start_tls().await.unwrap();
    assert!(
        double.url().starts_with("https://127.0.0.1:"),
        "{}",
        double.url()
    );
    let ca = double.ca_pem().expect("a CA for a TLS double");
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(ApiManagerDouble::start().await.unwrap().ca_pem().is_none());

    let trusting = reqwest::Client::builder()
        .cookie_store(true)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .build()
        .unwrap();
    let api = Api::with(&double.url(), trusting).login().await;
    let (status, _) = api
        .post_json("/organizations", json!({"name": "tls"}))
        .await;
    assert_eq!(status, 201);

    let localhost = double.url().replace("127.0.0.1", "localhost");
    let trusting = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .build()
        .unwrap();
    let resp = trusting
        .get(format!("{localhost}{BASE_PATH}/proxies"))
        .send()
        .await
        .expect("the certificate also names localhost");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    let untrusting = reqwest::Client::new();
    let err = untrusting
        .get(format!("{}{BASE_PATH}/proxies", double.url()))
        .send()
        .await
        .expect_err("a client without the CA must refuse the certificate");
    assert!(err.is_connect() || err.is_request(), "{err:?}");
}

#[tokio::test]
async fn dropping_the_double_stops_the_server() {
    let double = ApiManagerDouble::start().await.unwrap();
    let url = format!("{}{BASE_PATH}/proxies", double.url());
    let client = reqwest::Client::new();
    assert_eq!(
        client.get(&url).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    drop(double);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if reqwest::Client::new().get(&url).send().await.is_err() {
            break;
        }
        assert!(Instant::now() < deadline, "still serving after drop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------
// WireMock stubs

#[tokio::test]
async fn wiremock_serves_every_apim_cli_stub() {
    let stubs = WireMockStubs::start().await.unwrap();
    assert_eq!(stubs.stub_count(), 99);
    let base = format!("{}{BASE_PATH}", stubs.url());
    let client = reqwest::Client::new();

    let resp = client
        .post(format!("{base}/login"))
        .form(&[("username", "apiadmin"), ("password", "changeme")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()["content-type"], "text/plain");
    assert_eq!(resp.headers()["matched-stub-name"], "login.json");

    let resp = client
        .get(format!("{base}/currentuser"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body, fixture("__files/current_user.json"));

    let resp = client
        .get(format!("{base}/proxies"))
        .query(&[("field", "path"), ("op", "eq"), ("value", "/v1/api")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        fixture("__files/frontend_api_by_id.json")
    );
    let resp = client
        .get(format!("{base}/proxies"))
        .query(&[("field", "path"), ("op", "eq"), ("value", "/v2/api")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND, "url matches exactly");

    // formParameters
    let grant = |org: &'static str| {
        client
            .post(format!("{base}/proxies/grantaccess"))
            .form(&[
                ("action", "orgs"),
                ("apiId", "e4ded8c8-0a40-4b50-bc13-552fb7209150"),
                ("grantOrgId", org),
            ])
            .send()
    };
    assert_eq!(
        grant("987b2afc-b027-41fd-a920-bef182eb4a94")
            .await
            .unwrap()
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        grant("00000000-b027-41fd-a920-bef182eb4a94")
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );

    // urlPathPattern, and a priority tie won by the later stub.
    let resp = client
        .get(format!(
            "{base}/applications/3be01ec6-7254-4ce3-a3f1-87636d59c614/apis"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        fixture("__files/grantApplicationToAccessApis.json")
    );
    let resp = client
        .get(format!(
            "{base}/applications/11111111-2222-3333-4444-555555555555/apis"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.json::<Value>().await.unwrap(), json!([]));

    // multipartPatterns: a graphql upload gets the graphql backend.
    let import = |kind: &'static str| {
        let form = reqwest::multipart::Form::new()
            .text("name", "graph")
            .text("type", kind)
            .part(
                "file",
                reqwest::multipart::Part::bytes(b"{}".to_vec()).file_name("f"),
            );
        client
            .post(format!("{base}/apirepo/import/"))
            .multipart(form)
            .send()
    };
    let resp = import("graphql").await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        fixture("__files/backend_api_graphql.json")
    );
    let resp = import("swagger").await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(
        resp.bytes().await.unwrap().to_vec(),
        fixture_bytes("__files/backend_api.json")
    );

    let resp = client
        .get(format!("{base}/no-such-thing"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let report = resp.text().await.unwrap();
    assert!(report.contains("Request was not matched"), "{report}");
    assert!(report.contains("Closest stubs:"), "{report}");

    let served = stubs.served();
    let names: Vec<Option<&str>> = served.iter().map(|(_, n)| n.as_deref()).collect();
    assert_eq!(
        names,
        [
            Some("login.json"),
            Some("currentUser.json"),
            Some("getFrontendByPath.json"),
            None,
            Some("grantApiAccessToOrg.json"),
            None,
            Some("getApplicationToAccessApi.json"),
            Some("getApplicationApi.json"),
            Some("importBackendApi.json"),
            Some("importBackendApi.json"),
            None,
        ]
    );
    assert_eq!(served[0].0.method, "POST");
    assert_eq!(
        served[0].0.body.as_deref(),
        Some("username=apiadmin&password=changeme")
    );
    assert_eq!(
        served[2].0.path,
        format!("{BASE_PATH}/proxies?field=path&op=eq&value=%2Fv1%2Fapi")
    );
}
