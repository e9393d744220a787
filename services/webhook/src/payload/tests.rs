use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{json, Value};

use super::*;

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/",
            $name
        ))
        .as_slice()
    };
}

/// A header map of `pairs` (shared with the signature tests).
pub(crate) fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).expect("test header name"),
            HeaderValue::from_str(value).expect("test header value"),
        );
    }
    map
}

/// A fixture with `change` applied to its JSON.
fn edited(body: &[u8], change: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(body).expect("fixture is JSON");
    change(&mut v);
    serde_json::to_vec(&v).expect("serializable")
}

fn push(provider: Provider, h: &[(&str, &str)], body: &[u8]) -> Push {
    match parse(provider, &headers(h), body) {
        Ok(WebhookEvent::Push(p)) => p,
        other => panic!("expected a push, got {other:?}"),
    }
}

fn err(provider: Provider, h: &[(&str, &str)], body: &[u8]) -> PayloadError {
    parse(provider, &headers(h), body).expect_err("expected an error")
}

fn person(name: &str, email: Option<&str>, username: Option<&str>) -> Option<Person> {
    Some(Person {
        name: Some(name.to_owned()),
        email: email.map(str::to_owned),
        username: username.map(str::to_owned),
    })
}

const GH_PUSH: &[(&str, &str)] = &[
    ("X-GitHub-Event", "push"),
    ("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
    ("X-GitHub-Hook-ID", "530418129"),
];

#[test]
fn github_push() {
    let p = push(Provider::Github, GH_PUSH, fixture!("github-push.json"));
    assert_eq!(
        p,
        Push {
            delivery_id: Some("72d3162e-cc78-11e3-81ab-4c9367dc0958".into()),
            git_ref: "refs/heads/main".into(),
            branch: Some("main".into()),
            commit: "9fceb02d0ae598e95dc970b74767f19372d61af8".into(),
            deleted: false,
            repo_urls: vec![
                "https://github.com/acme/banking-config.git".into(),
                "git://github.com/acme/banking-config.git".into(),
                "git@github.com:acme/banking-config.git".into(),
                "https://github.com/acme/banking-config".into(),
            ],
            full_name: Some("acme/banking-config".into()),
            message: Some(
                "Raise the pets API quota to 500/min\n\nRequested by the mobile team.".into()
            ),
            author: person("Rita Ops", Some("rita@example.com"), Some("rita-ops")),
            committer: person("GitHub", Some("noreply@github.com"), Some("web-flow")),
            pusher: Some(Person {
                name: None,
                email: Some("rita@example.com".into()),
                username: Some("rita-ops".into())
            }),
        }
    );
}

#[test]
fn github_ping_and_other_events() {
    let ping = parse(
        Provider::Github,
        &headers(&[("X-GitHub-Event", "ping")]),
        fixture!("github-ping.json"),
    );
    assert_eq!(ping, Ok(WebhookEvent::Ping));
    // Events Gantry does not follow are not even parsed.
    let other = parse(
        Provider::Github,
        &headers(&[("x-github-event", "pull_request")]),
        b"not json",
    );
    assert_eq!(
        other,
        Ok(WebhookEvent::Ignored {
            kind: "pull_request".into()
        })
    );
}

#[test]
fn github_without_event_header_is_rejected() {
    let e = err(Provider::Github, &[], fixture!("github-push.json"));
    assert_eq!(
        e,
        PayloadError::MissingHeader {
            header: "X-GitHub-Event"
        }
    );
    assert!(e.to_string().contains("X-GitHub-Event"), "{e}");
}

#[test]
fn github_branch_deletion() {
    let p = push(
        Provider::Github,
        GH_PUSH,
        fixture!("github-push-delete.json"),
    );
    assert!(p.deleted);
    assert_eq!(p.branch.as_deref(), Some("feature/new-quota"));
    assert_eq!(p.commit, "0".repeat(40));
    assert_eq!((p.message, p.author), (None, None));
}

#[test]
fn all_zero_after_means_deleted_even_without_the_flag() {
    let body = edited(fixture!("github-push-delete.json"), |v| {
        v["deleted"] = json!(false);
    });
    assert!(push(Provider::Github, GH_PUSH, &body).deleted);
}

#[test]
fn tag_push_has_no_branch() {
    let body = edited(fixture!("github-push.json"), |v| {
        v["ref"] = json!("refs/tags/v1")
    });
    let p = push(Provider::Github, GH_PUSH, &body);
    assert_eq!(p.git_ref, "refs/tags/v1");
    assert_eq!(p.branch, None);
    // Only the refs/heads/ prefix is stripped.
    let body = edited(fixture!("github-push.json"), |v| {
        v["ref"] = json!("refs/remotes/heads/x")
    });
    assert_eq!(push(Provider::Github, GH_PUSH, &body).branch, None);
}

#[test]
fn malformed_json_reports_line_and_column() {
    let body = b"{\n  \"ref\": \"refs/heads/main\",\n  \"after\": ,\n}";
    match err(Provider::Github, GH_PUSH, body) {
        PayloadError::Json {
            line,
            column,
            message,
        } => {
            assert_eq!((line, column), (3, 12));
            assert_eq!(message, "expected value");
        }
        other => panic!("{other:?}"),
    }
    let e = err(Provider::Github, GH_PUSH, b"");
    assert!(
        matches!(
            e,
            PayloadError::Json {
                line: 1,
                column: 0,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("line 1, column 0"), "{e}");
}

#[test]
fn body_must_be_a_json_object() {
    assert_eq!(
        err(Provider::Github, GH_PUSH, b"[1, 2]"),
        PayloadError::NotObject { found: "an array" }
    );
    let form = b"payload=%7B%22ref%22%3A%22refs%2Fheads%2Fmain%22%7D";
    let e = err(Provider::Github, GH_PUSH, form);
    assert_eq!(e, PayloadError::FormEncoded);
    assert!(e.to_string().contains("application/json"), "{e}");
}

#[test]
fn missing_and_invalid_fields_are_named() {
    let gh = fixture!("github-push.json");
    let cases: [(Vec<u8>, PayloadError); 6] = [
        (
            edited(gh, |v| drop(v.as_object_mut().map(|o| o.remove("after")))),
            PayloadError::Missing { field: "after" },
        ),
        (
            edited(gh, |v| v["ref"] = Value::Null),
            PayloadError::Missing { field: "ref" },
        ),
        (
            edited(gh, |v| {
                drop(v.as_object_mut().map(|o| o.remove("repository")))
            }),
            PayloadError::Missing {
                field: "repository",
            },
        ),
        (
            edited(gh, |v| v["after"] = json!(42)),
            PayloadError::Invalid {
                field: "after",
                message: "expected a string, found a number".into(),
            },
        ),
        (
            edited(gh, |v| v["after"] = json!("9fceb02")),
            PayloadError::Invalid {
                field: "after",
                message: "expected a full commit id (40 or 64 hex digits), found \"9fceb02\""
                    .into(),
            },
        ),
        (
            edited(gh, |v| v["ref"] = json!("main")),
            PayloadError::Invalid {
                field: "ref",
                message: "expected a full ref such as refs/heads/main, found \"main\"".into(),
            },
        ),
    ];
    for (body, expected) in cases {
        assert_eq!(err(Provider::Github, GH_PUSH, &body), expected);
    }
}

#[test]
fn sha256_commit_ids_are_accepted_and_lowercased() {
    let sha256 = "A".repeat(64);
    let body = edited(fixture!("github-push.json"), |v| v["after"] = json!(sha256));
    assert_eq!(
        push(Provider::Github, GH_PUSH, &body).commit,
        "a".repeat(64)
    );
    let not_hex = format!("{}g", "a".repeat(39));
    let body = edited(fixture!("github-push.json"), |v| {
        v["after"] = json!(not_hex)
    });
    assert!(matches!(
        err(Provider::Github, GH_PUSH, &body),
        PayloadError::Invalid { field: "after", .. }
    ));
}

#[test]
fn long_values_are_cut_in_errors() {
    let body = edited(fixture!("github-push.json"), |v| {
        v["ref"] = json!("x".repeat(10_000))
    });
    let e = err(Provider::Github, GH_PUSH, &body).to_string();
    assert!(e.len() < 200, "{e}");
}

const GL_PUSH: &[(&str, &str)] = &[
    ("X-Gitlab-Event", "Push Hook"),
    (
        "X-Gitlab-Webhook-UUID",
        "3c5c0404-c866-44bc-a5f6-452bb1bfc76e",
    ),
    (
        "X-Gitlab-Event-UUID",
        "9cebe914-4827-408f-b014-cfa23a47a35f",
    ),
    ("Idempotency-Key", "a5461c4d-9c7f-4af9-add6-cddebe3c426f"),
    ("X-Gitlab-Instance", "https://gitlab.example.com"),
];

#[test]
fn gitlab_push() {
    let p = push(Provider::Gitlab, GL_PUSH, fixture!("gitlab-push.json"));
    assert_eq!(
        p,
        Push {
            delivery_id: Some("a5461c4d-9c7f-4af9-add6-cddebe3c426f".into()),
            git_ref: "refs/heads/main".into(),
            branch: Some("main".into()),
            commit: "da1560886d4f094c3e6c9ef40349f7d38b5d27d7".into(),
            deleted: false,
            repo_urls: vec![
                "https://gitlab.example.com/apim/banking-config.git".into(),
                "git@gitlab.example.com:apim/banking-config.git".into(),
                "https://gitlab.example.com/apim/banking-config".into(),
            ],
            full_name: Some("apim/banking-config".into()),
            message: Some("Rotate the partner TLS certificate\n".into()),
            author: person("Rita Ops", Some("rita@example.com"), None),
            committer: None,
            pusher: person("Rita Ops", None, Some("rita")),
        }
    );
}

#[test]
fn gitlab_delivery_id_falls_back_to_event_uuid() {
    let h = &GL_PUSH[..3];
    let p = push(Provider::Gitlab, h, fixture!("gitlab-push.json"));
    assert_eq!(
        p.delivery_id.as_deref(),
        Some("9cebe914-4827-408f-b014-cfa23a47a35f")
    );
}

#[test]
fn gitlab_without_the_commit_names_the_pusher() {
    let body = edited(fixture!("gitlab-push.json"), |v| {
        v["after"] = json!("0000000000000000000000000000000000000000");
        v["checkout_sha"] = Value::Null;
        v["commits"] = json!([]);
    });
    let p = push(Provider::Gitlab, GL_PUSH, &body);
    assert!(p.deleted);
    assert_eq!(p.message, None);
    // user_email is "[REDACTED]" in the fixture, as GitLab sends it for private emails.
    assert_eq!(p.author, person("Rita Ops", None, Some("rita")));
}

#[test]
fn gitlab_event_kinds() {
    let tag = edited(fixture!("gitlab-push.json"), |v| {
        v["object_kind"] = json!("tag_push");
        v["ref"] = json!("refs/tags/v1");
    });
    let p = push(
        Provider::Gitlab,
        &[("X-Gitlab-Event", "Tag Push Hook")],
        &tag,
    );
    assert_eq!((p.git_ref.as_str(), p.branch), ("refs/tags/v1", None));

    let system = [("X-Gitlab-Event", "System Hook")];
    let p = push(Provider::Gitlab, &system, fixture!("gitlab-push.json"));
    assert_eq!(p.branch.as_deref(), Some("main"));
    let project_create = br#"{"event_name":"project_create","object_kind":"project_create"}"#;
    assert_eq!(
        parse(Provider::Gitlab, &headers(&system), project_create),
        Ok(WebhookEvent::Ignored {
            kind: "System Hook (project_create)".into()
        })
    );
    assert_eq!(
        parse(
            Provider::Gitlab,
            &headers(&[("X-Gitlab-Event", "Merge Request Hook")]),
            b"{}"
        ),
        Ok(WebhookEvent::Ignored {
            kind: "Merge Request Hook".into()
        })
    );
    assert_eq!(
        err(Provider::Gitlab, &[], b"{}"),
        PayloadError::MissingHeader {
            header: "X-Gitlab-Event"
        }
    );
}

#[test]
fn gitlab_needs_a_project() {
    let body = edited(fixture!("gitlab-push.json"), |v| {
        let o = v.as_object_mut().expect("object");
        o.remove("project");
        o.remove("repository");
    });
    assert_eq!(
        err(Provider::Gitlab, GL_PUSH, &body),
        PayloadError::Missing { field: "project" }
    );
}

const GITEA_PUSH: &[(&str, &str)] = &[
    ("X-Gitea-Event", "push"),
    ("X-Gitea-Event-Type", "push"),
    ("X-Gitea-Delivery", "f6266f16-1bf3-46a5-9ea4-602e06ead473"),
    ("X-GitHub-Event", "push"),
    ("X-GitHub-Delivery", "f6266f16-1bf3-46a5-9ea4-602e06ead473"),
];

#[test]
fn gitea_push() {
    let p = push(Provider::Gitea, GITEA_PUSH, fixture!("gitea-push.json"));
    assert_eq!(
        p,
        Push {
            delivery_id: Some("f6266f16-1bf3-46a5-9ea4-602e06ead473".into()),
            git_ref: "refs/heads/main".into(),
            branch: Some("main".into()),
            commit: "bffeb74224043ba2feb48d137756c8a9331c449a".into(),
            deleted: false,
            repo_urls: vec![
                "https://gitea.example.com/apim/banking-config.git".into(),
                "ssh://git@gitea.example.com:2222/apim/banking-config.git".into(),
                "https://gitea.example.com/apim/banking-config".into(),
            ],
            full_name: Some("apim/banking-config".into()),
            message: Some("Point prod at the new API Manager\n".into()),
            author: person("Rita Ops", Some("rita@example.com"), Some("rita")),
            committer: person("Rita Ops", Some("rita@example.com"), Some("rita")),
            pusher: Some(Person {
                name: None,
                email: Some("rita@example.com".into()),
                username: Some("rita".into())
            }),
        }
    );
}

#[test]
fn gitea_without_head_commit_uses_the_matching_commit() {
    let body = edited(fixture!("gitea-push.json"), |v| {
        drop(v.as_object_mut().map(|o| o.remove("head_commit")));
    });
    let p = push(Provider::Gitea, GITEA_PUSH, &body);
    assert_eq!(
        p.author,
        person("Rita Ops", Some("rita@example.com"), Some("rita"))
    );
    assert_eq!(
        parse(
            Provider::Gitea,
            &headers(&[("X-Gitea-Event", "delete")]),
            b""
        ),
        Ok(WebhookEvent::Ignored {
            kind: "delete".into()
        })
    );
}

const BB_PUSH: &[(&str, &str)] = &[
    ("X-Event-Key", "repo:push"),
    ("X-Hook-UUID", "cb6e2c3c-8d1e-4f0a-9c5b-0b0e8f7a1d22"),
    ("X-Request-UUID", "afe0f7a3-4e4b-4b8a-8c33-5f1c9d7e2b10"),
    ("X-Attempt-Number", "1"),
];

#[test]
fn bitbucket_cloud_push() {
    let p = push(
        Provider::Bitbucket,
        BB_PUSH,
        fixture!("bitbucket-push.json"),
    );
    assert_eq!(
        p,
        Push {
            // X-Hook-UUID names the webhook and is the same for every delivery.
            delivery_id: Some("afe0f7a3-4e4b-4b8a-8c33-5f1c9d7e2b10".into()),
            git_ref: "refs/heads/main".into(),
            branch: Some("main".into()),
            commit: "1e65c05c209d6a7c6bd0d6d7b6ae8f2d9f4b7e21".into(),
            deleted: false,
            repo_urls: vec!["https://bitbucket.org/acme/banking-config".into()],
            full_name: Some("acme/banking-config".into()),
            message: Some("Tighten the CORS policy for the payments API\n".into()),
            author: person("Rita Ops", Some("rita@example.com"), Some("rita")),
            committer: None,
            pusher: person("Rita Ops", None, Some("rita")),
        }
    );
}

#[test]
fn bitbucket_cloud_clone_links_are_repository_urls() {
    let body = edited(fixture!("bitbucket-push.json"), |v| {
        v["repository"]["links"]["clone"] = json!([
            { "name": "https", "href": "https://bitbucket.org/acme/banking-config.git" },
            { "name": "ssh", "href": "git@bitbucket.org:acme/banking-config.git" }
        ]);
    });
    let p = push(Provider::Bitbucket, BB_PUSH, &body);
    assert_eq!(
        p.repo_urls,
        [
            "https://bitbucket.org/acme/banking-config",
            "https://bitbucket.org/acme/banking-config.git",
            "git@bitbucket.org:acme/banking-config.git",
        ]
    );
}

#[test]
fn bitbucket_cloud_branch_deletion_and_tag() {
    let deleted = edited(fixture!("bitbucket-push.json"), |v| {
        let change = &mut v["push"]["changes"][0];
        change["new"] = Value::Null;
        change["closed"] = json!(true);
    });
    let p = push(Provider::Bitbucket, BB_PUSH, &deleted);
    assert!(p.deleted);
    assert_eq!(p.branch.as_deref(), Some("main"));
    assert_eq!(p.commit, "0".repeat(40));
    assert_eq!(p.author, None);

    let tag = edited(fixture!("bitbucket-push.json"), |v| {
        let new = &mut v["push"]["changes"][0]["new"];
        new["type"] = json!("tag");
        new["name"] = json!("v1");
    });
    let p = push(Provider::Bitbucket, BB_PUSH, &tag);
    assert_eq!((p.git_ref.as_str(), p.branch), ("refs/tags/v1", None));
}

#[test]
fn bitbucket_cloud_missing_parts() {
    let no_changes = edited(fixture!("bitbucket-push.json"), |v| {
        v["push"]["changes"] = json!([])
    });
    assert_eq!(
        err(Provider::Bitbucket, BB_PUSH, &no_changes),
        PayloadError::Missing {
            field: "push.changes"
        }
    );
    let no_hash = edited(fixture!("bitbucket-push.json"), |v| {
        v["push"]["changes"][0]["new"]["target"] = Value::Null;
    });
    assert_eq!(
        err(Provider::Bitbucket, BB_PUSH, &no_hash),
        PayloadError::Missing {
            field: "push.changes.0.new.target.hash"
        }
    );
    let bookmark = edited(fixture!("bitbucket-push.json"), |v| {
        v["push"]["changes"][0]["new"]["type"] = json!("bookmark");
    });
    assert!(matches!(
        err(Provider::Bitbucket, BB_PUSH, &bookmark),
        PayloadError::Invalid {
            field: "push.changes.0.new.type",
            ..
        }
    ));
}

#[test]
fn bitbucket_ping_and_other_events() {
    let ping = parse(
        Provider::Bitbucket,
        &headers(&[("X-Event-Key", "diagnostics:ping"), ("X-Request-Id", "1")]),
        br#"{"test": true}"#,
    );
    assert_eq!(ping, Ok(WebhookEvent::Ping));
    assert_eq!(
        parse(
            Provider::Bitbucket,
            &headers(&[("X-Event-Key", "pullrequest:created")]),
            b"{}"
        ),
        Ok(WebhookEvent::Ignored {
            kind: "pullrequest:created".into()
        })
    );
}

const BBDC_PUSH: &[(&str, &str)] = &[
    ("X-Event-Key", "repo:refs_changed"),
    ("X-Request-Id", "4d2f2e0c-6d0b-4f7e-9a8c-3e1b5c7a9d20"),
];

#[test]
fn bitbucket_data_center_push() {
    let p = push(
        Provider::Bitbucket,
        BBDC_PUSH,
        fixture!("bitbucket-server-refs-changed.json"),
    );
    assert_eq!(
        p,
        Push {
            delivery_id: Some("4d2f2e0c-6d0b-4f7e-9a8c-3e1b5c7a9d20".into()),
            git_ref: "refs/heads/main".into(),
            branch: Some("main".into()),
            commit: "178864a7d521b6f5e720b386b2c2b0ef8563e0dc".into(),
            deleted: false,
            repo_urls: vec![
                "ssh://git@bitbucket.example.com:7999/apim/banking-config.git".into(),
                "https://bitbucket.example.com/scm/apim/banking-config.git".into(),
            ],
            full_name: Some("APIM/banking-config".into()),
            message: None,
            author: person("Rita Ops", Some("rita@example.com"), Some("rita")),
            committer: None,
            pusher: person("Rita Ops", Some("rita@example.com"), Some("rita")),
        }
    );
    let deleted = edited(fixture!("bitbucket-server-refs-changed.json"), |v| {
        let change = &mut v["changes"][0];
        change["type"] = json!("DELETE");
        change["toHash"] = json!("0000000000000000000000000000000000000000");
    });
    assert!(push(Provider::Bitbucket, BBDC_PUSH, &deleted).deleted);
}

#[test]
fn generic_push() {
    let p = push(Provider::Generic, &[], fixture!("generic-push.json"));
    assert_eq!(
        p,
        Push {
            delivery_id: Some("nightly-2026-11-03".into()),
            git_ref: "refs/heads/main".into(),
            branch: Some("main".into()),
            commit: "5d0a7c3e9f1b2468ace13579bdf02468ace13579".into(),
            deleted: false,
            repo_urls: vec!["https://git.example.com/apim/banking-config.git".into()],
            full_name: None,
            message: Some("Nightly rebuild".into()),
            author: person("CI Robot", Some("ci@example.com"), None),
            committer: None,
            pusher: None,
        }
    );
}

#[test]
fn generic_variants() {
    let body = br#"{"repository": "apim/banking-config", "ref": "refs/tags/v1",
                    "commit": "5d0a7c3e9f1b2468ace13579bdf02468ace13579"}"#;
    let p = push(
        Provider::Generic,
        &[("X-Gantry-Event", "push"), ("X-Gantry-Delivery", "d-1")],
        body,
    );
    assert_eq!(p.full_name.as_deref(), Some("apim/banking-config"));
    assert!(p.repo_urls.is_empty());
    assert_eq!((p.branch, p.delivery_id.as_deref()), (None, Some("d-1")));

    let local = br#"{"repository": "/srv/git/banking-config", "branch": "main",
                     "commit": "5d0a7c3e9f1b2468ace13579bdf02468ace13579"}"#;
    assert_eq!(
        push(Provider::Generic, &[], local).repo_urls,
        ["/srv/git/banking-config"]
    );

    assert_eq!(
        parse(
            Provider::Generic,
            &headers(&[("X-Gantry-Event", "ping")]),
            b""
        ),
        Ok(WebhookEvent::Ping)
    );
}

#[test]
fn generic_missing_fields() {
    let no_ref = br#"{"repository": "apim/banking-config", "commit": "5d0a7c3e9f1b2468ace13579bdf02468ace13579"}"#;
    let e = err(Provider::Generic, &[], no_ref);
    assert_eq!(
        e.to_string(),
        "missing required field `ref` or `branch` in the payload"
    );
    let no_commit = br#"{"repository": "apim/banking-config", "branch": "main"}"#;
    assert_eq!(
        err(Provider::Generic, &[], no_commit),
        PayloadError::Missing { field: "commit" }
    );
    let no_repo = br#"{"branch": "main", "commit": "5d0a7c3e9f1b2468ace13579bdf02468ace13579"}"#;
    assert_eq!(
        err(Provider::Generic, &[], no_repo),
        PayloadError::Missing {
            field: "repository"
        }
    );
}

#[test]
fn raw_authors() {
    assert_eq!(
        split_raw_author("Rita Ops <rita@example.com>"),
        (Some("Rita Ops"), Some("rita@example.com"))
    );
    assert_eq!(
        split_raw_author("<rita@example.com>"),
        (None, Some("rita@example.com"))
    );
    assert_eq!(split_raw_author("rita"), (Some("rita"), None));
    assert_eq!(
        split_raw_author("Ünïcødé > Ops <x@y>"),
        (Some("Ünïcødé > Ops"), Some("x@y"))
    );
    assert_eq!(
        split_raw_author("Rita <x@y> later"),
        (Some("Rita <x@y> later"), None)
    );
    assert_eq!(split_raw_author(""), (None, None));
}
