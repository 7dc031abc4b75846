//! What a probe's output says about a cluster, for `GET /api/clusters/{name}/status`.
//!
//! The probe command's exit status decides whether a cluster is running; its output can
//! say more. kindler reads two kinds of lines from it:
//! - `kubectl get nodes` lines (`NAME STATUS ...`): the ready and total node counts;
//! - `portainer_status=online|offline` and `argocd_status=healthy|degraded`, one per line:
//!   the add-on registrations kindler cannot check itself (the default probe prints none,
//!   so they stay `unknown` unless the operator's probe reports them).

use crate::model::{AddOnStatus, ProbeReport};

impl ProbeReport {
    pub fn parse(lines: &[String]) -> Self {
        let mut report = ProbeReport {
            nodes: count_nodes(lines),
            add_ons: AddOnStatus::UNKNOWN,
        };
        let add_ons = &mut report.add_ons;
        for line in lines {
            let Some((key, value)) = line.trim().split_once('=') else {
                continue;
            };
            // A value kindler does not know is ignored rather than guessed at.
            match key {
                "portainer_status" => {
                    add_ons.portainer = value.parse().unwrap_or(add_ons.portainer)
                }
                "argocd_status" => add_ons.argocd = value.parse().unwrap_or(add_ons.argocd),
                _ => {}
            }
        }
        report
    }
}

/// Counts nodes in `kubectl get nodes` output (`NAME STATUS ...` lines).
fn count_nodes(lines: &[String]) -> Option<(i64, i64)> {
    let (mut ready, mut total) = (0, 0);
    for line in lines {
        let mut cols = line.split_whitespace();
        let (Some(_name), Some(status)) = (cols.next(), cols.next()) else {
            continue;
        };
        let state = status.split(',').next().unwrap_or("");
        if state == "Ready" {
            ready += 1;
            total += 1;
        } else if state == "NotReady" || state == "Unknown" {
            total += 1;
        }
    }
    (total > 0).then_some((ready, total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ArgocdStatus, PortainerStatus};

    fn lines(text: &[&str]) -> Vec<String> {
        text.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn counts_kubectl_nodes() {
        let report = ProbeReport::parse(&lines(&[
            "k3d-dev-server-0   Ready    control-plane,master   1m   v1.29.1+k3s1",
            "k3d-dev-agent-0    NotReady <none>                 1m   v1.29.1+k3s1",
            "k3d-dev-agent-1    Ready,SchedulingDisabled <none> 1m   v1.29.1+k3s1",
            "some other chatter",
        ]));
        assert_eq!(report.nodes, Some((2, 3)));
        assert_eq!(ProbeReport::parse(&lines(&["hello world"])).nodes, None);
    }

    #[test]
    fn reads_add_on_status_lines() {
        let report = ProbeReport::parse(&lines(&[
            "k3d-dev-server-0   Ready    control-plane,master   1m   v1.29.1+k3s1",
            "portainer_status=online",
            "  argocd_status=degraded  ",
        ]));
        assert_eq!(report.nodes, Some((1, 1)));
        assert_eq!(report.add_ons.portainer, PortainerStatus::Online);
        assert_eq!(report.add_ons.argocd, ArgocdStatus::Degraded);
    }

    #[test]
    fn add_ons_stay_unknown_unless_reported_with_a_known_value() {
        let report = ProbeReport::parse(&lines(&[
            "portainer_status=maybe",
            "argocd_status = healthy",
            "note: argocd_status=healthy",
        ]));
        assert_eq!(report.add_ons.portainer, PortainerStatus::Unknown);
        assert_eq!(report.add_ons.argocd, ArgocdStatus::Unknown);
    }
}
