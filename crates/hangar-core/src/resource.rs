//! Resources an app declares in its code and Hangar provisions for it.

use std::fmt;
use std::str::FromStr;

/// A kind of resource an app can declare on a parameter of its `main`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceKind {
    /// A Postgres database and a role of its own.
    Postgres,
    /// The app's secrets (`hangar secrets set`).
    Secrets,
    /// A Redis user of its own, limited to the app's key prefix.
    Redis,
    /// Publish/subscribe on NATS, under the app's subject prefix.
    PubSub,
}

impl ResourceKind {
    /// Every kind, in display order.
    pub const ALL: [ResourceKind; 4] = [
        ResourceKind::Postgres,
        ResourceKind::Redis,
        ResourceKind::PubSub,
        ResourceKind::Secrets,
    ];

    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Postgres => "postgres",
            ResourceKind::Secrets => "secrets",
            ResourceKind::Redis => "redis",
            ResourceKind::PubSub => "pubsub",
        }
    }

    /// The kind an attribute names by its last path segment
    /// (`#[hangar_runtime::Postgres]`, `#[shuttle_shared_db::Postgres]`,
    /// `#[hangar_runtime::Redis]`, `#[hangar_runtime::PubSub]`).
    pub fn from_attribute(last_segment: &str) -> Option<ResourceKind> {
        match last_segment {
            "Postgres" => Some(ResourceKind::Postgres),
            "Secrets" => Some(ResourceKind::Secrets),
            "Redis" => Some(ResourceKind::Redis),
            "PubSub" => Some(ResourceKind::PubSub),
            _ => None,
        }
    }
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ResourceKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ResourceKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown resource kind {s:?}"))
    }
}
