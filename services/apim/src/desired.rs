//! What a stage's API Manager should serve, as read from the repository.
//!
//! [`crate::config`] produces it; [`crate::reconcile`] consumes it. Values
//! may hold secrets substituted from `${VAR}`: never log or record them,
//! only field names.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Everything one stage's API Manager should hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DesiredState {
    pub apis: Vec<DesiredApi>,
    pub organizations: Vec<DesiredOrganization>,
    pub applications: Vec<DesiredApplication>,
    /// Configuration Gantry read but does not promote (e.g. an API's
    /// `image`, quotas, application credentials), one line each in the form
    /// `file: field `x`: why`. Never holds values, only names.
    pub warnings: Vec<String>,
}

/// The lifecycle state apim-cli's `state` field asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiState {
    #[default]
    Unpublished,
    Published,
    Deprecated,
}

impl ApiState {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiState::Unpublished => "unpublished",
            ApiState::Published => "published",
            ApiState::Deprecated => "deprecated",
        }
    }
}

/// Whether the listed grants are added to what exists or replace it
/// (apim-cli's `clientOrgsMode` / `clientAppsMode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GrantMode {
    #[default]
    Add,
    Replace,
}

/// One API: `api-config.json` merged with the stage overlay.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredApi {
    /// The config file (relative to the repository root), for messages.
    pub source: PathBuf,
    pub name: String,
    /// The frontend path, e.g. `/petstore/v1`.
    pub path: String,
    pub version: Option<String>,
    pub state: ApiState,
    pub vhost: Option<String>,
    pub api_routing_key: Option<String>,
    /// The owning (development) organization, by name.
    pub organization: String,
    /// Overrides the backend base path of the imported specification.
    pub backend_basepath: Option<String>,
    pub specification: ApiSpecification,
    /// Organizations granted access, by name; `ALL` means every organization.
    pub client_organizations: Vec<String>,
    /// Applications subscribed, by name.
    pub applications: Vec<String>,
    pub client_orgs_mode: GrantMode,
    pub client_apps_mode: GrantMode,
    /// Every other field of the merged config that maps onto the frontend
    /// proxy as-is (`summary`, `tags`, `securityProfiles`,
    /// `inboundProfiles`, `outboundProfiles`, `corsProfiles`,
    /// `authenticationProfiles`, `customProperties`, `descriptionType`, ...),
    /// in API Manager's own field names.
    pub proxy_fields: Map<String, Value>,
}

/// The API's specification, read from the same commit or given by URL.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiSpecification {
    pub source: SpecSource,
    pub kind: SpecKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SpecSource {
    /// Read from the commit: the file (relative to the repository root) and
    /// its bytes.
    File { path: PathBuf, content: Vec<u8> },
    /// API Manager fetches it itself (`/apirepo/importFromUrl/`), e.g. a WSDL.
    Url(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpecKind {
    /// Swagger 2.0 (API Manager import type `swagger`).
    Swagger,
    /// OpenAPI 3.x (import type `openapi`).
    OpenApi,
    /// WSDL (import type `wsdl`).
    Wsdl,
}

impl SpecKind {
    /// The `type` form field of `/apirepo/import`.
    pub fn import_type(self) -> &'static str {
        match self {
            SpecKind::Swagger => "swagger",
            SpecKind::OpenApi => "openapi",
            SpecKind::Wsdl => "wsdl",
        }
    }
}

/// One organization (`org-config.json` merged with its overlay).
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredOrganization {
    pub source: PathBuf,
    pub name: String,
    /// Other fields in API Manager's names (`description`, `email`, `phone`,
    /// `enabled`, `development`, `virtualHost`, `restricted`, ...).
    pub fields: Map<String, Value>,
}

/// One application (`application-config.json` merged with its overlay).
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredApplication {
    pub source: PathBuf,
    pub name: String,
    /// The owning organization, by name.
    pub organization: String,
    /// Other fields in API Manager's names (`description`, `email`, `phone`,
    /// `enabled`, `state`, ...). Credentials are never part of it.
    pub fields: Map<String, Value>,
}
