//! Webhook deliveries reduced to what Gantry acts on: which repository, which
//! ref, which commit, and who made it. Pure: nothing here fetches a URL.
//!
//! | provider    | event header     | push                                   | ping               | delivery id header                                            |
//! |-------------|------------------|----------------------------------------|--------------------|---------------------------------------------------------------|
//! | `github`    | `X-GitHub-Event` | `push`                                 | `ping`             | `X-GitHub-Delivery`                                           |
//! | `gitlab`    | `X-Gitlab-Event` | `Push Hook`, `Tag Push Hook`, `System Hook` (push kinds) | — | `Idempotency-Key`, `X-Gitlab-Event-UUID`, `X-Gitlab-Webhook-UUID` |
//! | `gitea`     | `X-Gitea-Event`  | `push`                                 | —                  | `X-Gitea-Delivery`                                            |
//! | `bitbucket` | `X-Event-Key`    | `repo:push` (Cloud), `repo:refs_changed` (Data Center) | `diagnostics:ping` | `X-Request-UUID` (Cloud), `X-Request-Id` (Data Center) |
//! | `generic`   | `X-Gantry-Event` (optional) | `push` (the default)        | `ping`             | body `delivery`, else `X-Gantry-Delivery`                     |
//!
//! Other event kinds parse to [`WebhookEvent::Ignored`] without reading the body.
//! Bitbucket's `X-Hook-UUID` names the webhook, not the delivery, so it is not used.
//! A Bitbucket push that moves several refs at once is read from its first change.
//!
//! # The generic format
//!
//! For CI systems and scripts: `POST /webhooks/generic` with
//! `X-Gantry-Signature: sha256=<hex HMAC-SHA256 of the body keyed with the secret>`,
//! optionally `X-Gantry-Event: push` (the default) or `ping`, and a JSON body:
//!
//! ```json
//! {
//!   "repository": "https://git.example.com/apim/banking-config.git",
//!   "ref": "refs/heads/main",
//!   "commit": "9fceb02d0ae598e95dc970b74767f19372d61af8",
//!   "message": "Raise the pets API quota",
//!   "author": { "name": "Rita Ops", "email": "rita@example.com", "username": "rita" },
//!   "delivery": "ci-build-4711"
//! }
//! ```
//!
//! - `repository` (required): a clone URL or local path (anything with `:` or a
//!   leading `/`), matched against `source.repo`; otherwise a full name such as
//!   `apim/banking-config`, matched against `source.webhook_repo`.
//! - `ref` or `branch` (one required): a full ref, or a branch name (`"branch": "main"`).
//! - `commit` (required): the full commit id, 40 or 64 hex digits.
//! - `message`, `author` (any of `name`, `email`, `username`), `delivery` (an id
//!   that makes a resend idempotent): optional.

use gantry_proto::events::Person;
use http::HeaderMap;
use serde_json::Value;

use crate::signature::Provider;

/// What a delivery asks of Gantry.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // one short-lived value per request: a Box would only get in the way of matching
pub enum WebhookEvent {
    /// The forge checks that the endpoint answers.
    Ping,
    Push(Push),
    /// An event Gantry does not act on; `kind` is the forge's event name.
    Ignored {
        kind: String,
    },
}

/// A ref moved (or was deleted) in a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// The forge's id of this delivery, the same when it redelivers.
    pub delivery_id: Option<String>,
    /// The full ref, e.g. `refs/heads/main` or `refs/tags/v1`.
    pub git_ref: String,
    /// The branch name when `git_ref` starts with `refs/heads/`.
    pub branch: Option<String>,
    /// The commit the ref now points to, lowercase hex (all zeros when deleted).
    pub commit: String,
    /// The ref was deleted: there is nothing to build.
    pub deleted: bool,
    /// Every URL the payload gives for the repository, in payload order, without duplicates.
    pub repo_urls: Vec<String>,
    /// `owner/name` (GitLab: `path_with_namespace`; Bitbucket Data Center: `PROJECT/slug`).
    pub full_name: Option<String>,
    pub message: Option<String>,
    pub author: Option<Person>,
    /// The head commit's committer, when the payload names one.
    pub committer: Option<Person>,
    /// Who pushed, as the forge authenticated them: it counts as an author
    /// for separation of duties, since commit metadata is whatever the
    /// commit says.
    pub pusher: Option<Person>,
}

/// Why a delivery could not be read (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("the body is not valid JSON (line {line}, column {column}): {message}")]
    Json {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("the body is form-encoded: set the webhook's content type to application/json")]
    FormEncoded,
    #[error("the body must be a JSON object, not {found}")]
    NotObject { found: &'static str },
    #[error("missing {header} header: it names the event; check that this webhook posts to the route of its forge")]
    MissingHeader { header: &'static str },
    #[error("missing required field `{field}` in the payload")]
    Missing { field: &'static str },
    #[error("invalid field `{field}`: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

type Result<T, E = PayloadError> = std::result::Result<T, E>;

/// Reads a delivery whose signature [`crate::signature::verify`] has already checked.
pub fn parse(provider: Provider, headers: &HeaderMap, body: &[u8]) -> Result<WebhookEvent> {
    let push = |push: Result<Push>| push.map(WebhookEvent::Push);
    match provider {
        Provider::Github => match event(headers, "X-GitHub-Event")? {
            "ping" => Ok(WebhookEvent::Ping),
            "push" => push(github(
                object(body)?,
                delivery(headers, &["X-GitHub-Delivery"]),
            )),
            other => Ok(ignored(other)),
        },
        Provider::Gitea => match event(headers, "X-Gitea-Event")? {
            "push" => push(github(
                object(body)?,
                delivery(headers, &["X-Gitea-Delivery"]),
            )),
            other => Ok(ignored(other)),
        },
        Provider::Gitlab => {
            let ids = [
                "Idempotency-Key",
                "X-Gitlab-Event-UUID",
                "X-Gitlab-Webhook-UUID",
            ];
            match event(headers, "X-Gitlab-Event")? {
                "Push Hook" | "Tag Push Hook" => {
                    push(gitlab(object(body)?, delivery(headers, &ids)))
                }
                "System Hook" => {
                    let v = object(body)?;
                    match str_at(&v, "object_kind") {
                        Some("push" | "tag_push") => push(gitlab(v, delivery(headers, &ids))),
                        kind => Ok(ignored(&format!(
                            "System Hook ({})",
                            kind.unwrap_or("unknown")
                        ))),
                    }
                }
                other => Ok(ignored(other)),
            }
        }
        Provider::Bitbucket => {
            let ids = ["X-Request-UUID", "X-Request-Id"];
            match event(headers, "X-Event-Key")? {
                "diagnostics:ping" => Ok(WebhookEvent::Ping),
                "repo:push" => push(bitbucket_cloud(object(body)?, delivery(headers, &ids))),
                "repo:refs_changed" => push(bitbucket_dc(object(body)?, delivery(headers, &ids))),
                other => Ok(ignored(other)),
            }
        }
        Provider::Generic => match header(headers, "X-Gantry-Event").unwrap_or("push") {
            "ping" => Ok(WebhookEvent::Ping),
            "push" => push(generic(object(body)?, headers)),
            other => Ok(ignored(other)),
        },
    }
}

/// GitHub, and Gitea, whose push payload copies GitHub's.
fn github(v: Value, delivery_id: Option<String>) -> Result<Push> {
    let after = req_str(&v, "after")?;
    let head = at(&v, "head_commit").or_else(|| find_commit(&v, &[after]));
    let author = head
        .and_then(|c| at(c, "author"))
        .and_then(|a| person(str_at(a, "name"), str_at(a, "email"), str_at(a, "username")));
    let committer = head
        .and_then(|c| at(c, "committer"))
        .and_then(|a| person(str_at(a, "name"), str_at(a, "email"), str_at(a, "username")));
    // GitHub: `pusher {name (the login), email}`, `sender {login}`; Gitea:
    // `pusher {login, username, email}`.
    let pusher = person(
        None,
        str_at(&v, "pusher.email"),
        str_at(&v, "sender.login")
            .or_else(|| str_at(&v, "pusher.login"))
            .or_else(|| str_at(&v, "pusher.username"))
            .or_else(|| str_at(&v, "pusher.name")),
    );
    let urls = [
        "repository.clone_url",
        "repository.git_url",
        "repository.ssh_url",
        "repository.html_url",
    ];
    checked(
        Push {
            delivery_id,
            git_ref: req_str(&v, "ref")?.to_owned(),
            branch: None,
            commit: after.to_owned(),
            deleted: bool_at(&v, "deleted"),
            repo_urls: strs(&v, &urls),
            full_name: owned(str_at(&v, "repository.full_name")),
            message: owned(head.and_then(|c| str_at(c, "message"))),
            author,
            committer,
            pusher,
        },
        ("ref", "after", "repository"),
    )
}

fn gitlab(v: Value, delivery_id: Option<String>) -> Result<Push> {
    let after = req_str(&v, "after")?;
    let checkout = str_at(&v, "checkout_sha").unwrap_or(after);
    let commit = find_commit(&v, &[checkout, after]);
    let pusher = person(
        str_at(&v, "user_name"),
        str_at(&v, "user_email").filter(|e| *e != "[REDACTED]"),
        str_at(&v, "user_username"),
    );
    let author = match commit.and_then(|c| at(c, "author")) {
        Some(a) => person(str_at(a, "name"), str_at(a, "email"), None),
        // No such commit in the payload (a deletion, or past GitLab's 20-commit limit): the pusher.
        None => pusher.clone(),
    };
    let urls = [
        "project.git_http_url",
        "project.git_ssh_url",
        "project.web_url",
        "repository.git_http_url",
        "repository.git_ssh_url",
        "repository.url",
        "repository.homepage",
    ];
    checked(
        Push {
            delivery_id,
            git_ref: req_str(&v, "ref")?.to_owned(),
            branch: None,
            commit: after.to_owned(),
            deleted: false,
            repo_urls: strs(&v, &urls),
            full_name: owned(str_at(&v, "project.path_with_namespace")),
            message: owned(commit.and_then(|c| str_at(c, "message"))),
            author,
            committer: None,
            pusher,
        },
        ("ref", "after", "project"),
    )
}

/// Bitbucket Cloud: `repo:push`.
fn bitbucket_cloud(v: Value, delivery_id: Option<String>) -> Result<Push> {
    let change = first(&v, "push.changes")?;
    let new = at(change, "new");
    // A deleted ref has `new: null`; its name and type are then in `old`.
    let named = new
        .or_else(|| at(change, "old"))
        .ok_or(PayloadError::Missing {
            field: "push.changes.0.new",
        })?;
    let name = str_at(named, "name").ok_or(PayloadError::Missing {
        field: "push.changes.0.new.name",
    })?;
    let git_ref = match str_at(named, "type") {
        Some("branch" | "named_branch") => format!("refs/heads/{name}"),
        Some("tag" | "annotated_tag") => format!("refs/tags/{name}"),
        other => {
            return Err(PayloadError::Invalid {
                field: "push.changes.0.new.type",
                message: format!(
                    "expected branch or tag, found {}",
                    shown(other.unwrap_or(""))
                ),
            })
        }
    };
    let target = new.and_then(|n| at(n, "target"));
    let commit = match new {
        Some(_) => target
            .and_then(|t| str_at(t, "hash"))
            .ok_or(PayloadError::Missing {
                field: "push.changes.0.new.target.hash",
            })?,
        None => ZERO_SHA,
    };
    let author = target.and_then(|t| at(t, "author")).and_then(|a| {
        let (name, email) = split_raw_author(str_at(a, "raw").unwrap_or(""));
        person(
            name.or_else(|| str_at(a, "user.display_name")),
            email,
            str_at(a, "user.nickname"),
        )
    });
    let pusher = at(&v, "actor").and_then(|a| {
        person(
            str_at(a, "display_name"),
            None,
            str_at(a, "nickname").or_else(|| str_at(a, "username")),
        )
    });
    let mut repo_urls = strs(&v, &["repository.links.html.href"]);
    repo_urls.extend(clone_links(&v));
    checked(
        Push {
            delivery_id,
            git_ref,
            branch: None,
            commit: commit.to_owned(),
            deleted: new.is_none() || bool_at(change, "closed"),
            repo_urls,
            full_name: owned(str_at(&v, "repository.full_name")),
            message: owned(target.and_then(|t| str_at(t, "message"))),
            author,
            committer: None,
            pusher,
        },
        (
            "push.changes.0.new.name",
            "push.changes.0.new.target.hash",
            "repository",
        ),
    )
}

/// Bitbucket Data Center (Server): `repo:refs_changed`.
fn bitbucket_dc(v: Value, delivery_id: Option<String>) -> Result<Push> {
    let change = first(&v, "changes")?;
    let git_ref = str_at(change, "ref.id")
        .or_else(|| str_at(change, "refId"))
        .ok_or(PayloadError::Missing {
            field: "changes.0.ref.id",
        })?;
    let commit = str_at(change, "toHash").ok_or(PayloadError::Missing {
        field: "changes.0.toHash",
    })?;
    let full_name = match (
        str_at(&v, "repository.project.key"),
        str_at(&v, "repository.slug"),
    ) {
        (Some(project), Some(slug)) => Some(format!("{project}/{slug}")),
        _ => None,
    };
    // The payload names no commit author, only the pusher.
    let author = at(&v, "actor").and_then(|a| {
        person(
            str_at(a, "displayName"),
            str_at(a, "emailAddress"),
            str_at(a, "name"),
        )
    });
    checked(
        Push {
            delivery_id,
            git_ref: git_ref.to_owned(),
            branch: None,
            commit: commit.to_owned(),
            deleted: str_at(change, "type") == Some("DELETE"),
            repo_urls: clone_links(&v).collect(),
            full_name,
            message: None,
            pusher: author.clone(),
            author,
            committer: None,
        },
        ("changes.0.ref.id", "changes.0.toHash", "repository"),
    )
}

fn generic(v: Value, headers: &HeaderMap) -> Result<Push> {
    let repository = req_str(&v, "repository")?;
    let is_location = repository.contains(':') || repository.starts_with('/');
    let git_ref = match (str_at(&v, "ref"), str_at(&v, "branch")) {
        (Some(r), _) => r.to_owned(),
        (None, Some(b)) if b.starts_with("refs/") => b.to_owned(),
        (None, Some(b)) => format!("refs/heads/{b}"),
        (None, None) => {
            return Err(PayloadError::Missing {
                field: "ref` or `branch",
            })
        }
    };
    let named = |field: &str| {
        at(&v, field)
            .and_then(|a| person(str_at(a, "name"), str_at(a, "email"), str_at(a, "username")))
    };
    let (author, committer, pusher) = (named("author"), named("committer"), named("pusher"));
    checked(
        Push {
            delivery_id: owned(str_at(&v, "delivery"))
                .or_else(|| delivery(headers, &["X-Gantry-Delivery"])),
            git_ref,
            branch: None,
            commit: req_str(&v, "commit")?.to_owned(),
            deleted: false,
            repo_urls: if is_location {
                vec![repository.to_owned()]
            } else {
                vec![]
            },
            full_name: (!is_location).then(|| repository.to_owned()),
            message: owned(str_at(&v, "message")),
            author,
            committer,
            pusher,
        },
        ("ref", "commit", "repository"),
    )
}

const ZERO_SHA: &str = "0000000000000000000000000000000000000000";

/// Validates and normalizes what a forge-specific reader assembled.
/// `names` are the payload fields to blame: (ref, commit, repository).
fn checked(mut p: Push, names: (&'static str, &'static str, &'static str)) -> Result<Push> {
    let (ref_field, commit_field, repo_field) = names;
    if !p.git_ref.starts_with("refs/") || p.git_ref.len() <= "refs/".len() {
        return Err(PayloadError::Invalid {
            field: ref_field,
            message: format!(
                "expected a full ref such as refs/heads/main, found {}",
                shown(&p.git_ref)
            ),
        });
    }
    if !matches!(p.commit.len(), 40 | 64) || !p.commit.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(PayloadError::Invalid {
            field: commit_field,
            message: format!(
                "expected a full commit id (40 or 64 hex digits), found {}",
                shown(&p.commit)
            ),
        });
    }
    p.commit.make_ascii_lowercase();
    p.deleted |= p.commit.bytes().all(|b| b == b'0');
    p.branch = p.git_ref.strip_prefix("refs/heads/").map(str::to_owned);
    let mut urls: Vec<String> = Vec::with_capacity(p.repo_urls.len());
    for url in std::mem::take(&mut p.repo_urls) {
        if !urls.contains(&url) {
            urls.push(url);
        }
    }
    p.repo_urls = urls;
    if p.repo_urls.is_empty() && p.full_name.is_none() {
        return Err(PayloadError::Missing { field: repo_field });
    }
    Ok(p)
}

fn object(body: &[u8]) -> Result<Value> {
    if body.starts_with(b"payload=") {
        return Err(PayloadError::FormEncoded);
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        let (line, column) = (e.line(), e.column());
        let full = e.to_string();
        let suffix = format!(" at line {line} column {column}");
        let message = full.strip_suffix(&suffix).unwrap_or(&full).to_owned();
        PayloadError::Json {
            line,
            column,
            message,
        }
    })?;
    match v {
        Value::Object(_) => Ok(v),
        other => Err(PayloadError::NotObject {
            found: kind(&other),
        }),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let value = headers.get(name)?.to_str().ok()?.trim();
    (!value.is_empty()).then_some(value)
}

fn event<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str> {
    header(headers, name).ok_or(PayloadError::MissingHeader { header: name })
}

fn delivery(headers: &HeaderMap, names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| header(headers, n))
        .map(str::to_owned)
}

fn ignored(kind: &str) -> WebhookEvent {
    WebhookEvent::Ignored {
        kind: kind.to_owned(),
    }
}

/// The value at a dotted path (`a.b.0.c`), `None` when absent or null.
fn at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(v, |v, key| match key.parse::<usize>() {
            Ok(i) => v.get(i),
            Err(_) => v.get(key),
        })
        .filter(|v| !v.is_null())
}

/// A non-empty string at `path`; anything else is `None`. For fields Gantry can do without.
fn str_at<'a>(v: &'a Value, path: &str) -> Option<&'a str> {
    at(v, path)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn bool_at(v: &Value, path: &str) -> bool {
    at(v, path).and_then(Value::as_bool).unwrap_or(false)
}

fn req_str<'a>(v: &'a Value, field: &'static str) -> Result<&'a str> {
    match at(v, field) {
        None => Err(PayloadError::Missing { field }),
        Some(Value::String(s)) if s.is_empty() => Err(PayloadError::Missing { field }),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(PayloadError::Invalid {
            field,
            message: format!("expected a string, found {}", kind(other)),
        }),
    }
}

fn strs(v: &Value, paths: &[&str]) -> Vec<String> {
    paths.iter().filter_map(|p| owned(str_at(v, p))).collect()
}

fn owned(s: Option<&str>) -> Option<String> {
    s.map(str::to_owned)
}

fn first<'a>(v: &'a Value, field: &'static str) -> Result<&'a Value> {
    at(v, field)
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .ok_or(PayloadError::Missing { field })
}

/// `commits[]` entry whose `id` is one of `ids`.
fn find_commit<'a>(v: &'a Value, ids: &[&str]) -> Option<&'a Value> {
    let commits = v.get("commits")?.as_array()?;
    ids.iter()
        .find_map(|id| commits.iter().find(|c| str_at(c, "id") == Some(*id)))
}

/// `repository.links.clone[].href` (Bitbucket).
fn clone_links(v: &Value) -> impl Iterator<Item = String> + '_ {
    at(v, "repository.links.clone")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|l| owned(str_at(l, "href")))
}

fn person(name: Option<&str>, email: Option<&str>, username: Option<&str>) -> Option<Person> {
    let p = Person {
        name: owned(name),
        email: owned(email),
        username: owned(username),
    };
    (p != Person::default()).then_some(p)
}

/// `"Name <email>"` as git and Bitbucket write an author.
fn split_raw_author(raw: &str) -> (Option<&str>, Option<&str>) {
    fn non_empty(s: &str) -> Option<&str> {
        Some(s.trim()).filter(|s| !s.is_empty())
    }
    let raw = raw.trim();
    match raw
        .strip_suffix('>')
        .and_then(|r| r.rfind('<').map(|i| r.split_at(i)))
    {
        Some((name, email)) => (non_empty(name), non_empty(&email[1..])),
        None => (non_empty(raw), None),
    }
}

/// Sender input quoted in an error, cut to a readable length.
fn shown(s: &str) -> String {
    const MAX: usize = 80;
    if s.chars().count() <= MAX {
        format!("{s:?}")
    } else {
        format!("{:?}…", s.chars().take(MAX).collect::<String>())
    }
}

#[cfg(test)]
pub(crate) mod tests;
