//! Orgs, their tokens and their audit log.
//!
//! Tokens are stored as hashes only. A token is refused once it expires or
//! is revoked; its row stays, so the audit log can still name it.

use hangar_core::id::new_id;
use hangar_core::now_unix;
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::collect;
use crate::{AuditEntry, Org, Result, Store, StoreError, Token};

/// Live (unrevoked, unexpired) tokens one org may hold.
pub const MAX_TOKENS_PER_ORG: u64 = 1000;

/// Audit entries kept per org; older ones are dropped as new ones come.
pub const AUDIT_KEPT_PER_ORG: i64 = 100_000;

const TOKEN_COLS: &str = "id, org_id, name, scope, created_at, expires_at, revoked_at";

fn token_row(r: &Row) -> rusqlite::Result<Token> {
    Ok(Token {
        id: r.get(0)?,
        org_id: r.get(1)?,
        name: r.get(2)?,
        scope: r.get(3)?,
        created_at: r.get(4)?,
        expires_at: r.get(5)?,
        revoked_at: r.get(6)?,
    })
}

fn org_row(r: &Row) -> rusqlite::Result<Org> {
    Ok(Org {
        id: r.get(0)?,
        name: r.get(1)?,
        admin: r.get(2)?,
    })
}

/// A new token for `org_id`; refused past [`MAX_TOKENS_PER_ORG`] live ones.
fn insert_token(
    c: &Connection,
    org_id: &str,
    name: &str,
    scope: &str,
    hash: &str,
    expires_at: Option<i64>,
) -> Result<Token> {
    let now = now_unix();
    let live: u64 = c.query_row(
        "SELECT COUNT(*) FROM tokens WHERE org_id = ?1 AND revoked_at IS NULL
         AND (expires_at IS NULL OR expires_at > ?2)",
        params![org_id, now],
        |r| r.get(0),
    )?;
    if live >= MAX_TOKENS_PER_ORG {
        return Err(StoreError::TooManyTokens {
            limit: MAX_TOKENS_PER_ORG,
        });
    }
    let token = Token {
        id: new_id("tok"),
        org_id: org_id.to_owned(),
        name: name.to_owned(),
        scope: scope.to_owned(),
        created_at: now,
        expires_at,
        revoked_at: None,
    };
    c.execute(
        "INSERT INTO tokens (hash, id, org_id, name, scope, created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            hash,
            token.id,
            token.org_id,
            token.name,
            token.scope,
            token.created_at,
            token.expires_at
        ],
    )?;
    Ok(token)
}

impl Store {
    /// True once any org exists (the first start creates the admin org).
    pub async fn has_orgs(&self) -> Result<bool> {
        self.call(|c| Ok(c.query_row("SELECT EXISTS(SELECT 1 FROM orgs)", [], |r| r.get(0))?))
            .await
    }

    /// Creates an org with one `admin` token (given as its hash) in one
    /// transaction. The first org of a platform is its admin.
    pub async fn create_org_with_token(
        &self,
        name: &str,
        token_name: &str,
        token_hash: &str,
    ) -> Result<Org> {
        let (name, token_name, token_hash) = (
            name.to_owned(),
            token_name.to_owned(),
            token_hash.to_owned(),
        );
        self.call(move |c| {
            let tx = c.transaction()?;
            let taken: bool = tx.query_row(
                "SELECT EXISTS(SELECT 1 FROM orgs WHERE name = ?1)",
                [&name],
                |r| r.get(0),
            )?;
            if taken {
                return Err(StoreError::OrgExists(name));
            }
            let first: bool =
                tx.query_row("SELECT NOT EXISTS(SELECT 1 FROM orgs)", [], |r| r.get(0))?;
            let org = Org {
                id: new_id("org"),
                name,
                admin: first,
            };
            tx.execute(
                "INSERT INTO orgs (id, name, created_at, admin) VALUES (?1, ?2, ?3, ?4)",
                params![org.id, org.name, now_unix(), org.admin],
            )?;
            insert_token(&tx, &org.id, &token_name, "admin", &token_hash, None)?;
            tx.commit()?;
            Ok(org)
        })
        .await
    }

    /// The token with this hash and its org, revoked or expired ones too
    /// (the caller tells them apart, to say why one is refused).
    pub async fn token_by_hash(&self, token_hash: &str) -> Result<Option<(Org, Token)>> {
        let hash = token_hash.to_owned();
        self.call(move |c| {
            Ok(c.query_row(
                "SELECT o.id, o.name, o.admin, t.id, t.org_id, t.name, t.scope, t.created_at,
                        t.expires_at, t.revoked_at
                 FROM tokens t JOIN orgs o ON o.id = t.org_id WHERE t.hash = ?1",
                [hash],
                |r| {
                    let org = org_row(r)?;
                    let token = Token {
                        id: r.get(3)?,
                        org_id: r.get(4)?,
                        name: r.get(5)?,
                        scope: r.get(6)?,
                        created_at: r.get(7)?,
                        expires_at: r.get(8)?,
                        revoked_at: r.get(9)?,
                    };
                    Ok((org, token))
                },
            )
            .optional()?)
        })
        .await
    }

    /// The org with id `id`.
    pub async fn org(&self, id: &str) -> Result<Option<Org>> {
        let id = id.to_owned();
        self.call(move |c| {
            Ok(c.query_row(
                "SELECT id, name, admin FROM orgs WHERE id = ?1",
                [id],
                org_row,
            )
            .optional()?)
        })
        .await
    }

    /// The org a live token (given as its hash) belongs to.
    pub async fn org_for_token(&self, token_hash: &str) -> Result<Option<Org>> {
        let now = now_unix();
        Ok(self
            .token_by_hash(token_hash)
            .await?
            .filter(|(_, t)| t.revoked_at.is_none() && t.expires_at.is_none_or(|e| e > now))
            .map(|(org, _)| org))
    }

    /// A new token of `org_id` (given as its hash).
    pub async fn create_token(
        &self,
        org_id: &str,
        name: &str,
        scope: &str,
        token_hash: &str,
        expires_at: Option<i64>,
    ) -> Result<Token> {
        let (org_id, name, scope, hash) = (
            org_id.to_owned(),
            name.to_owned(),
            scope.to_owned(),
            token_hash.to_owned(),
        );
        self.call(move |c| insert_token(c, &org_id, &name, &scope, &hash, expires_at))
            .await
    }

    /// Every token of the org, newest first, revoked and expired ones too.
    pub async fn tokens(&self, org_id: &str) -> Result<Vec<Token>> {
        let org_id = org_id.to_owned();
        self.call(move |c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {TOKEN_COLS} FROM tokens WHERE org_id = ?1
                 ORDER BY created_at DESC, rowid DESC"
            ))?;
            collect(stmt.query_map([org_id], token_row)?)
        })
        .await
    }

    /// Revokes the org's token `id` (at once: its next request is refused);
    /// `None` when the org has no such token. Revoking twice keeps the
    /// first time.
    pub async fn revoke_token(&self, org_id: &str, id: &str) -> Result<Option<Token>> {
        let (org_id, id) = (org_id.to_owned(), id.to_owned());
        self.call(move |c| {
            c.execute(
                "UPDATE tokens SET revoked_at = ?3
                 WHERE org_id = ?1 AND id = ?2 AND revoked_at IS NULL",
                params![org_id, id, now_unix()],
            )?;
            Ok(c.query_row(
                &format!("SELECT {TOKEN_COLS} FROM tokens WHERE org_id = ?1 AND id = ?2"),
                params![org_id, id],
                token_row,
            )
            .optional()?)
        })
        .await
    }

    /// The generation of the app's Shuttle runtime token (0 until rotated).
    pub async fn shuttle_token_generation(&self, app_id: &str) -> Result<i64> {
        let app_id = app_id.to_owned();
        self.call(move |c| {
            Ok(c.query_row(
                "SELECT generation FROM shuttle_tokens WHERE app_id = ?1",
                [app_id],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0))
        })
        .await
    }

    /// Moves the app's Shuttle runtime token to its next generation;
    /// returns it.
    pub async fn rotate_shuttle_token(&self, app_id: &str) -> Result<i64> {
        let app_id = app_id.to_owned();
        self.call(move |c| {
            Ok(c.query_row(
                "INSERT INTO shuttle_tokens (app_id, generation) VALUES (?1, 1)
                 ON CONFLICT(app_id) DO UPDATE SET generation = generation + 1
                 RETURNING generation",
                [app_id],
                |r| r.get(0),
            )?)
        })
        .await
    }

    /// Records one mutation of `org_id`'s; the org keeps its newest
    /// [`AUDIT_KEPT_PER_ORG`] entries.
    pub async fn record_audit(&self, org_id: &str, entry: AuditEntry) -> Result<()> {
        let org_id = org_id.to_owned();
        self.call(move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO audit (org_id, at, token_id, token_name, action, app, target, summary)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    org_id,
                    entry.at,
                    entry.token_id,
                    entry.token_name,
                    entry.action,
                    entry.app,
                    entry.target,
                    entry.summary
                ],
            )?;
            tx.execute(
                "DELETE FROM audit WHERE org_id = ?1 AND id <= (
                     SELECT id FROM audit WHERE org_id = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
                params![org_id, AUDIT_KEPT_PER_ORG],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    /// The org's newest `limit` audit entries (of one app's when `app` is
    /// given), newest first.
    pub async fn audit(
        &self,
        org_id: &str,
        app: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>> {
        let (org_id, app) = (org_id.to_owned(), app.map(str::to_owned));
        self.call(move |c| {
            let mut stmt = c.prepare(
                "SELECT id, at, token_id, token_name, action, app, target, summary FROM audit
                 WHERE org_id = ?1 AND (?2 IS NULL OR app = ?2) ORDER BY id DESC LIMIT ?3",
            )?;
            collect(stmt.query_map(params![org_id, app, limit], |r| {
                Ok(AuditEntry {
                    id: r.get(0)?,
                    at: r.get(1)?,
                    token_id: r.get(2)?,
                    token_name: r.get(3)?,
                    action: r.get(4)?,
                    app: r.get(5)?,
                    target: r.get(6)?,
                    summary: r.get(7)?,
                })
            })?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(action: &str, app: Option<&str>) -> AuditEntry {
        AuditEntry {
            id: 0,
            at: now_unix(),
            token_id: "tok_1".into(),
            token_name: "CI".into(),
            action: action.into(),
            app: app.map(str::to_owned),
            target: app.unwrap_or("tok_2").into(),
            summary: String::new(),
        }
    }

    #[tokio::test]
    async fn tokens_are_refused_once_revoked_or_expired_and_stay_listed() {
        let s = Store::open_in_memory().unwrap();
        let org = s
            .create_org_with_token("acme", "first", "h0")
            .await
            .unwrap();
        let first = s.token_by_hash("h0").await.unwrap().unwrap().1;
        assert_eq!(first.scope, "admin");
        let ci = s
            .create_token(&org.id, "CI", "deploy:web", "h1", None)
            .await
            .unwrap();
        let old = s
            .create_token(&org.id, "old", "read", "h2", Some(now_unix() - 1))
            .await
            .unwrap();
        assert!(s.org_for_token("h1").await.unwrap().is_some());
        assert!(s.org_for_token("h2").await.unwrap().is_none(), "expired");

        let revoked = s.revoke_token(&org.id, &ci.id).await.unwrap().unwrap();
        assert!(revoked.revoked_at.is_some());
        assert!(s.org_for_token("h1").await.unwrap().is_none(), "revoked");
        // Another org cannot revoke (or see) it.
        let other = s.create_org_with_token("other", "t", "h3").await.unwrap();
        assert!(
            s.revoke_token(&other.id, &first.id)
                .await
                .unwrap()
                .is_none()
        );
        assert!(s.org_for_token("h0").await.unwrap().is_some());

        let ids: Vec<String> = s
            .tokens(&org.id)
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(ids.len(), 3);
        assert!(ids.contains(&old.id) && ids.contains(&ci.id) && ids.contains(&first.id));
        assert_eq!(s.tokens(&other.id).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn the_audit_log_is_per_org_filterable_by_app_and_bounded() {
        let s = Store::open_in_memory().unwrap();
        let org = s
            .create_org_with_token("acme", "first", "h0")
            .await
            .unwrap();
        let other = s.create_org_with_token("other", "t", "h1").await.unwrap();
        s.record_audit(&org.id, entry("deploy", Some("web")))
            .await
            .unwrap();
        s.record_audit(&org.id, entry("token.revoke", None))
            .await
            .unwrap();
        s.record_audit(&other.id, entry("deploy", Some("api")))
            .await
            .unwrap();
        let all = s.audit(&org.id, None, 10).await.unwrap();
        assert_eq!(
            all.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
            ["token.revoke", "deploy"],
            "newest first, this org's only"
        );
        let web = s.audit(&org.id, Some("web"), 10).await.unwrap();
        assert_eq!(web.len(), 1);
        assert_eq!(web[0].target, "web");
        assert_eq!(s.audit(&org.id, None, 1).await.unwrap().len(), 1);
    }
}
