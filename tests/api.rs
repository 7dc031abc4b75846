//! The WebUI's contract through the real binary: shapes, status codes and every refusal.
//! Bad input is refused with a message naming what was wrong, and never reaches the
//! store or a script.

mod common;

use std::time::Duration;

use common::{send_raw, Env};
use serde_json::Value;

const SEC: Duration = Duration::from_secs(1);

fn detail(r: &common::Response) -> String {
    r.json()["detail"].to_string()
}

#[test]
fn health_config_and_list_shapes() {
    let env = Env::new();
    let _d = env.start(&[]);
    let h = env.get("/api/health");
    assert_eq!(h.status, 200);
    let h = h.json();
    assert_eq!(h["status"], "healthy");
    assert_eq!(h["service"], "kindler");
    assert_eq!(h["version"], env!("CARGO_PKG_VERSION"));
    // HEAD, as monitors send it: the same status, no body.
    let head = "HEAD /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    let r = send_raw(env.port, head.as_bytes(), 5 * SEC).unwrap();
    assert_eq!((r.status, r.text.as_str()), (200, ""));

    let c = env.get("/api/config").json();
    assert_eq!(c["providers"], serde_json::json!(["kind", "k3d"]));
    assert_eq!(c["default_provider"], "k3d");
    assert_eq!(c["default_node_port"], 30080);
    assert_eq!(
        c["default_pf_port_range"],
        serde_json::json!([19001, 19999])
    );
    assert_eq!(
        c["default_http_port_range"],
        serde_json::json!([18090, 18999])
    );
    assert_eq!(
        c["default_https_port_range"],
        serde_json::json!([18443, 18999])
    );
    assert!(c["base_domain"].is_string());

    assert_eq!(env.get("/api/clusters").json(), serde_json::json!([]));
    for (name, port) in [("old", 19100), ("new", 19200)] {
        let r = env.post(
            "/api/clusters",
            &format!(r#"{{"name":"{name}","provider":"kind","pf_port":{port}}}"#),
        );
        assert_eq!(r.status, 202, "{r:?}");
    }
    let list = env.get("/api/clusters").json();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["new", "old"], "newest first");
    let c = &list[0];
    for field in [
        "name",
        "provider",
        "node_port",
        "pf_port",
        "http_port",
        "https_port",
        "cluster_subnet",
        "register_portainer",
        "haproxy_route",
        "register_argocd",
        "status",
        "created_at",
        "updated_at",
        "desired_state",
        "actual_state",
        "last_reconciled_at",
        "reconcile_error",
    ] {
        assert!(c.get(field).is_some(), "ClusterInfo lacks {field}: {c}");
    }
    assert!(c["created_at"].as_str().unwrap().ends_with('Z'));

    env.await_state("new", "running", 10 * SEC);
    let s = env.get("/api/clusters/new/status").json();
    assert_eq!(s["name"], "new");
    assert_eq!(s["status"], "running");
    assert_eq!(s["portainer_status"], "unknown");
    assert_eq!(s["argocd_status"], "unknown");
    assert!(s["nodes_ready"].is_i64() && s["nodes_total"].is_i64());
    assert_eq!(s["error_message"], Value::Null);
}

#[test]
fn every_error_of_the_contract() {
    let env = Env::new();
    let _d = env.start(&[]);
    let not_found = [
        ("GET", "/api/clusters/nope"),
        ("DELETE", "/api/clusters/nope"),
        ("GET", "/api/clusters/nope/status"),
        ("POST", "/api/clusters/nope/start"),
        ("POST", "/api/clusters/nope/stop"),
    ];
    for (method, path) in not_found {
        let r = env.request(method, path, None);
        assert_eq!(r.status, 404, "{method} {path}: {r:?}");
        assert_eq!(r.json()["detail"], "Cluster nope not found");
    }
    let r = env.get("/api/tasks/reconcile-nope");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["detail"], "Task reconcile-nope not found");

    let r = env.request("DELETE", "/api/clusters/devops", None);
    assert_eq!(r.status, 403, "{r:?}");
    assert!(detail(&r).contains("devops"));

    assert_eq!(
        env.post(
            "/api/clusters",
            r#"{"name":"dup","provider":"k3d","pf_port":19300}"#
        )
        .status,
        202
    );
    let r = env.post(
        "/api/clusters",
        r#"{"name":"dup","provider":"kind","pf_port":19301}"#,
    );
    assert_eq!(r.status, 409);
    assert_eq!(r.json()["detail"], "Cluster dup already exists");

    let r = env.get("/api/nothing/here");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["detail"], "Not Found");
    let r = env.request("PUT", "/api/clusters", Some("{}"));
    assert_eq!(r.status, 405);
    assert!(r.json()["detail"].is_string());
}

#[test]
fn ports_held_by_another_cluster_are_refused_by_name() {
    let env = Env::new();
    let _d = env.start(&[]);
    let r = env.post(
        "/api/clusters",
        r#"{"name":"a","provider":"k3d","pf_port":19500,"http_port":18500,"https_port":18600}"#,
    );
    assert_eq!(r.status, 202);
    let cases = [
        (
            r#"{"name":"b","provider":"k3d","pf_port":19500}"#,
            "pf_port 19500 is already used by cluster a (as its pf_port)",
        ),
        (
            r#"{"name":"b","provider":"k3d","http_port":18600}"#,
            "http_port 18600 is already used by cluster a (as its https_port)",
        ),
        (
            r#"{"name":"b","provider":"k3d","node_port":18500}"#,
            "node_port 18500 is already used by cluster a (as its http_port)",
        ),
    ];
    for (body, message) in cases {
        let r = env.post("/api/clusters", body);
        assert_eq!(r.status, 409, "{body}: {r:?}");
        assert_eq!(r.json()["detail"], message);
    }
    assert!(env.cluster("b").is_none(), "nothing stored");

    // Node ports live inside each cluster: the same one may repeat.
    let r = env.post(
        "/api/clusters",
        r#"{"name":"b","provider":"k3d","pf_port":19501,"http_port":18501,"https_port":18601}"#,
    );
    assert_eq!(r.status, 202, "{r:?}");

    // A cluster being deleted still holds its ports; an absent one does not.
    assert_eq!(env.request("DELETE", "/api/clusters/a", None).status, 202);
    env.await_gone("a", 10 * SEC);
    let r = env.post(
        "/api/clusters",
        r#"{"name":"c","provider":"k3d","pf_port":19500}"#,
    );
    assert_eq!(r.status, 202, "{r:?}");
}

#[test]
fn the_webui_default_ports_are_assigned_from_the_ranges_when_taken() {
    let env = Env::new();
    let _d = env.start(&[]);
    // What the WebUI's form sends for every cluster unless the user edits it.
    let form = |name: &str| {
        format!(
            r#"{{"name":"{name}","provider":"k3d","node_port":30080,"pf_port":19001,"http_port":18090,"https_port":18443,"cluster_subnet":""}}"#
        )
    };
    assert_eq!(env.post("/api/clusters", &form("one")).status, 202);
    let r = env.post("/api/clusters", &form("two"));
    assert_eq!(r.status, 202, "{r:?}");
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("pf_port 19001 was taken, 19002 assigned"));
    let two = env.cluster("two").unwrap();
    assert_eq!(two["pf_port"], 19002);
    assert_eq!(two["http_port"], 18091);
    assert_eq!(two["https_port"], 18444);
    assert_eq!(two["node_port"], 30080);
}

#[test]
fn bad_names_are_refused_and_never_stored_or_run() {
    let env = Env::new();
    let _d = env.start(&[]);
    let long = "a".repeat(64);
    let bad = [
        "Dev",
        "dev'",
        "a\"b",
        "a;rm -rf /",
        "a/b",
        "a b",
        "dév",
        "日本",
        "-dev",
        "dev-",
        "",
        "a.b",
        "$(reboot)",
        "a\nb",
        &long,
    ];
    for name in bad {
        let body = serde_json::json!({"name": name, "provider": "k3d"}).to_string();
        let r = env.post("/api/clusters", &body);
        assert_eq!(r.status, 422, "{name:?}: {r:?}");
        let d = &r.json()["detail"][0];
        assert_eq!(d["loc"], serde_json::json!(["body", "name"]), "{name:?}");
        assert!(d["msg"].as_str().unwrap().contains("name"), "{d}");
    }
    // In a path, too.
    for path in [
        "/api/clusters/a%3Bb",
        "/api/clusters/A",
        "/api/clusters/a%20b",
        "/api/clusters/%E2%9C%93",
    ] {
        let r = env.request("DELETE", path, None);
        assert_eq!(r.status, 422, "{path}: {r:?}");
        assert_eq!(
            r.json()["detail"][0]["loc"],
            serde_json::json!(["path", "name"])
        );
    }
    assert_eq!(env.get("/api/clusters").json(), serde_json::json!([]));
    assert_eq!(env.sqlite("SELECT COUNT(*) FROM clusters"), "0");
    // A valid declaration afterwards is acted on; by then the reconciler has seen all the
    // refused ones, and it ran a script for none of them.
    assert_eq!(
        env.post("/api/clusters", r#"{"name":"ok","provider":"k3d"}"#)
            .status,
        202
    );
    env.await_state("ok", "running", 10 * SEC);
    let others: Vec<_> = env
        .calls()
        .into_iter()
        .filter(|c| c.cluster != "ok")
        .collect();
    assert!(
        others.is_empty(),
        "a script ran for a refused name: {others:?}"
    );
}

#[test]
fn bad_bodies_get_clear_4xx_errors() {
    let env = Env::new();
    let _d = env.start(&[]);
    let cases: [(&str, &str, &str); 9] = [
        (r#"{"provider":"k3d"}"#, "name", "missing"),
        (r#"{"name":"x"}"#, "provider", "missing"),
        (
            r#"{"name":"x","provider":"minikube"}"#,
            "provider",
            "literal_error",
        ),
        (
            r#"{"name":"x","provider":"k3d","node_port":80}"#,
            "node_port",
            "greater_than_equal",
        ),
        (
            r#"{"name":"x","provider":"k3d","pf_port":70000}"#,
            "pf_port",
            "less_than_equal",
        ),
        (
            r#"{"name":"x","provider":"k3d","http_port":"8080"}"#,
            "http_port",
            "int_type",
        ),
        (
            r#"{"name":"x","provider":"k3d","cluster_subnet":"10.0.0.0/40"}"#,
            "cluster_subnet",
            "value_error",
        ),
        (
            r#"{"name":"x","provider":"k3d","register_argocd":"no"}"#,
            "register_argocd",
            "bool_type",
        ),
        (r#"{"name":7,"provider":"k3d"}"#, "name", "string_type"),
    ];
    for (body, field, kind) in cases {
        let r = env.post("/api/clusters", body);
        assert_eq!(r.status, 422, "{body}: {r:?}");
        let d = &r.json()["detail"][0];
        assert_eq!(d["loc"], serde_json::json!(["body", field]), "{body}: {d}");
        assert_eq!(d["type"], kind, "{body}: {d}");
        assert!(!d["msg"].as_str().unwrap().is_empty());
    }
    for malformed in ["{", "not json", "[]", "null", ""] {
        let r = env.post("/api/clusters", malformed);
        assert_eq!(r.status, 422, "{malformed:?}: {r:?}");
        assert!(r.json()["detail"][0]["msg"].is_string());
    }
    // More than 1 MiB: refused by its declared length, and when streamed without one.
    let big = format!(
        r#"{{"name":"x","provider":"k3d","pad":"{}"}}"#,
        "x".repeat(1_100_000)
    );
    let r = env.post("/api/clusters", &big);
    assert_eq!(r.status, 413, "{:?}", r.status);
    let mut chunked = b"POST /api/clusters HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..20 {
        chunked.extend_from_slice(format!("{:x}\r\n{}\r\n", 65536, "y".repeat(65536)).as_bytes());
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let r = send_raw(env.port, &chunked, 10 * SEC).unwrap();
    assert_eq!(r.status, 413);
    assert!(r.json()["detail"].as_str().unwrap().contains("larger than"));
    // A request that is not HTTP gets 400 from the HTTP layer, and the daemon carries on.
    let r = send_raw(env.port, b"\x16\x03\x01 garbage\r\n\r\n", 5 * SEC);
    assert!(r.map(|r| r.status == 400).unwrap_or(true));
    assert_eq!(env.get("/api/health").status, 200);
    assert_eq!(env.sqlite("SELECT COUNT(*) FROM clusters"), "0");
}

#[test]
fn a_store_that_cannot_be_read_makes_health_503() {
    let env = Env::new();
    let _d = env.start(&[]);
    assert_eq!(env.get("/api/health").status, 200);
    // Another program breaks the store under the running daemon.
    env.sqlite("DROP TABLE clusters");
    let r = common::eventually(5 * SEC, "health to report the unreadable store", || {
        let r = env.get("/api/health");
        (r.status == 503).then_some(r)
    });
    let detail = r.json()["detail"].as_str().unwrap().to_owned();
    assert!(
        detail.contains("the store cannot be read") && detail.contains("no such table: clusters"),
        "{detail}"
    );
}

#[test]
fn websocket_pushes_task_updates_until_completed() {
    use tokio_tungstenite::tungstenite::{self, client::client, Message};
    let env = Env::new();
    env.mode("create", "slow:1");
    let _d = env.start(&[]);
    assert_eq!(
        env.post("/api/clusters", r#"{"name":"live","provider":"k3d"}"#)
            .status,
        202
    );

    let stream = std::net::TcpStream::connect(("127.0.0.1", env.port)).unwrap();
    stream.set_read_timeout(Some(10 * SEC)).unwrap();
    let (mut ws, resp) =
        client(format!("ws://127.0.0.1:{}/ws/tasks", env.port), stream).expect("handshake");
    assert_eq!(resp.status(), 101);
    ws.send(Message::text(r#"{"type":"ping"}"#)).unwrap();
    let pong: Value = serde_json::from_str(ws.read().unwrap().to_text().unwrap()).unwrap();
    assert_eq!(pong["type"], "pong");

    ws.send(Message::text(
        r#"{"type":"subscribe","task_id":"reconcile-live"}"#,
    ))
    .unwrap();
    let mut seen = Vec::new();
    loop {
        let msg: Value =
            serde_json::from_str(ws.read().expect("an update").to_text().unwrap()).unwrap();
        assert_eq!(msg["type"], "task_update", "{msg}");
        assert_eq!(msg["task"]["task_id"], "reconcile-live");
        let status = msg["task"]["status"].as_str().unwrap().to_owned();
        if seen.last() != Some(&status) {
            seen.push(status.clone());
        }
        if status == "completed" {
            assert_eq!(msg["task"]["progress"], 100);
            break;
        }
    }
    assert!(seen.contains(&"running".to_owned()), "{seen:?}");
    assert_eq!(seen.last().unwrap(), "completed");
    ws.send(Message::text(
        r#"{"type":"unsubscribe","task_id":"reconcile-live"}"#,
    ))
    .unwrap();
    ws.send(Message::text("not json")).unwrap();
    let err: Value = serde_json::from_str(ws.read().unwrap().to_text().unwrap()).unwrap();
    assert_eq!(err["type"], "error");
    let long = format!(r#"{{"type":"subscribe","task_id":"{}"}}"#, "x".repeat(200));
    ws.send(Message::text(long)).unwrap();
    let err: Value = serde_json::from_str(ws.read().unwrap().to_text().unwrap()).unwrap();
    assert!(
        err["message"].as_str().unwrap().contains("longer than"),
        "{err}"
    );
    // A message over the 64 KiB limit ends the connection instead of filling memory.
    let _ = ws.send(Message::text("x".repeat(100_000)));
    let ended = loop {
        match ws.read() {
            Ok(Message::Close(_)) => break Ok(()),
            Ok(_) => continue,
            // A read timeout means the server kept the connection open.
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break Err(e)
            }
            Err(_) => break Ok(()),
        }
    };
    assert!(ended.is_ok(), "the connection stayed open: {ended:?}");

    // A plain GET is told to upgrade.
    assert_eq!(env.get("/ws/tasks").status, 426);
}

#[test]
fn requests_another_site_sends_through_the_browser_are_refused() {
    let env = Env::new();
    let _d = env.start(&[]);
    let host = format!("127.0.0.1:{}", env.port);
    // What a page sends: a form post from another site (no preflight, text/plain), or the
    // WebUI's own fetch (its origin, JSON).
    let raw = |path: &str, origin: &str, site: &str, kind: &str, body: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nOrigin: {origin}\r\n\
             Sec-Fetch-Site: {site}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let body = r#"{"name":"csrf","provider":"k3d"}"#;
    let evil = "http://evil.example";
    let own = format!("http://{host}");
    let send = |req: String| send_raw(env.port, req.as_bytes(), 5 * SEC).unwrap();
    let r = send(raw("/api/clusters", evil, "cross-site", "text/plain", body));
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.json()["detail"].as_str().unwrap().contains("cross-site"));
    // Without Sec-Fetch headers (older browsers), the Origin alone gives it away.
    let no_label = format!(
        "POST /api/clusters HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nOrigin: {evil}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let r = send(no_label);
    assert_eq!(r.status, 403, "{r:?}");
    assert!(
        r.json()["detail"]
            .as_str()
            .unwrap()
            .contains("evil.example"),
        "{r:?}"
    );
    // A body that is not JSON is what a form can send without a preflight: refused too.
    let r = send(raw(
        "/api/clusters",
        &own,
        "same-origin",
        "text/plain",
        body,
    ));
    assert_eq!(r.status, 415, "{r:?}");
    assert_eq!(
        env.sqlite("SELECT COUNT(*) FROM clusters"),
        "0",
        "nothing stored"
    );

    // The WebUI's own pages are served.
    let r = send(raw(
        "/api/clusters",
        &own,
        "same-origin",
        "application/json",
        body,
    ));
    assert_eq!(r.status, 202, "{r:?}");
    env.await_state("csrf", "running", 10 * SEC);
    let r = send(raw(
        "/api/clusters/csrf/stop",
        evil,
        "cross-site",
        "text/plain",
        "",
    ));
    assert_eq!(r.status, 403, "{r:?}");
    let r = send(raw("/api/clusters/csrf/stop", evil, "", "text/plain", ""));
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(env.cluster("csrf").unwrap()["desired_state"], "present");
    // Reading is not a change: a cross-site GET is answered (the browser keeps the answer
    // from the page, as no CORS header allows it).
    let get = format!(
        "GET /api/health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nSec-Fetch-Site: cross-site\r\n\r\n"
    );
    assert_eq!(send(get).status, 200);
    // A WebSocket from another site could read task output: refused before the upgrade.
    for header in ["Sec-Fetch-Site: cross-site", "Origin: http://evil.example"] {
        let ws = format!(
            "GET /ws/tasks HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{header}\r\n\r\n"
        );
        assert_eq!(send(ws).status, 403, "{header}");
    }
}

#[test]
fn a_rebound_dns_name_cannot_reach_the_api_but_configured_names_can() {
    let env = Env::new();
    let _d = env.start(&[
        "--allowed-hosts",
        "kindler.example",
        "--allowed-origins",
        "https://webui.example",
    ]);
    let port = env.port;
    let request = |method: &str, path: &str, host: &str, extra: &str| {
        let body = if method == "POST" && path == "/api/clusters" {
            r#"{"name":"rebound","provider":"k3d"}"#
        } else {
            ""
        };
        let raw = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        send_raw(port, raw.as_bytes(), 5 * SEC).unwrap()
    };
    // A page on evil.example, rebound to 127.0.0.1: its requests name its own host.
    let evil = format!("evil.example:{port}");
    for (method, path) in [
        ("GET", "/api/clusters"),
        ("POST", "/api/clusters"),
        ("DELETE", "/api/clusters/x"),
    ] {
        let r = request(method, path, &evil, "");
        assert_eq!(r.status, 403, "{method} {path}: {r:?}");
        assert!(
            r.json()["detail"]
                .as_str()
                .unwrap()
                .contains("evil.example"),
            "{r:?}"
        );
    }
    assert_eq!(env.sqlite("SELECT COUNT(*) FROM clusters"), "0");
    // The loopback names and addresses, with the port, are kindler.
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        "localhost".into(),
    ] {
        assert_eq!(
            request("GET", "/api/health", &host, "").status,
            200,
            "{host}"
        );
    }
    // A reverse proxy for a WebUI at https://webui.example: nginx passes its own Host
    // (proxy_set_header Host $host) or 127.0.0.1:PORT (its default, $proxy_host), and the
    // browser's Origin; both work once configured.
    let r = request(
        "POST",
        "/api/clusters",
        "kindler.example",
        "Origin: https://webui.example\r\n",
    );
    assert_eq!(r.status, 202, "{r:?}");
    let r = request(
        "POST",
        "/api/clusters/rebound/stop",
        &format!("127.0.0.1:{port}"),
        "Origin: https://webui.example\r\nSec-Fetch-Site: same-origin\r\n",
    );
    assert_eq!(r.status, 202, "{r:?}");
    let r = request(
        "POST",
        "/api/clusters/rebound/start",
        "kindler.example",
        "Origin: https://other.example\r\n",
    );
    assert_eq!(r.status, 403, "{r:?}");
}

#[test]
fn the_unix_socket_is_exempt_from_the_web_page_guards() {
    // Only root and the group kindler can open it: no web page reaches it, so what a page
    // could send over TCP (another site's Origin, a rebound Host, a text/plain body) is
    // refused there and taken here.
    use std::io::{Read, Write};
    let env = Env::new();
    let served = env.start_listening(&[]);
    let body = r#"{"name":"viaunix","provider":"k3d"}"#;
    let raw = format!(
        "POST /api/clusters HTTP/1.1\r\nHost: evil.example\r\nOrigin: http://evil.example\r\n\
         Connection: close\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let tcp = send_raw(served.port, raw.as_bytes(), 5 * SEC).unwrap();
    assert_eq!(tcp.status, 403, "over TCP: {tcp:?}");
    let mut unix = std::os::unix::net::UnixStream::connect(&served.sock).unwrap();
    unix.set_read_timeout(Some(5 * SEC)).unwrap();
    unix.write_all(raw.as_bytes()).unwrap();
    let mut answer = String::new();
    unix.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 202"),
        "over the unix socket: {answer}"
    );
    let r = common::request(served.port, "GET", "/api/clusters/viaunix", None);
    assert_eq!(r.status, 200, "{r:?}");
}

#[test]
fn a_task_id_that_reads_two_ways_follows_the_newest_declaration() {
    // `reconcile-delete-dev` is the create of a cluster named delete-dev, or the delete
    // of dev.
    let env = Env::new();
    let _d = env.start(&[]);
    let post = |body: &str| assert_eq!(env.post("/api/clusters", body).status, 202);
    post(r#"{"name":"dev","provider":"k3d"}"#);
    env.await_state("dev", "running", 10 * SEC);
    post(r#"{"name":"delete-dev","provider":"k3d","pf_port":19500}"#);
    env.await_state("delete-dev", "running", 10 * SEC);
    let task = env.get("/api/tasks/reconcile-delete-dev").json();
    assert_eq!(task["status"], "completed", "{task}");
    assert_eq!(task["message"], "Cluster delete-dev created", "{task}");

    let r = env.request("DELETE", "/api/clusters/dev", None);
    assert_eq!(r.json()["task_id"], "reconcile-delete-dev");
    env.await_gone("dev", 10 * SEC);
    let task = env.get("/api/tasks/reconcile-delete-dev").json();
    assert_eq!(task["status"], "completed", "{task}");
    assert_eq!(task["message"], "Cluster dev deleted", "{task}");
}
