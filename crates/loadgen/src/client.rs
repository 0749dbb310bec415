//! HTTP/1.1 mechanics: the target URL, one keep-alive hyper connection per worker (with
//! TCP_NODELAY), turning a [`Call`] into a request, and the two setup calls a run makes
//! before the load starts (`GET /readyz`, `POST /admin/tenants`).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::scenario::{Call, EVENT_TYPES};

/// A client's end of one HTTP/1.1 connection.
pub type Connection = SendRequest<Full<Bytes>>;

/// Where the server is: resolved once, so the hot loop never touches DNS.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    host: HeaderValue,
    /// Any path the URL had, without its trailing slash; prefixed to every endpoint.
    base_path: String,
}

impl Target {
    /// Parses an `http://host[:port][/prefix]` URL and resolves its host.
    ///
    /// # Errors
    /// Not an `http` URL, or the host does not resolve.
    pub async fn resolve(url: &str) -> anyhow::Result<Self> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("{url:?} is not a URL"))?;
        if uri.scheme_str() != Some("http") {
            bail!("only http:// URLs are supported (no TLS), got {url:?}");
        }
        let authority = uri
            .authority()
            .with_context(|| format!("{url:?} has no host"))?;
        let port = authority.port_u16().unwrap_or(80);
        let addr = tokio::net::lookup_host((authority.host(), port))
            .await
            .with_context(|| format!("cannot resolve {}", authority.host()))?
            .next()
            .with_context(|| format!("{} resolves to no address", authority.host()))?;
        Ok(Self {
            addr,
            host: HeaderValue::from_str(authority.as_str())?,
            base_path: uri.path().trim_end_matches('/').to_owned(),
        })
    }

    /// The URI of `path` (which starts with `/`) on this server.
    fn uri(&self, path: &str) -> anyhow::Result<Uri> {
        let full = format!("{}{path}", self.base_path);
        full.parse()
            .with_context(|| format!("{full:?} is not a valid request path"))
    }
}

/// Opens a connection with TCP_NODELAY and drives it on its own task.
///
/// # Errors
/// The TCP connect or the HTTP handshake fails.
pub async fn connect(addr: SocketAddr) -> std::io::Result<Connection> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    // A failed connection shows up in the next `send_request`, where it is counted.
    tokio::spawn(connection);
    Ok(sender)
}

/// Everything needed to turn a [`Call`] into a request, built once per run.
#[derive(Debug, Clone)]
pub struct Requests {
    host: HeaderValue,
    authorization: HeaderValue,
    json: HeaderValue,
    user_agent: HeaderValue,
    single: Uri,
    batch: Uri,
    /// One search URI per entry of [`EVENT_TYPES`] (the same one for each, given a query).
    searches: Vec<Uri>,
}

impl Requests {
    /// # Errors
    /// The API key cannot go in a header, or the URL prefix makes an invalid path.
    pub fn new(target: &Target, api_key: &str, search_query: Option<&str>) -> anyhow::Result<Self> {
        let searches = EVENT_TYPES
            .iter()
            .map(|kind| match search_query {
                Some(query) => target.uri(&format!("/v1/events?{query}")),
                None => target.uri(&format!("/v1/events?event_type={kind}&limit=100")),
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            host: target.host.clone(),
            authorization: bearer(api_key)?,
            json: HeaderValue::from_static("application/json"),
            user_agent: HeaderValue::from_static(concat!(
                "pulsestream-bench/",
                env!("CARGO_PKG_VERSION")
            )),
            single: target.uri("/v1/events")?,
            batch: target.uri("/v1/events/batch")?,
            searches,
        })
    }

    /// The request for `call`; cheap: bodies and headers are reference-counted.
    pub fn build(&self, call: Call) -> Request<Full<Bytes>> {
        let (method, uri, body) = match call {
            Call::Single(body) => (Method::POST, &self.single, Some(body)),
            Call::Batch { body, .. } => (Method::POST, &self.batch, Some(body)),
            Call::Search(kind) => (Method::GET, &self.searches[kind], None),
        };
        let has_body = body.is_some();
        let mut request = Request::new(Full::new(body.unwrap_or_default()));
        *request.method_mut() = method;
        *request.uri_mut() = uri.clone();
        let headers = request.headers_mut();
        headers.insert(header::HOST, self.host.clone());
        headers.insert(header::AUTHORIZATION, self.authorization.clone());
        headers.insert(header::USER_AGENT, self.user_agent.clone());
        if has_body {
            headers.insert(header::CONTENT_TYPE, self.json.clone());
        }
        request
    }
}

fn bearer(token: &str) -> anyhow::Result<HeaderValue> {
    let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
        .context("the token cannot be sent in an HTTP header")?;
    value.set_sensitive(true);
    Ok(value)
}

/// A failure below HTTP: no answer with a status came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportError {
    /// The TCP connect or handshake failed.
    Connect,
    /// The connection was closed or reset before the answer came.
    Closed,
    /// No answer within `--timeout`.
    Timeout,
    /// The answer's body could not be read to its end.
    Body,
    /// Any other HTTP protocol error.
    Protocol,
}

impl TransportError {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Closed => "closed",
            Self::Timeout => "timeout",
            Self::Body => "body",
            Self::Protocol => "protocol",
        }
    }
}

/// Sends `request` and reads the whole answer, keeping the connection reusable.
///
/// # Errors
/// A [`TransportError`] for anything that is not an HTTP answer; the connection is then
/// not to be reused.
pub async fn exchange(
    connection: &mut Connection,
    request: Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes), TransportError> {
    connection
        .ready()
        .await
        .map_err(|_| TransportError::Closed)?;
    let response = connection
        .send_request(request)
        .await
        .map_err(|err| classify(&err))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|_| TransportError::Body)?
        .to_bytes();
    Ok((status, body))
}

/// Sorts a failed exchange: a connection closed or reset under the request, or anything
/// else hyper reports.
fn classify(err: &hyper::Error) -> TransportError {
    let io = std::error::Error::source(err).is_some_and(|source| source.is::<std::io::Error>());
    if io || err.is_closed() || err.is_incomplete_message() || err.is_canceled() {
        TransportError::Closed
    } else {
        TransportError::Protocol
    }
}

/// Polls `GET /readyz` until it answers 200 or `patience` runs out.
///
/// # Errors
/// The server did not become ready in time.
pub async fn wait_ready(target: &Target, patience: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + patience;
    let uri = target.uri("/readyz")?;
    let mut last = String::from("no answer yet");
    while tokio::time::Instant::now() < deadline {
        let request = setup_request(target, Method::GET, uri.clone(), None, Bytes::new());
        match setup_call(target, request).await {
            Ok((StatusCode::OK, _)) => return Ok(()),
            Ok((status, _)) => last = format!("answered {status}"),
            Err(err) => last = format!("{err:#}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!(
        "{} did not become ready within {patience:?}: {last}",
        target.addr
    )
}

/// Creates a tenant with limits too high to matter and returns its API key.
///
/// # Errors
/// The admin API refused (wrong token?) or answered something unexpected.
pub async fn create_tenant(
    target: &Target,
    admin_token: &str,
    name: &str,
) -> anyhow::Result<String> {
    let body = serde_json::json!({
        "name": name,
        "rate_limit_per_minute": 1_000_000_000,
        "burst": 1_000_000_000,
    });
    let request = setup_request(
        target,
        Method::POST,
        target.uri("/admin/tenants")?,
        Some(bearer(admin_token)?),
        Bytes::from(body.to_string()),
    );
    let (status, answer) = setup_call(target, request).await?;
    if status != StatusCode::CREATED {
        bail!(
            "POST /admin/tenants answered {status}: {}",
            String::from_utf8_lossy(&answer)
        );
    }
    let tenant: serde_json::Value =
        serde_json::from_slice(&answer).context("POST /admin/tenants answered invalid JSON")?;
    tenant["api_key"]
        .as_str()
        .map(str::to_owned)
        .context("POST /admin/tenants answered without an api_key")
}

fn setup_request(
    target: &Target,
    method: Method,
    uri: Uri,
    authorization: Option<HeaderValue>,
    body: Bytes,
) -> Request<Full<Bytes>> {
    let has_body = !body.is_empty();
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    headers.insert(header::HOST, target.host.clone());
    if let Some(authorization) = authorization {
        headers.insert(header::AUTHORIZATION, authorization);
    }
    if has_body {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    request
}

/// One request on a fresh connection, bounded in time.
async fn setup_call(
    target: &Target,
    request: Request<Full<Bytes>>,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let call = async {
        let mut connection = connect(target.addr)
            .await
            .with_context(|| format!("cannot connect to {}", target.addr))?;
        exchange(&mut connection, request)
            .await
            .map_err(|err| anyhow::anyhow!("{} error talking to {}", err.name(), target.addr))
    };
    tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .with_context(|| format!("{} did not answer within 10 s", target.addr))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_url_prefix_is_kept_on_every_endpoint() {
        let target = Target::resolve("http://127.0.0.1:8080/api/")
            .await
            .expect("a valid URL");
        assert_eq!(target.addr, "127.0.0.1:8080".parse().expect("an address"));
        let requests = Requests::new(&target, "ps_key", None).expect("valid headers");
        let request = requests.build(Call::Search(0));
        assert_eq!(
            request.uri().to_string(),
            "/api/v1/events?event_type=order.created&limit=100"
        );
        assert_eq!(request.headers()[header::HOST], "127.0.0.1:8080");
        assert_eq!(request.headers()[header::AUTHORIZATION], "Bearer ps_key");
        assert!(request.headers().get(header::CONTENT_TYPE).is_none());
    }

    #[tokio::test]
    async fn only_plain_http_is_accepted() {
        assert!(Target::resolve("https://127.0.0.1:8080").await.is_err());
        assert!(Target::resolve("127.0.0.1:8080").await.is_err());
    }
}
