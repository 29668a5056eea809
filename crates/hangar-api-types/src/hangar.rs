//! Hangar's own API, under `/api/v1`.

use hangar_core::status::{BuildStatus, MachineState, ReleaseStatus};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// `GET /api/v1/health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub ok: bool,
}

/// A build of an app's uploaded source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Build {
    /// `bld_…`.
    pub id: String,
    pub status: BuildStatus,
    /// `sha256:…` of the uploaded archive.
    pub source_digest: String,
    /// The image it made, once it succeeded.
    pub image_digest: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    pub attempts: i64,
    /// Unix seconds.
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// The commit it builds (deploys from git).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

/// A release: an image and config rolled out as version N of an app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Release {
    /// `rel_…`.
    pub id: String,
    pub app_id: String,
    /// 1, 2, 3… per app.
    pub version: i64,
    pub build_id: String,
    pub image_digest: String,
    pub status: ReleaseStatus,
    /// Why its rollout failed.
    pub error: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// The text of the app's hangar.toml it was built with.
    pub config: Option<String>,
    /// `deploy` or `rollback to vN`.
    pub description: String,
    /// The commit it was built from (deploys from git).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// That commit's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_message: Option<String>,
}

/// What a machine's checks say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    /// Not checked yet, or failing within its grace period.
    Unknown,
    Passing,
    Critical,
}

/// One check's latest result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CheckResult {
    pub name: String,
    pub status: CheckStatus,
    /// What it saw: `HTTP 200`, `connection refused`…
    pub output: String,
    /// Unix seconds.
    pub updated_at: i64,
}

/// A machine of an app, as `hangar status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AppMachine {
    /// `mch_…`.
    pub id: String,
    pub name: String,
    pub state: MachineState,
    pub region: String,
    pub instance_id: String,
    /// The release it runs (none: made through the Machines API).
    pub release_id: Option<String>,
    pub image_digest: String,
    /// Its private address.
    pub address: String,
    pub port: i64,
    pub pid: Option<i64>,
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
    pub restarts: i64,
    pub cordoned: bool,
    /// Unix seconds.
    pub created_at: i64,
    pub updated_at: i64,
    /// Its checks taken together while it runs (`passing`, `critical`,
    /// `unknown`), else its state.
    pub health: String,
    pub checks: Vec<CheckResult>,
}

/// An app's state at a glance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum AppState {
    /// A live release with machines running.
    #[serde(rename = "running")]
    Running,
    /// A live release and no machine running (scaled to zero, or crashed).
    #[serde(rename = "down")]
    Down,
    #[serde(rename = "not deployed")]
    NotDeployed,
}

/// `GET /api/v1/apps/{app}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AppStatus {
    pub name: String,
    pub url: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Machines set by `hangar scale`.
    pub scale: Option<i64>,
    pub status: AppState,
    pub active_release: Option<Release>,
    /// The newest ten.
    pub releases: Vec<Release>,
    pub machines: Vec<AppMachine>,
    /// The newest five.
    pub builds: Vec<Build>,
    /// `runc` or `process`.
    pub driver: String,
}

/// `GET /api/v1/apps`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AppList {
    pub apps: Vec<AppStatus>,
}

/// `DELETE /api/v1/apps/{app}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Destroyed {
    pub destroyed: String,
    /// `postgres hangar_app_…`, …
    pub resources_dropped: Vec<String>,
}

/// A secret's name (values never leave the platform).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SecretName {
    pub name: String,
    /// RFC 3339.
    pub updated_at: String,
}

/// `GET /api/v1/apps/{app}/secrets`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SecretList {
    pub secrets: Vec<SecretName>,
}

/// `PUT /api/v1/apps/{app}/secrets`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SecretsSet {
    pub set: Vec<String>,
}

/// `DELETE /api/v1/apps/{app}/secrets/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SecretsUnset {
    pub unset: Vec<String>,
}

/// A resource an app's code declared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Resource {
    /// `postgres`, `redis`, `pubsub`, `secrets`.
    pub kind: String,
    pub name: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Unix seconds.
    pub updated_at: i64,
}

/// `GET /api/v1/apps/{app}/resources`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ResourceList {
    pub resources: Vec<Resource>,
}

/// `POST /api/v1/apps/{app}/shuttle-token/rotate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ShuttleTokenRotated {
    pub app: String,
    pub generation: i64,
    pub note: String,
}

/// `GET /api/v1/apps/{app}/releases`: newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReleaseList {
    pub app: String,
    pub releases: Vec<Release>,
}

/// `POST /api/v1/apps/{app}/rollback`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The release to go back to; default: the newest one that served
    /// before the live one.
    #[serde(default)]
    pub version: Option<i64>,
}

/// A release whose rollout started: poll it like a deploy's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReleaseStarted {
    pub app: String,
    pub url: String,
    pub release: Release,
}

/// `POST /api/v1/apps/{app}/scale`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScaleRequest {
    /// Machines the app runs from now on (1 to 100).
    pub count: u32,
}

/// `POST /api/v1/orgs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreateOrg {
    pub name: String,
}

/// A new org and its first token (shown once).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OrgCreated {
    pub org: String,
    pub id: String,
    pub token: String,
}

/// `POST /api/v1/images?name=NAME[:TAG]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, IntoParams)]
pub struct ImportQuery {
    /// `name[:tag]`; the tag defaults to `latest`.
    pub name: String,
}

/// An imported image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImageImported {
    pub name: String,
    pub digest: String,
}

/// `POST /api/v1/apps/{app}/deploys`: the queued build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Deployed {
    pub app: String,
    pub url: String,
    pub build: Build,
}

/// `GET /api/v1/builds/{id}`: the build and the release it made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BuildDetail {
    pub app: String,
    pub url: String,
    pub build: Build,
    pub release: Option<Release>,
}

/// `POST /api/v1/builds/{id}/cancel`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BuildCancelled {
    pub app: String,
    /// What it was when cancelled.
    pub was: BuildStatus,
    pub build: Build,
}

/// `?follow=true` on a log.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams)]
pub struct FollowQuery {
    /// Keep the answer open and stream new lines.
    #[serde(default)]
    pub follow: bool,
}

/// `GET /api/v1/apps/{app}/logs`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams)]
pub struct LogsQuery {
    #[serde(default)]
    pub follow: bool,
    /// Only the last this many bytes of existing output (default 64 KiB).
    pub tail_bytes: Option<u64>,
}

/// `POST /api/v1/tokens`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// A label (1 to 64 characters).
    pub name: String,
    /// `admin`, `read` or `deploy:APP`.
    pub scope: String,
    /// Refused after this many seconds (at most ten years); none: never.
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
}

/// Whether a token is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenStatus {
    Active,
    Expired,
    Revoked,
}

/// A token, without its secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Token {
    /// `tok_…`.
    pub id: String,
    pub name: String,
    pub scope: String,
    pub status: TokenStatus,
    /// RFC 3339.
    pub created_at: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
}

/// A new token: shown this once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TokenCreated {
    #[serde(flatten)]
    pub info: Token,
    /// The secret to send as `Authorization: Bearer …`.
    pub token: String,
}

/// `GET /api/v1/tokens`: newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TokenList {
    pub tokens: Vec<Token>,
}

/// The token that made a change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Actor {
    pub id: String,
    pub name: String,
}

/// One recorded change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    /// RFC 3339.
    pub at: String,
    pub token: Actor,
    /// `deploy`, `secrets.set`, `machine.create`…
    pub action: String,
    pub app: Option<String>,
    pub target: String,
    /// Details; never a secret value.
    pub summary: String,
}

/// `GET /api/v1/audit`: newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditList {
    pub entries: Vec<AuditEntry>,
}

/// `GET /api/v1/audit` filters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams)]
pub struct AuditQuery {
    /// Only this app's entries.
    #[serde(default)]
    pub app: Option<String>,
    /// How many (1 to 1000, default 100).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// `POST /api/v1/apps/{app}/domains`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddDomain {
    /// A hostname outside the platform's domain, e.g. `www.example.com`.
    pub host: String,
    /// A certificate of the user's for it (PEM chain, leaf first), served
    /// instead of ordering one; never renewed by Hangar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// The certificate's private key (PEM); with `certificate` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
}

/// The TLS certificate of a host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Certificate {
    /// `issued`, `pending` (being ordered), `failed` (see `error` and
    /// `next_try`), or `none` (no ACME CA configured, nothing uploaded).
    pub state: String,
    /// `acme` or `uploaded`.
    pub source: Option<String>,
    pub issuer: Option<String>,
    /// RFC 3339.
    pub not_after: Option<String>,
    /// Hex.
    pub serial: Option<String>,
    /// Why the last order failed (an issued certificate whose renewal
    /// fails keeps being served).
    pub error: Option<String>,
    /// RFC 3339: when the next order is tried.
    pub next_try: Option<String>,
    /// Its renewal keeps failing and it ends within 14 days.
    pub renewal_alarm: bool,
}

/// `PUT /api/v1/apps/{app}/hsts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetHsts {
    /// Whether the app's HTTPS answers carry `Strict-Transport-Security`.
    pub enabled: bool,
}

/// A DNS record to create so a custom domain reaches Hangar.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DnsRecord {
    /// `CNAME`.
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub value: String,
}

/// A custom domain of an app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Domain {
    pub host: String,
    pub app: String,
    /// RFC 3339.
    pub created_at: String,
    /// `routed`: the edge answers for it.
    pub status: String,
    /// What to create at the DNS provider.
    pub dns: Vec<DnsRecord>,
    /// Its HTTPS certificate.
    pub certificate: Certificate,
}

/// `GET /api/v1/apps/{app}/domains`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DomainList {
    pub domains: Vec<Domain>,
    /// The app's own name, `<app>.<domain>`.
    pub app_host: String,
    /// Its certificate (ordered at its first HTTPS handshake, or the
    /// operator's wildcard).
    pub app_certificate: Certificate,
    /// Whether HTTPS answers carry HSTS.
    pub hsts: bool,
}

/// `POST /api/v1/apps/{app}/git`: deploy the app from a repository.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GitConnect {
    /// `https://…` (a token may go in its user part; it is kept sealed
    /// and never shown again).
    pub repo: String,
    /// The branch that deploys (default `main`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// The directory of the repository the app is in (default: its root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// A webhook delivery, poll or manual deploy, with its verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GitDelivery {
    /// `github`, `gitea`, `gitlab`, `git`, `poll` or `manual`.
    pub source: String,
    /// The forge's delivery id.
    pub delivery: Option<String>,
    pub event: String,
    pub git_ref: Option<String>,
    pub commit: Option<String>,
    /// `accepted`, `ignored`, `rejected` or `pong`.
    pub verdict: String,
    pub detail: Option<String>,
    /// RFC 3339.
    pub received_at: String,
}

/// What became of a commit: `hangar why APP SHA`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CommitVerdict {
    pub commit: String,
    /// Exactly one of `received`, `ignored`, `queued`, `building`,
    /// `failed`, `cancelled`, `superseded`, `deploying`, `deployed`,
    /// `rolled back`.
    pub state: String,
    /// The answer in words: why, where, which.
    pub detail: String,
    /// How Hangar heard of it (`github webhook`, `poll`, …).
    pub via: String,
    pub message: Option<String>,
    /// Its build, once queued.
    pub build: Option<String>,
    /// Its release's version, once built.
    pub release: Option<i64>,
    /// The newer commit deployed instead.
    pub superseded_by: Option<String>,
    /// Its place in the build queue (1: next).
    pub queue_position: Option<u64>,
    /// The build step it is at, or failed in.
    pub step: Option<String>,
    /// The end of the build's log, when it failed.
    pub log_tail: Option<String>,
    /// RFC 3339: when Hangar first heard of it.
    pub heard_at: String,
}

/// An app's repository connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GitConnection {
    pub app: String,
    /// The repository, without any credentials.
    pub repo: String,
    pub branch: String,
    /// `""`: the repository's root.
    pub path: String,
    /// Where each forge sends webhooks, on the API's own address:
    /// `/hooks/{github|gitea|gitlab|git}/{app}`.
    pub hook_paths: Vec<String>,
    /// The webhook secret: only in the answer to a connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// The branch's head when Hangar last looked.
    pub head: Option<String>,
    /// RFC 3339 of the last look at the branch, and its error.
    pub checked_at: Option<String>,
    pub check_error: Option<String>,
    /// Seconds between polls of the branch (0: no polling).
    pub poll_secs: u64,
    /// The newest deliveries, newest first.
    pub deliveries: Vec<GitDelivery>,
    /// The newest commits Hangar heard of, newest first.
    pub commits: Vec<CommitVerdict>,
}

/// What a webhook delivery did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HookAnswer {
    /// `accepted`, `ignored`, `replayed` or `pong`.
    pub verdict: String,
    pub detail: Option<String>,
}

/// A pull request's preview environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PreviewInfo {
    pub number: i64,
    /// Its own app, `<app>-pr-<n>`.
    pub app: String,
    /// Where it answers, while it exists.
    pub url: Option<String>,
    /// `awaiting approval`, `building` (fetching, queueing), `deploying`
    /// (its build and rollout), `live` (serving its head), `failed` (see
    /// `detail`) or `closed`.
    pub state: String,
    pub detail: Option<String>,
    /// The pull request's head commit.
    pub head: String,
    pub head_ref: String,
    pub author: String,
    /// The author may build without approval.
    pub trusted: bool,
    /// The commit a maintainer approved.
    pub approved: Option<String>,
    /// RFC 3339: when it is torn down unless pushed to or requested.
    pub expires_at: String,
}

/// `GET /api/v1/apps/{app}/previews`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PreviewList {
    pub previews: Vec<PreviewInfo>,
}

/// `POST /api/v1/apps/{app}/previews/{number}/approve`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovePreview {
    /// Exactly the commit reviewed: a later push needs a new approval.
    pub sha: String,
}

/// `POST /api/v1/apps/{app}/previews/{number}/extend`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendPreview {
    /// Seconds to add (at most 90 days).
    pub seconds: u64,
}
