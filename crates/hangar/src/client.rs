//! A small HTTP/1.1 client for Hangar's API (hyper-util; no TLS yet).

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
    /// Pooled HTTP client.
    http: Client<HttpConnector, Full<Bytes>>,
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
    pub fn new(base: &str, token: &str) -> Api {
        Api {
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            http: Client::builder(TokioExecutor::new()).build_http(),
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
                "cannot reach the Hangar API at {}: {e} (is `hangar up` running?)",
                self.base
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

/// GET `url` (plain HTTP) and return status and body. Hosts under
/// `.localhost` are reached on 127.0.0.1 with the Host header kept, as
/// RFC 6761 lets any client do.
pub async fn get_url(url: &str) -> Result<(StatusCode, Bytes)> {
    let uri: http::Uri = url.parse().with_context(|| format!("bad URL {url}"))?;
    let host = uri.host().unwrap_or("localhost").to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
    let connect_host = if host == "localhost" || host.ends_with(".localhost") {
        "127.0.0.1".to_owned()
    } else {
        host.clone()
    };
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let target = format!("http://{connect_host}:{port}{path}");
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let req = Request::builder()
        .uri(target)
        .header(header::HOST, authority)
        .body(Full::new(Bytes::new()))?;
    let resp = client.request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}
