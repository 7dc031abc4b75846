//! The domain vocabulary: cluster names, providers, desired and actual states, actions.
//!
//! Every value that crosses a boundary (HTTP body, database row, script argument) is
//! parsed into one of these types first, so that the rest of the daemon cannot hold a
//! name with a quote in it or a state nobody defined.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// A validated cluster name: 1–63 characters of `[a-z0-9-]`, starting and ending with an
/// alphanumeric (a DNS label). Names become script arguments, container names and
/// kubeconfig contexts, so nothing else is ever let through.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ClusterName(String);

/// Why a string is not a [`ClusterName`]; the message is shown to API clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    Empty,
    TooLong(usize),
    BadCharacter(char),
    BadEdge,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Empty => write!(f, "name must not be empty"),
            NameError::TooLong(n) => {
                write!(f, "name is {n} characters long; at most 63 are allowed")
            }
            NameError::BadCharacter(c) => write!(
                f,
                "name contains {c:?}; only lowercase letters, digits and '-' are allowed"
            ),
            NameError::BadEdge => write!(
                f,
                "name must start and end with a lowercase letter or digit"
            ),
        }
    }
}

impl ClusterName {
    pub const MAX_LEN: usize = 63;

    pub fn parse(s: &str) -> Result<Self, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        let chars = s.chars().count();
        if chars > Self::MAX_LEN {
            return Err(NameError::TooLong(chars));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(NameError::BadCharacter(c));
        }
        if s.starts_with('-') || s.ends_with('-') {
            return Err(NameError::BadEdge);
        }
        Ok(ClusterName(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClusterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Defines a string-backed enum with `as_str`, `Display`, `FromStr` and `Serialize`,
/// so the database, the API and the journal all spell a value the same way.
macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        "{other:?} is not one of: {}",
                        [$($text),+].join(", ")
                    )),
                }
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}

string_enum! {
    /// The tool that runs a cluster's nodes as containers.
    Provider { Kind => "kind", K3d => "k3d" }
}

impl Provider {
    /// The kubeconfig context the provider writes for a cluster.
    pub fn context(self, name: &ClusterName) -> String {
        format!("{}-{}", self.as_str(), name)
    }
}

string_enum! {
    /// What the user declared. `stopped` is kindler's addition: the cluster exists but its
    /// nodes are stopped; `present` means it exists and runs.
    DesiredState { Present => "present", Stopped => "stopped", Absent => "absent" }
}

string_enum! {
    /// What kindler last observed. The transitional states (`creating`, `deleting`,
    /// `starting`, `stopping`) are written when an action starts; finding one in the store
    /// while no action runs means the daemon stopped mid-action and the action is redone.
    ActualState {
        Unknown => "unknown",
        Creating => "creating",
        Running => "running",
        Failed => "failed",
        Deleting => "deleting",
        Stopping => "stopping",
        Stopped => "stopped",
        Starting => "starting",
    }
}

string_enum! {
    /// The cluster's Portainer registration, as the probe command reports it.
    PortainerStatus { Online => "online", Offline => "offline", Unknown => "unknown" }
}

string_enum! {
    /// The cluster's Argo CD registration, as the probe command reports it.
    ArgocdStatus { Healthy => "healthy", Degraded => "degraded", Unknown => "unknown" }
}

/// What the last probe of a running cluster said about its add-on registrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddOnStatus {
    pub portainer: PortainerStatus,
    pub argocd: ArgocdStatus,
}

/// Everything a finished probe reported (parsed by `reconciler::probe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeReport {
    /// Ready and total nodes, when the probe printed `kubectl get nodes` lines.
    pub nodes: Option<(i64, i64)>,
    pub add_ons: AddOnStatus,
}

impl AddOnStatus {
    pub const UNKNOWN: AddOnStatus = AddOnStatus {
        portainer: PortainerStatus::Unknown,
        argocd: ArgocdStatus::Unknown,
    };

    /// Reads stored values; anything unexpected another tool wrote is `unknown`.
    pub fn from_stored(portainer: Option<&str>, argocd: Option<&str>) -> Self {
        AddOnStatus {
            portainer: portainer
                .and_then(|s| s.parse().ok())
                .unwrap_or(PortainerStatus::Unknown),
            argocd: argocd
                .and_then(|s| s.parse().ok())
                .unwrap_or(ArgocdStatus::Unknown),
        }
    }
}

impl ActualState {
    /// Every state, in the order a summary lists them: settled and busy ones first.
    pub const ALL: [ActualState; 8] = [
        ActualState::Running,
        ActualState::Creating,
        ActualState::Starting,
        ActualState::Stopping,
        ActualState::Deleting,
        ActualState::Failed,
        ActualState::Stopped,
        ActualState::Unknown,
    ];

    /// Parses a stored value; anything another tool wrote that we do not know is `unknown`.
    pub fn from_stored(s: Option<&str>) -> Self {
        s.and_then(|s| s.parse().ok())
            .unwrap_or(ActualState::Unknown)
    }
}

string_enum! {
    /// Something the reconciler does to a cluster by running a configured command.
    Action {
        Create => "create",
        Delete => "delete",
        Start => "start",
        Stop => "stop",
        Probe => "probe",
    }
}

impl Action {
    pub const ALL: [Action; 5] = [
        Action::Create,
        Action::Delete,
        Action::Start,
        Action::Stop,
        Action::Probe,
    ];

    /// The state a cluster is in while this action runs.
    pub fn in_progress_state(self) -> Option<ActualState> {
        match self {
            Action::Create => Some(ActualState::Creating),
            Action::Delete => Some(ActualState::Deleting),
            Action::Start => Some(ActualState::Starting),
            Action::Stop => Some(ActualState::Stopping),
            Action::Probe => None,
        }
    }

    /// The state a cluster is in once this action succeeded (`None`: the row is removed).
    pub fn success_state(self) -> Option<ActualState> {
        match self {
            Action::Create | Action::Start | Action::Probe => Some(ActualState::Running),
            Action::Stop => Some(ActualState::Stopped),
            Action::Delete => None,
        }
    }

    /// Whether running this action still moves a cluster toward `desired`. A create serves
    /// `stopped` too: the cluster has to exist before it can be stopped, so a create that
    /// is half done when the user declares "stopped" carries on rather than starting over.
    pub fn serves(self, desired: DesiredState) -> bool {
        use DesiredState as D;
        matches!(
            (self, desired),
            (Action::Create, D::Present | D::Stopped)
                | (Action::Start | Action::Probe, D::Present)
                | (Action::Stop, D::Stopped)
                | (Action::Delete, D::Absent)
        )
    }

    /// The desired state this action works toward; when the declared state moves away
    /// from it, the action is cancelled.
    pub fn goal(self) -> DesiredState {
        match self {
            Action::Create | Action::Start | Action::Probe => DesiredState::Present,
            Action::Stop => DesiredState::Stopped,
            Action::Delete => DesiredState::Absent,
        }
    }
}

string_enum! {
    /// How a reconcile run ended, as kept in the history.
    RunOutcome {
        Running => "running",
        Succeeded => "succeeded",
        Failed => "failed",
        TimedOut => "timed_out",
        Cancelled => "cancelled",
        Interrupted => "interrupted",
    }
}

/// The declared shape of a cluster: everything the create script is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSpec {
    pub name: ClusterName,
    pub provider: Provider,
    pub node_port: u16,
    pub pf_port: u16,
    pub http_port: u16,
    pub https_port: u16,
    pub cluster_subnet: Option<String>,
    pub register_portainer: bool,
    pub haproxy_route: bool,
    pub register_argocd: bool,
}

impl ClusterSpec {
    /// The ports this cluster claims, with the field each came from.
    pub fn ports(&self) -> [(&'static str, u16); 4] {
        [
            ("node_port", self.node_port),
            ("pf_port", self.pf_port),
            ("http_port", self.http_port),
            ("https_port", self.https_port),
        ]
    }
}

/// An inclusive range of host ports, from which a create's ports are claimed (the
/// `*_port_range` settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// A range that holds at least one port, port 0 not among them; the reason reads
    /// "it …", as the settings' reasons do.
    pub fn new(first: u16, last: u16) -> Result<Self, String> {
        if first == 0 || first > last {
            return Err(format!("it is empty or starts at port 0 ({first}-{last})"));
        }
        Ok(PortRange { first, last })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// An IPv4 CIDR like `10.42.0.0/16`: four decimal octets (std's strict parser: no leading
/// zeros, no extras) and a prefix length of at most 32. A cluster's subnet goes to its
/// scripts; the API and the store's reader hold it to this.
pub fn is_ipv4_cidr(s: &str) -> bool {
    let Some((addr, bits)) = s.split_once('/') else {
        return false;
    };
    let bits_ok = !bits.is_empty()
        && bits.len() <= 2
        && bits.bytes().all(|b| b.is_ascii_digit())
        && bits.parse::<u8>().is_ok_and(|b| b <= 32);
    // std's parser is strict: four decimal octets, no leading zeros, no extras.
    bits_ok && addr.parse::<std::net::Ipv4Addr>().is_ok()
}

/// Contract defaults for fields a client leaves out (and legacy rows left NULL).
pub mod defaults {
    pub const NODE_PORT: u16 = 30080;
    pub const PF_PORT: u16 = 19000;
    pub const HTTP_PORT: u16 = 18080;
    pub const HTTPS_PORT: u16 = 18443;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_dns_label_rules() {
        for ok in ["a", "dev", "a-b", "x1", &"a".repeat(63)] {
            assert!(ClusterName::parse(ok).is_ok(), "{ok}");
        }
        let bad = [
            ("", NameError::Empty),
            ("-a", NameError::BadEdge),
            ("a-", NameError::BadEdge),
            ("A", NameError::BadCharacter('A')),
            ("a b", NameError::BadCharacter(' ')),
            ("a;rm", NameError::BadCharacter(';')),
            ("a/b", NameError::BadCharacter('/')),
            ("a'b", NameError::BadCharacter('\'')),
            ("é", NameError::BadCharacter('é')),
        ];
        for (input, err) in bad {
            assert_eq!(ClusterName::parse(input), Err(err), "{input}");
        }
        assert_eq!(
            ClusterName::parse(&"a".repeat(64)),
            Err(NameError::TooLong(64))
        );
    }

    #[test]
    fn states_round_trip_through_text() {
        use ActualState::*;
        for s in [
            Unknown, Creating, Running, Failed, Deleting, Stopping, Stopped, Starting,
        ] {
            assert_eq!(s.as_str().parse::<ActualState>(), Ok(s));
        }
        assert_eq!(
            ActualState::from_stored(Some("weird")),
            ActualState::Unknown
        );
        assert!("gone"
            .parse::<DesiredState>()
            .unwrap_err()
            .contains("present"));
    }
}
