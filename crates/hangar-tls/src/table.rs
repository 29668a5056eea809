//! The certificates being served, by name: what each handshake looks up.
//! Reads are one lock-free load and a hash lookup; a new certificate
//! replaces the map (copy on write), so a handshake under way keeps the
//! key it already holds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::certs::Parsed;

/// Served certificates: per name (a host, or `*.parent` for a wildcard),
/// and the operator's (`--tls-cert`), used for any name it covers and for
/// a handshake without SNI.
#[derive(Debug)]
pub(crate) struct CertTable {
    by_name: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
    operator: Option<Parsed>,
}

impl CertTable {
    pub(crate) fn new(operator: Option<Parsed>) -> CertTable {
        CertTable {
            by_name: ArcSwap::from_pointee(HashMap::new()),
            operator,
        }
    }

    /// The certificate for `host` (normalised): its own, else a wildcard
    /// one label up, else the operator's if it covers it.
    pub(crate) fn lookup(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        let map = self.by_name.load();
        if let Some(key) = map.get(host) {
            return Some(Arc::clone(key));
        }
        if let Some((_, parent)) = host.split_once('.')
            && let Some(key) = map.get(&format!("*.{parent}"))
        {
            return Some(Arc::clone(key));
        }
        self.operator
            .as_ref()
            .filter(|op| op.info.covers(host))
            .map(|op| Arc::clone(&op.key))
    }

    /// The certificate for a handshake that names no host.
    pub(crate) fn fallback(&self) -> Option<Arc<CertifiedKey>> {
        self.operator.as_ref().map(|op| Arc::clone(&op.key))
    }

    pub(crate) fn insert(&self, name: &str, key: Arc<CertifiedKey>) {
        self.by_name.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.insert(name.to_owned(), Arc::clone(&key));
            map
        });
    }

    pub(crate) fn remove(&self, name: &str) {
        self.by_name.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.remove(name);
            map
        });
    }
}

/// rustls' view of the table: the certificate by SNI.
#[derive(Debug)]
pub(crate) struct Resolver(pub(crate) Arc<CertTable>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match hello.server_name() {
            Some(name) => self.0.lookup(&hangar_proxy::normalize(name)),
            None => self.0.fallback(),
        }
    }
}

/// The TLS-ALPN-01 answers of pending orders, by host.
#[derive(Debug, Default)]
pub(crate) struct Challenges(pub(crate) Mutex<HashMap<String, Arc<CertifiedKey>>>);

impl ResolvesServerCert for Challenges {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hangar_proxy::normalize(hello.server_name()?);
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&*name)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(names: &[&str]) -> Parsed {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let (chain, key) = crate::certs::self_signed(&names).unwrap();
        crate::certs::parse(&chain, &key).unwrap()
    }

    #[test]
    fn a_hosts_own_certificate_wins_over_a_wildcard_and_the_operators() {
        let operator = pair(&["*.apps.test"]);
        let table = CertTable::new(Some(operator.clone()));
        let own = pair(&["web.apps.test"]);
        let wild = pair(&["*.example.com"]);
        table.insert("web.apps.test", own.key.clone());
        table.insert("*.example.com", wild.key.clone());
        let serial = |k: Option<Arc<CertifiedKey>>| k.map(|k| k.cert[0].clone());
        assert_eq!(serial(table.lookup("web.apps.test")), serial(Some(own.key)));
        assert_eq!(
            serial(table.lookup("api.apps.test")),
            serial(Some(operator.key.clone()))
        );
        assert_eq!(
            serial(table.lookup("www.example.com")),
            serial(Some(wild.key))
        );
        assert!(table.lookup("other.test").is_none());
        assert!(table.lookup("a.b.apps.test").is_none());
        assert_eq!(serial(table.fallback()), serial(Some(operator.key)));
        table.remove("web.apps.test");
        assert_eq!(
            serial(table.lookup("web.apps.test")),
            serial(table.fallback()),
            "the operator's wildcard again"
        );
    }
}
