//! The platform side of Shuttle's runtime contract, so an app written for
//! Shuttle runs on Hangar built against the real `shuttle-runtime` crates,
//! unchanged.
//!
//! The runtime reads its settings from the environment and, at start,
//! asks the platform's API (`$SHUTTLE_API`) for its secrets and for each
//! resource it declares. Hangar sets the environment (the fixed part in the
//! image at build, the per-machine part at launch) and answers those calls
//! under `/shuttle` on its API (see `hangar-api`), authenticated with a
//! token per app.

use crate::{Resources, Result};
use hangar_core::resource::ResourceKind;
use hangar_store::App;

/// What the runtime calls a shared Postgres database.
pub const SHARED_POSTGRES: &str = "database::shared::postgres";
/// What the runtime calls its secrets.
pub const SECRETS: &str = "secrets";
/// Where Hangar's API answers the runtime's calls.
pub const API_PREFIX: &str = "/shuttle";

/// The environment fixed for every machine of a Shuttle app, set in its
/// image at build. `production` is the value the runtime maps to its
/// deployment environment (it rejects anything but `local` and
/// `production`).
pub fn image_env(app: &App) -> Vec<String> {
    vec![
        "SHUTTLE_ENV=production".to_owned(),
        format!("SHUTTLE_PROJECT_ID={}", app.id),
        format!("SHUTTLE_PROJECT_NAME={}", app.name),
        "SHUTTLE_RUNTIME_IP=0.0.0.0".to_owned(),
    ]
}

/// Whether an image's environment marks a Shuttle app.
pub fn is_shuttle_image(env: &[String]) -> bool {
    env.iter().any(|e| e.starts_with("SHUTTLE_ENV="))
}

impl Resources {
    /// The API's base URL as machines reach it (e.g. `http://127.0.0.1:7070`);
    /// without it, Shuttle apps get no `$SHUTTLE_API` and fail to start
    /// with the runtime's own message.
    pub fn with_platform_api(mut self, base_url: String) -> Resources {
        self.platform_api = Some(base_url.trim_end_matches('/').to_owned());
        self
    }

    /// What the app's token is derived from: its id and the token's
    /// generation (0, the first, has no number, as before rotation existed).
    async fn shuttle_context(&self, app_id: &str) -> Result<String> {
        Ok(match self.store.shuttle_token_generation(app_id).await? {
            0 => format!("{app_id}/shuttle-api"),
            n => format!("{app_id}/shuttle-api/{n}"),
        })
    }

    /// The per-machine part of a Shuttle app's environment: where the
    /// platform API is, the app's token for it, and the port to serve on.
    pub async fn shuttle_env(
        &self,
        app_id: &str,
        port: impl std::fmt::Display,
    ) -> Result<Vec<String>> {
        let mut env = vec![format!("SHUTTLE_RUNTIME_PORT={port}")];
        if let Some(api) = &self.platform_api {
            env.push(format!("SHUTTLE_API={api}{API_PREFIX}"));
            let context = self.shuttle_context(app_id).await?;
            env.push(format!("SHUTTLE_API_KEY={}", self.vault.token(&context)));
        }
        Ok(env)
    }

    /// Whether `token` is the app's current token for the Shuttle API.
    pub async fn verify_shuttle_token(&self, app_id: &str, token: &str) -> bool {
        match self.shuttle_context(app_id).await {
            Ok(context) => self.vault.verify_token(&context, token),
            Err(_) => false,
        }
    }

    /// Replaces the app's Shuttle runtime token: the old one is refused
    /// from now on; machines get the new one at their next start. Returns
    /// the new generation.
    pub async fn rotate_shuttle_token(&self, app_id: &str) -> Result<i64> {
        Ok(self.store.rotate_shuttle_token(app_id).await?)
    }

    /// The app's shared Postgres database as a connection URL, provisioned
    /// now if the deploy did not (idempotent).
    pub async fn shuttle_postgres(&self, app: &App) -> Result<String> {
        let kinds = [ResourceKind::Postgres].into();
        self.provision(app, &kinds, &|_| {}).await?;
        self.postgres_credentials(&app.id)
            .await?
            .map(|c| c.url)
            .ok_or_else(|| crate::ResourceError::Postgres("the database is not ready".into()))
    }
}
