//! Orders through ACME (RFC 8555) with `instant-acme`: the account (made
//! once per directory, kept sealed in the state store), and one order's
//! walk: authorizations, the chosen challenge's answer, readiness,
//! finalization, the chain.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hangar_resources::Vault;
use hangar_store::Store;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use tokio::sync::OnceCell;

use crate::TlsError;
use crate::table::Challenges;

/// Let's Encrypt's production directory: the default CA.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// How long one order may wait for the CA to validate, then to issue.
const ORDER_WAIT: Duration = Duration::from_secs(90);

/// Which challenge proves a name is ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeKind {
    /// A file on the plain HTTP port (port 80 for a public CA).
    Http01,
    /// A certificate on the TLS port (443 for a public CA).
    TlsAlpn01,
}

impl std::str::FromStr for ChallengeKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "http-01" => Ok(ChallengeKind::Http01),
            "tls-alpn-01" => Ok(ChallengeKind::TlsAlpn01),
            _ => Err(format!("{s:?}: expected http-01 or tls-alpn-01")),
        }
    }
}

/// Where and how to order.
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// The CA's directory URL.
    pub directory: String,
    /// The account's contact address.
    pub email: Option<String>,
    /// A PEM root to trust for the CA's own HTTPS (a private CA such as
    /// Pebble); none: the platform's roots.
    pub ca_root: Option<PathBuf>,
    /// Which challenge to answer.
    pub challenge: ChallengeKind,
}

/// The vault context of the account's credentials.
const ACCOUNT_CONTEXT: &str = "acme-account";

pub(crate) struct Issuer {
    cfg: AcmeConfig,
    store: Store,
    vault: Vault,
    account: OnceCell<Account>,
    /// HTTP-01 key authorizations of pending orders, by token.
    pub(crate) http01: Mutex<HashMap<String, String>>,
    /// TLS-ALPN-01 answers of pending orders, by host.
    pub(crate) tls_alpn: Arc<Challenges>,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer").field("cfg", &self.cfg).finish()
    }
}

fn acme(e: instant_acme::Error) -> TlsError {
    TlsError::Acme(e.to_string())
}

impl Issuer {
    pub(crate) fn new(cfg: AcmeConfig, store: Store, vault: Vault) -> Issuer {
        Issuer {
            cfg,
            store,
            vault,
            account: OnceCell::new(),
            http01: Mutex::new(HashMap::new()),
            tls_alpn: Arc::new(Challenges::default()),
        }
    }

    pub(crate) fn directory(&self) -> &str {
        &self.cfg.directory
    }

    /// The account: the stored one for this directory, else a new one
    /// (stored before it is used).
    async fn account(&self) -> Result<&Account, TlsError> {
        self.account
            .get_or_try_init(|| async {
                let builder = match &self.cfg.ca_root {
                    Some(root) => Account::builder_with_root(root),
                    None => Account::builder(),
                }
                .map_err(acme)?;
                if let Some(sealed) = self.store.acme_account(&self.cfg.directory).await? {
                    let plain = self
                        .vault
                        .unseal(ACCOUNT_CONTEXT, &sealed)
                        .map_err(|e| TlsError::Sealed(e.to_string()))?;
                    let creds: AccountCredentials = serde_json::from_slice(&plain)
                        .map_err(|e| TlsError::Sealed(format!("the stored ACME account: {e}")))?;
                    return builder.from_credentials(creds).await.map_err(acme);
                }
                let contact: Vec<String> =
                    self.cfg.email.iter().map(|e| format!("mailto:{e}")).collect();
                let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
                let (account, creds) = builder
                    .create(
                        &NewAccount {
                            contact: &contact,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        self.cfg.directory.clone(),
                        None,
                    )
                    .await
                    .map_err(acme)?;
                let plain = serde_json::to_vec(&creds)
                    .map_err(|e| TlsError::Sealed(format!("the ACME account: {e}")))?;
                self.store
                    .put_acme_account(&self.cfg.directory, &self.vault.seal(ACCOUNT_CONTEXT, &plain))
                    .await?;
                tracing::info!(directory = %self.cfg.directory, account = account.id(), "ACME account created");
                Ok(account)
            })
            .await
    }

    /// Orders a certificate for `host`: (chain PEM, key PEM).
    pub(crate) async fn order(&self, host: &str) -> Result<(String, String), TlsError> {
        let account = self.account().await?;
        let ids = [Identifier::Dns(host.to_owned())];
        let mut order = account
            .new_order(&NewOrder::new(&ids))
            .await
            .map_err(acme)?;
        let mut tokens = Vec::new();
        let outcome = self.walk(&mut order, host, &mut tokens).await;
        {
            let mut http01 = self.http01.lock().unwrap_or_else(|p| p.into_inner());
            for token in &tokens {
                http01.remove(token);
            }
        }
        self.tls_alpn
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(host);
        outcome
    }

    async fn walk(
        &self,
        order: &mut instant_acme::Order,
        host: &str,
        tokens: &mut Vec<String>,
    ) -> Result<(String, String), TlsError> {
        let kind = match self.cfg.challenge {
            ChallengeKind::Http01 => ChallengeType::Http01,
            ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
        };
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(acme)?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => {
                    return Err(TlsError::Acme(format!(
                        "the CA's authorization for {host} is {other:?}"
                    )));
                }
            }
            let mut challenge = authz.challenge(kind.clone()).ok_or_else(|| {
                TlsError::Acme(format!("the CA offers no {kind:?} challenge for {host}"))
            })?;
            let key_auth = challenge.key_authorization();
            match self.cfg.challenge {
                ChallengeKind::Http01 => {
                    self.http01
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(challenge.token.clone(), key_auth.as_str().to_owned());
                    tokens.push(challenge.token.clone());
                }
                ChallengeKind::TlsAlpn01 => {
                    let answer = crate::certs::tls_alpn_answer(host, key_auth.digest().as_ref())?;
                    self.tls_alpn
                        .0
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(host.to_owned(), answer);
                }
            }
            challenge.set_ready().await.map_err(acme)?;
        }
        let retry = RetryPolicy::new()
            .initial_delay(Duration::from_millis(200))
            .backoff(1.5)
            .timeout(ORDER_WAIT);
        let status = order.poll_ready(&retry).await.map_err(acme)?;
        if status != OrderStatus::Ready {
            return Err(TlsError::Acme(self.why_invalid(order, host).await));
        }
        let key_pem = order.finalize().await.map_err(acme)?;
        let chain = order.poll_certificate(&retry).await.map_err(acme)?;
        Ok((chain, key_pem))
    }

    /// What the CA said about an order that went invalid.
    async fn why_invalid(&self, order: &mut instant_acme::Order, host: &str) -> String {
        let mut reasons = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(Ok(authz)) = authorizations.next().await {
            for ch in &authz.challenges {
                if let Some(err) = &ch.error {
                    reasons.push(err.detail.clone().unwrap_or_else(|| format!("{err:?}")));
                }
            }
        }
        if reasons.is_empty() {
            format!("the CA found {host} invalid")
        } else {
            format!("the CA could not validate {host}: {}", reasons.join("; "))
        }
    }
}
