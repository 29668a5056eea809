//! Rows as the rest of Hangar sees them.

use hangar_core::machine::MachineConfig;
use hangar_core::status::{BuildStatus, MachineState, ReleaseStatus};
use serde::Serialize;

/// An organisation: the unit of ownership and of API scoping.
#[derive(Debug, Clone, Serialize)]
pub struct Org {
    /// Random id, `org_…`.
    pub id: String,
    /// Human name, unique; Fly's `org_slug`.
    pub name: String,
    /// May create other orgs (the first org of a platform).
    pub admin: bool,
}

/// An app, owned by one org. Its name is global because it is its hostname.
#[derive(Debug, Clone, Serialize)]
pub struct App {
    /// Random id, `app_…`; survives a rename, unlike the name.
    pub id: String,
    /// The owning org; every API call is scoped to it.
    pub org_id: String,
    /// DNS label, unique across the platform.
    pub name: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Machines set by `hangar scale`; overrides the count in hangar.toml.
    pub scale: Option<i64>,
}

/// One build in the durable queue.
#[derive(Debug, Clone, Serialize)]
pub struct Build {
    /// Random id, `bld_…`.
    pub id: String,
    /// The app being built.
    pub app_id: String,
    /// Where the build is in the queue.
    pub status: BuildStatus,
    /// `sha256:…` of the uploaded source archive; names its file in the data dir.
    pub source_digest: String,
    /// The image the build produced, once succeeded.
    pub image_digest: Option<String>,
    /// Why the build failed, in words for the user.
    pub error: Option<String>,
    /// How many times the builder has claimed it; caps retries after crashes.
    pub attempts: i64,
    /// Process group of the cargo run, so a restarted hangar can kill an orphan.
    pub builder_pgid: Option<i64>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds when last claimed.
    pub started_at: Option<i64>,
    /// Unix seconds when it reached a terminal state.
    pub finished_at: Option<i64>,
    /// The commit it builds, when a push or `hangar git deploy` queued it.
    pub git_sha: Option<String>,
}

/// A build just queued, and the app's queued builds it superseded.
#[derive(Debug, Clone)]
pub struct Enqueued {
    /// The new build, `queued`.
    pub build: Build,
    /// Ids of the builds it superseded (they never started).
    pub superseded: Vec<String>,
}

/// An image plus a version number for an app: what a rollout applies.
#[derive(Debug, Clone, Serialize)]
pub struct Release {
    /// Random id, `rel_…`.
    pub id: String,
    /// The app released.
    pub app_id: String,
    /// 1, 2, 3… per app; what users name in rollbacks.
    pub version: i64,
    /// The build that produced the image.
    pub build_id: String,
    /// Manifest digest in the image store.
    pub image_digest: String,
    /// Where the rollout is.
    pub status: ReleaseStatus,
    /// Why the rollout failed.
    pub error: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// The text of the app's `hangar.toml` at build time (validated by the
    /// builder), None without one; a rollback re-applies it with the image.
    pub config: Option<String>,
    /// Where it came from: `deploy` or `rollback to vN`.
    pub description: String,
    /// The commit its build was of (a push or `hangar git deploy`).
    pub git_sha: Option<String>,
    /// That commit's message.
    pub git_message: Option<String>,
}

/// A machine on this node: an instance of a release (deploys) or a machine
/// created through the Machines API.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Random id, `mch_…`; also the runc container id.
    pub id: String,
    /// The app it belongs to.
    pub app_id: String,
    /// The release it runs; None for machines made with the Machines API.
    pub release_id: Option<String>,
    /// Unique-ish human name (defaults to the id).
    pub name: String,
    /// Region label of this node.
    pub region: String,
    /// Changes with every config change (Fly's instance_id).
    pub instance_id: String,
    /// The configuration it runs with.
    pub config: MachineConfig,
    /// The resolved manifest digest of `config.image`.
    pub image_digest: String,
    /// Fly-style state.
    pub state: MachineState,
    /// `runc` or `process`: how it was started, so it is stopped the same way.
    pub driver: String,
    /// The port the app listens on (`$PORT`), at `address`.
    pub port: i64,
    /// Where the machine is reached: its own address (runc: a network
    /// namespace of its own), or the host's loopback (process driver).
    pub address: std::net::IpAddr,
    /// Host pid of the app's init process while it exists.
    pub pid: Option<i64>,
    /// Exit status once it ended on its own.
    pub exit_code: Option<i64>,
    /// Whether that exit was the kernel's OOM killer.
    pub oom_killed: bool,
    /// Consecutive restarts done by the restart policy.
    pub restarts: i64,
    /// Cordoned machines get no traffic from the proxy.
    pub cordoned: bool,
    /// The lease held on it, if any.
    pub lease: Option<Lease>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds of the last state change.
    pub updated_at: i64,
}

/// What a new machine starts from.
#[derive(Debug, Clone)]
pub struct NewMachine {
    /// The owning app.
    pub app_id: String,
    /// The release, for deploy-made machines.
    pub release_id: Option<String>,
    /// A name, or None for the id.
    pub name: Option<String>,
    /// Region label.
    pub region: String,
    /// Its configuration (validated by the caller).
    pub config: MachineConfig,
    /// The resolved image.
    pub image_digest: String,
    /// The driver that will run it.
    pub driver: String,
    /// The port it listens on.
    pub port: u16,
    /// Its address (see [`Machine::address`]).
    pub address: std::net::IpAddr,
}

impl Machine {
    /// The socket the proxy and health checks dial.
    pub fn socket_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.address, self.port as u16)
    }
}

/// A lease on a machine (Fly's mutual exclusion for orchestrators).
#[derive(Debug, Clone, Serialize)]
pub struct Lease {
    /// Secret the holder passes in `fly-machine-lease-nonce`.
    pub nonce: String,
    /// Who holds it.
    pub owner: String,
    /// Why.
    pub description: String,
    /// Unix seconds.
    pub expires_at: i64,
}

/// One entry of a machine's event log.
#[derive(Debug, Clone, Serialize)]
pub struct MachineEvent {
    /// `launch`, `start`, `stop`, `exit`, `suspend`, `destroy`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The state it led to.
    pub status: String,
    /// `user` or `hangar`.
    pub source: String,
    /// Unix milliseconds.
    pub timestamp: i64,
    /// Increasing per platform; `from_event_id` of a wait.
    pub id: i64,
    /// For an `exit`: the process's exit code (none when killed by a
    /// signal) and whether the OOM killer ended it.
    pub exit_code: Option<i64>,
    pub oom_killed: Option<bool>,
}

/// A resource of an app as stored: its credentials stay sealed here.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceRow {
    pub app_id: String,
    /// `postgres`, `secrets` (see `hangar_core::resource::ResourceKind`).
    pub kind: String,
    /// What users see: e.g. the database name.
    pub name: String,
    /// `provisioning`, `ready` or `failed`.
    pub status: String,
    /// Why it failed, worded for the user.
    pub detail: Option<String>,
    /// Sealed credentials; on update, `None` keeps what was stored.
    pub sealed: Option<Vec<u8>>,
    /// Unix seconds of the last change (ignored on write).
    pub updated_at: i64,
}

/// An API token of an org. The secret itself is never stored, only its
/// hash; `id` names the token in lists, the audit log and revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// Random id, `tok_…`.
    pub id: String,
    /// The org the token acts for.
    pub org_id: String,
    /// A label its maker chose (`CI`, `first`…).
    pub name: String,
    /// What it may do: `admin`, `read` or `deploy:<app>`
    /// ([`hangar_core::scope::Scope`]).
    pub scope: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds after which it is refused; `None`: never.
    pub expires_at: Option<i64>,
    /// Unix seconds of its revocation; `None`: live.
    pub revoked_at: Option<i64>,
}

/// One recorded mutation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Increasing; the newest is the largest.
    pub id: i64,
    /// Unix seconds.
    pub at: i64,
    /// The acting token's id and name (kept after it is revoked).
    pub token_id: String,
    pub token_name: String,
    /// What was done: `deploy`, `secrets.set`, `machine.create`…
    pub action: String,
    /// The app's name when the target belongs to one.
    pub app: Option<String>,
    /// What it was done to: an app, machine, build, token or org.
    pub target: String,
    /// Details, never a secret value.
    pub summary: String,
}

/// A custom domain of an app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    /// Lowercase, no trailing dot.
    pub host: String,
    pub app_id: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// A TLS certificate the edge serves for one host, or the state of getting
/// one: a row with no chain is pending (or failed, with `last_error`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRecord {
    /// The name it is for (lowercase; `*.domain` for a wildcard).
    pub host: String,
    /// The app it belongs to (goes with it); none for the API's own.
    pub app_id: Option<String>,
    /// `acme` (Hangar orders and renews it) or `uploaded` (the user's).
    pub source: String,
    /// PEM chain, leaf first.
    pub chain_pem: Option<String>,
    /// The private key (PEM), sealed by the vault.
    pub key_sealed: Option<Vec<u8>>,
    /// Unix seconds.
    pub not_before: Option<i64>,
    /// Unix seconds.
    pub not_after: Option<i64>,
    pub issuer: Option<String>,
    /// Hex.
    pub serial: Option<String>,
    /// Failed orders in a row since the last success.
    pub failures: u32,
    pub last_error: Option<String>,
    /// Unix seconds: no order before then (back-off).
    pub next_try: Option<i64>,
    /// Unix seconds.
    pub updated_at: i64,
}

/// An app's connection to a git repository (deploy on push).
#[derive(Debug, Clone)]
pub struct GitConnection {
    pub app_id: String,
    /// The repository URL (it may hold a token), sealed by the vault.
    pub repo_sealed: Vec<u8>,
    /// The URL without its user and password, for display.
    pub repo_shown: String,
    /// The branch that deploys.
    pub branch: String,
    /// The directory of the repository the app is in (`""`: the root).
    pub subdir: String,
    /// The webhook secret, sealed by the vault.
    pub secret_sealed: Vec<u8>,
    /// The branch's head when Hangar last looked.
    pub head: Option<String>,
    /// Unix seconds of the last poll, and its error if it failed.
    pub polled_at: Option<i64>,
    pub poll_error: Option<String>,
    pub created_at: i64,
}

/// One webhook delivery, poll or manual deploy, with its verdict.
#[derive(Debug, Clone)]
pub struct GitDelivery {
    pub seq: i64,
    pub app_id: String,
    /// `github`, `gitea`, `gitlab`, `git`, `poll` or `manual`.
    pub source: String,
    /// The forge's delivery id, when it sent one.
    pub delivery: Option<String>,
    pub event: String,
    pub git_ref: Option<String>,
    pub sha: Option<String>,
    /// `accepted`, `ignored`, `rejected` or `pong`.
    pub verdict: String,
    pub detail: Option<String>,
    pub received_at: i64,
}

/// A commit Hangar heard of, and what became of it.
#[derive(Debug, Clone)]
pub struct GitCommit {
    pub app_id: String,
    pub sha: String,
    /// The order Hangar heard of commits in, per app.
    pub seq: i64,
    /// How it was heard of: `github webhook`, `poll`, `hangar git deploy`…
    pub via: String,
    pub state: hangar_core::status::CommitState,
    /// Why it was ignored or failed.
    pub detail: Option<String>,
    /// The commit deployed instead.
    pub superseded_by: Option<String>,
    /// Its message (from the repository, once fetched).
    pub message: Option<String>,
    /// Its build, once queued.
    pub build_id: Option<String>,
    pub first_seen: i64,
    pub updated_at: i64,
}

/// A pull request's preview environment.
#[derive(Debug, Clone)]
pub struct Preview {
    /// The app the pull request is against.
    pub app_id: String,
    pub number: i64,
    /// The preview's own app, while it exists.
    pub preview_app_id: Option<String>,
    pub head_sha: String,
    pub head_ref: String,
    pub author: String,
    /// The author may build without approval.
    pub trusted: bool,
    /// The one commit a maintainer approved (`hangar previews approve`).
    pub approved_sha: Option<String>,
    /// `awaiting approval`, `building`, `deploying`, `failed` or `closed`
    /// (the API shows `deploying` as `live` once its head serves).
    pub state: String,
    pub detail: Option<String>,
    /// Unix seconds of the last push to it.
    pub last_push: i64,
    pub ttl_secs: i64,
    /// Unix seconds past which it is torn down, unless it sees a request.
    pub expires_at: i64,
    pub created_at: i64,
    pub updated_at: i64,
}
