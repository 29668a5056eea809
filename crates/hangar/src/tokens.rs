//! `hangar tokens …` and `hangar audit`: the org's API tokens and the
//! record of what each changed.

use anyhow::{Context, Result};
use bytes::Bytes;
use hangar_api_types::hangar::{
    AuditList, CreateToken, ShuttleTokenRotated, Token, TokenCreated, TokenList, TokenStatus,
};
use http::Method;

use crate::commands::api;

/// `hangar tokens create --scope S [--name N] [--expires 30d]`: prints the
/// token once; the server keeps only its hash.
pub async fn create(scope: &str, name: &str, expires: Option<&str>) -> Result<()> {
    let scope: hangar_core::scope::Scope = scope.parse()?;
    let expires_in_secs = match expires {
        None => None,
        Some(text) => Some(lifetime_secs(text)?),
    };
    let body = CreateToken {
        name: name.to_owned(),
        scope: scope.to_string(),
        expires_in_secs,
    };
    let answer: TokenCreated = api()?
        .send_json_as(Method::POST, "/api/v1/tokens", &body)
        .await?;
    let info = &answer.info;
    println!(
        "Created token {} ({}, scope {})",
        info.id, info.name, info.scope
    );
    if let Some(at) = &info.expires_at {
        println!("It expires at {at}.");
    }
    println!("Store it now; it is not shown again:\n\n{}\n", answer.token);
    Ok(())
}

/// `30d` (days), or a duration as hangar.toml writes them (`12h`, `90m`).
fn lifetime_secs(text: &str) -> Result<u64> {
    let days = text
        .strip_suffix('d')
        .and_then(|n| n.parse::<u64>().ok())
        .map(|n| n.saturating_mul(24 * 3600));
    let secs = match days {
        Some(s) => s,
        None => hangar_core::duration::parse(text)
            .with_context(|| format!("--expires {text:?}: a duration such as 30d, 12h or 90m"))?
            .as_secs(),
    };
    Ok(secs.max(1))
}

/// `hangar tokens list`.
pub async fn list() -> Result<()> {
    let answer: TokenList = api()?.get_as("/api/v1/tokens").await?;
    println!(
        "{:<22} {:<16} {:<24} {:<8} {:<21} EXPIRES",
        "ID", "NAME", "SCOPE", "STATUS", "CREATED"
    );
    for t in &answer.tokens {
        println!(
            "{:<22} {:<16} {:<24} {:<8} {:<21} {}",
            t.id,
            t.name,
            t.scope,
            token_status(t.status),
            t.created_at,
            t.expires_at.as_deref().unwrap_or("-"),
        );
    }
    Ok(())
}

/// A token's status as the API names it.
fn token_status(status: TokenStatus) -> &'static str {
    match status {
        TokenStatus::Active => "active",
        TokenStatus::Expired => "expired",
        TokenStatus::Revoked => "revoked",
    }
}

/// `hangar tokens revoke ID`.
pub async fn revoke(id: &str) -> Result<()> {
    let answer: Token = api()?.delete_as(&format!("/api/v1/tokens/{id}")).await?;
    println!(
        "Revoked {} ({}): its next request is refused",
        answer.id, answer.name
    );
    Ok(())
}

/// `hangar tokens rotate-shuttle APP`.
pub async fn rotate_shuttle(app: &str) -> Result<()> {
    let answer: ShuttleTokenRotated = api()?
        .json_as(
            Method::POST,
            &format!("/api/v1/apps/{app}/shuttle-token/rotate"),
            Bytes::new(),
            "application/json",
        )
        .await?;
    println!(
        "Rotated {app}'s Shuttle runtime token (generation {}); the old one is refused from now on.",
        answer.generation
    );
    println!("Machines running now get the new one at their next start: redeploy or restart them.");
    Ok(())
}

/// `hangar audit [--app APP] [--limit N]`: newest first.
pub async fn audit(app: Option<&str>, limit: u32) -> Result<()> {
    let mut path = format!("/api/v1/audit?limit={limit}");
    if let Some(app) = app {
        path.push_str(&format!("&app={app}"));
    }
    let answer: AuditList = api()?.get_as(&path).await?;
    let entries = answer.entries;
    if entries.is_empty() {
        println!("nothing recorded yet");
        return Ok(());
    }
    println!(
        "{:<21} {:<16} {:<24} {:<24} SUMMARY",
        "TIME", "TOKEN", "ACTION", "TARGET"
    );
    for e in &entries {
        println!(
            "{:<21} {:<16} {:<24} {:<24} {}",
            e.at, e.token.name, e.action, e.target, e.summary,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn lifetimes_read_days_and_durations() {
        assert_eq!(super::lifetime_secs("30d").unwrap(), 30 * 86_400);
        assert_eq!(super::lifetime_secs("12h").unwrap(), 12 * 3600);
        assert!(super::lifetime_secs("soon").is_err());
    }
}
