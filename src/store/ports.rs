//! Claiming host ports for a new cluster: the rule every backend applies inside the
//! transaction that inserts the row, so that two concurrent creates cannot claim one port.
//!
//! A host port that is a default rather than a choice is moved to the next free port of
//! its range when another cluster holds it: a port the client left out, or the first port
//! of the range, which the WebUI's form sends for every cluster unless the user edits it.
//! A port the client chose that is taken is refused, naming the cluster holding it.
//!
//! The rule is pure; the backend answers its two questions (who holds a port, which ports
//! of a range are used) from its own transaction.

use crate::model::{ClusterName, ClusterSpec, PortRange};

use super::StoreResult;

/// The ranges defaults move within (from the settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ranges {
    pub pf: PortRange,
    pub http: PortRange,
    pub https: PortRange,
}

impl Ranges {
    fn of(&self, field: &str) -> Option<PortRange> {
        match field {
            "pf_port" => Some(self.pf),
            "http_port" => Some(self.http),
            "https_port" => Some(self.https),
            _ => None,
        }
    }
}

/// Why a create was refused by what is already stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Exists,
    PortTaken {
        field: &'static str,
        port: u16,
        holder: String,
        holder_field: &'static str,
    },
    RangeFull {
        field: &'static str,
        range: PortRange,
    },
    /// The create named a host kindler does not know (no agent ever ran there).
    UnknownHost {
        host: String,
        known: Vec<String>,
    },
    /// No host's agent is running, so nobody could create the cluster.
    NoLiveHost,
}

impl Refusal {
    pub fn message(&self, name: &ClusterName) -> String {
        match self {
            Refusal::Exists => format!("Cluster {name} already exists"),
            Refusal::PortTaken {
                field,
                port,
                holder,
                holder_field,
            } => format!(
                "{field} {port} is already used by cluster {holder} (as its {holder_field})"
            ),
            Refusal::RangeFull { field, range } => {
                format!("{field}: every port in {range} is in use by other clusters")
            }
            Refusal::UnknownHost { host, known } => format!(
                "host {host:?} is not one of kindler's hosts (known: {})",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ),
            Refusal::NoLiveHost => {
                "no host's kindler agent is running; the cluster cannot be placed".into()
            }
        }
    }

    /// The refusal is about the request itself (a name that does not exist), not a
    /// conflict with what is stored.
    pub fn is_invalid_request(&self) -> bool {
        matches!(self, Refusal::UnknownHost { .. })
    }
}

/// A port moved off the WebUI's default because another cluster holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reassigned {
    pub field: &'static str,
    pub from: u16,
    pub to: u16,
}

/// The questions the rule asks of the store, about the clusters of one host that are not
/// being deleted.
pub trait PortBook {
    /// Another cluster holding `port`: its name and the field it holds it in. A node port
    /// only conflicts with host ports (each cluster has its own NodePort space).
    fn holder(
        &mut self,
        port: u16,
        is_node_port: bool,
    ) -> StoreResult<Option<(String, &'static str)>>;
    /// Ports between `range.first` and `range.last` that some cluster holds, in any field.
    fn in_use(&mut self, range: PortRange) -> StoreResult<Vec<u16>>;
}

/// Claims `spec`'s ports, moving defaults that are taken; `omitted` names the host port
/// fields the client left out.
pub fn claim(
    book: &mut impl PortBook,
    spec: &mut ClusterSpec,
    omitted: &[&'static str],
    ranges: &Ranges,
) -> StoreResult<Result<Vec<Reassigned>, Refusal>> {
    let mut reassigned = Vec::new();
    for (field, port) in spec.ports() {
        let Some((holder, holder_field)) = book.holder(port, field == "node_port")? else {
            continue;
        };
        match ranges.of(field) {
            Some(range) if port == range.first || omitted.contains(&field) => {
                let taken = book.in_use(range)?;
                let own = spec.ports().map(|(_, p)| p);
                let free =
                    (range.first..=range.last).find(|p| !taken.contains(p) && !own.contains(p));
                let Some(to) = free else {
                    return Ok(Err(Refusal::RangeFull { field, range }));
                };
                set_port(spec, field, to);
                reassigned.push(Reassigned {
                    field,
                    from: port,
                    to,
                });
            }
            _ => {
                return Ok(Err(Refusal::PortTaken {
                    field,
                    port,
                    holder,
                    holder_field,
                }))
            }
        }
    }
    Ok(Ok(reassigned))
}

fn set_port(spec: &mut ClusterSpec, field: &str, port: u16) {
    match field {
        "pf_port" => spec.pf_port = port,
        "http_port" => spec.http_port = port,
        "https_port" => spec.https_port = port,
        _ => spec.node_port = port,
    }
}

/// Which field of a cluster holds a port, as the stores name it.
pub fn field_name(field: &str) -> &'static str {
    match field {
        "pf_port" => "pf_port",
        "http_port" => "http_port",
        "https_port" => "https_port",
        _ => "node_port",
    }
}
