//! [`Certs`]: the certificates served, the orders for them, and their
//! renewal. See the crate's docs for the rules.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use hangar_core::now_unix;
use hangar_proxy::{Hello, TlsPolicy};
use hangar_resources::Vault;
use hangar_store::{CertRecord, Store};
use rustls::ServerConfig;
use tokio::sync::watch;

use crate::TlsError;
use crate::acme::{AcmeConfig, Issuer};
use crate::certs::{self, CertInfo};
use crate::table::{CertTable, Resolver};

/// Failed orders back off from this, doubling.
const BACKOFF_BASE_SECS: i64 = 5 * 60;
/// The longest back-off.
const BACKOFF_MAX_SECS: i64 = 24 * 3600;
/// A certificate still not renewed this close to its end is an error.
pub const RENEWAL_ALARM_SECS: i64 = 14 * 24 * 3600;
/// How long a handshake waits for an order of a known name.
const ON_DEMAND_WAIT: Duration = Duration::from_secs(20);

/// Seconds to wait after the `failures`-th failed order in a row: 5
/// minutes, doubling, at most a day. Four failures take 35 minutes, so a
/// name fails at most 4 validations in any hour (Let's Encrypt allows 5).
pub fn backoff(failures: u32) -> i64 {
    let doublings = failures.saturating_sub(1).min(20);
    (BACKOFF_BASE_SECS << doublings).min(BACKOFF_MAX_SECS)
}

/// Whether a certificate valid from `not_before` to `not_after` is due for
/// renewal at `now`: from two thirds of its lifetime on.
pub fn renewal_due(now: i64, not_before: i64, not_after: i64) -> bool {
    let life = (not_after - not_before).max(0);
    now >= not_before + life / 3 * 2
}

/// How Hangar gets its certificates.
#[derive(Debug, Clone)]
pub struct CertsConfig {
    /// Apps are `<app>.<domain>`.
    pub domain: String,
    /// The ACME CA, if Hangar orders certificates.
    pub acme: Option<AcmeConfig>,
    /// The operator's certificate (`--tls-cert`, `--tls-key`): (chain PEM,
    /// key PEM). Served for every name it covers, and without SNI.
    pub operator: Option<(String, String)>,
    /// The API's own name, when its certificate comes from ACME.
    pub api_host: Option<String>,
    /// How often the renewal loop looks.
    pub renew_every: Duration,
}

/// A host's certificate as `hangar domains list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertStatus {
    /// `issued`, `pending`, `failed`, or `none` (no ACME CA and nothing
    /// uploaded).
    pub state: &'static str,
    /// `acme` or `uploaded`.
    pub source: Option<String>,
    pub issuer: Option<String>,
    /// Unix seconds.
    pub not_after: Option<i64>,
    pub serial: Option<String>,
    /// The last failure (of an order, or of a renewal still retried).
    pub error: Option<String>,
    /// Unix seconds: the next order.
    pub next_try: Option<i64>,
    /// A renewal is failing and the certificate ends within 14 days.
    pub renewal_alarm: bool,
}

type Flight = Shared<BoxFuture<'static, Result<(), String>>>;

/// Every certificate the edge and the API serve; cheap to clone.
#[derive(Clone)]
pub struct Certs(Arc<Inner>);

struct Inner {
    domain: String,
    api_host: Option<String>,
    store: Store,
    vault: Vault,
    table: Arc<CertTable>,
    /// The edge's config: ALPN h2 and http/1.1, certificates by SNI.
    edge: Arc<ServerConfig>,
    /// The API's: http/1.1 only.
    api: Arc<ServerConfig>,
    /// TLS-ALPN-01 answers: ALPN acme-tls/1 only.
    challenge: Arc<ServerConfig>,
    issuer: Option<Issuer>,
    flights: Mutex<HashMap<String, Flight>>,
    hsts: ArcSwap<HashSet<String>>,
    orders: AtomicU64,
    renew_every: Duration,
    /// Where orders run: the runtime `Certs` was made on, so an order
    /// outlives the handshake (and the proxy worker) that caused it.
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for Certs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certs")
            .field("domain", &self.0.domain)
            .field("acme", &self.0.issuer.as_ref().map(|i| i.directory()))
            .finish()
    }
}

fn server_config(
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
    alpn: &[&[u8]],
) -> Arc<ServerConfig> {
    let mut cfg = ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map(|b| b.with_no_client_auth().with_cert_resolver(resolver))
    .unwrap_or_else(|_| {
        // The ring provider supports the default versions; this cannot
        // fail, but a config with no versions would refuse every client.
        unreachable!("ring supports TLS 1.2 and 1.3")
    });
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

fn key_context(host: &str) -> String {
    format!("tls-key:{host}")
}

impl Certs {
    /// Loads the stored certificates (a restart orders nothing it has).
    /// Must be called on the runtime orders should run on.
    pub async fn open(cfg: CertsConfig, store: Store, vault: Vault) -> Result<Certs, TlsError> {
        let operator = match &cfg.operator {
            Some((chain, key)) => Some(certs::parse(chain, key)?),
            None => None,
        };
        let table = Arc::new(CertTable::new(operator));
        let issuer = cfg
            .acme
            .clone()
            .map(|acme| Issuer::new(acme, store.clone(), vault.clone()));
        let challenges: Arc<dyn rustls::server::ResolvesServerCert> = match &issuer {
            Some(i) => i.tls_alpn.clone(),
            None => Arc::new(crate::table::Challenges::default()),
        };
        let resolver = Arc::new(Resolver(Arc::clone(&table)));
        let certs = Certs(Arc::new(Inner {
            domain: cfg.domain.trim_end_matches('.').to_ascii_lowercase(),
            api_host: cfg.api_host.map(|h| h.to_ascii_lowercase()),
            store,
            vault,
            edge: server_config(resolver.clone(), &[b"h2", b"http/1.1"]),
            api: server_config(resolver, &[b"http/1.1"]),
            challenge: server_config(challenges, &[hangar_proxy::ACME_TLS_ALPN]),
            table,
            issuer,
            flights: Mutex::new(HashMap::new()),
            hsts: ArcSwap::from_pointee(HashSet::new()),
            orders: AtomicU64::new(0),
            renew_every: cfg.renew_every,
            runtime: tokio::runtime::Handle::current(),
        }));
        let mut loaded = 0;
        for rec in certs.0.store.certificates().await? {
            match certs.serve_stored(&rec) {
                Ok(true) => loaded += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(host = %rec.host, "a stored certificate cannot be served: {e}")
                }
            }
        }
        tracing::info!(
            loaded,
            acme = certs.0.issuer.is_some(),
            "certificates loaded"
        );
        Ok(certs)
    }

    /// Puts a stored certificate in the table; false when the row has none.
    fn serve_stored(&self, rec: &CertRecord) -> Result<bool, TlsError> {
        let (Some(chain), Some(sealed)) = (&rec.chain_pem, &rec.key_sealed) else {
            return Ok(false);
        };
        let key = self
            .0
            .vault
            .unseal(&key_context(&rec.host), sealed)
            .map_err(|e| TlsError::Sealed(e.to_string()))?;
        let key = String::from_utf8(key).map_err(|e| TlsError::Sealed(e.to_string()))?;
        let parsed = certs::parse(chain, &key)?;
        self.0.table.insert(&rec.host, parsed.key);
        Ok(true)
    }

    /// Whether Hangar orders certificates.
    pub fn acme(&self) -> bool {
        self.0.issuer.is_some()
    }

    /// Orders started since this process began (each try counts).
    pub fn orders(&self) -> u64 {
        self.0.orders.load(Ordering::Relaxed)
    }

    /// The API's TLS, when its certificate is managed here (`api_host`).
    pub fn api_policy(&self) -> Arc<dyn TlsPolicy> {
        Arc::new(ApiPolicy(self.clone()))
    }

    /// Replaces the apps that chose HSTS.
    pub fn set_hsts(&self, apps: impl IntoIterator<Item = String>) {
        self.0.hsts.store(Arc::new(apps.into_iter().collect()));
    }

    /// Who `host` belongs to, if Hangar knows the name: `Some(None)` for
    /// the API's, `Some(Some(app_id))` for an app's own name or custom
    /// domain; `None` for any other name (never ordered).
    async fn known(&self, host: &str) -> Option<Option<String>> {
        if self.0.api_host.as_deref() == Some(host) {
            return Some(None);
        }
        let store = &self.0.store;
        let app_id = match host
            .strip_suffix(&self.0.domain)
            .and_then(|l| l.strip_suffix('.'))
        {
            Some(label) if !label.is_empty() && !label.contains('.') => {
                store.app_by_name(label).await.ok().flatten().map(|a| a.id)
            }
            _ => store.domain_app(host).await.ok().flatten(),
        };
        app_id.map(Some)
    }

    /// Gets `host` a certificate, once for all who ask at the same time.
    async fn ensure(&self, host: &str, app_id: Option<String>) -> Result<(), String> {
        let flight = {
            let mut flights = self.0.flights.lock().unwrap_or_else(|p| p.into_inner());
            match flights.get(host) {
                Some(f) => f.clone(),
                None => {
                    let (this, name) = (self.clone(), host.to_owned());
                    let task = self.0.runtime.spawn(async move {
                        let outcome = this
                            .issue(&name, app_id, false)
                            .await
                            .map_err(|e| e.to_string());
                        this.0
                            .flights
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&name);
                        outcome
                    });
                    let flight = async move { task.await.unwrap_or_else(|e| Err(e.to_string())) }
                        .boxed()
                        .shared();
                    flights.insert(host.to_owned(), flight.clone());
                    flight
                }
            }
        };
        flight.await
    }

    /// Orders `host` a certificate in the background (a custom domain just
    /// added).
    pub fn order_soon(&self, host: &str, app_id: Option<String>) {
        if self.0.issuer.is_none() {
            return;
        }
        let (this, host) = (self.clone(), host.to_owned());
        self.0.runtime.spawn(async move {
            let _ = this.ensure(&host, app_id).await;
        });
    }

    /// Orders a new certificate for `host` now, whatever its schedule or
    /// back-off (`hangar domains renew`); waits for the outcome.
    pub async fn renew_now(
        &self,
        host: &str,
        app_id: Option<String>,
    ) -> Result<CertInfo, TlsError> {
        self.issue(host, app_id, true).await?;
        let rec = self.0.store.certificate(host).await?;
        let chain = rec.and_then(|r| r.chain_pem).unwrap_or_default();
        let Some(Ok(leaf)) =
            rustls::pki_types::pem::PemObject::pem_slice_iter(chain.as_bytes()).next()
        else {
            return Err(TlsError::Acme("the order left no certificate".to_owned()));
        };
        certs::inspect(&leaf)
    }

    /// One order for `host`, its outcome stored: the certificate (served
    /// from the next handshake on), or the failure and the next try.
    async fn issue(
        &self,
        host: &str,
        app_id: Option<String>,
        forced: bool,
    ) -> Result<(), TlsError> {
        let issuer = self.0.issuer.as_ref().ok_or(TlsError::NoAcme)?;
        let store = &self.0.store;
        let now = now_unix();
        let prev = store.certificate(host).await?;
        if let Some(p) = &prev
            && !forced
            && let Some(next) = p.next_try
            && next > now
        {
            return Err(TlsError::BackingOff {
                host: host.to_owned(),
                failures: p.failures,
                in_secs: next - now,
            });
        }
        self.0.orders.fetch_add(1, Ordering::Relaxed);
        tracing::info!(%host, "ordering a certificate");
        match issuer.order(host).await {
            Ok((chain, key)) => {
                let parsed = certs::parse(&chain, &key)?;
                let rec = CertRecord {
                    host: host.to_owned(),
                    app_id,
                    source: "acme".to_owned(),
                    chain_pem: Some(chain),
                    key_sealed: Some(self.0.vault.seal(&key_context(host), key.as_bytes())),
                    not_before: Some(parsed.info.not_before),
                    not_after: Some(parsed.info.not_after),
                    issuer: Some(parsed.info.issuer.clone()),
                    serial: Some(parsed.info.serial.clone()),
                    failures: 0,
                    last_error: None,
                    next_try: None,
                    updated_at: now,
                };
                if !store.put_certificate(&rec).await? {
                    tracing::info!(%host, "certificate issued after its app was deleted: dropped");
                    return Ok(());
                }
                self.0.table.insert(host, parsed.key);
                tracing::info!(%host, serial = %parsed.info.serial, not_after = parsed.info.not_after, "certificate issued");
                Ok(())
            }
            Err(e) => {
                let mut rec = prev.unwrap_or_else(|| CertRecord {
                    host: host.to_owned(),
                    app_id,
                    source: "acme".to_owned(),
                    chain_pem: None,
                    key_sealed: None,
                    not_before: None,
                    not_after: None,
                    issuer: None,
                    serial: None,
                    failures: 0,
                    last_error: None,
                    next_try: None,
                    updated_at: now,
                });
                rec.failures = rec.failures.saturating_add(1);
                rec.last_error = Some(e.to_string());
                rec.next_try = Some(now + backoff(rec.failures));
                store.put_certificate(&rec).await?;
                tracing::warn!(%host, failures = rec.failures, "certificate order failed: {e}");
                Err(e)
            }
        }
    }

    /// Serves a user's certificate for `host` (an app's custom domain):
    /// it must be for `host` and not expired. Never renewed by Hangar.
    pub async fn upload(
        &self,
        host: &str,
        app_id: &str,
        chain_pem: &str,
        key_pem: &str,
    ) -> Result<CertInfo, TlsError> {
        let parsed = certs::parse(chain_pem, key_pem)?;
        if !parsed.info.covers(host) {
            return Err(TlsError::BadCertificate(format!(
                "the certificate is for {:?}, not {host}",
                parsed.info.names
            )));
        }
        let now = now_unix();
        if parsed.info.not_after <= now {
            return Err(TlsError::BadCertificate(
                "the certificate has expired".to_owned(),
            ));
        }
        let rec = CertRecord {
            host: host.to_owned(),
            app_id: Some(app_id.to_owned()),
            source: "uploaded".to_owned(),
            chain_pem: Some(chain_pem.to_owned()),
            key_sealed: Some(self.0.vault.seal(&key_context(host), key_pem.as_bytes())),
            not_before: Some(parsed.info.not_before),
            not_after: Some(parsed.info.not_after),
            issuer: Some(parsed.info.issuer.clone()),
            serial: Some(parsed.info.serial.clone()),
            failures: 0,
            last_error: None,
            next_try: None,
            updated_at: now,
        };
        self.0.store.put_certificate(&rec).await?;
        self.0.table.insert(host, parsed.key);
        Ok(parsed.info)
    }

    /// Stops serving `host`'s own certificate (its domain was removed).
    pub fn forget(&self, host: &str) {
        self.0.table.remove(host);
    }

    /// `host`'s certificate as `hangar domains list` shows it.
    pub async fn status(&self, host: &str) -> Result<CertStatus, TlsError> {
        let rec = self.0.store.certificate(host).await?;
        Ok(status_of(rec.as_ref(), self.acme(), now_unix()))
    }

    /// Renews what is due, retries what failed once its back-off is over,
    /// orders custom domains that have no certificate yet, and raises the
    /// alarm on certificates about to end: every `renew_every` until
    /// `stop` turns true.
    pub fn spawn_renewals(&self, mut stop: watch::Receiver<bool>) {
        let this = self.clone();
        self.0.runtime.spawn(async move {
            let mut tick = tokio::time::interval(this.0.renew_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => return,
                }
                if *stop.borrow() {
                    return;
                }
                if let Err(e) = this.renew_round().await {
                    tracing::warn!("certificate renewal round failed: {e}");
                }
            }
        });
    }

    async fn renew_round(&self) -> Result<(), TlsError> {
        let now = now_unix();
        let records = self.0.store.certificates().await?;
        let stored: HashSet<&str> = records.iter().map(|r| r.host.as_str()).collect();
        for rec in &records {
            let ends_soon = rec.not_after.is_some_and(|t| t - now < RENEWAL_ALARM_SECS);
            if rec.source != "acme" {
                if ends_soon {
                    tracing::warn!(host = %rec.host, "an uploaded certificate ends within 14 days: upload a new one");
                }
                continue;
            }
            if self.0.issuer.is_none() {
                continue;
            }
            let waiting = rec.next_try.is_some_and(|t| t > now);
            let due = match (rec.not_before, rec.not_after) {
                (Some(nb), Some(na)) => renewal_due(now, nb, na),
                _ => true,
            };
            if due && !waiting {
                let _ = self.ensure(&rec.host, rec.app_id.clone()).await;
            }
            if rec.failures > 0 && rec.chain_pem.is_some() && ends_soon {
                tracing::error!(
                    host = %rec.host,
                    not_after = rec.not_after,
                    error = rec.last_error.as_deref().unwrap_or(""),
                    "certificate renewal keeps failing and it ends within 14 days"
                );
            }
        }
        // Custom domains added while ordering was failing or off.
        for (host, _) in self.0.store.routed_domains().await? {
            if !stored.contains(host.as_str())
                && self.0.issuer.is_some()
                && let Some(Some(app_id)) = self.known(&host).await
            {
                let _ = self.ensure(&host, Some(app_id)).await;
            }
        }
        Ok(())
    }
}

/// A stored row as `hangar domains list` shows it.
pub(crate) fn status_of(rec: Option<&CertRecord>, acme: bool, now: i64) -> CertStatus {
    let Some(rec) = rec else {
        return CertStatus {
            state: if acme { "pending" } else { "none" },
            source: None,
            issuer: None,
            not_after: None,
            serial: None,
            error: None,
            next_try: None,
            renewal_alarm: false,
        };
    };
    let issued = rec.chain_pem.is_some();
    CertStatus {
        state: match (issued, &rec.last_error) {
            (true, _) => "issued",
            (false, Some(_)) => "failed",
            (false, None) => "pending",
        },
        source: Some(rec.source.clone()),
        issuer: rec.issuer.clone(),
        not_after: rec.not_after,
        serial: rec.serial.clone(),
        error: rec.last_error.clone(),
        next_try: rec.next_try,
        renewal_alarm: issued
            && rec.failures > 0
            && rec.not_after.is_some_and(|t| t - now < RENEWAL_ALARM_SECS),
    }
}

impl TlsPolicy for Certs {
    fn config_for<'a>(
        &'a self,
        hello: Hello<'a>,
    ) -> hangar_proxy::BoxFuture<'a, Option<Arc<ServerConfig>>> {
        Box::pin(async move {
            if hello.acme_challenge {
                return self
                    .0
                    .issuer
                    .as_ref()
                    .map(|_| Arc::clone(&self.0.challenge));
            }
            let Some(raw) = hello.server_name else {
                return self.0.table.fallback().map(|_| Arc::clone(&self.0.edge));
            };
            let host = hangar_proxy::normalize(raw);
            if self.0.table.lookup(&host).is_some() {
                return Some(Arc::clone(&self.0.edge));
            }
            // Only a name Hangar knows may cause an order, and only with a CA.
            self.0.issuer.as_ref()?;
            let owner = self.known(&host).await?;
            match tokio::time::timeout(ON_DEMAND_WAIT, self.ensure(&host, owner)).await {
                Ok(Ok(())) => Some(Arc::clone(&self.0.edge)),
                Ok(Err(e)) => {
                    tracing::debug!(%host, "no certificate: {e}");
                    None
                }
                Err(_) => None,
            }
        })
    }

    fn http01(&self, token: &str) -> Option<String> {
        let issuer = self.0.issuer.as_ref()?;
        issuer
            .http01
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .cloned()
    }

    fn has_certificate(&self, host: &str) -> bool {
        self.0.table.lookup(host).is_some()
    }

    fn hsts(&self, app: &str) -> bool {
        self.0.hsts.load().contains(app)
    }
}

/// The API's TLS when its certificate is managed here: its name only,
/// HTTP/1.1.
#[derive(Debug)]
struct ApiPolicy(Certs);

impl TlsPolicy for ApiPolicy {
    fn config_for<'a>(
        &'a self,
        hello: Hello<'a>,
    ) -> hangar_proxy::BoxFuture<'a, Option<Arc<ServerConfig>>> {
        Box::pin(async move {
            let certs = &self.0;
            let host = certs.0.api_host.as_deref()?;
            if certs.0.table.lookup(host).is_none() {
                tokio::time::timeout(ON_DEMAND_WAIT, certs.ensure(host, None))
                    .await
                    .ok()?
                    .ok()?;
            }
            let _ = hello;
            Some(Arc::clone(&certs.0.api))
        })
    }
}

/// The API's TLS from a fixed certificate (the operator's files, or a
/// self-signed one): HTTP/1.1, whatever the SNI.
#[derive(Debug)]
pub struct StaticPolicy(Arc<ServerConfig>);

impl StaticPolicy {
    /// Serves `chain_pem` with `key_pem`.
    pub fn new(chain_pem: &str, key_pem: &str) -> Result<StaticPolicy, TlsError> {
        let parsed = certs::parse(chain_pem, key_pem)?;
        let resolver = Arc::new(Fixed(parsed.key));
        Ok(StaticPolicy(server_config(resolver, &[b"http/1.1"])))
    }
}

/// One certificate for every handshake.
#[derive(Debug)]
struct Fixed(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for Fixed {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}

impl TlsPolicy for StaticPolicy {
    fn config_for<'a>(
        &'a self,
        _: Hello<'a>,
    ) -> hangar_proxy::BoxFuture<'a, Option<Arc<ServerConfig>>> {
        let cfg = Arc::clone(&self.0);
        Box::pin(async move { Some(cfg) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_back_off_inside_lets_encrypts_hourly_limit() {
        assert_eq!(backoff(1), 300);
        assert_eq!(backoff(2), 600);
        assert_eq!(backoff(40), BACKOFF_MAX_SECS);
        // Failures at 0, 5, 15, 35 and 75 minutes: never 5 within an hour.
        let mut at = vec![0i64];
        for n in 1..8 {
            at.push(at[at.len() - 1] + backoff(n));
        }
        for w in at.windows(5) {
            assert!(w[4] - w[0] >= 3600, "{at:?}");
        }
    }

    #[test]
    fn renewal_is_due_at_two_thirds_of_the_lifetime() {
        let (nb, na) = (0, 90 * 86400);
        assert!(!renewal_due(59 * 86400, nb, na));
        assert!(renewal_due(60 * 86400, nb, na));
        assert!(renewal_due(na + 1, nb, na));
    }

    #[test]
    fn a_failing_renewal_near_its_end_raises_the_alarm() {
        let now = 1_000_000_000;
        let mut rec = CertRecord {
            host: "a.example.com".into(),
            app_id: None,
            source: "acme".into(),
            chain_pem: Some("x".into()),
            key_sealed: Some(vec![1]),
            not_before: Some(now - 80 * 86400),
            not_after: Some(now + 10 * 86400),
            issuer: Some("CN=ca".into()),
            serial: Some("01".into()),
            failures: 0,
            last_error: None,
            next_try: None,
            updated_at: now,
        };
        assert!(!status_of(Some(&rec), true, now).renewal_alarm);
        rec.failures = 3;
        rec.last_error = Some("connection refused".into());
        let status = status_of(Some(&rec), true, now);
        assert!(status.renewal_alarm);
        assert_eq!(status.state, "issued");
        rec.chain_pem = None;
        assert_eq!(status_of(Some(&rec), true, now).state, "failed");
        assert_eq!(status_of(None, false, now).state, "none");
    }
}
