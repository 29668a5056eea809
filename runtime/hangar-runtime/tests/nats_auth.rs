//! `NatsPubSub` sends the user and password of its URL: Hangar's own NATS
//! gives each app `nats://<user>:<password>@127.0.0.1:<port>` and refuses
//! connections without them. Runs its own `nats-server` (with
//! `--features nats`; it must be installed).

#[cfg(feature = "nats")]
mod real {
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use hangar_runtime::{NatsPubSub, PubSub};

    /// Kills the server when the test ends, passed or not.
    struct Server(Child);

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn nats_server() -> PathBuf {
        ["/usr/sbin", "/usr/bin", "/usr/local/bin"]
            .iter()
            .map(|d| Path::new(d).join("nats-server"))
            .chain(
                std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                    .map(|d| d.join("nats-server")),
            )
            .find(|p| p.is_file())
            .expect("this test needs nats-server installed (apt-get install nats-server)")
    }

    fn start(dir: &Path) -> (Server, u16) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = dir.join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: \"127.0.0.1:{port}\"\n\
                 authorization {{ users = [ {{ user: \"hangar_rt\", password: \"s3cret\", \
                 permissions: {{ publish: [\"hangar.rt.>\"], subscribe: [\"hangar.rt.>\"] }} }} ] }}\n"
            ),
        )
        .unwrap();
        let child = Command::new(nats_server())
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = Server(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        (server, port)
    }

    #[tokio::test]
    async fn the_urls_user_and_password_are_sent() {
        let dir = std::env::temp_dir().join(format!("hangar-rt-nats-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (_server, port) = start(&dir);
        let url = format!("nats://hangar_rt:s3cret@127.0.0.1:{port}");
        let a: Arc<dyn PubSub> = Arc::new(NatsPubSub::connect(&url, "hangar.rt.").await.unwrap());
        let mut sub = a.subscribe("orders.>").await.unwrap();
        a.publish("orders.created", b"1").await.unwrap();
        let m = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("delivered within 5 s")
            .unwrap();
        assert_eq!(
            (m.topic.as_str(), &m.payload[..]),
            ("orders.created", &b"1"[..])
        );

        // A wrong password is refused, and the message does not repeat it.
        let wrong = format!("nats://hangar_rt:nottheone@127.0.0.1:{port}");
        let e = NatsPubSub::connect(&wrong, "hangar.rt.")
            .await
            .err()
            .expect("refused");
        let text = e.to_string();
        assert!(!text.contains("nottheone"), "{text}");
        assert!(text.contains("hangar_rt:***@127.0.0.1"), "{text}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
