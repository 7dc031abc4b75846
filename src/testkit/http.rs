//! A small HTTP/1.1 client, just enough for kindler's JSON answers: one request on a new
//! connection (TCP or unix socket), raw bytes as they are, or requests one after the other
//! on a keep-alive [`Connection`].

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

pub struct Response {
    pub status: u16,
    /// The status line and the headers, as received.
    pub head: String,
    /// The body.
    pub text: String,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    /// The value of header `name` (any case), the first if it is repeated.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    }
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.text)
    }
}

/// A request on a new connection to 127.0.0.1:`port`; panics when it gets no answer.
pub fn request(port: u16, method: &str, path: &str, body: Option<&str>) -> Response {
    try_request(port, method, path, body, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// A request on a new connection (`Connection: close`); the answer is what arrives until
/// the server closes it.
pub fn try_request(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> std::io::Result<Response> {
    send_raw(port, &request_bytes(method, path, body, true), timeout)
}

/// Sends bytes as they are (for malformed requests) and reads the response.
pub fn send_raw(port: u16, raw: &[u8], timeout: Duration) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    // A server may answer (413) before reading everything; a failed write is fine then.
    let _ = stream.write_all(raw);
    let mut buf = Vec::new();
    let _ = stream.read_to_end(&mut buf);
    parse_response(&buf)
}

/// A request over a unix socket.
pub fn unix_request(path: &Path, method: &str, uri: &str) -> std::io::Result<Response> {
    let mut stream = std::os::unix::net::UnixStream::connect(path)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(&request_bytes(method, uri, None, true))?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf)?;
    parse_response(&buf)
}

/// A keep-alive connection to 127.0.0.1: requests one after the other, each answer read
/// up to its Content-Length (kindler always sends one).
pub struct Connection {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Connection {
    pub fn open(port: u16) -> std::io::Result<Connection> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Connection {
            stream,
            buf: Vec::new(),
        })
    }

    pub fn call(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> std::io::Result<Response> {
        self.stream
            .write_all(&request_bytes(method, path, body, false))?;
        let mut chunk = [0u8; 65536];
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let mut r = parse_head(&self.buf[..end])?;
                let len: usize = r
                    .header("content-length")
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| bad(&self.buf[..end]))?;
                let whole = end + 4 + len;
                if self.buf.len() >= whole {
                    r.text = String::from_utf8_lossy(&self.buf[end + 4..whole]).into_owned();
                    self.buf.drain(..whole);
                    return Ok(r);
                }
            }
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// A request's bytes, with a JSON body when there is one.
fn request_bytes(method: &str, path: &str, body: Option<&str>, close: bool) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    if close {
        head.push_str("Connection: close\r\n");
    }
    if let Some(b) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    head.push_str("\r\n");
    let mut raw = head.into_bytes();
    raw.extend_from_slice(body.unwrap_or("").as_bytes());
    raw
}

/// A whole response: the head, and everything after it as the body.
fn parse_response(buf: &[u8]) -> std::io::Result<Response> {
    let end = find(buf, b"\r\n\r\n").ok_or_else(|| bad(buf))?;
    let mut r = parse_head(&buf[..end])?;
    r.text = String::from_utf8_lossy(&buf[end + 4..]).into_owned();
    Ok(r)
}

/// The status line and headers; the body is left empty.
fn parse_head(head: &[u8]) -> std::io::Result<Response> {
    let text = String::from_utf8_lossy(head).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(head))?;
    Ok(Response {
        status,
        head: text,
        text: String::new(),
    })
}

fn bad(buf: &[u8]) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("bad response: {:?}", String::from_utf8_lossy(buf)),
    )
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
