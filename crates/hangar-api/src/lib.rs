//! The control-plane HTTP API (axum).
//!
//! Architecture Invariant: only this crate knows HTTP request and response
//! types of the API; the crates below it speak in store rows and typed
//! errors, and this crate maps those errors to status codes (a user's
//! mistake is a 4xx with a message naming what to fix, never a 500).
//!
//! Every route but `/api/v1/health` and the Shuttle routes requires
//! `Authorization: Bearer <token>` and is scoped to the token's org: another
//! org's apps answer 404, exactly as apps that do not exist. The token's
//! scope (`admin`, `read`, `deploy:APP`) decides what it may do, and every
//! mutation is recorded in the org's audit log (see [`access`]).
//!
//! Routes (Hangar's own API lives under `/api/v1`; `/v1` is kept for the
//! Fly-compatible Machines API):
//! - `POST /api/v1/apps/{app}/deploys` — body: the source `.tar.gz`; 202 + build
//!   (429 past the org's build queue cap)
//! - `GET /api/v1/builds/{id}`, `GET /api/v1/builds/{id}/log?follow=true`,
//!   `POST /api/v1/builds/{id}/cancel` (409 once finished): `builds.rs`
//! - `GET /api/v1/apps`, `GET /api/v1/apps/{app}`, `DELETE /api/v1/apps/{app}`
//! - `GET /api/v1/apps/{app}/logs?follow=true`
//! - `GET /api/v1/apps/{app}/releases`; `POST /api/v1/apps/{app}/rollback`
//!   (`{"version": N}`, optional): 202 + the new release;
//!   `POST /api/v1/apps/{app}/scale` (`{"count": N}`): once N machines run
//! - `POST /api/v1/orgs` — admin org only: a new org and its first token
//! - `/api/v1/apps/{app}/domains…` — custom domains (see [`domains`])
//! - `/api/v1/tokens`, `/api/v1/audit` — the org's tokens and audit log (see [`tokens`])
//! - `POST /api/v1/images?name=NAME[:TAG]` — body: an OCI layout or `docker save` tar
//! - `/v1/apps…` — the Fly-compatible Machines API (see [`fly`])
//! - `/shuttle/projects/{project}/resources…` — what Shuttle's runtime
//!   calls at start (see [`shuttle`]); authenticated with the app's own
//!   token, not an org token

pub mod access;
mod builds;
pub mod domains;
mod error;
mod fly;
pub mod git;
pub mod listen;
pub mod openapi;
pub mod quota;
mod routes;
mod shuttle;
mod tail;
mod tokens;
mod wire;

use std::path::PathBuf;
use std::sync::Arc;

use hangar_build::Builder;
use hangar_node::Agent;
use hangar_store::Store;

pub use error::ApiError;
pub use routes::router;

/// Settings of the API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Largest accepted source upload, in bytes (413 beyond).
    pub max_upload_bytes: u64,
    /// Largest accepted image archive (`hangar image import`), in bytes.
    pub max_image_bytes: u64,
    /// Where uploads are streamed before validation.
    pub uploads_dir: PathBuf,
    /// The domain apps are served under (`<app>.<domain>`).
    pub domain: String,
    /// The proxy's public port, for the URLs the API hands out.
    pub proxy_port: u16,
    /// The edge's TLS port, if it has one (apps' URLs are https then).
    pub tls_port: Option<u16>,
    /// Machines are not isolated (`--driver process`): one organisation
    /// only, so no second tenant ever shares the host unprotected.
    pub single_tenant: bool,
    /// What each org may have.
    pub quotas: quota::Quotas,
    /// Memory of a deploy's machine when its hangar.toml names none (MiB).
    pub default_memory_mb: u64,
    /// How long a request body may go without a byte (408 past it).
    pub body_progress: std::time::Duration,
}

impl ApiConfig {
    /// The URL an app is reached at.
    pub fn app_url(&self, app: &str) -> String {
        match (self.tls_port, self.proxy_port) {
            (Some(443), _) => format!("https://{app}.{}/", self.domain),
            (Some(p), _) => format!("https://{app}.{}:{p}/", self.domain),
            (None, 80) => format!("http://{app}.{}/", self.domain),
            (None, p) => format!("http://{app}.{}:{p}/", self.domain),
        }
    }

    /// The app's own hostname, `<app>.<domain>`.
    pub fn app_host(&self, app: &str) -> String {
        format!(
            "{app}.{}",
            self.domain.trim_end_matches('.').to_ascii_lowercase()
        )
    }
}

/// What every handler can reach; cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    /// State store.
    pub store: Store,
    /// Build queue.
    pub builder: Builder,
    /// Node agent (machines, logs).
    pub agent: Agent,
    /// The image store (imports).
    pub images: hangar_image::ImageStore,
    /// Declared resources and secrets.
    pub resources: hangar_resources::Resources,
    /// The edge's routing table (custom domains are set through it).
    pub routes: Arc<hangar_proxy::RouteTable>,
    /// The certificates, when the edge has a TLS port.
    pub certs: Option<hangar_tls::Certs>,
    /// Deploys from git (mirrors, webhook secrets, the poller).
    pub git: git::GitDeploys,
    /// Settings.
    pub cfg: Arc<ApiConfig>,
}

/// Serves the API until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_tls(listener, state, None, shutdown).await
}

/// [`serve`] over TLS, with the certificate `tls` chooses.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    state: ApiState,
    tls: Option<Arc<dyn hangar_proxy::TlsPolicy>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let progress = state.cfg.body_progress;
    listen::serve(
        listener,
        router(state),
        listen::LIMITS,
        progress,
        tls,
        shutdown,
    )
    .await
}
