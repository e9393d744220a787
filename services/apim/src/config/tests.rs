use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::{json, Value};
use tempfile::TempDir;

use super::*;
use crate::desired::{ApiState, GrantMode, SpecKind, SpecSource};

/// apim-cli's examples (`shared/fixtures/apim-cli/PROVENANCE.md`), found
/// beside the repository (as on developer machines and in CI).
fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|a| a.join("shared/fixtures/apim-cli/examples"))
        .find(|c| c.is_dir())
        .expect("shared/fixtures/apim-cli/examples beside the repository")
}

fn fixture(rel: &str) -> Vec<u8> {
    let path = fixtures().join(rel);
    fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// A checkout on disk.
struct Checkout {
    dir: TempDir,
}

impl Checkout {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// With apim-cli's `petstore.json` at `apis/petstore.json`, where the
    /// examples' `../petstore.json` finds it from `apis/<x>/`.
    fn with_petstore() -> Self {
        let checkout = Self::new();
        checkout.write("apis/petstore.json", fixture("petstore.json"));
        checkout
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn write(&self, rel: &str, content: impl AsRef<[u8]>) -> &Self {
        let path = self.root().join(rel);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(path, content).expect("write");
        self
    }

    fn json(&self, rel: &str, value: Value) -> &Self {
        self.write(rel, serde_json::to_vec_pretty(&value).expect("json"))
    }

    fn load(&self, stage: &str) -> Result<DesiredState, ConfigErrors> {
        self.load_with(stage, &[])
    }

    fn load_with(&self, stage: &str, vars: &[(&str, &str)]) -> Result<DesiredState, ConfigErrors> {
        let lookup = |name: &str| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        };
        let options = LoadOptions {
            stage,
            vars: &lookup,
        };
        load_stage(self.root(), Path::new("apis/"), &options)
    }
}

fn loaded(result: Result<DesiredState, ConfigErrors>) -> DesiredState {
    result.unwrap_or_else(|e| panic!("expected to load, got {e}"))
}

fn failed(result: Result<DesiredState, ConfigErrors>) -> Vec<String> {
    match result {
        Ok(state) => panic!("expected errors, loaded {state:?}"),
        Err(e) => e.errors.iter().map(ToString::to_string).collect(),
    }
}

fn assert_has(messages: &[String], expected: &str) {
    assert!(
        messages.iter().any(|m| m.contains(expected)),
        "no message contains {expected:?}: {messages:#?}"
    );
}

/// A minimal valid API config.
fn api(path: &str) -> Value {
    json!({
        "name": "Petstore",
        "path": path,
        "organization": "API Development",
        "apiSpecification": { "resource": "../petstore.json" }
    })
}

fn only_api(state: &DesiredState) -> &DesiredApi {
    assert_eq!(state.apis.len(), 1, "{state:?}");
    &state.apis[0]
}

#[test]
fn fixtures_resolve() {
    assert!(
        fixtures().join("staging").is_dir(),
        "{} must hold apim-cli's examples",
        fixtures().display()
    );
}

#[test]
fn staging_fixture_merges_per_stage() {
    let checkout = Checkout::with_petstore();
    checkout
        .write(
            "apis/staging/api-config.json",
            fixture("staging/minimal-config-api-specification.json"),
        )
        .write(
            "apis/staging/api-config.api-env.json",
            fixture("staging/minimal-config-api-specification.api-env.json"),
        )
        .write(
            "apis/staging/api-config.prod.json",
            fixture("staging/minimal-config-api-specification.prod.json"),
        );

    // No overlay for `test`: the base as is.
    let state = loaded(checkout.load("test"));
    let base = only_api(&state);
    assert_eq!(base.source, PathBuf::from("apis/staging/api-config.json"));
    assert_eq!(base.name, "Samples Staging Minimal API Base-Config");
    assert_eq!(base.path, "/samples/staging/minimal/api/v1");
    assert_eq!(base.state, ApiState::Unpublished);
    assert_eq!(base.version.as_deref(), Some("1.0.0"));
    assert_eq!(base.organization, "API Development");
    assert_eq!(base.specification.kind, SpecKind::Swagger);
    assert_eq!(
        base.specification.source,
        SpecSource::File {
            path: "apis/petstore.json".into(),
            content: fixture("petstore.json"),
        }
    );
    assert!(base.proxy_fields.is_empty());
    assert!(state.warnings.is_empty());

    // The api-env overlay replaces name, spec and organization only.
    let state = loaded(checkout.load("api-env"));
    let api_env = only_api(&state);
    assert_eq!(api_env.name, "Samples Staging API-ENV override");
    assert_eq!(api_env.path, base.path);
    assert_eq!(api_env.state, ApiState::Unpublished);
    assert_eq!(api_env.version, base.version);
    assert_eq!(api_env.specification, base.specification);
    assert!(state.warnings.is_empty());

    // The prod overlay publishes and adds an image, which is not promoted.
    let state = loaded(checkout.load("prod"));
    let prod = only_api(&state);
    assert_eq!(prod.name, "Samples Staging PROD override");
    assert_eq!(prod.path, base.path);
    assert_eq!(prod.state, ApiState::Published);
    assert_eq!(prod.specification, base.specification);
    assert!(prod.proxy_fields.is_empty());
    assert_eq!(
        state.warnings,
        vec!["apis/staging/api-config.prod.json: field `image`: ignored: API images are not promoted"]
    );
}

type Check = fn(&DesiredApi, &[String]);

enum Expect {
    /// Loads as it is.
    Loads(Check),
    /// Fails as it is, with these messages.
    Fails(&'static [&'static str]),
    /// apim-cli's README passes the spec with `-a`: as it is the config
    /// lacks one; with `apiSpecification.resource` set to it, it loads.
    LoadsWithSpec(&'static str, Check),
    /// As `LoadsWithSpec`, but then fails with these messages.
    FailsWithSpec(&'static str, &'static [&'static str]),
}

fn proxy(api: &DesiredApi, pointer: &str) -> Value {
    let value = Value::Object(api.proxy_fields.clone());
    value
        .pointer(pointer)
        .cloned()
        .unwrap_or_else(|| panic!("no {pointer} in {:#?}", api.proxy_fields))
}

fn keys(api: &DesiredApi) -> Vec<&str> {
    api.proxy_fields.keys().map(String::as_str).collect()
}

const PETSTORE: &str = "../petstore.json";
const MISSING_SPEC: &str = "field `apiSpecification.resource`: is required";
const REMOTE_NOT_WSDL: &str = "field `apiSpecification.resource`: `https://services.odata.org/";
const FILTER: &str = "field `apiSpecification.filter`: is not supported by Gantry";

fn fixture_cases() -> Vec<(&'static str, Expect)> {
    use Expect::*;
    vec![
        ("basic/minimal-config-api-specification-filtered.json", Fails(&[FILTER])),
        (
            "basic/minimal-config-api-specification.json",
            Loads(|api, warnings| {
                assert_eq!(api.name, "Sample Minimal API");
                assert_eq!(api.specification.kind, SpecKind::Swagger);
                assert!(api.proxy_fields.is_empty());
                assert!(warnings.is_empty());
            }),
        ),
        (
            "basic/minimal-config-wsdl-api-specification.json",
            Loads(|api, _| {
                assert_eq!(api.specification.kind, SpecKind::Wsdl);
                assert_eq!(
                    api.specification.source,
                    SpecSource::Url("http://www.dneonline.com/calculator.asmx?wsdl".into())
                );
            }),
        ),
        (
            "basic/minimal-config-wsdl.json",
            LoadsWithSpec("http://www.dneonline.com/calculator.asmx?wsdl", |api, _| {
                assert_eq!(api.path, "/sample/minimal/wsdl/api/v1");
                assert_eq!(api.specification.kind, SpecKind::Wsdl);
            }),
        ),
        (
            "basic/minimal-config.json",
            LoadsWithSpec(PETSTORE, |api, _| {
                assert_eq!(api.path, "/sample/minimal/api/v1");
            }),
        ),
        ("basic/odata-v2-northwind-api-filtered.json", Fails(&[FILTER, REMOTE_NOT_WSDL])),
        ("basic/odata-v2-northwind-api.json", Fails(&[REMOTE_NOT_WSDL])),
        ("basic/odata-v4-trippin-api-filtered.json", Fails(&[FILTER, REMOTE_NOT_WSDL])),
        ("basic/odata-v4-trippin-api.json", Fails(&[REMOTE_NOT_WSDL])),
        (
            "complex/complete-config.json",
            LoadsWithSpec(PETSTORE, |api, warnings| {
                assert_eq!(api.state, ApiState::Published);
                assert_eq!(api.vhost.as_deref(), Some("api.custom-host.com"));
                assert_eq!(api.backend_basepath.as_deref(), Some("https://any.server.com:7676"));
                assert_eq!(
                    keys(api),
                    [
                        "authenticationProfiles",
                        "corsProfiles",
                        "customProperties",
                        "descriptionManual",
                        "descriptionType",
                        "outboundProfiles",
                        "securityProfiles",
                        "summary",
                        "tags",
                    ]
                );
                assert_eq!(
                    proxy(api, "/outboundProfiles/_default/routePolicy"),
                    "Routing policy 1"
                );
                let file = "apis/x/api-config.json";
                assert_eq!(
                    warnings,
                    [
                        format!("{file}: field `caCerts[0]`: ignored: certificates are promoted only with `certBlob`, not from `certFile`"),
                        format!("{file}: field `caCerts[1]`: ignored: certificates are promoted only with `certBlob`, not from `certFile`"),
                        format!("{file}: field `caCerts[2]`: ignored: certificates are promoted only with `certBlob`, not from `certFile`"),
                        format!("{file}: field `caCerts[3]`: ignored: certificates are promoted only with `certBlob`, not from `certFile`"),
                        format!("{file}: field `image`: ignored: API images are not promoted"),
                        format!("{file}: field `applicationQuota`: ignored: API quotas are not promoted"),
                        format!("{file}: field `systemQuota`: ignored: API quotas are not promoted"),
                    ]
                );
            }),
        ),
        (
            "customPolicies/all-policies.json",
            LoadsWithSpec(PETSTORE, |api, _| {
                assert_eq!(keys(api), ["outboundProfiles"]);
                assert_eq!(
                    proxy(api, "/outboundProfiles/_default/faultHandlerPolicy"),
                    "Sample Fault-Handler Policy 1"
                );
            }),
        ),
        (
            "customPolicies/request-policy.json",
            LoadsWithSpec(PETSTORE, |api, _| {
                assert_eq!(
                    proxy(api, "/outboundProfiles/_default/requestPolicy"),
                    "Sample Request Policy 1"
                );
            }),
        ),
        (
            "customPolicies/routing-policy.json",
            LoadsWithSpec(PETSTORE, |api, _| {
                assert_eq!(
                    proxy(api, "/outboundProfiles/_default/routePolicy"),
                    "Sample Routing Policy 1"
                );
            }),
        ),
        (
            "methodLevel/api-key-and-cors-one-method.json",
            LoadsWithSpec(PETSTORE, |api, _| {
                assert_eq!(api.state, ApiState::Published);
                assert_eq!(keys(api), ["corsProfiles", "inboundProfiles", "securityProfiles"]);
                assert_eq!(
                    proxy(api, "/inboundProfiles/findPetsByStatus/securityProfile"),
                    "API-Key"
                );
            }),
        ),
        (
            "methodLevel/api-key-and-cors-two-methods.json",
            LoadsWithSpec(PETSTORE, |api, _| {
                let profiles = proxy(api, "/inboundProfiles");
                assert_eq!(profiles.as_object().map(|p| p.len()), Some(2));
            }),
        ),
        (
            "methodLevel/oauth-default-apikey-on-one-method.json",
            LoadsWithSpec(PETSTORE, |api, _| {
                assert_eq!(proxy(api, "/securityProfiles/0/devices/0/type"), "oauth");
                assert_eq!(proxy(api, "/securityProfiles/1/devices/0/type"), "apiKey");
            }),
        ),
        (
            "methodLevel/outboundbound-httpbasic-add-param.json",
            LoadsWithSpec(PETSTORE, |api, _| {
                assert_eq!(proxy(api, "/authenticationProfiles/0/type"), "http_basic");
                assert_eq!(
                    proxy(api, "/outboundProfiles/getOrderById/parameters/0/name"),
                    "additionalOutboundParam"
                );
            }),
        ),
        (
            "orgsAndApps/apps-using-apiKey-config.json",
            FailsWithSpec(
                PETSTORE,
                &["field `applications[0].apiKey`: identifies the application by a credential: Gantry only supports `name`"],
            ),
        ),
        (
            "orgsAndApps/apps-using-extClientId-config.json",
            FailsWithSpec(PETSTORE, &["field `applications[0].extClientId`: identifies"]),
        ),
        (
            "orgsAndApps/apps-using-oauthClientId-config.json",
            FailsWithSpec(PETSTORE, &["field `applications[0].oauthClientId`: identifies"]),
        ),
        (
            "orgsAndApps/apps-using-name-config.json",
            LoadsWithSpec(PETSTORE, |api, _| {
                assert_eq!(api.applications, ["Client App 1", "Client App 2"]);
                assert_eq!(api.client_apps_mode, GrantMode::Add);
                assert!(api.client_organizations.is_empty());
            }),
        ),
        (
            "orgsAndApps/grant-access-to-all-orgs-config.json",
            LoadsWithSpec(PETSTORE, |api, _| {
                assert_eq!(api.client_organizations, ["ALL"]);
            }),
        ),
        (
            "orgsAndApps/grant-access-to-some-orgs-config.json",
            LoadsWithSpec(PETSTORE, |api, _| {
                assert_eq!(api.client_organizations, ["Another org", "My Partner"]);
                assert_eq!(api.client_orgs_mode, GrantMode::Add);
            }),
        ),
        (
            "quota/multi-restriction-quota.json",
            LoadsWithSpec(PETSTORE, |api, warnings| {
                assert!(api.proxy_fields.is_empty());
                assert_eq!(warnings.len(), 2);
                assert_has(warnings, "field `applicationQuota`: ignored");
                assert_has(warnings, "field `systemQuota`: ignored");
            }),
        ),
        (
            "quota/system-quota-only.json",
            LoadsWithSpec(PETSTORE, |api, warnings| {
                assert!(api.proxy_fields.is_empty());
                assert_eq!(
                    warnings,
                    ["apis/x/api-config.json: field `systemQuota`: ignored: API quotas are not promoted"]
                );
            }),
        ),
        (
            "securityInbound/security-apikey-config.json",
            LoadsWithSpec(PETSTORE, |api, _| {
                assert_eq!(
                    proxy(api, "/securityProfiles/0/devices/0/properties/apiKeyFieldName"),
                    "KeyId"
                );
            }),
        ),
        (
            "securityInbound/security-custom-policy-config.json",
            LoadsWithSpec(PETSTORE, |api, _| {
                assert_eq!(proxy(api, "/securityProfiles/0/devices/0/type"), "authPolicy");
            }),
        ),
        (
            "securityInbound/security-oauth-config.json",
            LoadsWithSpec(PETSTORE, |api, _| {
                assert_eq!(
                    proxy(api, "/securityProfiles/0/devices/0/properties/tokenStore"),
                    "OAuth Access Token Store"
                );
            }),
        ),
        (
            "securityInbound/security-oauth-external-config.json",
            LoadsWithSpec(PETSTORE, |api, _| {
                // A gateway selector, not a variable.
                assert_eq!(
                    proxy(api, "/securityProfiles/0/devices/0/properties/subjectSelector"),
                    "${//oauth.token.client_id//}"
                );
            }),
        ),
        (
            "securityOutbound/security-outbound-apikey.json",
            LoadsWithSpec(PETSTORE, |api, _| {
                assert_eq!(proxy(api, "/authenticationProfiles/0/type"), "apiKey");
            }),
        ),
        (
            "securityOutbound/security-outbound-basic.json",
            LoadsWithSpec(PETSTORE, |api, _| {
                assert_eq!(proxy(api, "/authenticationProfiles/0/type"), "http_basic");
            }),
        ),
        (
            "securityOutbound/security-outbound-clientCert.json",
            LoadsWithSpec(PETSTORE, |api, _| {
                let pfx = base64::engine::general_purpose::STANDARD
                    .encode(fixture("certificates/clientcert.pfx"));
                assert_eq!(proxy(api, "/authenticationProfiles/0/parameters/pfx"), pfx);
                assert!(proxy(api, "/authenticationProfiles/0/parameters")
                    .get("certFile")
                    .is_none());
            }),
        ),
    ]
}

/// A checkout with the fixture as `apis/x/api-config.json`, the spec and
/// certificates where the examples' relative paths find them.
fn fixture_checkout(config: &[u8]) -> Checkout {
    let checkout = Checkout::with_petstore();
    checkout.write("apis/x/api-config.json", config).write(
        "apis/certificates/clientcert.pfx",
        fixture("certificates/clientcert.pfx"),
    );
    checkout
}

#[test]
fn every_fixture_loads_or_fails_as_expected() {
    let cases = fixture_cases();
    let mut seen: Vec<&str> = cases.iter().map(|(name, _)| *name).collect();
    seen.sort();
    for dir in [
        "basic",
        "complex",
        "customPolicies",
        "methodLevel",
        "orgsAndApps",
        "quota",
        "securityInbound",
        "securityOutbound",
    ] {
        for entry in fs::read_dir(fixtures().join(dir)).expect("fixture dir") {
            let name = format!(
                "{dir}/{}",
                entry.expect("entry").file_name().to_string_lossy()
            );
            assert!(
                seen.binary_search(&name.as_str()).is_ok(),
                "no case for {name}"
            );
        }
    }

    for (name, expect) in cases {
        let raw = fixture(name);
        let with_spec = |resource: &str| {
            let mut config: Value = serde_json::from_slice(&raw).expect("fixture JSON");
            config["apiSpecification"] = json!({ "resource": resource });
            serde_json::to_vec(&config).expect("json")
        };
        let as_is = fixture_checkout(&raw).load("test");
        match expect {
            Expect::Loads(check) => {
                let state = loaded(as_is);
                check(only_api(&state), &state.warnings);
            }
            Expect::Fails(expected) => {
                let errors = failed(as_is);
                assert_eq!(errors.len(), expected.len(), "{name}: {errors:#?}");
                for expected in expected {
                    assert_has(&errors, expected);
                }
            }
            Expect::LoadsWithSpec(resource, check) => {
                let errors = failed(as_is);
                assert_eq!(errors.len(), 1, "{name}: {errors:#?}");
                assert_has(&errors, MISSING_SPEC);
                let state = loaded(fixture_checkout(&with_spec(resource)).load("test"));
                check(only_api(&state), &state.warnings);
            }
            Expect::FailsWithSpec(resource, expected) => {
                assert_has(&failed(as_is), MISSING_SPEC);
                let errors = failed(fixture_checkout(&with_spec(resource)).load("test"));
                assert_eq!(errors.len(), expected.len(), "{name}: {errors:#?}");
                for expected in expected {
                    assert_has(&errors, expected);
                }
            }
        }
    }
}

#[test]
fn substitutes_variables_with_json_escaping() {
    let checkout = Checkout::with_petstore();
    checkout.write(
        "apis/p/api-config.json",
        r#"{
  "name": "Petstore",
  "path": "/petstore/${STAGE_SUFFIX}",
  "organization": "API Development",
  "apiSpecification": { "resource": "../petstore.json" },
  "summary": "Token ${TOKEN} and ${http.request.path} and $${LITERAL}",
  "backendBasepath": "${BACKEND:-https://default.example}",
  "corsProfiles": [ { "name": "_default", "maxAgeSeconds": ${MAX_AGE} } ]
}"#,
    );
    let state = loaded(checkout.load_with(
        "test",
        &[
            ("STAGE_SUFFIX", "v1"),
            ("TOKEN", r#"se"cr\et"#),
            ("MAX_AGE", "600"),
        ],
    ));
    let api = only_api(&state);
    assert_eq!(api.path, "/petstore/v1");
    assert_eq!(
        api.proxy_fields["summary"],
        r#"Token se"cr\et and ${http.request.path} and ${LITERAL}"#
    );
    assert_eq!(
        api.backend_basepath.as_deref(),
        Some("https://default.example")
    );
    assert_eq!(proxy(api, "/corsProfiles/0/maxAgeSeconds"), json!(600));
}

#[test]
fn missing_variables_name_file_line_and_variable_never_values() {
    let checkout = Checkout::with_petstore();
    checkout
        .write(
            "apis/p/api-config.json",
            "{\n  \"name\": \"${API_NAME}\",\n  \"path\": \"/p\",\n  \"summary\": \"${SECRET_TOKEN}\",\n  \"organization\": \"${ORG_NAME}\",\n  \"apiSpecification\": { \"resource\": \"../petstore.json\" }\n}",
        )
        .write(
            "apis/p/api-config.test.json",
            r#"{ "vhost": "${VHOST}", "summary": "${SECRET_TOKEN}" }"#,
        );
    let errors = failed(checkout.load_with(
        "test",
        &[
            ("SECRET_TOKEN", "hunter2-very-secret"),
            ("API_NAME", "Petstore"),
        ],
    ));
    assert_eq!(
        errors,
        [
            "apis/p/api-config.json: variable `${ORG_NAME}` (line 5) has no value: set it in the \
             stage's values file, declare it under the stage's `env` in the pipeline file, give a \
             default with `${ORG_NAME:-default}`, or write `$${ORG_NAME}` for a literal",
            "apis/p/api-config.test.json: variable `${VHOST}` (line 1) has no value: set it in the \
             stage's values file, declare it under the stage's `env` in the pipeline file, give a \
             default with `${VHOST:-default}`, or write `$${VHOST}` for a literal",
        ]
    );
    assert!(errors
        .iter()
        .all(|e| !e.contains("hunter2") && !e.contains("Petstore")));
}

#[test]
fn messages_hide_values_that_hold_substituted_variables() {
    let checkout = Checkout::with_petstore();
    let mut config = api("/p");
    config["apiSpecification"]["resource"] = json!("../${SPEC_NAME}.json");
    config["state"] = json!("${STATE}");
    checkout.json("apis/p/api-config.json", config);
    let errors = failed(checkout.load_with(
        "test",
        &[("SPEC_NAME", "token-abc123"), ("STATE", "retired-xyz")],
    ));
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert_has(
        &errors,
        "field `apiSpecification.resource`: file (value hidden: it holds ${SPEC_NAME}) not found",
    );
    assert_has(
        &errors,
        "field `state`: (value hidden: it holds ${STATE}) is not a state",
    );
    assert!(errors
        .iter()
        .all(|e| !e.contains("token-abc123") && !e.contains("retired-xyz")));
}

#[test]
fn yaml_configs_substitute_inside_strings() {
    let checkout = Checkout::with_petstore();
    checkout
        .write(
            "apis/p/api-config.yaml",
            "name: Petstore\npath: /petstore\nversion: 1.0\norganization: API Development\n\
             apiSpecification:\n  resource: ../petstore.json\nsummary: ${QUOTED}\n\
             tags:\n  ${TAG_NAME}: [a]\n",
        )
        .write(
            "apis/q/api-config.yml",
            "name: Q\npath: /q\norganization: O\napiSpecification:\n  resource: ../petstore.json\n\
             backendBasepath: ${BACKEND}\n",
        );
    let vars = [("QUOTED", "a \"b\": c # d"), ("TAG_NAME", "team")];
    let errors = failed(checkout.load_with("test", &vars));
    assert_eq!(
        errors,
        ["apis/q/api-config.yml: field `backendBasepath`: variable `${BACKEND}` has no value: set \
          it in the stage's values file, declare it under the stage's `env` in the pipeline file, \
          give a default with `${BACKEND:-default}`, or write `$${BACKEND}` for a literal"]
    );

    let vars = [
        ("QUOTED", "a \"b\": c # d"),
        ("TAG_NAME", "team"),
        ("BACKEND", "https://b"),
    ];
    let state = loaded(checkout.load_with("test", &vars));
    let yaml = &state.apis[0];
    assert_eq!(yaml.source, PathBuf::from("apis/p/api-config.yaml"));
    assert_eq!(yaml.version.as_deref(), Some("1.0"));
    assert_eq!(yaml.proxy_fields["summary"], "a \"b\": c # d");
    assert_eq!(yaml.proxy_fields["tags"], json!({ "team": ["a"] }));
    assert_eq!(state.apis[1].backend_basepath.as_deref(), Some("https://b"));
}

#[test]
fn overlay_in_two_places_is_an_error() {
    let checkout = Checkout::with_petstore();
    checkout
        .json("apis/p/api-config.json", api("/p"))
        .json(
            "apis/p/api-config.test.json",
            json!({ "state": "published" }),
        )
        .json(
            "apis/p/test/api-config.json",
            json!({ "state": "deprecated" }),
        );
    let errors = failed(checkout.load("test"));
    assert_eq!(
        errors,
        [
            "apis/p/api-config.json: more than one overlay for stage `test` \
          (`apis/p/api-config.test.json`, `apis/p/test/api-config.json`): keep one"
        ]
    );
    // Other stages do not see the conflict.
    assert_eq!(loaded(checkout.load("prod")).apis.len(), 1);
}

#[test]
fn overlay_directories_apply_and_are_not_items() {
    let checkout = Checkout::with_petstore();
    checkout
        .json("apis/p/api-config.json", api("/p"))
        .json(
            "apis/p/test/api-config.json",
            json!({ "state": "published" }),
        )
        // apim-cli's own subdirectory form.
        .json(
            "apis/p/prod/api-config.prod.json",
            json!({ "vhost": "prod.example" }),
        );

    let test = loaded(checkout.load("test"));
    assert_eq!(only_api(&test).state, ApiState::Published);
    assert_eq!(only_api(&test).vhost, None);

    let prod = loaded(checkout.load("prod"));
    assert_eq!(only_api(&prod).state, ApiState::Unpublished);
    assert_eq!(only_api(&prod).vhost.as_deref(), Some("prod.example"));

    let dev = loaded(checkout.load("dev"));
    assert_eq!(only_api(&dev).state, ApiState::Unpublished);
    assert_eq!(
        only_api(&dev).source,
        PathBuf::from("apis/p/api-config.json")
    );
}

#[test]
fn merge_replaces_top_level_keys_as_apim_cli_does() {
    let checkout = Checkout::with_petstore();
    let mut base = api("/p");
    base["customProperties"] = json!({ "a": "1", "b": "2" });
    base["vhost"] = json!("base.example");
    base["summary"] = json!("base summary");
    base["securityProfiles"] = json!([{ "name": "_default", "isDefault": true, "devices": [] }]);
    base["outboundProfiles"] =
        json!({ "_default": { "requestPolicy": "R", "routeType": "proxy" } });
    checkout.json("apis/p/api-config.json", base).json(
        "apis/p/api-config.test.json",
        json!({
            "customProperties": { "b": "3" },
            "outboundProfiles": { "_default": { "routePolicy": "X" } },
            "vhost": null,
            "summary": null,
            "securityProfiles": null,
            "tags": { "t": ["v"] }
        }),
    );
    let state = loaded(checkout.load("test"));
    let api = only_api(&state);
    // Objects are replaced, not merged.
    assert_eq!(api.proxy_fields["customProperties"], json!({ "b": "3" }));
    assert_eq!(
        api.proxy_fields["outboundProfiles"],
        json!({ "_default": { "routePolicy": "X" } })
    );
    // `null` clears, except where apim-cli skips nulls.
    assert_eq!(api.vhost, None);
    assert!(!api.proxy_fields.contains_key("summary"));
    assert_eq!(proxy(api, "/securityProfiles/0/name"), "_default");
    assert_eq!(api.proxy_fields["tags"], json!({ "t": ["v"] }));
}

#[test]
fn spec_paths_stay_inside_the_repository() {
    let checkout = Checkout::with_petstore();
    let mut escaping = api("/a");
    escaping["apiSpecification"]["resource"] = json!("../../../../etc/passwd");
    let mut absolute = api("/b");
    absolute["apiSpecification"]["resource"] = json!("/etc/passwd");
    checkout
        .json("apis/a/api-config.json", escaping)
        .json("apis/b/api-config.json", absolute);
    let errors = failed(checkout.load("test"));
    assert_eq!(
        errors,
        [
            "apis/a/api-config.json: field `apiSpecification.resource`: `../../../../etc/passwd`: \
             points outside the repository",
            "apis/b/api-config.json: field `apiSpecification.resource`: `/etc/passwd`: must be a \
             path relative to the config file, not an absolute path",
        ]
    );
}

#[cfg(unix)]
#[test]
fn symbolic_links_out_of_the_checkout_are_refused() {
    let outside = tempfile::tempdir().expect("temp dir");
    fs::write(outside.path().join("spec.json"), fixture("petstore.json")).expect("write");
    let checkout = Checkout::with_petstore();
    let mut config = api("/a");
    config["apiSpecification"]["resource"] = json!("spec.json");
    checkout.json("apis/a/api-config.json", config);
    std::os::unix::fs::symlink(
        outside.path().join("spec.json"),
        checkout.root().join("apis/a/spec.json"),
    )
    .expect("symlink");
    let errors = failed(checkout.load("test"));
    assert_eq!(
        errors,
        ["apis/a/api-config.json: field `apiSpecification.resource`: `apis/a/spec.json` resolves \
          outside the repository"]
    );
}

#[test]
fn missing_spec_file_is_reported_on_the_resource() {
    let checkout = Checkout::with_petstore();
    let mut config = api("/a");
    config["apiSpecification"]["resource"] = json!("../nope.json");
    checkout.json("apis/a/api-config.json", config);
    assert_eq!(
        failed(checkout.load("test")),
        ["apis/a/api-config.json: field `apiSpecification.resource`: file `apis/nope.json` not found"]
    );
}

#[test]
fn spec_kinds_from_files_and_legacy_api_definition() {
    let checkout = Checkout::new();
    let openapi = "openapi: 3.0.3\ninfo:\n  title: t\n  version: '1'\npaths: {}\n";
    let wsdl = "<?xml version=\"1.0\"?>\n<definitions xmlns=\"http://schemas.xmlsoap.org/wsdl/\"/>";
    checkout
        .write("apis/o/openapi.yaml", openapi)
        .json(
            "apis/o/api-config.json",
            json!({ "name": "O", "path": "/o", "organization": "Org",
                    "apiSpecification": { "resource": "./openapi.yaml" } }),
        )
        .write("apis/w/service.wsdl", wsdl)
        // apim-cli's legacy in-file reference.
        .json(
            "apis/w/api-config.json",
            json!({ "name": "W", "path": "/w", "organization": "Org", "apiDefinition": "service.wsdl" }),
        );
    let state = loaded(checkout.load("test"));
    assert_eq!(state.apis[0].specification.kind, SpecKind::OpenApi);
    assert_eq!(state.apis[1].specification.kind, SpecKind::Wsdl);
    assert_eq!(
        state.apis[1].specification.source,
        SpecSource::File {
            path: "apis/w/service.wsdl".into(),
            content: wsdl.as_bytes().to_vec()
        }
    );

    checkout.write("apis/o/openapi.yaml", "{\"info\": {}}");
    assert_eq!(
        failed(checkout.load("test")),
        ["apis/o/api-config.json: field `apiSpecification.resource`: `apis/o/openapi.yaml` is not \
          a Swagger 2.0, OpenAPI 3.x or WSDL document (no `swagger` or `openapi` field)"]
    );
}

#[test]
fn bad_json_reports_line_and_column() {
    let checkout = Checkout::with_petstore();
    checkout.write(
        "apis/a/api-config.json",
        "{\n  \"name\": \"x\",\n  \"path\" \"/x\"\n}",
    );
    assert_eq!(
        failed(checkout.load("test")),
        ["apis/a/api-config.json: is not valid JSON: expected `:` at line 3 column 10"]
    );
}

#[test]
fn duplicate_apis_name_both_files() {
    let checkout = Checkout::with_petstore();
    let mut other_vhost = api("/same");
    other_vhost["vhost"] = json!("other.example");
    checkout
        .json("apis/a/api-config.json", api("/same"))
        .json("apis/b/api-config.json", api("/same"))
        .json("apis/c/api-config.json", other_vhost);
    assert_eq!(
        failed(checkout.load("test")),
        ["apis/b/api-config.json: field `path`: duplicate API: same path, vhost and apiRoutingKey \
          as `apis/a/api-config.json`"]
    );
}

#[test]
fn organizations_and_applications_with_overlays() {
    let checkout = Checkout::new();
    checkout
        .json(
            "apis/orgs/partner/org-config.json",
            json!({ "name": "Partner", "description": "base", "email": "p@example.com",
                    "development": false, "image": "logo.png" }),
        )
        .json(
            "apis/orgs/partner/org-config.test.json",
            json!({ "description": "for test", "development": true }),
        )
        .json(
            "apis/apps/one/application-config.json",
            json!({ "name": "App One", "organization": "Partner", "state": "approved",
                    "enabled": true, "description": "d",
                    "credentials": [{ "credentialType": "apikey", "apiKey": "k-123-secret" }],
                    "appQuota": { "restrictions": [] } }),
        )
        .json(
            "apis/apps/one/test/application-config.json",
            json!({ "enabled": false }),
        )
        .json(
            "apis/apps/two/app-config.json",
            json!({ "name": "App Two", "organization": "Partner" }),
        );
    let state = loaded(checkout.load("test"));
    assert!(state.apis.is_empty());

    assert_eq!(state.organizations.len(), 1);
    let org = &state.organizations[0];
    assert_eq!(org.name, "Partner");
    assert_eq!(
        org.source,
        PathBuf::from("apis/orgs/partner/org-config.json")
    );
    assert_eq!(
        Value::Object(org.fields.clone()),
        json!({ "description": "for test", "email": "p@example.com", "development": true })
    );

    let names: Vec<&str> = state.applications.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["App One", "App Two"]);
    let one = &state.applications[0];
    assert_eq!(one.organization, "Partner");
    assert_eq!(
        Value::Object(one.fields.clone()),
        json!({ "state": "approved", "enabled": false, "description": "d" })
    );
    assert_eq!(
        state.warnings,
        [
            "apis/apps/one/application-config.json: field `credentials`: ignored: Gantry leaves \
             application credentials (API keys, OAuth clients, external client ids) untouched",
            "apis/apps/one/application-config.json: field `appQuota`: ignored: application quotas \
             are not promoted (API Manager keeps them apart from the application)",
            "apis/orgs/partner/org-config.json: field `image`: ignored: organization images are \
             not promoted",
        ]
    );
    assert!(state.warnings.iter().all(|w| !w.contains("k-123-secret")));
}

#[test]
fn organization_and_application_lists() {
    let checkout = Checkout::new();
    checkout
        .json(
            "apis/orgs/org-config.json",
            json!([{ "name": "A" }, { "name": "B", "enabled": true }]),
        )
        .json(
            "apis/apps/application-config.json",
            json!([{ "name": "X", "organization": "A" }, { "name": "Y" }]),
        );
    assert_eq!(
        failed(checkout.load("test")),
        ["apis/apps/application-config.json: field `[1].organization`: is required"]
    );
    checkout.json(
        "apis/apps/application-config.json",
        json!([{ "name": "X", "organization": "A" }]),
    );
    let state = loaded(checkout.load("test"));
    let names: Vec<&str> = state
        .organizations
        .iter()
        .map(|o| o.name.as_str())
        .collect();
    assert_eq!(names, ["A", "B"]);
    assert_eq!(state.applications[0].name, "X");

    checkout.json(
        "apis/orgs/org-config.test.json",
        json!({ "enabled": false }),
    );
    assert_eq!(
        failed(checkout.load("test")),
        ["apis/orgs/org-config.test.json: stage overlays are not supported for a list of organizations"]
    );
}

#[test]
fn duplicate_names_and_conflicting_app_files() {
    let checkout = Checkout::new();
    checkout
        .json("apis/a/org-config.json", json!({ "name": "Same" }))
        .json("apis/b/org-config.json", json!({ "name": "Same" }))
        .json(
            "apis/c/app-config.json",
            json!({ "name": "App", "organization": "Same" }),
        )
        .json(
            "apis/c/application-config.json",
            json!({ "name": "App", "organization": "Same" }),
        );
    assert_eq!(
        failed(checkout.load("test")),
        [
            "apis/c/application-config.json: more than one application config in one directory \
             (`application-config.json`, `app-config.json`): keep one",
            "apis/b/org-config.json: field `name`: duplicate organization: same name as \
             `apis/a/org-config.json`",
        ]
    );
}

#[test]
fn collects_every_problem() {
    let checkout = Checkout::with_petstore();
    checkout
        .json(
            "apis/a/api-config.json",
            json!({ "path": "relative", "state": "deleted",
                    "apiSpecification": { "resource": "../petstore.json" } }),
        )
        .json(
            "apis/b/api-config.json",
            json!({ "name": "B", "path": "/b", "organization": "O",
                    "apiSpecification": { "resource": "../petstore.json" },
                    "clientOrgsMode": "merge", "clientOrganizations": ["ok", 7],
                    "applications": ["App"] }),
        );
    assert_eq!(
        failed(checkout.load("test")),
        [
            "apis/a/api-config.json: field `name`: is required",
            "apis/a/api-config.json: field `path`: must start with /",
            "apis/a/api-config.json: field `state`: `deleted` is not a state Gantry promotes: use \
             unpublished, published or deprecated (apim-cli's `deleted` and `pending` are not \
             supported)",
            "apis/a/api-config.json: field `organization`: is required",
            "apis/b/api-config.json: field `clientOrganizations[1]`: must be an organization name",
            "apis/b/api-config.json: field `applications[0]`: must be an object like { \"name\": \"App\" }",
            "apis/b/api-config.json: field `clientOrgsMode`: must be `add`, `replace` or `ignore`",
        ]
    );
}

#[test]
fn errors_name_the_overlay_that_set_the_field() {
    let checkout = Checkout::with_petstore();
    checkout
        .json("apis/petstore/api-config.json", api("/petstore"))
        .json(
            "apis/petstore/api-config.test.json",
            json!({ "path": "petstore" }),
        );
    let Err(errors) = checkout.load("test") else {
        panic!("expected an error");
    };
    assert_eq!(
        errors.to_string(),
        "1 problem in the API Manager configuration:\n  \
         apis/petstore/api-config.test.json: field `path`: must start with /"
    );
    assert_eq!(
        errors.errors[0],
        ConfigError {
            file: "apis/petstore/api-config.test.json".into(),
            field: Some("path".into()),
            message: "must start with /".into(),
        }
    );
}

#[test]
fn grant_modes_come_from_the_config() {
    let checkout = Checkout::with_petstore();
    let mut config = api("/p");
    config["clientOrganizations"] = json!(["Partner"]);
    config["clientOrgsMode"] = json!("replace");
    config["applications"] = json!([{ "name": "App" }]);
    config["clientAppsMode"] = json!("ignore");
    checkout.json("apis/p/api-config.json", config);
    let state = loaded(checkout.load("test"));
    let api = only_api(&state);
    assert_eq!(api.client_organizations, ["Partner"]);
    assert_eq!(api.client_orgs_mode, GrantMode::Replace);
    assert!(api.applications.is_empty());
    assert_eq!(api.client_apps_mode, GrantMode::Add);
    assert_eq!(
        state.warnings,
        ["apis/p/api-config.json: field `clientAppsMode`: `ignore`: the configured grants are not applied"]
    );
}

#[test]
fn markdown_local_becomes_a_manual_description() {
    let checkout = Checkout::with_petstore();
    let mut config = api("/p");
    config["descriptionType"] = json!("markdownLocal");
    config["markdownLocal"] = json!(["docs/intro.md", "ORIGINAL"]);
    checkout
        .json("apis/p/api-config.json", config)
        .write("apis/p/docs/intro.md", "# Intro");
    let state = loaded(checkout.load("test"));
    let api = only_api(&state);
    assert_eq!(api.proxy_fields["descriptionType"], "manual");
    let manual = api.proxy_fields["descriptionManual"]
        .as_str()
        .expect("text");
    assert!(
        manual.starts_with("# Intro\n\nThis is a sample server Petstore server."),
        "{manual}"
    );
    assert!(!api.proxy_fields.contains_key("markdownLocal"));

    let mut config = self::api("/p");
    config["descriptionType"] = json!("manual");
    checkout.json("apis/p/api-config.json", config);
    assert_eq!(
        failed(checkout.load("test")),
        ["apis/p/api-config.json: field `descriptionManual`: is required by the descriptionType"]
    );
}

#[test]
fn ordering_is_deterministic_and_hidden_dirs_are_skipped() {
    let checkout = Checkout::with_petstore();
    let mut nested = api("/a-nested");
    nested["apiSpecification"]["resource"] = json!("../../petstore.json");
    checkout
        .json("apis/b/api-config.json", api("/b"))
        .json("apis/a2/api-config.json", api("/a2"))
        .json("apis/a/nested/api-config.json", nested)
        .json("apis/a/org-config.json", json!({ "name": "Team A" }))
        .write("apis/.git/api-config.json", "not json")
        .write("apis/a/.hidden/api-config.json", "not json");
    let first = loaded(checkout.load("test"));
    let sources: Vec<PathBuf> = first.apis.iter().map(|a| a.source.clone()).collect();
    assert_eq!(
        sources,
        [
            PathBuf::from("apis/a/nested/api-config.json"),
            PathBuf::from("apis/a2/api-config.json"),
            PathBuf::from("apis/b/api-config.json"),
        ]
    );
    assert_eq!(first.organizations[0].name, "Team A");
    assert_eq!(loaded(checkout.load("test")), first);
}

#[test]
fn stage_and_apis_dir_are_checked() {
    let checkout = Checkout::new();
    let lookup = |_: &str| None;
    let load = |stage: &str, dir: &str| {
        let options = LoadOptions {
            stage,
            vars: &lookup,
        };
        failed(load_stage(checkout.root(), Path::new(dir), &options))
    };
    assert_has(
        &load("../prod", "apis"),
        "stage name `../prod` cannot name overlay files",
    );
    assert_eq!(
        load("test", "apis/"),
        ["apis/: the APIs directory does not exist in the commit"]
    );
    assert_eq!(
        load("test", "../elsewhere"),
        ["../elsewhere: the APIs directory points outside the repository"]
    );
}
