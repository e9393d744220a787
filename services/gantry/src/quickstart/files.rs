//! What `gantry quickstart` writes: the sample configuration (embedded from
//! `services/gantry/quickstart/config/`, provenance in its `PROVENANCE.md`),
//! the pipeline, the API tokens and the stages' secrets.

use std::path::Path;

use sha2::{Digest, Sha256};

/// The configuration repository's first commit: (path, contents).
pub const CONFIG: &[(&str, &str)] = &[
    ("README.md", include_str!("../../quickstart/config/README.md")),
    ("NOTICE", include_str!("../../quickstart/config/NOTICE")),
    (
        "gateway/_parent.yaml",
        include_str!("../../quickstart/config/gateway/_parent.yaml"),
    ),
    (
        "gateway/values.yaml",
        include_str!("../../quickstart/config/gateway/values.yaml"),
    ),
    (
        "gateway/META-INF/_version.yaml",
        include_str!("../../quickstart/config/gateway/META-INF/_version.yaml"),
    ),
    (
        "gateway/META-INF/types/Entity.yaml",
        include_str!("../../quickstart/config/gateway/META-INF/types/Entity.yaml"),
    ),
    (
        "gateway/META-INF/types/Entity/Root.yaml",
        include_str!("../../quickstart/config/gateway/META-INF/types/Entity/Root.yaml"),
    ),
    (
        "gateway/META-INF/types/Entity/DbConnection.yaml",
        include_str!("../../quickstart/config/gateway/META-INF/types/Entity/DbConnection.yaml"),
    ),
    (
        "gateway/META-INF/types/Entity/ClassLoader.yaml",
        include_str!("../../quickstart/config/gateway/META-INF/types/Entity/ClassLoader.yaml"),
    ),
    (
        "gateway/META-INF/types/Entity/RootChild.yaml",
        include_str!("../../quickstart/config/gateway/META-INF/types/Entity/RootChild.yaml"),
    ),
    (
        "gateway/META-INF/types/Entity/RootChild/LoadableModule.yaml",
        include_str!(
            "../../quickstart/config/gateway/META-INF/types/Entity/RootChild/LoadableModule.yaml"
        ),
    ),
    (
        "gateway/META-INF/types/Entity/RootChild/LoadableModule/NamedLoadableModule.yaml",
        include_str!("../../quickstart/config/gateway/META-INF/types/Entity/RootChild/LoadableModule/NamedLoadableModule.yaml"),
    ),
    (
        "gateway/META-INF/types/Entity/RootChild/LoadableModule/NamedLoadableModule/DbConnectionGroup.yaml",
        include_str!("../../quickstart/config/gateway/META-INF/types/Entity/RootChild/LoadableModule/NamedLoadableModule/DbConnectionGroup.yaml"),
    ),
    (
        "gateway/External Connections/Database Connections/_parent.yaml",
        include_str!(
            "../../quickstart/config/gateway/External Connections/Database Connections/_parent.yaml"
        ),
    ),
    (
        "gateway/External Connections/Database Connections/Masterdata.yaml",
        include_str!(
            "../../quickstart/config/gateway/External Connections/Database Connections/Masterdata.yaml"
        ),
    ),
    (
        "environments/dev.yaml",
        include_str!("../../quickstart/config/environments/dev.yaml"),
    ),
    (
        "environments/test.yaml",
        include_str!("../../quickstart/config/environments/test.yaml"),
    ),
    (
        "environments/prod.yaml",
        include_str!("../../quickstart/config/environments/prod.yaml"),
    ),
    (
        "apis/petstore/api-config.json",
        include_str!("../../quickstart/config/apis/petstore/api-config.json"),
    ),
    (
        "apis/petstore/api-config.prod.json",
        include_str!("../../quickstart/config/apis/petstore/api-config.prod.json"),
    ),
    (
        "apis/petstore/petstore.json",
        include_str!("../../quickstart/config/apis/petstore/petstore.json"),
    ),
];

pub const STAGES: [&str; 3] = ["dev", "test", "prod"];

/// The GitOps repository's first commit: one values file per stage, with
/// the key Gantry sets to the stage's image.
pub fn gitops_values(stage: &str) -> String {
    format!(
        "# Helm values of the API Gateway in {stage}; Gantry sets the image on each promotion.\n\
         apitraffic:\n  replicaCount: 1\n  image: none  # set by Gantry\n"
    )
}

/// One API token holder.
pub struct Holder {
    pub user: &'static str,
    pub email: &'static str,
    pub group: &'static str,
    /// The variable of the tokens file holding this token.
    pub var: &'static str,
    pub role: &'static str,
}

/// The developer who commits and triggers, and the two release managers
/// whose approvals prod needs (the developer may not approve: allow_self).
pub const HOLDERS: [Holder; 3] = [
    Holder {
        user: "dana",
        email: "dana@quickstart.example",
        group: "developers",
        var: "DANA_TOKEN",
        role: "developer: commits and triggers",
    },
    Holder {
        user: "rita",
        email: "rita@quickstart.example",
        group: "release-managers",
        var: "RITA_TOKEN",
        role: "release manager: approves prod",
    },
    Holder {
        user: "sam",
        email: "sam@quickstart.example",
        group: "release-managers",
        var: "SAM_TOKEN",
        role: "release manager: approves prod",
    },
];

/// A new random token (two v4 UUIDs: 244 random bits).
pub fn new_token() -> String {
    format!(
        "gq_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// `GANTRY_API_TOKENS`: the holders with their tokens' sha256.
pub fn api_tokens_yaml(tokens: &[String]) -> String {
    let mut yaml = String::from(
        "# Written by `gantry quickstart`: tokens are stored as their sha256.\ntokens:\n",
    );
    for (h, token) in HOLDERS.iter().zip(tokens) {
        let hash = hex::encode(Sha256::digest(token.as_bytes()));
        yaml.push_str(&format!(
            "  - user: {}\n    email: {}\n    groups: [{}]\n    sha256: {hash}\n",
            h.user, h.email, h.group
        ));
    }
    yaml
}

/// The tokens in clear, as shell variables (`. tokens.env`).
pub fn tokens_env(tokens: &[String]) -> String {
    let mut text = String::from(
        "# Gantry quickstart API tokens. Keep this file private.\n\
         # Use them with:  . ./tokens.env && gantry --token \"$RITA_TOKEN\" runs\n",
    );
    for (h, token) in HOLDERS.iter().zip(tokens) {
        text.push_str(&format!("# {} ({})\n{}={token}\n", h.user, h.role, h.var));
    }
    text
}

/// The token of `var` in a tokens file written by [`tokens_env`].
pub fn token_of(tokens_env: &str, var: &str) -> Option<String> {
    tokens_env.lines().find_map(|l| {
        l.strip_prefix(var)
            .and_then(|rest| rest.strip_prefix('='))
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
    })
}

/// A YAML scalar for `text` (a JSON string is a YAML double-quoted one).
fn quoted(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

/// The pipeline `quickstart`, with every path under `dir` (absolute).
pub fn pipeline_yaml(dir: &Path) -> String {
    let at = |rel: &str| dir.join(rel).display().to_string();
    let mut yaml = format!(
        "# Written by `gantry quickstart`. dev -> test -> prod; prod needs two release managers.\n\
         # No API Manager runs here, so no stage has an `apimanager` step: `apis/` is\n\
         # carried along and promoted once a stage names its API Manager.\n\
         name: quickstart\n\
         source:\n  repo: {repo}\n  branch: main\n\
         gateway:\n  format: yaml\n  path: gateway/\n\
         apis:\n  path: apis/\n\
         image:\n  base: {base}\n  repository: {repository}\n\
         access:\n  trigger: [developers, release-managers]\n\
         stages:\n",
        repo = quoted(&at("config")),
        base = quoted(&format!("oci:{}:7.7", at("registry/apigw-emt"))),
        repository = quoted(&format!("oci:{}", at("registry/gateway"))),
    );
    for stage in STAGES {
        yaml.push_str(&format!(
            "  - name: {stage}\n    values: environments/{stage}.yaml\n    env:\n      DB_PASSWORD: {secret}\n    deploy:\n      gitops: {{ repo: {gitops}, branch: main, file: envs/{stage}/values.yaml, key: apitraffic.image }}\n",
            secret = quoted(&format!("file:{}", at(&format!("secrets/{stage}-db-password")))),
            gitops = quoted(&at("gitops.git")),
        ));
    }
    yaml.push_str(
        "    approval: { required: 2, approvers: [release-managers], allow_self: false, expires: 72h }\n",
    );
    yaml
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pipeline_is_valid_and_prod_needs_two_release_managers() {
        let dir = Path::new("/tmp/work/gantry-quickstart");
        let p = gantry_pipeline::parse_str("quickstart.yaml", &pipeline_yaml(dir))
            .unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<&str> = p.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, STAGES);
        let approval = p.stage("prod").and_then(|s| s.approval.clone()).unwrap();
        assert_eq!(approval.required, 2);
        assert_eq!(approval.approvers, ["release-managers"]);
        assert!(!approval.allow_self);
        assert!(p.stage("test").unwrap().approval.is_none());
        assert_eq!(p.source.repo, "/tmp/work/gantry-quickstart/config");
    }

    #[test]
    fn tokens_round_trip_through_the_tokens_file() {
        let tokens: Vec<String> = (0..3).map(|_| new_token()).collect();
        assert_ne!(tokens[0], tokens[1]);
        let env = tokens_env(&tokens);
        assert_eq!(token_of(&env, "RITA_TOKEN"), Some(tokens[1].clone()));
        assert_eq!(token_of(&env, "NOPE"), None);
        let yaml = api_tokens_yaml(&tokens);
        assert!(!yaml.contains(&tokens[0]), "hashes only");
        assert!(yaml.contains(&hex::encode(Sha256::digest(tokens[2].as_bytes()))));
    }
}
