//! The Redis and NATS backends against the real servers (Redis at
//! 127.0.0.1:6379, NATS at 127.0.0.1:4222). Run with `--all-features`;
//! without the features there is nothing to test here and the test says so.

#[cfg(not(all(feature = "redis", feature = "nats")))]
#[test]
fn backends_need_features() {
    panic!("run these tests with --all-features (the redis and nats backends)");
}

#[cfg(all(feature = "redis", feature = "nats"))]
mod real {
    use std::sync::Arc;
    use std::time::Duration;

    use hangar_runtime::{Cache, NatsPubSub, PubSub, RedisCache};

    #[tokio::test]
    async fn redis_cache_keeps_keys_under_the_prefix() {
        let prefix = format!("rt-{}:", std::process::id());
        let cache: Arc<dyn Cache> = Arc::new(
            RedisCache::connect("redis://127.0.0.1:6379/", &prefix)
                .await
                .expect("this test needs Redis at 127.0.0.1:6379"),
        );
        cache.set("greeting", b"hi", None).await.unwrap();
        assert_eq!(
            cache.get("greeting").await.unwrap().as_deref(),
            Some(&b"hi"[..])
        );
        assert_eq!(cache.incr("n", 2).await.unwrap(), 2);
        assert_eq!(cache.incr("n", 3).await.unwrap(), 5);
        cache
            .set("short", b"x", Some(Duration::from_millis(50)))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(cache.get("short").await.unwrap(), None);
        // The key really lives under the prefix.
        let raw = RedisCache::connect("redis://127.0.0.1:6379/", "")
            .await
            .unwrap();
        let key = format!("{prefix}greeting");
        assert_eq!(raw.get(&key).await.unwrap().as_deref(), Some(&b"hi"[..]));
        assert_eq!(raw.get("greeting").await.unwrap(), None);
        assert!(cache.delete("greeting").await.unwrap());
        assert!(cache.delete("n").await.unwrap());
        assert!(!cache.delete("greeting").await.unwrap());
    }

    #[tokio::test]
    async fn nats_pubsub_delivers_within_the_prefix_only() {
        let url = "nats://127.0.0.1:4222";
        let pid = std::process::id();
        let (pa, pb) = (format!("hangar.rt-a-{pid}."), format!("hangar.rt-b-{pid}."));
        let a1: Arc<dyn PubSub> = Arc::new(
            NatsPubSub::connect(url, &pa)
                .await
                .expect("this test needs NATS at 127.0.0.1:4222"),
        );
        let a2: Arc<dyn PubSub> = Arc::new(NatsPubSub::connect(url, &pa).await.unwrap());
        let b: Arc<dyn PubSub> = Arc::new(NatsPubSub::connect(url, &pb).await.unwrap());
        let mut sub = a2.subscribe("orders.>").await.unwrap();
        let mut other = b.subscribe("orders.>").await.unwrap();
        a1.publish("orders.created", b"1").await.unwrap();
        let m = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("delivered within 5 s")
            .unwrap();
        assert_eq!(m.topic, "orders.created");
        assert_eq!(m.payload, b"1");
        assert!(
            tokio::time::timeout(Duration::from_millis(300), other.next())
                .await
                .is_err(),
            "another app's subscriber got the message"
        );
        assert!(a1.publish("orders.*", b"x").await.is_err());
    }
}
