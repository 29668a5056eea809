//! Forge webhooks: who sent a delivery (its signature, checked before the
//! body is parsed), what it is (its event and delivery id, from headers),
//! and the pushes it reports.
//!
//! - GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`,
//!   `X-GitHub-Event`, `X-GitHub-Delivery`.
//! - Gitea and Forgejo: `X-Gitea-Signature` (or `X-Forgejo-Signature`):
//!   `<hex HMAC-SHA256>`, `X-Gitea-Event`, `X-Gitea-Delivery`.
//! - GitLab: `X-Gitlab-Token: <the secret>`, `X-Gitlab-Event` (`Push
//!   Hook`), `X-Gitlab-Event-UUID`.
//! - Plain git (the `post-receive` hook Hangar documents): the hook's
//!   stdin (`<old> <new> <ref>` lines) as the body,
//!   `X-Hangar-Signature-256: sha256=<hex HMAC-SHA256>`,
//!   `X-Hangar-Delivery`.

use hmac::{Hmac, Mac};
use http::HeaderMap;
use serde::Deserialize;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::repo::valid_sha;

/// The most bytes of a delivery's body Hangar reads (GitHub caps its
/// payloads at 25 MB; a push of a few hundred commits is far below this).
pub const MAX_BODY_BYTES: usize = 5 * 1024 * 1024;

/// The most characters of a delivery id kept.
const MAX_DELIVERY_ID: usize = 128;

/// Who sends the webhook, from the path `/hooks/{forge}/{app}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forge {
    GitHub,
    Gitea,
    GitLab,
    /// A plain git server's `post-receive` hook.
    Git,
}

/// Why a delivery was refused.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("no {0} header: the delivery is not signed")]
    Unsigned(&'static str),
    #[error("the {0} header is malformed")]
    Malformed(&'static str),
    #[error("the signature does not match the body and the app's webhook secret")]
    BadSignature,
    #[error("the payload is not a {forge} {event} event: {reason}")]
    Payload {
        forge: &'static str,
        event: String,
        reason: String,
    },
}

impl Forge {
    /// The forge named in a hook's path.
    pub fn parse(name: &str) -> Option<Forge> {
        match name {
            "github" => Some(Forge::GitHub),
            "gitea" | "forgejo" => Some(Forge::Gitea),
            "gitlab" => Some(Forge::GitLab),
            "git" => Some(Forge::Git),
            _ => None,
        }
    }

    /// Its name in paths and in the store.
    pub fn name(self) -> &'static str {
        match self {
            Forge::GitHub => "github",
            Forge::Gitea => "gitea",
            Forge::GitLab => "gitlab",
            Forge::Git => "git",
        }
    }

    /// Checks the delivery's signature (or GitLab's token) against
    /// `secret`, in constant time, before anything of the body is read.
    pub fn verify(self, headers: &HeaderMap, body: &[u8], secret: &[u8]) -> Result<(), HookError> {
        match self {
            Forge::GitHub => verify_hmac(headers, &["x-hub-signature-256"], true, body, secret),
            Forge::Gitea => verify_hmac(
                headers,
                &["x-gitea-signature", "x-forgejo-signature"],
                false,
                body,
                secret,
            ),
            Forge::Git => verify_hmac(headers, &["x-hangar-signature-256"], true, body, secret),
            Forge::GitLab => {
                let token = headers
                    .get("x-gitlab-token")
                    .ok_or(HookError::Unsigned("X-Gitlab-Token"))?;
                if bool::from(token.as_bytes().ct_eq(secret)) {
                    Ok(())
                } else {
                    Err(HookError::BadSignature)
                }
            }
        }
    }

    /// The delivery's id, which a replay repeats (None when the forge
    /// sent none, or one that is not a short printable string).
    pub fn delivery_id(self, headers: &HeaderMap) -> Option<String> {
        let names: &[&str] = match self {
            Forge::GitHub => &["x-github-delivery"],
            Forge::Gitea => &["x-gitea-delivery", "x-forgejo-delivery"],
            Forge::GitLab => &["x-gitlab-event-uuid", "idempotency-key"],
            Forge::Git => &["x-hangar-delivery"],
        };
        let value = names.iter().find_map(|n| headers.get(*n))?.to_str().ok()?;
        (!value.is_empty()
            && value.len() <= MAX_DELIVERY_ID
            && value.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| value.to_owned())
    }

    /// The delivery's event, normalised: `push`, `ping`, `pull_request`,
    /// or the forge's own name for anything else.
    pub fn event(self, headers: &HeaderMap) -> String {
        let header = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| headers.get(*n))
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .chars()
                .take(64)
                .collect::<String>()
        };
        match self {
            Forge::GitHub => header(&["x-github-event"]),
            Forge::Gitea => header(&["x-gitea-event", "x-forgejo-event"]),
            Forge::GitLab => match header(&["x-gitlab-event"]).as_str() {
                "Push Hook" => "push".to_owned(),
                "Merge Request Hook" => "pull_request".to_owned(),
                other => other.to_owned(),
            },
            Forge::Git => "push".to_owned(),
        }
    }

    /// The pushes an authenticated `push` delivery reports (one for a
    /// forge; one per updated ref for the plain git hook).
    pub fn pushes(self, event: &str, body: &[u8]) -> Result<Vec<Push>, HookError> {
        let bad = |reason: String| HookError::Payload {
            forge: self.name(),
            event: event.to_owned(),
            reason,
        };
        match self {
            Forge::Git => {
                let text = std::str::from_utf8(body).map_err(|_| bad("not UTF-8".into()))?;
                let mut pushes = Vec::new();
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    let mut words = line.split_whitespace();
                    let (Some(_old), Some(new), Some(git_ref), None) =
                        (words.next(), words.next(), words.next(), words.next())
                    else {
                        return Err(bad(format!(
                            "a line is not `<old> <new> <ref>`: {:?}",
                            line.chars().take(80).collect::<String>()
                        )));
                    };
                    pushes.push(Push::new(git_ref, new, None).map_err(bad)?);
                }
                if pushes.is_empty() {
                    return Err(bad("no `<old> <new> <ref>` line".into()));
                }
                Ok(pushes)
            }
            _ => {
                let p: ForgePush = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
                // Changed paths are known only when every commit lists
                // them (GitLab lists at most 20 of a push's commits).
                let listed = p.commits.len() as u64;
                let complete = p.total_commits_count.is_none_or(|n| n <= listed)
                    && p.commits.iter().all(|c| c.added.is_some());
                let paths = complete.then(|| {
                    p.commits
                        .iter()
                        .flat_map(|c| {
                            [&c.added, &c.modified, &c.removed]
                                .into_iter()
                                .flatten()
                                .flatten()
                                .cloned()
                        })
                        .collect()
                });
                let mut push = Push::new(&p.git_ref, &p.after, paths).map_err(bad)?;
                push.deleted |= p.deleted;
                Ok(vec![push])
            }
        }
    }
}

/// What a pull request delivery asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrAction {
    /// Opened, reopened or pushed to: (re)build its head.
    Update,
    /// Closed or merged: tear its preview down.
    Close,
    /// Anything else (labels, reviews, edits): nothing.
    Other,
}

/// A pull request, as GitHub's and Gitea's `pull_request` payloads (and
/// GitLab's merge request hooks) describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullRequest {
    pub action: PrAction,
    /// The forge's word for it (`opened`, `synchronize`, …).
    pub action_name: String,
    pub number: u64,
    /// Its head commit.
    pub head_sha: String,
    /// Its head branch, in the head repository.
    pub head_ref: String,
    /// The head repository is not the base one.
    pub fork: bool,
    /// The author may build without approval: not a fork, and the forge
    /// says the author has write access (OWNER, MEMBER, COLLABORATOR).
    /// Gitea sends no association: only a same-repository PR counts there.
    pub trusted: bool,
    pub author: String,
}

#[derive(Deserialize)]
struct PrPayload {
    action: String,
    number: u64,
    pull_request: PrBody,
}

#[derive(Deserialize)]
struct PrBody {
    head: PrSide,
    base: PrSide,
    #[serde(default)]
    author_association: Option<String>,
    #[serde(default)]
    user: Option<PrUser>,
}

#[derive(Deserialize)]
struct PrSide {
    sha: String,
    #[serde(rename = "ref")]
    git_ref: String,
    #[serde(default)]
    repo: Option<PrRepo>,
}

#[derive(Deserialize)]
struct PrRepo {
    #[serde(default)]
    full_name: Option<String>,
    #[serde(default)]
    id: Option<u64>,
}

#[derive(Deserialize)]
struct PrUser {
    #[serde(default)]
    login: Option<String>,
}

impl Forge {
    /// The pull request an authenticated `pull_request` delivery reports
    /// (GitHub's and Gitea's shapes).
    pub fn pull_request(self, body: &[u8]) -> Result<PullRequest, HookError> {
        let bad = |reason: String| HookError::Payload {
            forge: self.name(),
            event: "pull_request".into(),
            reason,
        };
        let p: PrPayload = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
        let head_sha = p.pull_request.head.sha.to_ascii_lowercase();
        if !valid_sha(&head_sha) {
            return Err(bad("the head is not a commit id".into()));
        }
        if p.number == 0 || p.number > 1_000_000_000 {
            return Err(bad(format!("{} is not a pull request number", p.number)));
        }
        let same = |a: &Option<PrRepo>, b: &Option<PrRepo>| match (a, b) {
            (Some(a), Some(b)) => match (a.id, b.id) {
                (Some(x), Some(y)) => x == y,
                _ => a.full_name.is_some() && a.full_name == b.full_name,
            },
            _ => false,
        };
        let fork = !same(&p.pull_request.head.repo, &p.pull_request.base.repo);
        let writer = match p.pull_request.author_association.as_deref() {
            Some(a) => matches!(a, "OWNER" | "MEMBER" | "COLLABORATOR"),
            // Gitea: no association; a branch of the repository itself
            // was pushed by someone with write access.
            None => self == Forge::Gitea,
        };
        let action = match p.action.as_str() {
            "opened" | "reopened" | "synchronize" | "synchronized" => PrAction::Update,
            "closed" | "merged" => PrAction::Close,
            _ => PrAction::Other,
        };
        Ok(PullRequest {
            action,
            action_name: p.action.chars().take(32).collect(),
            number: p.number,
            head_sha,
            head_ref: p.pull_request.head.git_ref.chars().take(255).collect(),
            fork,
            trusted: !fork && writer,
            author: p
                .pull_request
                .user
                .and_then(|u| u.login)
                .unwrap_or_default()
                .chars()
                .take(64)
                .collect(),
        })
    }
}

/// One ref's update, as a delivery reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Push {
    /// `refs/heads/<branch>`, or another ref.
    pub git_ref: String,
    /// The ref's new commit (lowercase hex).
    pub after: String,
    /// The ref was deleted.
    pub deleted: bool,
    /// Every path the pushed commits touched, when the payload lists them
    /// all.
    pub paths: Option<Vec<String>>,
}

impl Push {
    fn new(git_ref: &str, after: &str, paths: Option<Vec<String>>) -> Result<Push, String> {
        if git_ref.len() > 255 || git_ref.chars().any(char::is_control) {
            return Err("the ref is not a ref name".into());
        }
        let after = after.to_ascii_lowercase();
        if !valid_sha(&after) {
            return Err(format!(
                "{:?} is not a commit id",
                after.chars().take(80).collect::<String>()
            ));
        }
        Ok(Push {
            git_ref: git_ref.to_owned(),
            deleted: after.bytes().all(|b| b == b'0'),
            after,
            paths,
        })
    }

    /// The branch pushed to, if the ref is one.
    pub fn branch(&self) -> Option<&str> {
        self.git_ref.strip_prefix("refs/heads/")
    }

    /// Whether the push touched `subdir` (always, without a subdir or
    /// when the payload does not list every path).
    pub fn touches(&self, subdir: &str) -> bool {
        let dir = subdir.trim_matches('/');
        match &self.paths {
            _ if dir.is_empty() => true,
            None => true,
            Some(paths) => paths.iter().any(|p| {
                p.strip_prefix(dir)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }),
        }
    }
}

/// The fields of GitHub's, Gitea's and GitLab's push payloads Hangar
/// reads (the same names in all three).
#[derive(Deserialize)]
struct ForgePush {
    #[serde(rename = "ref")]
    git_ref: String,
    after: String,
    #[serde(default)]
    deleted: bool,
    #[serde(default)]
    commits: Vec<ForgeCommit>,
    #[serde(default)]
    total_commits_count: Option<u64>,
}

#[derive(Deserialize)]
struct ForgeCommit {
    #[serde(default)]
    added: Option<Vec<String>>,
    #[serde(default)]
    modified: Option<Vec<String>>,
    #[serde(default)]
    removed: Option<Vec<String>>,
}

/// HMAC-SHA256 of `body` under `secret`, in lowercase hex (what the
/// forges send, and what the plain git hook computes with openssl).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn verify_hmac(
    headers: &HeaderMap,
    names: &[&'static str],
    prefixed: bool,
    body: &[u8],
    secret: &[u8],
) -> Result<(), HookError> {
    let (name, value) = names
        .iter()
        .find_map(|n| headers.get(*n).map(|v| (*n, v)))
        .ok_or(HookError::Unsigned(names[0]))?;
    let value = value.to_str().map_err(|_| HookError::Malformed(name))?;
    let hex_sig = if prefixed {
        value
            .strip_prefix("sha256=")
            .ok_or(HookError::Malformed(name))?
    } else {
        value
    };
    let sig = hex::decode(hex_sig.trim()).map_err(|_| HookError::Malformed(name))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    mac.verify_slice(&sig).map_err(|_| HookError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    const SHA: &str = "4d3c9a0b5f1e2d3c4b5a69788796a5b4c3d2e1f0";

    #[test]
    fn github_signatures_are_checked_against_the_body() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let good = format!("sha256={}", sign(b"s3cret", body));
        let h = headers(&[("x-hub-signature-256", &good)]);
        Forge::GitHub.verify(&h, body, b"s3cret").unwrap();
        // Another secret, another body, no header, no prefix: refused.
        assert!(matches!(
            Forge::GitHub.verify(&h, body, b"other"),
            Err(HookError::BadSignature)
        ));
        assert!(matches!(
            Forge::GitHub.verify(&h, b"{}", b"s3cret"),
            Err(HookError::BadSignature)
        ));
        assert!(matches!(
            Forge::GitHub.verify(&HeaderMap::new(), body, b"s3cret"),
            Err(HookError::Unsigned(_))
        ));
        let bare = headers(&[("x-hub-signature-256", &sign(b"s3cret", body))]);
        assert!(matches!(
            Forge::GitHub.verify(&bare, body, b"s3cret"),
            Err(HookError::Malformed(_))
        ));
    }

    #[test]
    fn gitea_and_gitlab_sign_their_own_ways() {
        let body = b"{}";
        let h = headers(&[("x-gitea-signature", &sign(b"k", body))]);
        Forge::Gitea.verify(&h, body, b"k").unwrap();
        let h = headers(&[("x-forgejo-signature", &sign(b"k", body))]);
        Forge::Gitea.verify(&h, body, b"k").unwrap();
        let h = headers(&[("x-gitlab-token", "k")]);
        Forge::GitLab.verify(&h, body, b"k").unwrap();
        assert!(Forge::GitLab.verify(&h, body, b"kk").is_err());
        assert!(Forge::GitLab.verify(&h, body, b"").is_err());
    }

    #[test]
    fn push_payloads_give_the_ref_the_commit_and_the_paths() {
        let body = format!(
            r#"{{"ref":"refs/heads/main","before":"0","after":"{}","commits":[
            {{"id":"x","added":["api/a.rs"],"modified":[],"removed":[]}},
            {{"id":"y","added":[],"modified":["docs/readme.md"],"removed":[]}}]}}"#,
            SHA.to_uppercase()
        );
        let p = Forge::GitHub.pushes("push", body.as_bytes()).unwrap();
        assert_eq!(p[0].branch(), Some("main"));
        assert_eq!(p[0].after, SHA);
        assert!(!p[0].deleted);
        assert!(p[0].touches("api") && p[0].touches("docs/") && p[0].touches(""));
        assert!(!p[0].touches("ap") && !p[0].touches("web"));
        // GitLab lists 20 of 25 commits: the paths are unknown, so every
        // subdir counts as touched.
        let body = format!(
            r#"{{"ref":"refs/heads/main","after":"{SHA}","total_commits_count":25,
            "commits":[{{"added":[],"modified":["docs/x"],"removed":[]}}]}}"#
        );
        let p = Forge::GitLab.pushes("push", body.as_bytes()).unwrap();
        assert!(p[0].paths.is_none() && p[0].touches("api"));
        // A deleted branch, a bad sha, not JSON.
        let body = r#"{"ref":"refs/heads/x","after":"0000000000000000000000000000000000000000"}"#;
        assert!(Forge::Gitea.pushes("push", body.as_bytes()).unwrap()[0].deleted);
        let body = r#"{"ref":"refs/heads/x","after":"--upload-pack=evil"}"#;
        assert!(Forge::GitHub.pushes("push", body.as_bytes()).is_err());
        assert!(Forge::GitHub.pushes("push", b"<xml/>").is_err());
    }

    fn pr(action: &str, head_repo: u64, association: Option<&str>) -> Vec<u8> {
        let mut pr = serde_json::json!({
            "head": {"sha": SHA, "ref": "feature", "repo": {"id": head_repo, "full_name": "x/web"}},
            "base": {"sha": SHA, "ref": "main", "repo": {"id": 1, "full_name": "dev/web"}},
            "user": {"login": "alice"},
        });
        if let Some(a) = association {
            pr["author_association"] = a.into();
        }
        serde_json::to_vec(&serde_json::json!({"action": action, "number": 7, "pull_request": pr}))
            .unwrap()
    }

    #[test]
    fn pull_requests_say_what_to_do_and_whom_to_trust() {
        let p = Forge::GitHub
            .pull_request(&pr("opened", 1, Some("MEMBER")))
            .unwrap();
        assert_eq!(
            (p.action, p.number, p.trusted, p.fork),
            (PrAction::Update, 7, true, false)
        );
        assert_eq!((p.head_sha.as_str(), p.author.as_str()), (SHA, "alice"));
        // A fork, or an author without write access, is not trusted.
        let p = Forge::GitHub
            .pull_request(&pr("synchronize", 2, Some("OWNER")))
            .unwrap();
        assert!(p.fork && !p.trusted);
        let p = Forge::GitHub
            .pull_request(&pr("reopened", 1, Some("CONTRIBUTOR")))
            .unwrap();
        assert!(!p.fork && !p.trusted);
        let p = Forge::GitHub
            .pull_request(&pr("reopened", 1, None))
            .unwrap();
        assert!(!p.trusted, "GitHub without an association");
        let p = Forge::Gitea
            .pull_request(&pr("synchronized", 1, None))
            .unwrap();
        assert!(p.trusted && p.action == PrAction::Update);
        let p = Forge::GitHub
            .pull_request(&pr("closed", 1, Some("OWNER")))
            .unwrap();
        assert_eq!(p.action, PrAction::Close);
        let p = Forge::GitHub
            .pull_request(&pr("labeled", 1, Some("OWNER")))
            .unwrap();
        assert_eq!(p.action, PrAction::Other);
        assert!(Forge::GitHub.pull_request(b"{}").is_err());
    }

    #[test]
    fn the_plain_git_hook_reports_every_updated_ref() {
        let zero = "0".repeat(40);
        let body = format!("{zero} {SHA} refs/heads/main\n{SHA} {zero} refs/heads/old\n");
        let p = Forge::Git.pushes("push", body.as_bytes()).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].branch(), p[0].deleted), (Some("main"), false));
        assert_eq!((p[1].branch(), p[1].deleted), (Some("old"), true));
        assert!(Forge::Git.pushes("push", b"one two\n").is_err());
        assert!(Forge::Git.pushes("push", b"\n").is_err());
    }

    #[test]
    fn delivery_ids_and_events_come_from_headers() {
        let h = headers(&[
            ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
            ("x-github-event", "ping"),
        ]);
        assert_eq!(
            Forge::GitHub.delivery_id(&h).as_deref(),
            Some("72d3162e-cc78-11e3-81ab-4c9367dc0958")
        );
        assert_eq!(Forge::GitHub.event(&h), "ping");
        let h = headers(&[("x-gitlab-event", "Push Hook")]);
        assert_eq!(Forge::GitLab.event(&h), "push");
        assert_eq!(Forge::GitLab.delivery_id(&h), None);
        let long = "a".repeat(200);
        let h = headers(&[("x-hangar-delivery", &long)]);
        assert_eq!(Forge::Git.delivery_id(&h), None);
    }
}
