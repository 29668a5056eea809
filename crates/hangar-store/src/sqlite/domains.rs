//! Custom domains: hosts outside the platform's domain that an app
//! answers for.

use hangar_core::now_unix;
use rusqlite::{OptionalExtension, params};

use super::collect;
use crate::{Domain, Result, Store, StoreError};

/// Custom domains one app may have.
pub const MAX_DOMAINS_PER_APP: u64 = 100;

impl Store {
    /// Adds `host` (normalised by the caller) to the app; refused when any
    /// app has it already ([`StoreError::DomainTaken`]) or past
    /// [`MAX_DOMAINS_PER_APP`].
    pub async fn add_domain(&self, app_id: &str, host: &str) -> Result<Domain> {
        let (app_id, host) = (app_id.to_owned(), host.to_owned());
        self.call(move |c| {
            let tx = c.transaction()?;
            let owner: Option<String> = tx
                .query_row("SELECT app_id FROM domains WHERE host = ?1", [&host], |r| {
                    r.get(0)
                })
                .optional()?;
            if owner.is_some() {
                return Err(StoreError::DomainTaken(host));
            }
            let count: u64 = tx.query_row(
                "SELECT COUNT(*) FROM domains WHERE app_id = ?1",
                [&app_id],
                |r| r.get(0),
            )?;
            if count >= MAX_DOMAINS_PER_APP {
                return Err(StoreError::TooManyDomains {
                    limit: MAX_DOMAINS_PER_APP,
                });
            }
            let domain = Domain {
                host,
                app_id,
                created_at: now_unix(),
            };
            tx.execute(
                "INSERT INTO domains (host, app_id, created_at) VALUES (?1, ?2, ?3)",
                params![domain.host, domain.app_id, domain.created_at],
            )?;
            tx.commit()?;
            Ok(domain)
        })
        .await
    }

    /// The app's custom domains, by host.
    pub async fn domains_for_app(&self, app_id: &str) -> Result<Vec<Domain>> {
        let app_id = app_id.to_owned();
        self.call(move |c| {
            let mut st = c.prepare(
                "SELECT host, app_id, created_at FROM domains WHERE app_id = ?1 ORDER BY host",
            )?;
            collect(st.query_map([app_id], |r| {
                Ok(Domain {
                    host: r.get(0)?,
                    app_id: r.get(1)?,
                    created_at: r.get(2)?,
                })
            })?)
        })
        .await
    }

    /// Removes the app's `host`, and its certificate; false when the app
    /// has no such domain.
    pub async fn remove_domain(&self, app_id: &str, host: &str) -> Result<bool> {
        let (app_id, host) = (app_id.to_owned(), host.to_owned());
        self.call(move |c| {
            let tx = c.transaction()?;
            let removed = tx.execute(
                "DELETE FROM domains WHERE app_id = ?1 AND host = ?2",
                params![app_id, host],
            )? > 0;
            if removed {
                tx.execute(
                    "DELETE FROM certificates WHERE host = ?1 AND app_id = ?2",
                    params![host, app_id],
                )?;
            }
            tx.commit()?;
            Ok(removed)
        })
        .await
    }

    /// The app that has custom domain `host`.
    pub async fn domain_app(&self, host: &str) -> Result<Option<String>> {
        let host = host.to_owned();
        self.call(move |c| {
            Ok(
                c.query_row("SELECT app_id FROM domains WHERE host = ?1", [host], |r| {
                    r.get(0)
                })
                .optional()?,
            )
        })
        .await
    }

    /// Every custom domain with its app's name: what the edge routes by.
    pub async fn routed_domains(&self) -> Result<Vec<(String, String)>> {
        self.call(|c| {
            let mut st = c.prepare(
                "SELECT d.host, a.name FROM domains d JOIN apps a ON a.id = d.app_id ORDER BY d.host",
            )?;
            collect(st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_host_belongs_to_one_app_and_goes_with_it() {
        let s = Store::open_in_memory().unwrap();
        let org = s.create_org_with_token("acme", "t", "h").await.unwrap();
        let web = s.get_or_create_app(&org.id, "web").await.unwrap();
        let api = s.get_or_create_app(&org.id, "api").await.unwrap();
        s.add_domain(&web.id, "www.example.com").await.unwrap();
        assert!(matches!(
            s.add_domain(&api.id, "www.example.com").await,
            Err(StoreError::DomainTaken(_))
        ));
        assert_eq!(
            s.routed_domains().await.unwrap(),
            [("www.example.com".to_owned(), "web".to_owned())]
        );
        assert!(!s.remove_domain(&api.id, "www.example.com").await.unwrap());
        s.delete_app(&web.id).await.unwrap();
        assert!(
            s.routed_domains().await.unwrap().is_empty(),
            "gone with its app"
        );
        s.add_domain(&api.id, "www.example.com").await.unwrap();
        assert!(s.remove_domain(&api.id, "www.example.com").await.unwrap());
        assert!(s.domains_for_app(&api.id).await.unwrap().is_empty());
    }
}
