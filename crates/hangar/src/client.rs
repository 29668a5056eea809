//! A small HTTP/1.1 client for Hangar's API (hyper-util, over TLS by
//! hyper-rustls when the URL is https; see [`crate::tls_client`] for trust).

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// A client bound to one API and token.
#[derive(Clone)]
pub struct Api {
    /// Base URL without a trailing slash.
    base: String,
    /// Bearer token sent with every request.
    token: String,
    /// Pooled HTTP(S) client.
    http: Client<Connector, Full<Bytes>>,
}

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// A connector for http and https URLs, trusting as `tls` says.
fn connector(tls: rustls::ClientConfig) -> Connector {
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build()
}

/// An API answer that was not a success.
#[derive(Debug)]
pub struct ApiFailure {
    /// The HTTP status of the answer.
    pub status: StatusCode,
    /// The server's `error` message (or its raw body).
    pub message: String,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.status)
    }
}

impl std::error::Error for ApiFailure {}

impl ApiFailure {
    /// From an error answer: its `{"error": "..."}` message, else its body.
    fn from_answer(status: StatusCode, body: &[u8]) -> ApiFailure {
        let message = serde_json::from_slice::<hangar_api_types::ErrorBody>(body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(body).trim().to_owned());
        ApiFailure { status, message }
    }
}

impl Api {
    /// A client of the API at `base`, trusting its certificate (https) as
    /// `tls` says.
    pub fn new(base: &str, token: &str, tls: rustls::ClientConfig) -> Api {
        Api {
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            http: Client::builder(TokioExecutor::new()).build(connector(tls)),
        }
    }

    /// The API's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        content_type: &str,
    ) -> Result<hyper::Response<hyper::body::Incoming>> {
        let url = format!("{}{path}", self.base);
        let req = Request::builder()
            .method(method)
            .uri(&url)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(header::CONTENT_TYPE, content_type)
            .body(Full::new(body))
            .with_context(|| format!("bad URL {url}"))?;
        self.http.request(req).await.map_err(|e| {
            anyhow!(
                "cannot reach the Hangar API at {}: {} (is `hangar up` running there, and trusted?)",
                self.base,
                causes(&e)
            )
        })
    }

    /// Sends a request and returns the JSON answer; a non-2xx answer becomes
    /// an [`ApiFailure`] carrying the server's message.
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        content_type: &str,
    ) -> Result<Value> {
        let resp = self.send(method, path, body, content_type).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            return Err(ApiFailure::from_answer(status, &bytes).into());
        }
        serde_json::from_slice(&bytes).context("the API answered with invalid JSON")
    }

    /// Like [`Api::json`], with the answer read into the wire type `T`
    /// (one of `hangar_api_types`).
    pub async fn json_as<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        content_type: &str,
    ) -> Result<T> {
        let what = format!("{method} {path}");
        let value = self.json(method, path, body, content_type).await?;
        serde_json::from_value(value)
            .with_context(|| format!("the API's answer to {what} is not what this CLI expects"))
    }

    /// Sends `body` as JSON and reads the answer into `T`.
    pub async fn send_json_as<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<T> {
        let body = serde_json::to_vec(body).context("encoding the request body")?;
        self.json_as(method, path, body.into(), "application/json")
            .await
    }

    /// GET `path`, read into `T`.
    pub async fn get_as<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.json_as(Method::GET, path, Bytes::new(), "application/json")
            .await
    }

    /// DELETE `path`, read into `T`.
    pub async fn delete_as<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.json_as(Method::DELETE, path, Bytes::new(), "application/json")
            .await
    }

    /// Streams a text body, handing each chunk to `on_chunk`, until it ends.
    pub async fn stream(&self, path: &str, mut on_chunk: impl FnMut(&[u8])) -> Result<()> {
        let resp = self
            .send(Method::GET, path, Bytes::new(), "application/json")
            .await?;
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            let bytes = body.collect().await?.to_bytes();
            bail!(ApiFailure::from_answer(status, &bytes));
        }
        while let Some(frame) = body.frame().await {
            let frame = frame.context("the stream broke")?;
            if let Some(data) = frame.data_ref() {
                on_chunk(data);
            }
        }
        Ok(())
    }
}

/// An error and its causes on one line: hyper's say only "client error
/// (Connect)" at the top, the TLS or socket reason below.
pub fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        next = cause.source();
    }
    text
}

/// GET `url` (http or https, trusted as `tls` says) and return status and
/// body. Hosts under `.localhost` are reached on 127.0.0.1 with the Host
/// header (and SNI) kept, as RFC 6761 lets any client do.
pub async fn get_url(url: &str, tls: rustls::ClientConfig) -> Result<(StatusCode, Bytes)> {
    let uri: http::Uri = url.parse().with_context(|| format!("bad URL {url}"))?;
    let host = uri.host().unwrap_or("localhost").to_owned();
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let local = host == "localhost" || host.ends_with(".localhost");
    let target = format!(
        "{}://{host}:{port}{path}",
        if https { "https" } else { "http" }
    );
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(LocalhostConnector { inner: http, local });
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let req = Request::builder()
        .uri(target)
        .header(header::HOST, authority)
        .body(Full::new(Bytes::new()))?;
    let resp = client
        .request(req)
        .await
        .map_err(|e| anyhow!("{}", causes(&e)))?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// Connects names under `.localhost` to 127.0.0.1 (the resolver may not
/// know them), everything else as asked.
#[derive(Clone)]
struct LocalhostConnector {
    inner: HttpConnector,
    local: bool,
}

impl tower_service::Service<http::Uri> for LocalhostConnector {
    type Response = <HttpConnector as tower_service::Service<http::Uri>>::Response;
    type Error = <HttpConnector as tower_service::Service<http::Uri>>::Error;
    type Future = <HttpConnector as tower_service::Service<http::Uri>>::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        if !self.local {
            return self.inner.call(uri);
        }
        let port = uri.port_u16().unwrap_or(80);
        let scheme = uri.scheme_str().unwrap_or("http");
        let loopback = format!("{scheme}://127.0.0.1:{port}/")
            .parse()
            .unwrap_or(uri);
        self.inner.call(loopback)
    }
}
