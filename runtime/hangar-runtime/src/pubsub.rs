//! Publish/subscribe: [`PubSub`] is what apps call; NATS backs it on
//! Hangar (feature `nats`), memory backs it in a local run.
//!
//! Topics are dot-separated tokens (`orders.created`); a subscription may
//! use `*` for one token and a final `>` for one or more. Delivery is at
//! most once, to the subscribers present when a message is published, and
//! a subscriber that falls more than [`BUFFER`] messages behind loses
//! messages rather than slowing publishers down.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::{BoxFuture, Error, Result};

/// Messages a subscription holds before it starts dropping them.
pub const BUFFER: usize = 1024;

/// A message as a subscriber gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic it was published on (without Hangar's prefix).
    pub topic: String,
    pub payload: Vec<u8>,
}

/// Messages on the topics one `subscribe` asked for; dropping it
/// unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::Receiver<Message>,
}

impl Subscription {
    /// The next message; `None` once the connection is gone for good.
    pub async fn next(&mut self) -> Option<Message> {
        self.rx.recv().await
    }
}

/// Publish/subscribe between the machines of the app (NATS) or, in a
/// local run, within the process (memory).
pub trait PubSub: Send + Sync + 'static {
    /// Publishes `payload` on `topic` (no wildcards).
    fn publish<'a>(&'a self, topic: &'a str, payload: &'a [u8]) -> BoxFuture<'a, Result<()>>;
    /// Subscribes to `pattern` (wildcards allowed).
    fn subscribe<'a>(&'a self, pattern: &'a str) -> BoxFuture<'a, Result<Subscription>>;
}

/// Checks a topic (`wildcards`: for subscriptions).
pub fn check_topic(topic: &str, wildcards: bool) -> Result<()> {
    let tokens: Vec<&str> = topic.split('.').collect();
    let last = tokens.len() - 1;
    for (i, t) in tokens.iter().enumerate() {
        let ok = !t.is_empty()
            && !t.chars().any(|c| c.is_whitespace() || c.is_control())
            && match *t {
                "*" => wildcards,
                ">" => wildcards && i == last,
                t => !t.contains(['*', '>']),
            };
        if !ok {
            return Err(Error::msg(format!(
                "invalid topic {topic:?}: use dot-separated tokens without spaces{}",
                if wildcards {
                    ", `*` for one token and a final `>` for the rest"
                } else {
                    ", and no wildcards when publishing"
                }
            )));
        }
    }
    Ok(())
}

/// Whether `topic` matches the subscription `pattern`.
pub fn matches(pattern: &str, topic: &str) -> bool {
    let mut p = pattern.split('.');
    let mut t = topic.split('.');
    loop {
        match (p.next(), t.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

type Subscribers = Vec<(String, mpsc::Sender<Message>)>;

/// The in-memory [`PubSub`]: one process.
#[derive(Debug, Default, Clone)]
pub struct MemoryPubSub {
    subscribers: Arc<Mutex<Subscribers>>,
}

impl MemoryPubSub {
    pub fn new() -> Self {
        Self::default()
    }
}

impl PubSub for MemoryPubSub {
    fn publish<'a>(&'a self, topic: &'a str, payload: &'a [u8]) -> BoxFuture<'a, Result<()>> {
        let out = check_topic(topic, false).map(|()| {
            let mut subs = self
                .subscribers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            subs.retain(|(_, tx)| !tx.is_closed());
            for (pattern, tx) in subs.iter() {
                if matches(pattern, topic) {
                    // Full: this subscriber is too slow; it loses this one.
                    let _ = tx.try_send(Message {
                        topic: topic.to_owned(),
                        payload: payload.to_vec(),
                    });
                }
            }
        });
        Box::pin(async move { out })
    }

    fn subscribe<'a>(&'a self, pattern: &'a str) -> BoxFuture<'a, Result<Subscription>> {
        let out = check_topic(pattern, true).map(|()| {
            let (tx, rx) = mpsc::channel(BUFFER);
            self.subscribers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((pattern.to_owned(), tx));
            Subscription { rx }
        });
        Box::pin(async move { out })
    }
}

/// The NATS [`PubSub`]: every topic under the app's subject prefix.
#[cfg(feature = "nats")]
#[derive(Clone)]
pub struct NatsPubSub {
    client: async_nats::Client,
    prefix: String,
}

#[cfg(feature = "nats")]
impl NatsPubSub {
    /// Connects to the NATS server at `url`; subjects get `prefix` in front.
    /// A user and password in the URL (`nats://user:pass@host:port`, as
    /// Hangar's own NATS gives each app) are sent when connecting: a bare
    /// `async_nats::connect` would ignore them.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self> {
        let shown = without_password(url);
        let addr: async_nats::ServerAddr = url
            .parse()
            .map_err(|e| Error::msg(format!("bad NATS URL {shown}: {e}")))?;
        let options = match (addr.username(), addr.password()) {
            (Some(user), Some(pass)) => async_nats::ConnectOptions::with_user_and_password(
                percent_decoded(user),
                percent_decoded(pass),
            ),
            (Some(token), None) => async_nats::ConnectOptions::with_token(percent_decoded(token)),
            _ => async_nats::ConnectOptions::new(),
        };
        let client = options
            .connect(addr)
            .await
            .map_err(|e| Error::msg(format!("cannot connect to NATS at {shown}: {e}")))?;
        Ok(NatsPubSub {
            client,
            prefix: prefix.to_owned(),
        })
    }
}

/// `url` with the password (or token) in its user info replaced by `***`,
/// for messages.
#[cfg(feature = "nats")]
fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***"),
                None => "***".to_owned(),
            };
            format!("{scheme}://{user}@{host}{tail}")
        }
        None => url.to_owned(),
    }
}

/// `%XX` escapes in a URL's user info decoded.
#[cfg(feature = "nats")]
fn percent_decoded(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(feature = "nats")]
impl PubSub for NatsPubSub {
    fn publish<'a>(&'a self, topic: &'a str, payload: &'a [u8]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            check_topic(topic, false)?;
            self.client
                .publish(format!("{}{topic}", self.prefix), payload.to_vec().into())
                .await
                .map_err(|e| Error::msg(format!("publishing on {topic}: {e}")))?;
            // Written out before returning, so a publish that returned
            // reached the server.
            self.client
                .flush()
                .await
                .map_err(|e| Error::msg(format!("publishing on {topic}: {e}")))?;
            Ok(())
        })
    }

    fn subscribe<'a>(&'a self, pattern: &'a str) -> BoxFuture<'a, Result<Subscription>> {
        Box::pin(async move {
            use futures_util::StreamExt;
            check_topic(pattern, true)?;
            let mut sub = self
                .client
                .subscribe(format!("{}{pattern}", self.prefix))
                .await
                .map_err(|e| Error::msg(format!("subscribing to {pattern}: {e}")))?;
            // The subscription is registered once the server has seen it.
            self.client
                .flush()
                .await
                .map_err(|e| Error::msg(format!("subscribing to {pattern}: {e}")))?;
            let (tx, rx) = mpsc::channel(BUFFER);
            let prefix = self.prefix.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        msg = sub.next() => {
                            let Some(msg) = msg else { break };
                            let subject: &str = &msg.subject;
                            let topic = subject.strip_prefix(&prefix).unwrap_or(subject).to_owned();
                            let _ = tx.try_send(Message { topic, payload: msg.payload.to_vec() });
                        }
                        _ = tx.closed() => break,
                    }
                }
                let _ = sub.unsubscribe().await;
            });
            Ok(Subscription { rx })
        })
    }
}

/// What a `#[PubSub]` parameter can be.
pub trait FromPubSub: Sized {
    /// Hangar's NATS for this app, as (url, prefix) (`None` in a local run).
    fn from_pubsub(
        nats: Option<(String, String)>,
    ) -> impl std::future::Future<Output = Result<Self>> + Send;
}

impl FromPubSub for Arc<dyn PubSub> {
    async fn from_pubsub(nats: Option<(String, String)>) -> Result<Self> {
        match nats {
            None => {
                eprintln!(
                    "hangar-runtime: no NATS provisioned (a local run): using in-process pub/sub"
                );
                Ok(Arc::new(MemoryPubSub::new()))
            }
            #[cfg(feature = "nats")]
            Some((url, prefix)) => Ok(Arc::new(NatsPubSub::connect(&url, &prefix).await?)),
            #[cfg(not(feature = "nats"))]
            Some(_) => Err(Error::msg(
                "Hangar provisioned PubSub for this app, but hangar-runtime was built without \
                 its `nats` feature: add features = [\"nats\"] to the dependency",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_and_wildcards() {
        assert!(check_topic("orders.created", false).is_ok());
        for bad in ["", "a..b", "a b", "a.*", "a.>", ".a", "a."] {
            assert!(check_topic(bad, false).is_err(), "{bad}");
        }
        assert!(check_topic("a.*.c", true).is_ok());
        assert!(check_topic("a.>", true).is_ok());
        assert!(check_topic("a.>.c", true).is_err());
        assert!(check_topic("a.b*", true).is_err());
        assert!(matches("a.*.c", "a.b.c"));
        assert!(!matches("a.*.c", "a.b.d"));
        assert!(matches("a.>", "a.b.c"));
        assert!(!matches("a.>", "a"));
        assert!(!matches("a.b", "a.b.c"));
        assert!(matches("a.b", "a.b"));
    }

    #[tokio::test]
    async fn memory_pubsub_delivers_to_matching_subscribers_only() {
        let bus: Arc<dyn PubSub> = Arc::new(MemoryPubSub::new());
        let mut all = bus.subscribe("orders.>").await.unwrap();
        let mut created = bus.subscribe("orders.created").await.unwrap();
        let dropped = bus.subscribe("orders.*").await.unwrap();
        drop(dropped);
        bus.publish("orders.created", b"1").await.unwrap();
        bus.publish("orders.paid", b"2").await.unwrap();
        bus.publish("users.created", b"3").await.unwrap();
        assert!(bus.publish("orders.*", b"x").await.is_err());
        let m = all.next().await.unwrap();
        assert_eq!(
            (m.topic.as_str(), &m.payload[..]),
            ("orders.created", &b"1"[..])
        );
        assert_eq!(all.next().await.unwrap().topic, "orders.paid");
        assert_eq!(created.next().await.unwrap().payload, b"1");
        assert!(
            created.rx.try_recv().is_err(),
            "orders.paid is not orders.created"
        );
    }
}
