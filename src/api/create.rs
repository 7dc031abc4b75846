//! `POST /api/clusters`: the `ClusterCreate` body, checked field by field (every problem
//! is reported at once, in the old backend's 422 shape). The store then claims the ports
//! and inserts the row in one transaction (`store::ports`).

use serde_json::{Map, Value};

use super::response::FieldError;
use crate::config::Settings;
use crate::model::{defaults, is_ipv4_cidr, ClusterName, ClusterSpec, Provider};
use crate::store::{ports, NewCluster};

/// A checked `ClusterCreate` body.
#[derive(Debug, Clone)]
pub struct Request {
    pub spec: ClusterSpec,
    /// Host port fields the client left out (their defaults may move; see `store::ports`).
    pub omitted: Vec<&'static str>,
    /// The host the client asked for; `None` leaves the choice to kindler.
    pub host: Option<String>,
}

impl Request {
    /// The create as the store takes it, with the port ranges of `settings`.
    pub fn into_new_cluster(self, settings: &Settings) -> NewCluster {
        NewCluster {
            spec: self.spec,
            omitted: self.omitted,
            ranges: ports::Ranges {
                pf: settings.pf_port_range,
                http: settings.http_port_range,
                https: settings.https_port_range,
            },
            host: self.host,
        }
    }
}

/// Parses and checks a request body.
pub fn parse(body: &[u8]) -> Result<Request, Vec<FieldError>> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        vec![FieldError {
            loc: vec!["body".into(), e.column().into()],
            msg: format!("JSON decode error: {e}"),
            kind: "json_invalid",
        }]
    })?;
    let Value::Object(obj) = value else {
        return Err(vec![FieldError {
            loc: vec!["body".into()],
            msg: "Input should be a valid dictionary or object".into(),
            kind: "model_attributes_type",
        }]);
    };
    let mut errors = Vec::new();
    let name = name(&obj, &mut errors);
    let provider = provider(&obj, &mut errors);
    let node_port = port(&obj, "node_port", defaults::NODE_PORT, &mut errors);
    let pf_port = port(&obj, "pf_port", defaults::PF_PORT, &mut errors);
    let http_port = port(&obj, "http_port", defaults::HTTP_PORT, &mut errors);
    let https_port = port(&obj, "https_port", defaults::HTTPS_PORT, &mut errors);
    let cluster_subnet = subnet(&obj, &mut errors);
    let register_portainer = flag(&obj, "register_portainer", &mut errors);
    let haproxy_route = flag(&obj, "haproxy_route", &mut errors);
    let register_argocd = flag(&obj, "register_argocd", &mut errors);
    distinct_host_ports(pf_port, http_port, https_port, &mut errors);
    let host = host(&obj, &mut errors);
    let omitted = ["pf_port", "http_port", "https_port"]
        .into_iter()
        .filter(|f| !obj.contains_key(*f))
        .collect();
    match (name, provider) {
        (Some(name), Some(provider)) if errors.is_empty() => Ok(Request {
            omitted,
            host,
            spec: ClusterSpec {
                name,
                provider,
                node_port,
                pf_port,
                http_port,
                https_port,
                cluster_subnet,
                register_portainer,
                haproxy_route,
                register_argocd,
            },
        }),
        _ => Err(errors),
    }
}

fn name(obj: &Map<String, Value>, errors: &mut Vec<FieldError>) -> Option<ClusterName> {
    match obj.get("name") {
        None => errors.push(FieldError::body("name", "missing", "Field required")),
        Some(Value::String(s)) => match ClusterName::parse(s) {
            Ok(n) => return Some(n),
            Err(e) => errors.push(FieldError::body(
                "name",
                "string_pattern_mismatch",
                e.to_string(),
            )),
        },
        Some(_) => errors.push(FieldError::body(
            "name",
            "string_type",
            "Input should be a valid string",
        )),
    }
    None
}

fn provider(obj: &Map<String, Value>, errors: &mut Vec<FieldError>) -> Option<Provider> {
    match obj.get("provider") {
        None => errors.push(FieldError::body("provider", "missing", "Field required")),
        Some(Value::String(s)) => match s.parse() {
            Ok(p) => return Some(p),
            Err(_) => errors.push(FieldError::body(
                "provider",
                "literal_error",
                format!("Input should be 'kind' or 'k3d', not {s:?}"),
            )),
        },
        Some(_) => errors.push(FieldError::body(
            "provider",
            "literal_error",
            "Input should be 'kind' or 'k3d'",
        )),
    }
    None
}

fn port(obj: &Map<String, Value>, field: &str, default: u16, errors: &mut Vec<FieldError>) -> u16 {
    let Some(value) = obj.get(field) else {
        return default;
    };
    match value.as_i64() {
        Some(p) if (1024..=65535).contains(&p) => p as u16,
        Some(p) if p < 1024 => {
            errors.push(FieldError::body(
                field,
                "greater_than_equal",
                format!("Input should be greater than or equal to 1024 (got {p})"),
            ));
            default
        }
        Some(p) => {
            errors.push(FieldError::body(
                field,
                "less_than_equal",
                format!("Input should be less than or equal to 65535 (got {p})"),
            ));
            default
        }
        None => {
            errors.push(FieldError::body(
                field,
                "int_type",
                "Input should be a valid integer",
            ));
            default
        }
    }
}

/// `null` and `""` leave the choice to kindler.
fn host(obj: &Map<String, Value>, errors: &mut Vec<FieldError>) -> Option<String> {
    match obj.get("host") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            errors.push(FieldError::body(
                "host",
                "string_type",
                "Input should be a valid string",
            ));
            None
        }
    }
}

fn flag(obj: &Map<String, Value>, field: &str, errors: &mut Vec<FieldError>) -> bool {
    match obj.get(field) {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            errors.push(FieldError::body(
                field,
                "bool_type",
                "Input should be a valid boolean",
            ));
            true
        }
    }
}

/// `null` and `""` mean none; anything else must be an IPv4 CIDR.
fn subnet(obj: &Map<String, Value>, errors: &mut Vec<FieldError>) -> Option<String> {
    match obj.get("cluster_subnet") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) if is_ipv4_cidr(s) => Some(s.clone()),
        Some(Value::String(s)) => {
            errors.push(FieldError::body(
                "cluster_subnet",
                "value_error",
                format!("cluster_subnet {s:?} is not an IPv4 CIDR like 10.42.0.0/16"),
            ));
            None
        }
        Some(_) => {
            errors.push(FieldError::body(
                "cluster_subnet",
                "string_type",
                "Input should be a valid string",
            ));
            None
        }
    }
}

fn distinct_host_ports(pf: u16, http: u16, https: u16, errors: &mut Vec<FieldError>) {
    let ports = [("pf_port", pf), ("http_port", http), ("https_port", https)];
    for (i, (field, port)) in ports.iter().enumerate() {
        if let Some((other, _)) = ports[..i].iter().find(|(_, p)| p == port) {
            errors.push(FieldError::body(
                field,
                "value_error",
                format!("{field} {port} is the same as {other}; each host port can be used once"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(body: &str) -> Vec<(String, &'static str)> {
        parse(body.as_bytes())
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|e| {
                (
                    e.loc.last().map(|v| v.to_string()).unwrap_or_default(),
                    e.kind,
                )
            })
            .collect()
    }

    #[test]
    fn accepts_the_webui_body_with_defaults() {
        let req = parse(br#"{"name":"dev","provider":"k3d","cluster_subnet":""}"#).unwrap();
        assert_eq!(req.omitted, ["pf_port", "http_port", "https_port"]);
        let spec = req.spec;
        assert_eq!(spec.node_port, 30080);
        assert_eq!(spec.pf_port, 19000);
        assert_eq!(spec.cluster_subnet, None);
        assert!(spec.register_portainer && spec.haproxy_route && spec.register_argocd);
    }

    #[test]
    fn reports_every_bad_field() {
        let found = errors(
            r#"{"name":"Bad Name","provider":"minikube","node_port":80,"pf_port":"x","register_argocd":"yes","cluster_subnet":"10.0.0.0/33"}"#,
        );
        let fields: Vec<&str> = found.iter().map(|(f, _)| f.trim_matches('"')).collect();
        assert_eq!(
            fields,
            [
                "name",
                "provider",
                "node_port",
                "pf_port",
                "cluster_subnet",
                "register_argocd"
            ]
        );
        assert_eq!(
            errors(r#"{"provider":"kind"}"#),
            [("\"name\"".into(), "missing")]
        );
        assert_eq!(errors("[1]")[0].1, "model_attributes_type");
        assert_eq!(errors("{nope")[0].1, "json_invalid");
    }

    #[test]
    fn cidr_rules() {
        for ok in ["10.42.0.0/16", "192.168.1.0/24", "0.0.0.0/0"] {
            assert!(is_ipv4_cidr(ok), "{ok}");
        }
        for bad in [
            "10.42.0.0",
            "10.42.0/16",
            "10.42.0.0/",
            "10.42.0.256/16",
            "a.b.c.d/8",
            "10.0.0.0/16; rm",
        ] {
            assert!(!is_ipv4_cidr(bad), "{bad}");
        }
    }
}
