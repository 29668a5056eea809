//! Connection caps for Hangar's listeners (API, proxy): at most `total`
//! connections at once, and at most `per_client` from one address, so one
//! client holding thousands of silent connections cannot use up the file
//! descriptors every other client needs. [`PerOwner`] caps work the same
//! way by owner (an org): uploads being checked, images being imported.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// How many connections a listener holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// All clients together.
    pub total: usize,
    /// One client address.
    pub per_client: usize,
}

/// The open connections of one listener (or several sharing the caps).
#[derive(Debug)]
pub struct Admission {
    limits: ConnLimits,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_client: HashMap<IpAddr, usize>,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Admitted {
    admission: Arc<Admission>,
    client: IpAddr,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The listener holds `total` connections.
    Full,
    /// This client holds `per_client`.
    ClientFull,
}

impl Admission {
    pub fn new(limits: ConnLimits) -> Arc<Admission> {
        Arc::new(Admission {
            limits,
            open: Mutex::new(Open::default()),
        })
    }

    /// Takes a place for a connection from `client`.
    pub fn admit(self: &Arc<Self>, client: IpAddr) -> Result<Admitted, Refused> {
        let client = client.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.total >= self.limits.total {
            return Err(Refused::Full);
        }
        let mine = open.by_client.entry(client).or_default();
        if *mine >= self.limits.per_client {
            return Err(Refused::ClientFull);
        }
        *mine += 1;
        open.total += 1;
        Ok(Admitted {
            admission: Arc::clone(self),
            client,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self
            .admission
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                open.by_client.remove(&self.client);
            }
        }
    }
}

/// How many pieces of one kind of work each owner (an org) runs at once;
/// cheap to clone (clones share the counts).
#[derive(Debug, Clone, Default)]
pub struct PerOwner {
    running: Arc<Mutex<HashMap<String, usize>>>,
}

/// One owner's place, held for the whole piece of work; dropping it frees
/// the place.
#[derive(Debug)]
pub struct OwnerSlot {
    running: Arc<Mutex<HashMap<String, usize>>>,
    owner: String,
}

impl PerOwner {
    /// Takes one of `owner`'s places, or says how many it runs when it
    /// already runs `limit`.
    pub fn take(&self, owner: &str, limit: usize) -> Result<OwnerSlot, usize> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let n = running.entry(owner.to_owned()).or_default();
        if *n >= limit {
            let now = *n;
            if now == 0 {
                running.remove(owner);
            }
            return Err(now);
        }
        *n += 1;
        Ok(OwnerSlot {
            running: self.running.clone(),
            owner: owner.to_owned(),
        })
    }

    /// How many owners run something now (an owner whose work all ended
    /// is forgotten, so the map never grows with owners that come and go).
    pub fn owners(&self) -> usize {
        self.running.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Drop for OwnerSlot {
    fn drop(&mut self) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = running.get_mut(&self.owner) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                running.remove(&self.owner);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_capped_apart_and_places_come_back_on_drop() {
        let per = PerOwner::default();
        let a1 = per.take("org_a", 2).unwrap();
        let _a2 = per.clone().take("org_a", 2).unwrap();
        assert_eq!(per.take("org_a", 2).unwrap_err(), 2, "clones share counts");
        let _b = per.take("org_b", 2).unwrap();
        drop(a1);
        let a3 = per.take("org_a", 2).unwrap();
        assert_eq!(per.take("org_c", 0).unwrap_err(), 0);
        assert_eq!(per.owners(), 2);
        drop((a3, _a2, _b));
        assert_eq!(per.owners(), 0, "owners with nothing running are forgotten");
    }

    #[test]
    fn caps_per_client_and_in_total_and_frees_on_drop() {
        let a = Admission::new(ConnLimits {
            total: 3,
            per_client: 2,
        });
        let one: IpAddr = "127.0.0.2".parse().unwrap();
        let two: IpAddr = "127.0.0.3".parse().unwrap();
        let x = a.admit(one).unwrap();
        let _y = a.admit(one).unwrap();
        assert_eq!(a.admit(one).unwrap_err(), Refused::ClientFull);
        // The same client over IPv4-mapped IPv6 is the same client.
        assert_eq!(
            a.admit("::ffff:127.0.0.2".parse().unwrap()).unwrap_err(),
            Refused::ClientFull
        );
        let _z = a.admit(two).unwrap();
        assert_eq!(a.admit(two).unwrap_err(), Refused::Full);
        drop(x);
        assert_eq!(a.open(), 2);
        a.admit(one).unwrap();
        assert_eq!(a.open(), 2, "the admitted guard was dropped at once");
    }
}
