//! Preview environments: one row per pull request of an app.

use hangar_core::now_unix;
use rusqlite::{OptionalExtension, Row, params};

use super::collect;
use crate::{Preview, Result, Store};

/// Previews one app may have open at once.
pub const MAX_PREVIEWS_PER_APP: i64 = 20;

const COLS: &str = "app_id, number, preview_app_id, head_sha, head_ref, author, trusted, \
                    approved_sha, state, detail, last_push, ttl_secs, expires_at, created_at, \
                    updated_at";

fn row(r: &Row) -> rusqlite::Result<Preview> {
    Ok(Preview {
        app_id: r.get(0)?,
        number: r.get(1)?,
        preview_app_id: r.get(2)?,
        head_sha: r.get(3)?,
        head_ref: r.get(4)?,
        author: r.get(5)?,
        trusted: r.get(6)?,
        approved_sha: r.get(7)?,
        state: r.get(8)?,
        detail: r.get(9)?,
        last_push: r.get(10)?,
        ttl_secs: r.get(11)?,
        expires_at: r.get(12)?,
        created_at: r.get(13)?,
        updated_at: r.get(14)?,
    })
}

/// A push to a pull request, as recorded.
pub struct PreviewPush<'a> {
    pub number: i64,
    pub head_sha: &'a str,
    pub head_ref: &'a str,
    pub author: &'a str,
    pub trusted: bool,
    pub ttl_secs: i64,
}

impl Store {
    /// Records a push to pull request `p.number` (opening its row if need
    /// be): its head, who pushed, a fresh time to live. The approval
    /// stays, but covers only the commit it named. Refused past
    /// [`MAX_PREVIEWS_PER_APP`] open previews.
    pub async fn preview_pushed(&self, app_id: &str, p: PreviewPush<'_>) -> Result<Preview> {
        let app_id = app_id.to_owned();
        let (number, sha, head_ref, author) = (
            p.number,
            p.head_sha.to_owned(),
            p.head_ref.to_owned(),
            p.author.to_owned(),
        );
        let (trusted, ttl) = (p.trusted, p.ttl_secs);
        self.call(move |c| {
            let tx = c.transaction()?;
            let now = now_unix();
            let exists: bool = tx.query_row(
                "SELECT EXISTS(SELECT 1 FROM previews WHERE app_id = ?1 AND number = ?2
                 AND state != 'closed')",
                params![app_id, number],
                |r| r.get(0),
            )?;
            if !exists {
                let open: i64 = tx.query_row(
                    "SELECT COUNT(*) FROM previews WHERE app_id = ?1 AND state != 'closed'",
                    [&app_id],
                    |r| r.get(0),
                )?;
                if open >= MAX_PREVIEWS_PER_APP {
                    return Err(crate::StoreError::TooManyPreviews {
                        limit: MAX_PREVIEWS_PER_APP,
                    });
                }
            }
            tx.execute(
                "INSERT INTO previews (app_id, number, head_sha, head_ref, author, trusted, state,
                 last_push, ttl_secs, expires_at, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'building', ?7, ?8, ?7 + ?8, ?7, ?7)
                 ON CONFLICT (app_id, number) DO UPDATE SET head_sha = excluded.head_sha,
                 head_ref = excluded.head_ref, author = excluded.author,
                 trusted = excluded.trusted, state = 'building', detail = NULL,
                 last_push = excluded.last_push, ttl_secs = excluded.ttl_secs,
                 expires_at = excluded.expires_at, updated_at = excluded.updated_at",
                params![app_id, number, sha, head_ref, author, trusted, now, ttl],
            )?;
            let p = tx.query_row(
                &format!("SELECT {COLS} FROM previews WHERE app_id = ?1 AND number = ?2"),
                params![app_id, number],
                row,
            )?;
            tx.commit()?;
            Ok(p)
        })
        .await
    }

    /// Pull request `number`'s preview row.
    pub async fn preview(&self, app_id: &str, number: i64) -> Result<Option<Preview>> {
        let app_id = app_id.to_owned();
        self.call(move |c| {
            Ok(c.query_row(
                &format!("SELECT {COLS} FROM previews WHERE app_id = ?1 AND number = ?2"),
                params![app_id, number],
                row,
            )
            .optional()?)
        })
        .await
    }

    /// The app's previews, by number.
    pub async fn previews(&self, app_id: &str) -> Result<Vec<Preview>> {
        let app_id = app_id.to_owned();
        self.call(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT {COLS} FROM previews WHERE app_id = ?1 ORDER BY number"
            ))?;
            let rows = st.query_map([app_id], row)?;
            collect(rows)
        })
        .await
    }

    /// Every preview that has its own app now (the TTL sweep's list).
    pub async fn live_previews(&self) -> Result<Vec<Preview>> {
        self.call(move |c| {
            let mut st = c.prepare(&format!(
                "SELECT {COLS} FROM previews WHERE preview_app_id IS NOT NULL
                 ORDER BY app_id, number"
            ))?;
            let rows = st.query_map([], row)?;
            collect(rows)
        })
        .await
    }

    /// The preview whose own app is `preview_app_id`, if it is one.
    pub async fn preview_of_app(&self, preview_app_id: &str) -> Result<Option<Preview>> {
        let id = preview_app_id.to_owned();
        self.call(move |c| {
            Ok(c.query_row(
                &format!("SELECT {COLS} FROM previews WHERE preview_app_id = ?1"),
                [id],
                row,
            )
            .optional()?)
        })
        .await
    }

    /// Sets a preview's state (and its own app: `Some(None)` clears it).
    pub async fn set_preview_state(
        &self,
        app_id: &str,
        number: i64,
        state: &str,
        detail: Option<&str>,
        preview_app_id: Option<Option<&str>>,
    ) -> Result<()> {
        let (app_id, state) = (app_id.to_owned(), state.to_owned());
        let detail = detail.map(str::to_owned);
        let set_app = preview_app_id.is_some();
        let app = preview_app_id.flatten().map(str::to_owned);
        self.call(move |c| {
            c.execute(
                "UPDATE previews SET state = ?3, detail = ?4, updated_at = ?5,
                 preview_app_id = CASE WHEN ?6 THEN ?7 ELSE preview_app_id END
                 WHERE app_id = ?1 AND number = ?2",
                params![app_id, number, state, detail, now_unix(), set_app, app],
            )?;
            Ok(())
        })
        .await
    }

    /// Approves exactly commit `sha` of pull request `number`.
    pub async fn approve_preview(&self, app_id: &str, number: i64, sha: &str) -> Result<bool> {
        let (app_id, sha) = (app_id.to_owned(), sha.to_owned());
        self.call(move |c| {
            Ok(c.execute(
                "UPDATE previews SET approved_sha = ?3, updated_at = ?4
                 WHERE app_id = ?1 AND number = ?2",
                params![app_id, number, sha, now_unix()],
            )? > 0)
        })
        .await
    }

    /// Moves a preview's end to `expires_at`.
    pub async fn extend_preview(&self, app_id: &str, number: i64, expires_at: i64) -> Result<bool> {
        let app_id = app_id.to_owned();
        self.call(move |c| {
            Ok(c.execute(
                "UPDATE previews SET expires_at = ?3, updated_at = ?4
                 WHERE app_id = ?1 AND number = ?2",
                params![app_id, number, expires_at, now_unix()],
            )? > 0)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_push_opens_or_refreshes_a_preview_and_approvals_name_one_commit() {
        let s = Store::open_in_memory().unwrap();
        let org = s.create_org_with_token("o", "t", "h").await.unwrap();
        let app = s.get_or_create_app(&org.id, "web").await.unwrap();
        let push = |sha: &'static str| PreviewPush {
            number: 3,
            head_sha: sha,
            head_ref: "feature",
            author: "alice",
            trusted: false,
            ttl_secs: 60,
        };
        let p = s.preview_pushed(&app.id, push("aaaa")).await.unwrap();
        assert_eq!(
            (p.state.as_str(), p.expires_at - p.last_push),
            ("building", 60)
        );
        assert!(s.approve_preview(&app.id, 3, "aaaa").await.unwrap());
        let p = s.preview_pushed(&app.id, push("bbbb")).await.unwrap();
        assert_eq!(p.head_sha, "bbbb");
        assert_eq!(
            p.approved_sha.as_deref(),
            Some("aaaa"),
            "it covers A, not B"
        );
        s.set_preview_state(&app.id, 3, "live", None, Some(Some("app_p")))
            .await
            .unwrap();
        assert_eq!(s.preview_of_app("app_p").await.unwrap().unwrap().number, 3);
        assert_eq!(s.live_previews().await.unwrap().len(), 1);
        s.set_preview_state(&app.id, 3, "closed", None, Some(None))
            .await
            .unwrap();
        assert!(s.live_previews().await.unwrap().is_empty());
        // The cap counts open previews only.
        for n in 0..MAX_PREVIEWS_PER_APP {
            let p = PreviewPush {
                number: 100 + n,
                ..push("cccc")
            };
            s.preview_pushed(&app.id, p).await.unwrap();
        }
        let p = PreviewPush {
            number: 999,
            ..push("cccc")
        };
        assert!(s.preview_pushed(&app.id, p).await.is_err());
    }
}
