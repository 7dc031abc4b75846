//! Reaching the daemon: where (`--server`, `KINDLER_SERVER`, the unix socket, loopback TCP),
//! one HTTP request at a time, and the task WebSocket.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;

/// The packaged unix socket (kindler-api.socket).
pub const DEFAULT_SOCKET: &str = "/run/kindler/api.sock";
/// The packaged TCP socket (kindler.socket), and `serve`'s default `listen`.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8765";
/// How long connecting and one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the daemon is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tcp { host, port } => write!(f, "http://{host}:{port}"),
            Target::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl Target {
    /// Reads `http://HOST[:PORT]`, `unix:PATH` or `unix:///PATH`, or a plain path to a
    /// socket (starting with `/`).
    pub fn parse(text: &str) -> Result<Target, String> {
        let bad = |why: &str| {
            format!("--server {text:?}: {why}; use http://HOST:PORT or unix:/PATH/TO/SOCKET")
        };
        if let Some(path) = text
            .strip_prefix("unix://")
            .or_else(|| text.strip_prefix("unix:"))
            .or_else(|| text.starts_with('/').then_some(text))
        {
            if !path.starts_with('/') {
                return Err(bad("the socket's path must be absolute"));
            }
            return Ok(Target::Unix(PathBuf::from(path)));
        }
        let rest = text
            .strip_prefix("http://")
            .ok_or_else(|| bad("only http:// and unix: are understood"))?;
        let authority = rest.split('/').next().unwrap_or("");
        if authority.is_empty() {
            return Err(bad("no host"));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
                match p.parse::<u16>() {
                    Ok(p) => (h.to_owned(), p),
                    Err(_) if h.starts_with('[') && !h.ends_with(']') => (authority.to_owned(), 80),
                    Err(_) => return Err(bad(&format!("{p:?} is not a port"))),
                }
            }
            _ => (authority.to_owned(), 80),
        };
        Ok(Target::Tcp { host, port })
    }

    /// `--server` or `KINDLER_SERVER` if given; else the unix socket when it exists and can
    /// be opened; else loopback TCP.
    pub fn choose(given: Option<&str>) -> Result<Target, String> {
        if let Some(text) = given.filter(|t| !t.is_empty()) {
            return Target::parse(text);
        }
        let socket = Path::new(DEFAULT_SOCKET);
        if socket.exists() && std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Ok(Target::Unix(socket.into()));
        }
        Target::parse(DEFAULT_URL)
    }

    /// The `Host` header: the loopback names kindler answers on, or the URL's host.
    fn host_header(&self) -> String {
        match self {
            Target::Tcp { host, port } => format!("{host}:{port}"),
            Target::Unix(_) => "localhost".into(),
        }
    }
}

/// Why a request got no answer.
#[derive(Debug)]
pub enum ClientError {
    /// Nothing answers there (refused, no such socket, timed out): exit status 3.
    Unreachable { target: Target, cause: String },
    /// It answered, but not as kindler would.
    Protocol(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Unreachable { target, cause } => write!(
                f,
                "cannot reach kindler at {target}: {cause}; is it running? \
                 (systemctl status kindler; --server or KINDLER_SERVER to reach another)"
            ),
            ClientError::Protocol(what) => write!(f, "unexpected answer from kindler: {what}"),
        }
    }
}

/// A stream to the daemon, over TCP or the unix socket.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// An answer: status and body.
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Result<serde_json::Value, ClientError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            ClientError::Protocol(format!(
                "{} with a body that is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body[..self.body.len().min(200)])
            ))
        })
    }

    /// The API's error message: `detail`, or each entry of a 422 list.
    pub fn detail(&self) -> String {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&self.body) else {
            return format!("{} {}", self.status, String::from_utf8_lossy(&self.body));
        };
        match &v["detail"] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Array(items) => items
                .iter()
                .map(|i| {
                    let field = i["loc"]
                        .as_array()
                        .and_then(|l| l.last())
                        .and_then(|f| f.as_str())
                        .unwrap_or("");
                    let msg = i["msg"].as_str().unwrap_or("invalid");
                    if field.is_empty() || field == "body" {
                        msg.to_owned()
                    } else {
                        format!("{field}: {msg}")
                    }
                })
                .collect::<Vec<_>>()
                .join("; "),
            _ => format!("{} {}", self.status, v),
        }
    }
}

/// The daemon, as the commands reach it.
#[derive(Clone)]
pub struct Client {
    pub target: Target,
}

impl Client {
    pub fn new(target: Target) -> Client {
        Client { target }
    }

    fn unreachable(&self, cause: impl fmt::Display) -> ClientError {
        ClientError::Unreachable {
            target: self.target.clone(),
            cause: cause.to_string(),
        }
    }

    async fn connect(&self) -> Result<Box<dyn Stream>, ClientError> {
        let connecting = async {
            match &self.target {
                Target::Tcp { host, port } => {
                    let host = host.trim_start_matches('[').trim_end_matches(']');
                    let s = tokio::net::TcpStream::connect((host, *port)).await?;
                    s.set_nodelay(true)?;
                    Ok::<Box<dyn Stream>, std::io::Error>(Box::new(s))
                }
                Target::Unix(path) => {
                    let s = tokio::net::UnixStream::connect(path).await?;
                    Ok::<Box<dyn Stream>, std::io::Error>(Box::new(s))
                }
            }
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(self.unreachable(plain_io(&e))),
            Err(_) => Err(self.unreachable(format!(
                "no connection within {}s",
                CONNECT_TIMEOUT.as_secs()
            ))),
        }
    }

    /// One request on a connection of its own.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Answer, ClientError> {
        let stream = self.connect().await?;
        let exchange = async {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| self.unreachable(e))?;
            let driver = tokio::spawn(async move {
                let _ = conn.await;
            });
            let mut req = Request::builder()
                .method(method)
                .uri(path)
                .header("host", self.target.host_header())
                .header("user-agent", concat!("kindler/", env!("CARGO_PKG_VERSION")));
            let bytes = match body {
                Some(v) => {
                    req = req.header("content-type", "application/json");
                    Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
                }
                None => Bytes::new(),
            };
            let req = req
                .body(Full::new(bytes))
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| self.unreachable(e))?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| self.unreachable(e))?
                .to_bytes();
            driver.abort();
            Ok(Answer { status, body })
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(answer) => answer,
            Err(_) => {
                Err(self.unreachable(format!("no answer within {}s", REQUEST_TIMEOUT.as_secs())))
            }
        }
    }

    pub async fn get(&self, path: &str) -> Result<Answer, ClientError> {
        self.request(Method::GET, path, None).await
    }

    /// The task WebSocket (`/ws/tasks`).
    pub async fn websocket(&self) -> Result<WebSocketStream<Box<dyn Stream>>, ClientError> {
        let stream = self.connect().await?;
        let url = format!("ws://{}/ws/tasks", self.target.host_header());
        let handshake = tokio_tungstenite::client_async(url, stream);
        match tokio::time::timeout(REQUEST_TIMEOUT, handshake).await {
            Ok(Ok((ws, _))) => Ok(ws),
            Ok(Err(e)) => Err(self.unreachable(format!("WebSocket /ws/tasks: {e}"))),
            Err(_) => Err(self.unreachable("no WebSocket handshake")),
        }
    }
}

/// An I/O error in plain words, without Rust's "(os error N)".
fn plain_io(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses() {
        assert_eq!(
            Target::parse("http://127.0.0.1:8765").unwrap(),
            Target::Tcp {
                host: "127.0.0.1".into(),
                port: 8765
            }
        );
        assert_eq!(
            Target::parse("http://localhost/").unwrap(),
            Target::Tcp {
                host: "localhost".into(),
                port: 80
            }
        );
        assert_eq!(
            Target::parse("http://[::1]:9000").unwrap(),
            Target::Tcp {
                host: "[::1]".into(),
                port: 9000
            }
        );
        assert_eq!(
            Target::parse("unix:/run/kindler/api.sock").unwrap(),
            Target::Unix("/run/kindler/api.sock".into())
        );
        assert_eq!(
            Target::parse("unix:///run/x.sock").unwrap(),
            Target::Unix("/run/x.sock".into())
        );
        assert_eq!(
            Target::parse("/tmp/k.sock").unwrap(),
            Target::Unix("/tmp/k.sock".into())
        );
        for bad in [
            "https://x",
            "ftp://x",
            "http://",
            "http://h:port",
            "unix:rel",
        ] {
            let e = Target::parse(bad).unwrap_err();
            assert!(e.contains("--server"), "{e}");
        }
    }
}
