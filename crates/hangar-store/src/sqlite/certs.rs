//! TLS certificates and ACME accounts (keys sealed by the caller), and
//! apps' HSTS choice.

use hangar_core::now_unix;
use rusqlite::{OptionalExtension, Row, params};

use super::collect;
use crate::{CertRecord, Result, Store};

const COLUMNS: &str = "host, app_id, source, chain_pem, key_sealed, not_before, not_after, \
     issuer, serial, failures, last_error, next_try, updated_at";

fn record(r: &Row) -> rusqlite::Result<CertRecord> {
    Ok(CertRecord {
        host: r.get(0)?,
        app_id: r.get(1)?,
        source: r.get(2)?,
        chain_pem: r.get(3)?,
        key_sealed: r.get(4)?,
        not_before: r.get(5)?,
        not_after: r.get(6)?,
        issuer: r.get(7)?,
        serial: r.get(8)?,
        failures: r.get(9)?,
        last_error: r.get(10)?,
        next_try: r.get(11)?,
        updated_at: r.get(12)?,
    })
}

impl Store {
    /// Every certificate row, by host.
    pub async fn certificates(&self) -> Result<Vec<CertRecord>> {
        self.call(|c| {
            let mut st = c.prepare(&format!("SELECT {COLUMNS} FROM certificates ORDER BY host"))?;
            collect(st.query_map([], record)?)
        })
        .await
    }

    /// The certificate row of `host`.
    pub async fn certificate(&self, host: &str) -> Result<Option<CertRecord>> {
        let host = host.to_owned();
        self.call(move |c| {
            Ok(c.query_row(
                &format!("SELECT {COLUMNS} FROM certificates WHERE host = ?1"),
                [host],
                record,
            )
            .optional()?)
        })
        .await
    }

    /// Writes `rec` whole (a new certificate, or a new state of getting
    /// one). An app's row is only written while the app exists: a row for
    /// an app deleted meanwhile is dropped (false).
    pub async fn put_certificate(&self, rec: &CertRecord) -> Result<bool> {
        let rec = rec.clone();
        self.call(move |c| {
            let tx = c.transaction()?;
            if let Some(app) = &rec.app_id {
                let exists: Option<i64> = tx
                    .query_row("SELECT 1 FROM apps WHERE id = ?1", [app], |r| r.get(0))
                    .optional()?;
                if exists.is_none() {
                    return Ok(false);
                }
            }
            tx.execute(
                &format!(
                    "INSERT OR REPLACE INTO certificates ({COLUMNS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
                ),
                params![
                    rec.host,
                    rec.app_id,
                    rec.source,
                    rec.chain_pem,
                    rec.key_sealed,
                    rec.not_before,
                    rec.not_after,
                    rec.issuer,
                    rec.serial,
                    rec.failures,
                    rec.last_error,
                    rec.next_try,
                    now_unix(),
                ],
            )?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    /// Removes `host`'s certificate; false when there was none.
    pub async fn delete_certificate(&self, host: &str) -> Result<bool> {
        let host = host.to_owned();
        self.call(move |c| Ok(c.execute("DELETE FROM certificates WHERE host = ?1", [host])? > 0))
            .await
    }

    /// The sealed ACME account credentials for `directory`.
    pub async fn acme_account(&self, directory: &str) -> Result<Option<Vec<u8>>> {
        let directory = directory.to_owned();
        self.call(move |c| {
            Ok(c.query_row(
                "SELECT sealed FROM acme_accounts WHERE directory = ?1",
                [directory],
                |r| r.get(0),
            )
            .optional()?)
        })
        .await
    }

    /// Keeps the sealed ACME account credentials for `directory`.
    pub async fn put_acme_account(&self, directory: &str, sealed: &[u8]) -> Result<()> {
        let (directory, sealed) = (directory.to_owned(), sealed.to_owned());
        self.call(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO acme_accounts (directory, sealed, created_at) \
                 VALUES (?1, ?2, ?3)",
                params![directory, sealed, now_unix()],
            )?;
            Ok(())
        })
        .await
    }

    /// Sets whether the app's HTTPS answers carry HSTS.
    pub async fn set_hsts(&self, app_id: &str, on: bool) -> Result<()> {
        let app_id = app_id.to_owned();
        self.call(move |c| {
            c.execute(
                "UPDATE apps SET hsts = ?2 WHERE id = ?1",
                params![app_id, on],
            )?;
            Ok(())
        })
        .await
    }

    /// Whether the app's HTTPS answers carry HSTS.
    pub async fn hsts(&self, app_id: &str) -> Result<bool> {
        let app_id = app_id.to_owned();
        self.call(move |c| {
            Ok(
                c.query_row("SELECT hsts FROM apps WHERE id = ?1", [app_id], |r| {
                    r.get(0)
                })
                .optional()?
                .unwrap_or(false),
            )
        })
        .await
    }

    /// Names of the apps that chose HSTS.
    pub async fn hsts_apps(&self) -> Result<Vec<String>> {
        self.call(|c| {
            let mut st = c.prepare("SELECT name FROM apps WHERE hsts = 1 ORDER BY name")?;
            collect(st.query_map([], |r| r.get(0))?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(host: &str, app: Option<&str>) -> CertRecord {
        CertRecord {
            host: host.to_owned(),
            app_id: app.map(str::to_owned),
            source: "acme".to_owned(),
            chain_pem: Some("PEM".to_owned()),
            key_sealed: Some(vec![1, 2, 3]),
            not_before: Some(1),
            not_after: Some(2),
            issuer: Some("CN=x".to_owned()),
            serial: Some("01".to_owned()),
            failures: 0,
            last_error: None,
            next_try: None,
            updated_at: 0,
        }
    }

    #[tokio::test]
    async fn an_apps_certificate_goes_with_it_and_the_apis_stays() {
        let s = Store::open_in_memory().unwrap();
        let org = s.create_org_with_token("acme", "t", "h").await.unwrap();
        let web = s.get_or_create_app(&org.id, "web").await.unwrap();
        assert!(
            s.put_certificate(&rec("web.example.com", Some(&web.id)))
                .await
                .unwrap()
        );
        assert!(
            s.put_certificate(&rec("api.example.com", None))
                .await
                .unwrap()
        );
        assert_eq!(s.sealed_rows().await.unwrap(), 2);
        let got = s.certificate("web.example.com").await.unwrap().unwrap();
        assert_eq!(got.key_sealed.as_deref(), Some(&[1u8, 2, 3][..]));
        s.delete_app(&web.id).await.unwrap();
        let hosts: Vec<String> = s
            .certificates()
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.host)
            .collect();
        assert_eq!(hosts, ["api.example.com"]);
        assert!(
            !s.put_certificate(&rec("web.example.com", Some(&web.id)))
                .await
                .unwrap(),
            "an order finishing after its app is gone is dropped"
        );
        assert!(s.certificate("web.example.com").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn hsts_is_off_until_an_app_turns_it_on() {
        let s = Store::open_in_memory().unwrap();
        let org = s.create_org_with_token("acme", "t", "h").await.unwrap();
        let web = s.get_or_create_app(&org.id, "web").await.unwrap();
        assert!(!s.hsts(&web.id).await.unwrap());
        s.set_hsts(&web.id, true).await.unwrap();
        assert_eq!(s.hsts_apps().await.unwrap(), ["web"]);
    }
}
