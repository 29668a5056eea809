//! A key-value cache: [`Cache`] is what apps call; Redis backs it on
//! Hangar (feature `redis`), memory backs it in a local run. Callers hold
//! an `Arc<dyn Cache>` and never see which.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{BoxFuture, Error, Result};

/// A key-value cache shared by every machine of the app (Redis) or, in a
/// local run, by the process (memory). Keys are the app's own: Hangar's
/// Redis user can reach nothing else, and the prefix is added for you.
pub trait Cache: Send + Sync + 'static {
    /// The value at `key`, if any (and not expired).
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>>;
    /// Sets `key` to `value`, expiring after `ttl` if given.
    fn set<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<()>>;
    /// Removes `key`; true if it was there.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool>>;
    /// Adds `by` to the integer at `key` (0 if absent) and returns the sum.
    fn incr<'a>(&'a self, key: &'a str, by: i64) -> BoxFuture<'a, Result<i64>>;
}

/// Values with their expiry.
type Entries = HashMap<String, (Vec<u8>, Option<Instant>)>;

/// The in-memory [`Cache`]: one process, nothing persisted.
#[derive(Debug, Default)]
pub struct MemoryCache {
    entries: Mutex<Entries>,
}

impl MemoryCache {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut Entries) -> T) -> T {
        let mut map = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        map.retain(|_, (_, exp)| exp.is_none_or(|e| e > now));
        f(&mut map)
    }
}

impl Cache for MemoryCache {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        let v = self.with(|m| m.get(key).map(|(v, _)| v.clone()));
        Box::pin(async move { Ok(v) })
    }

    fn set<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<()>> {
        self.with(|m| {
            m.insert(
                key.to_owned(),
                (value.to_vec(), ttl.map(|t| Instant::now() + t)),
            )
        });
        Box::pin(async { Ok(()) })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool>> {
        let had = self.with(|m| m.remove(key).is_some());
        Box::pin(async move { Ok(had) })
    }

    fn incr<'a>(&'a self, key: &'a str, by: i64) -> BoxFuture<'a, Result<i64>> {
        let out = self.with(|m| {
            let entry = m
                .entry(key.to_owned())
                .or_insert_with(|| (b"0".to_vec(), None));
            let n: i64 = std::str::from_utf8(&entry.0)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| Error::msg(format!("the value at {key:?} is not an integer")))?;
            let sum = n
                .checked_add(by)
                .ok_or_else(|| Error::msg(format!("incrementing {key:?} overflows")))?;
            entry.0 = sum.to_string().into_bytes();
            Ok(sum)
        });
        Box::pin(async move { out })
    }
}

/// The Redis [`Cache`]: the app's own Redis user, every key under the
/// app's prefix.
#[cfg(feature = "redis")]
#[derive(Clone)]
pub struct RedisCache {
    conn: redis::aio::ConnectionManager,
    prefix: String,
}

#[cfg(feature = "redis")]
impl RedisCache {
    /// Connects to `url` (with the app's user and password); keys get
    /// `prefix` in front.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self> {
        let client = redis::Client::open(url)
            .map_err(|e| Error::msg(format!("the app's Redis URL is not valid: {e}")))?;
        let conn = client
            .get_connection_manager()
            .await
            .map_err(|e| Error::msg(format!("cannot connect to the app's Redis: {e}")))?;
        Ok(RedisCache {
            conn,
            prefix: prefix.to_owned(),
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

#[cfg(feature = "redis")]
impl Cache for RedisCache {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            Ok(redis::cmd("GET")
                .arg(self.key(key))
                .query_async::<Option<Vec<u8>>>(&mut conn)
                .await?)
        })
    }

    fn set<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let mut cmd = redis::cmd("SET");
            cmd.arg(self.key(key)).arg(value);
            if let Some(ttl) = ttl {
                cmd.arg("PX").arg(ttl.as_millis().max(1) as u64);
            }
            cmd.query_async::<()>(&mut conn).await?;
            Ok(())
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let n = redis::cmd("DEL")
                .arg(self.key(key))
                .query_async::<i64>(&mut conn)
                .await?;
            Ok(n > 0)
        })
    }

    fn incr<'a>(&'a self, key: &'a str, by: i64) -> BoxFuture<'a, Result<i64>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            Ok(redis::cmd("INCRBY")
                .arg(self.key(key))
                .arg(by)
                .query_async::<i64>(&mut conn)
                .await?)
        })
    }
}

/// What a `#[Redis]` parameter can be.
pub trait FromRedis: Sized {
    /// Hangar's Redis for this app (`None` in a local run without one).
    fn from_redis(
        redis: Option<(String, String)>,
    ) -> impl std::future::Future<Output = Result<Self>> + Send;
}

impl FromRedis for Arc<dyn Cache> {
    async fn from_redis(redis: Option<(String, String)>) -> Result<Self> {
        match redis {
            None => {
                eprintln!(
                    "hangar-runtime: no Redis provisioned (a local run): using an in-memory cache"
                );
                Ok(Arc::new(MemoryCache::new()))
            }
            #[cfg(feature = "redis")]
            Some((url, prefix)) => Ok(Arc::new(RedisCache::connect(&url, &prefix).await?)),
            #[cfg(not(feature = "redis"))]
            Some(_) => Err(Error::msg(
                "Hangar provisioned Redis for this app, but hangar-runtime was built without \
                 its `redis` feature: add features = [\"redis\"] to the dependency",
            )),
        }
    }
}

/// The connection URL (with the app's user and password), for apps that
/// bring their own client: the user may touch only keys and channels that
/// start with the app's name and `:` (`$FLY_APP_NAME:`).
impl FromRedis for String {
    async fn from_redis(redis: Option<(String, String)>) -> Result<Self> {
        match redis {
            Some((url, _prefix)) => Ok(url),
            None => Err(Error::msg(
                "no Redis was provisioned for this app: deploy it with `hangar deploy`, \
                 or take an Arc<dyn Cache> to get an in-memory cache in local runs",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_cache_sets_expires_counts_and_deletes() {
        let c: Arc<dyn Cache> = Arc::new(MemoryCache::new());
        assert_eq!(c.get("a").await.unwrap(), None);
        c.set("a", b"1", None).await.unwrap();
        assert_eq!(c.get("a").await.unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(c.incr("a", 41).await.unwrap(), 42);
        assert_eq!(c.incr("new", -2).await.unwrap(), -2);
        c.set("t", b"x", Some(Duration::from_millis(20)))
            .await
            .unwrap();
        assert!(c.get("t").await.unwrap().is_some());
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(c.get("t").await.unwrap(), None);
        c.set("s", b"text", None).await.unwrap();
        assert!(c.incr("s", 1).await.is_err());
        assert!(c.delete("a").await.unwrap());
        assert!(!c.delete("a").await.unwrap());
    }
}
