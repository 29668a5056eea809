//! HTTPS for the tests: a real ACME server (Pebble, from Debian, with
//! pebble-challtestsrv as its DNS answering 127.0.0.1 for every name),
//! and a verifying HTTPS client that says which certificate and protocol
//! it got.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// `n` free ports, none of them in `avoid` nor the same twice (ports are
/// held open while more are chosen).
pub fn distinct_ports(n: usize, avoid: &[u16]) -> Vec<u16> {
    let mut held = Vec::new();
    while held.len() < n {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        if !avoid.contains(&l.local_addr().unwrap().port()) {
            held.push(l);
        }
    }
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// A running Pebble and its DNS; both stopped on drop.
pub struct Pebble {
    dir: tempfile::TempDir,
    pebble: Child,
    dns: Child,
    /// Its ACME directory URL.
    pub directory: String,
    /// The root of Pebble's own HTTPS (for `--acme-ca-root`).
    pub ca_root: PathBuf,
    mgmt_port: u16,
}

fn need(binary: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(binary).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{binary} is not installed: these tests need Debian's `pebble` package (apt-get install pebble), as .ci/run installs"
    );
}

impl Pebble {
    /// Starts Pebble validating HTTP-01 on `http_port` and TLS-ALPN-01 on
    /// `tls_port` of 127.0.0.1, with its nonce rejection left on.
    pub fn start(http_port: u16, tls_port: u16) -> Pebble {
        need("pebble");
        need("pebble-challtestsrv");
        let dir = tempfile::tempdir().unwrap();
        // Pebble's HTTPS certificate, from a CA of the test's.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "hangar test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        let ca_root = dir.path().join("ca.pem");
        std::fs::write(&ca_root, ca.as_ref().pem()).unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
        let ports = distinct_ports(4, &[http_port, tls_port]);
        let (acme_port, mgmt_port, dns_port, dns_mgmt) = (ports[0], ports[1], ports[2], ports[3]);
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{acme_port}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
            "certificate": dir.path().join("cert.pem"),
            "privateKey": dir.path().join("key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false
        }});
        let config_path = dir.path().join("pebble.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let log = |name: &str| std::fs::File::create(dir.path().join(name)).unwrap();
        let dns = Command::new("pebble-challtestsrv")
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-management", &format!("127.0.0.1:{dns_mgmt}")])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(log("dns.log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("starting pebble-challtestsrv");
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .stdout(log("pebble.log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("starting pebble");
        let p = Pebble {
            directory: format!("https://127.0.0.1:{acme_port}/dir"),
            ca_root,
            mgmt_port,
            dir,
            pebble,
            dns,
        };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", acme_port)).is_err()
            || std::net::TcpStream::connect(("127.0.0.1", mgmt_port)).is_err()
        {
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "pebble did not listen within 15 s: {}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        p
    }

    /// Pebble's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    /// The root that signs what Pebble issues (it makes a new one per run).
    pub fn issuing_root(&self) -> String {
        let roots = [std::fs::read_to_string(&self.ca_root).unwrap()];
        let got = https_get(self.mgmt_port, "localhost", "/roots/0", &roots, false)
            .expect("fetching pebble's root");
        assert_eq!(got.status, 200, "{}", got.body);
        got.body
    }

    /// How many certificates Pebble issued (its log says each).
    pub fn issued(&self) -> usize {
        self.log().matches("Issued certificate serial").count()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.pebble.kill();
        let _ = self.dns.kill();
        let _ = self.pebble.wait();
        let _ = self.dns.wait();
    }
}

/// What an HTTPS request got.
#[derive(Debug)]
pub struct HttpsAnswer {
    pub status: u16,
    pub body: String,
    pub headers: http::HeaderMap,
    /// The protocol ALPN agreed on.
    pub alpn: Option<String>,
    /// The serving certificate's serial (hex).
    pub serial: String,
    /// Its issuer.
    pub issuer: String,
}

/// A client config trusting only `roots` (PEM).
pub fn client_config(roots: &[String], h2: bool) -> rustls::ClientConfig {
    let mut store = rustls::RootCertStore::empty();
    for pem in roots {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            store.add(cert.unwrap()).unwrap();
        }
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    cfg.alpn_protocols = if h2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    cfg
}

/// Connects to 127.0.0.1:`port` with SNI `host`, verifying the certificate
/// against `roots` for `host`: the TLS stream, or why not.
pub async fn connect(
    port: u16,
    host: &str,
    cfg: rustls::ClientConfig,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake for {host}: {e}"))
}

/// GET `path` of `host` over HTTPS on 127.0.0.1:`port`, trusting only
/// `roots`; offers h2 when `h2`.
pub fn https_get(
    port: u16,
    host: &str,
    path: &str,
    roots: &[String],
    h2: bool,
) -> Result<HttpsAnswer, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cfg = client_config(roots, h2);
        let fut = async {
            let tls = connect(port, host, cfg).await?;
            let (_, conn) = tls.get_ref();
            let alpn = conn
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned());
            let leaf = conn.peer_certificates().ok_or("no certificate")?[0].clone();
            let info = hangar_tls::certs::inspect(&leaf).map_err(|e| e.to_string())?;
            let authority = format!("{host}:{port}");
            let (status, headers, body) = if alpn.as_deref() == Some("h2") {
                let (mut send, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                        .await
                        .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                let req = http::Request::get(format!("https://{authority}{path}"))
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
                let (parts, body) = resp.into_parts();
                let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
                (parts.status, parts.headers, body)
            } else {
                let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                let req = http::Request::get(path)
                    .header(http::header::HOST, &authority)
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
                let (parts, body) = resp.into_parts();
                let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
                (parts.status, parts.headers, body)
            };
            Ok::<_, String>(HttpsAnswer {
                status: status.as_u16(),
                body: String::from_utf8_lossy(&body).into_owned(),
                headers,
                alpn,
                serial: info.serial,
                issuer: info.issuer,
            })
        };
        tokio::time::timeout(Duration::from_secs(40), fut)
            .await
            .unwrap_or_else(|_| Err("no answer within 40 s".to_owned()))
    })
}
