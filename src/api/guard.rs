//! Who may ask what, on the TCP socket: the API has no login (it listens on loopback, and
//! every local user may use it), so what a *web page* can make a browser send is what
//! must be held back.
//!
//! - **Host**: a page on a DNS name the attacker rebinds to 127.0.0.1 reaches the loopback
//!   API with its own name in `Host` (and may read the answers, since to the browser they
//!   are same-origin). Requests naming a host other than a loopback name or address, the
//!   address the client connected to, or one of `allowed_hosts` are refused.
//! - **Origin** and **Sec-Fetch-Site**: a page of another site can send a form post or a
//!   `fetch` without preflight. Changes (every method but GET and HEAD, and the WebSocket)
//!   from a page whose `Origin` is not the API's own (the `Host` it asked for) or one of
//!   `allowed_origins`, or labelled `Sec-Fetch-Site: cross-site`, are refused.
//! - **Content-Type**: a body that is not `application/json` is refused (a form post's
//!   `text/plain` body is what a page can send without a preflight).
//!
//! curl and scripts send no Origin and are not affected. The unix socket is exempt: only
//! root and the group `kindler` can open it.

use std::net::IpAddr;

use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, ORIGIN, TRANSFER_ENCODING};
use hyper::{Method, Request};

use super::response::ApiError;
use crate::config::Settings;

/// How a request reached kindler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// TCP, on this local address (the one the client connected to).
    Tcp { ip: IpAddr, port: u16 },
    /// The unix socket.
    Unix,
}

/// Refuses what a web page of another site, or on a rebound name, could have sent.
pub fn check(
    req: &Request<Incoming>,
    via: Via,
    is_change: bool,
    settings: &Settings,
) -> Result<(), ApiError> {
    let Via::Tcp { ip, port } = via else {
        return Ok(());
    };
    let host = header(req, HOST.as_str());
    if let Some(host) = host {
        if !host_allowed(host, ip, port, &settings.allowed_hosts) {
            return Err(ApiError::Forbidden(format!(
                "requests for host {host:?} are refused: kindler answers its loopback names \
                 and addresses (add the name to allowed_hosts, e.g. for a reverse proxy that \
                 passes on its own Host)"
            )));
        }
    }
    if is_change {
        refuse_cross_site(req)?;
        if let Some(origin) = header(req, ORIGIN.as_str()) {
            if !origin_allowed(origin, host, &settings.allowed_origins) {
                return Err(ApiError::Forbidden(format!(
                    "changes from pages of {origin} are refused: only the API's own origin \
                     (and allowed_origins) may send them"
                )));
            }
        }
    }
    if has_body(req) && !is_json(req) {
        return Err(ApiError::UnsupportedMediaType(
            header(req, CONTENT_TYPE.as_str())
                .unwrap_or("none")
                .to_owned(),
        ));
    }
    Ok(())
}

/// Every method but GET and HEAD changes something; so does opening the WebSocket, which
/// streams task output to whoever opened it.
pub fn is_change(method: &Method, websocket: bool) -> bool {
    !matches!(*method, Method::GET | Method::HEAD) || websocket
}

fn header<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Requests labelled by the browser as sent by another site's page.
fn refuse_cross_site(req: &Request<Incoming>) -> Result<(), ApiError> {
    match header(req, "sec-fetch-site") {
        Some(site) if site.eq_ignore_ascii_case("cross-site") => Err(ApiError::Forbidden(
            "cross-site request refused: kindler accepts changes only from pages of its own origin"
                .into(),
        )),
        _ => Ok(()),
    }
}

/// Splits `host[:port]` (an IPv6 address in brackets).
fn split_authority(authority: &str) -> (String, Option<u16>) {
    let authority = authority.trim();
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        match rest.split_once(']') {
            Some((h, tail)) => (h, tail.strip_prefix(':')),
            None => (rest, None),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, Some(p)),
            _ => (authority, None),
        }
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    (host, port.and_then(|p| p.parse().ok()))
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host.ends_with(".localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The host a request names is kindler: a loopback name or address, or the address the
/// client connected to, with the port it connected to (or none); or a configured name.
fn host_allowed(authority: &str, local_ip: IpAddr, local_port: u16, allowed: &[String]) -> bool {
    let (host, port) = split_authority(authority);
    let ours = is_loopback(&host) || host.parse::<IpAddr>().is_ok_and(|ip| ip == local_ip);
    if ours && port.is_none_or(|p| p == local_port) {
        return true;
    }
    allowed.iter().any(|entry| {
        let (name, want) = split_authority(entry);
        name == host && want.is_none_or(|w| Some(w) == port)
    })
}

/// The page sending the change is the API's own (its origin names the host the request
/// asked for), or one the operator allowed.
fn origin_allowed(origin: &str, host: Option<&str>, allowed: &[String]) -> bool {
    let origin = origin.trim().trim_end_matches('/');
    if allowed
        .iter()
        .any(|a| a.trim().trim_end_matches('/').eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false; // "null" (a sandboxed page, a file) and anything else
    };
    let Some(host) = host else { return false };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        _ => return false,
    };
    let (o_host, o_port) = split_authority(authority);
    let (h_host, h_port) = split_authority(host);
    o_host == h_host && o_port.unwrap_or(default_port) == h_port.unwrap_or(default_port)
}

fn has_body(req: &Request<Incoming>) -> bool {
    header(req, TRANSFER_ENCODING.as_str()).is_some()
        || header(req, CONTENT_LENGTH.as_str())
            .and_then(|n| n.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0)
}

fn is_json(req: &Request<Incoming>) -> bool {
    header(req, CONTENT_TYPE.as_str()).is_some_and(|t| {
        let essence = t.split(';').next().unwrap_or("").trim();
        essence.eq_ignore_ascii_case("application/json")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn hosts() {
        let none: Vec<String> = vec![];
        for ok in [
            "127.0.0.1:8765",
            "127.0.0.1",
            "localhost:8765",
            "LOCALHOST.:8765",
            "[::1]:8765",
            "127.1.2.3:8765",
        ] {
            assert!(host_allowed(ok, LOCAL, 8765, &none), "{ok}");
        }
        for bad in [
            "evil.example:8765",
            "evil.example",
            "127.0.0.1:80",
            "localhost:9999",
            "10.0.0.5:8765",
        ] {
            assert!(!host_allowed(bad, LOCAL, 8765, &none), "{bad}");
        }
        let lan: IpAddr = "10.0.0.5".parse().unwrap();
        assert!(
            host_allowed("10.0.0.5:8765", lan, 8765, &none),
            "the address connected to"
        );
        let allowed = vec!["kindler.example".to_owned(), "proxy.lan:8080".to_owned()];
        assert!(host_allowed("kindler.example", LOCAL, 8765, &allowed));
        assert!(host_allowed("kindler.example:443", LOCAL, 8765, &allowed));
        assert!(host_allowed("proxy.lan:8080", LOCAL, 8765, &allowed));
        assert!(!host_allowed("proxy.lan:9090", LOCAL, 8765, &allowed));
    }

    #[test]
    fn origins() {
        let none: Vec<String> = vec![];
        let host = Some("127.0.0.1:8765");
        assert!(origin_allowed("http://127.0.0.1:8765", host, &none));
        assert!(!origin_allowed("http://evil.example", host, &none));
        assert!(!origin_allowed("null", host, &none));
        assert!(!origin_allowed("http://127.0.0.1:9999", host, &none));
        assert!(origin_allowed(
            "https://kindler.example",
            Some("kindler.example"),
            &none
        ));
        assert!(!origin_allowed(
            "http://kindler.example",
            Some("kindler.example:443"),
            &none
        ));
        let allowed = vec!["https://kindler.example/".to_owned()];
        assert!(origin_allowed("https://kindler.example", host, &allowed));
    }
}
