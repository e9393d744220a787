//! `org-config.json` / `application-config.json` (merged) → organizations
//! and applications.

use super::api::required_text;
use super::files::Item;
use super::Sink;
use crate::desired::{DesiredApplication, DesiredOrganization};

/// Organization keys read but not promoted, with the warning's reason.
pub const ORG_IGNORED_KEYS: &[(&str, &str)] = &[
    ("image", "organization images are not promoted"),
    (
        "apis",
        "grant organizations access with `clientOrganizations` in the API's config",
    ),
    ("id", "API Manager assigns it"),
    ("dn", "API Manager assigns it"),
    ("createdOn", "API Manager assigns it"),
];

/// Application keys that hold or name credentials: never carried.
pub const APP_CREDENTIAL_KEYS: &[&str] = &["credentials", "apiKey", "oauthClientId", "extClientId"];

/// Application keys read but not promoted, with the warning's reason.
pub const APP_IGNORED_KEYS: &[(&str, &str)] = &[
    ("image", "application images are not promoted"),
    (
        "appQuota",
        "application quotas are not promoted (API Manager keeps them apart from the application)",
    ),
    (
        "quota",
        "application quotas are not promoted (API Manager keeps them apart from the application)",
    ),
    (
        "apis",
        "subscribe applications with `applications` in the API's config",
    ),
    ("permissions", "application sharing is not promoted"),
    ("appScopes", "OAuth scopes are not promoted"),
    ("id", "API Manager assigns it"),
    ("createdBy", "API Manager assigns it"),
    ("createdOn", "API Manager assigns it"),
];

fn drop_ignored(item: &mut Item, keys: &[(&str, &str)], sink: &mut Sink) {
    for (key, reason) in keys {
        if item.config.remove(*key).is_some() {
            item.warn(sink, key, format!("ignored: {reason}"));
        }
    }
}

pub(super) fn desired_organization(mut item: Item, sink: &mut Sink) -> Option<DesiredOrganization> {
    let name = required_text(&mut item, "name", sink);
    drop_ignored(&mut item, ORG_IGNORED_KEYS, sink);
    Some(DesiredOrganization {
        source: item.base.clone(),
        name: name?,
        fields: std::mem::take(&mut item.config),
    })
}

pub(super) fn desired_application(mut item: Item, sink: &mut Sink) -> Option<DesiredApplication> {
    let name = required_text(&mut item, "name", sink);
    let organization = required_text(&mut item, "organization", sink);
    for key in APP_CREDENTIAL_KEYS {
        if item.config.remove(*key).is_some() {
            item.warn(
                sink,
                key,
                "ignored: Gantry leaves application credentials (API keys, OAuth clients, \
                 external client ids) untouched",
            );
        }
    }
    drop_ignored(&mut item, APP_IGNORED_KEYS, sink);
    Some(DesiredApplication {
        source: item.base.clone(),
        name: name?,
        organization: organization?,
        fields: std::mem::take(&mut item.config),
    })
}
