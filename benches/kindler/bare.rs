//! A bare hyper server, the machine's limit for measurement 2: hyper 1 over HTTP/1.1 on
//! a tokio runtime with 2 worker threads, as kindler's, in this process on 127.0.0.1:0.
//! Its connections are set up as kindler sets up its own (TCP_NODELAY, keep-alive, a
//! header timeout); it answers each request with kindler's own answer to that request,
//! captured beforehand and replayed verbatim (status, headers, body; hyper adds `date`
//! and `content-length`, as it does for kindler). Nothing else: no routing table, store,
//! cache or connection accounting. So wrk against it measures what HTTP itself costs on
//! this machine, and kindler's figure over this one is the share kindler reaches.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use kindler::testkit::Response;

use crate::harness::{call, connect};
use crate::report::show;
use crate::wrk::WrkResult;
use crate::Res;

/// One request the server answers, and kindler's answer to it.
pub struct Answer {
    method: Method,
    path: String,
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    /// As kindler sent it, to check the replay against.
    original: Response,
}

impl Answer {
    /// `kindler`'s answer to `method path`, to be replayed: its status, its headers but
    /// `date` and `content-length`, its body.
    pub fn replay(method: &str, path: &str, kindler: Response) -> Res<Answer> {
        let bad = |what: &str| format!("kindler's answer to {method} {path}: {what}");
        let mut headers = HeaderMap::new();
        for line in kindler.head.lines().skip(1) {
            let (name, value) = line.split_once(':').ok_or_else(|| bad(line))?;
            let name =
                HeaderName::from_bytes(name.trim().as_bytes()).map_err(|e| bad(&e.to_string()))?;
            if name == hyper::header::DATE || name == hyper::header::CONTENT_LENGTH {
                continue;
            }
            let value = HeaderValue::from_str(value.trim()).map_err(|e| bad(&e.to_string()))?;
            headers.append(name, value);
        }
        Ok(Answer {
            method: method.parse().map_err(|_| bad("bad method"))?,
            path: path.to_owned(),
            status: StatusCode::from_u16(kindler.status).map_err(|e| bad(&e.to_string()))?,
            headers,
            body: Bytes::from(kindler.text.clone()),
            original: kindler,
        })
    }
}

/// The server; it stops when dropped.
pub struct Bare {
    pub port: u16,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Bare {
    /// Starts the server and checks that it answers each request with the same bytes as
    /// kindler did (but the date). `body` is what the check sends with a POST.
    pub fn start(answers: Vec<Answer>, body: Option<&str>) -> Res<Bare> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("bare-hyper")
            .enable_all()
            .build()
            .map_err(|e| format!("bare hyper runtime: {e}"))?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let answers = Arc::new(answers);
        let served = answers.clone();
        runtime.spawn(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                return;
            };
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let answers = served.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(answers.clone(), req));
                    let _ = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(30))
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        let bare = Bare {
            port,
            runtime: Some(runtime),
        };
        for a in answers.iter() {
            let sent = (a.method == Method::POST).then_some(body).flatten();
            let got = call(&mut connect(port)?, a.method.as_str(), &a.path, sent)?;
            if without_date(&got) != without_date(&a.original) {
                return Err(format!(
                    "the bare server's answer to {} {} differs from kindler's:\n{}\n\n{}\nkindler's:\n{}\n\n{}",
                    a.method, a.path, got.head, got.text, a.original.head, a.original.text
                ));
            }
        }
        Ok(bare)
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn answer(
    answers: Arc<Vec<Answer>>,
    req: Request<Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let found = answers
        .iter()
        .find(|a| a.method == req.method() && a.path == req.uri().path());
    // The body is read, as kindler reads a declaration.
    let _ = req.into_body().collect().await;
    let mut resp =
        hyper::Response::new(Full::new(found.map(|a| a.body.clone()).unwrap_or_default()));
    if let Some(a) = found {
        *resp.status_mut() = a.status;
        *resp.headers_mut() = a.headers.clone();
    } else {
        *resp.status_mut() = StatusCode::NOT_FOUND;
    }
    Ok(resp)
}

/// A response's bytes but its date header.
fn without_date(r: &Response) -> (String, &str) {
    let head: Vec<&str> = r
        .head
        .lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("date:"))
        .collect();
    (head.join("\r\n"), &r.text)
}

/// The note of a kindler rate measured next to the bare server's: "0.62 × bare hyper
/// (40,100 req/s)".
pub fn versus(kindler: &WrkResult, bare: &WrkResult) -> String {
    format!(
        "{:.2} × bare hyper ({} req/s)",
        kindler.rps / bare.rps,
        show(bare.rps)
    )
}
