//! Containers and gateways as `netguard status`, `/metrics` and the API show them: what the
//! agent knows of each, with its counters and policy read from the kernel's maps. Without an
//! agent, the same from the pinned maps alone.

use std::{collections::HashMap, path::Path};

use anyhow::Result;
use netguard_common::{CgroupPolicy, Counters};

use super::{ContainerFacts, Report};
use crate::{
    api::{BlockedFlowRecord, ContainerStatus, CounterSet, GatewayStatus},
    cgroup::{CgroupId, Hierarchy, container_of_path},
    config::{RECENT_FLOWS, RECENT_PER_CONTAINER},
    domain::ContainerId,
    kernel::{Maps, pins::attach_cgroup_ids},
};

impl Report {
    /// Every container (and static cgroup) with its counters from the kernel's maps, and
    /// with its recent blocked flows if `with_flows`.
    pub fn containers(&self, maps: &Maps, with_flows: bool) -> Result<Vec<ContainerStatus>> {
        self.expire();
        // Copied out, so that the map reads below do not hold up the watcher.
        type Known = (ContainerId, ContainerFacts, Vec<CgroupId>, Option<Counters>);
        let (statics, unknown, frozen, known) = {
            let inventory = self.inventory.read().unwrap();
            (
                inventory.static_cgroups.clone(),
                inventory.unknown.clone(),
                inventory.frozen.clone(),
                inventory
                    .containers
                    .iter()
                    .map(|(id, k)| {
                        (
                            id.clone(),
                            k.facts.clone(),
                            k.cgroups.clone(),
                            k.removed.map(|(_, last)| last),
                        )
                    })
                    .collect::<Vec<Known>>(),
            )
        };
        let policies: HashMap<CgroupId, bool> = maps
            .policies()?
            .into_iter()
            .map(|(cgroup, policy)| (cgroup, policy.is_protected()))
            .collect();
        let registered: HashMap<ContainerId, bool> = maps
            .registrations()?
            .into_iter()
            .map(|(id, policy)| (id, policy.is_protected()))
            .collect();
        let counters_of = |cgroup: Option<&CgroupId>| -> Result<Counters> {
            Ok(match cgroup {
                Some(cgroup) => maps.counters(*cgroup)?.unwrap_or_default(),
                None => Counters::default(),
            })
        };
        // One pass over the recent flows, not one per container.
        let mut recent: HashMap<CgroupId, Vec<BlockedFlowRecord>> = HashMap::new();
        if with_flows {
            for flow in self.recent_flows(RECENT_FLOWS) {
                recent.entry(flow.cgroup).or_default().push(flow);
            }
        }
        let recent_of = |cgroups: &[CgroupId]| -> Vec<BlockedFlowRecord> {
            let mut mine: Vec<BlockedFlowRecord> = cgroups
                .iter()
                .filter_map(|cgroup| recent.get(cgroup))
                .flatten()
                .cloned()
                .collect();
            // RFC 3339 times in one format sort as text.
            mine.sort_by(|a, b| a.time.cmp(&b.time));
            mine.split_off(mine.len().saturating_sub(RECENT_PER_CONTAINER))
        };

        let mut out = Vec::with_capacity(statics.len() + unknown.len() + known.len());
        for cgroup in &statics {
            let mut status = ContainerStatus::bare(cgroup.name.clone(), cgroup.id);
            status.vpn_required = true;
            status.protected = policies.get(&cgroup.id).copied().unwrap_or(false);
            status.counters = CounterSet::from(&counters_of(Some(&cgroup.id))?);
            status.recent_blocked = recent_of(&[cgroup.id]);
            out.push(status);
        }
        for unknown in unknown {
            let cgroup = unknown.cgroup;
            let mut status = ContainerStatus::bare(unknown.path.clone(), cgroup);
            status.id = container_of_path(&unknown.path)
                .map(|id| id.to_string())
                .unwrap_or_default();
            status.unknown = true;
            status.counters = CounterSet::from(&counters_of(Some(&cgroup))?);
            status.recent_blocked = recent_of(&[cgroup]);
            status.problems.push(unknown.problem());
            out.push(status);
        }
        for (id, mut facts, cgroups, removed) in known {
            if facts.privileged && facts.vpn_required {
                facts.problems.push(
                    "privileged: it can leave its cgroup and undo netguard's programs, so it is \
                     never protected; drop --privileged"
                        .into(),
                );
            }
            if let Some(reference) = &facts.decided.unresolved {
                facts.problems.push(format!(
                    "netguard.gateway={reference:?} matches no gateway container (by name, \
                     Compose service of its project, or id prefix): it may not use any tunnel; \
                     fix the label or label the gateway netguard.role=vpn-gateway"
                ));
            }
            if let Some(gateway) = &facts.decided.stranded {
                facts.problems.push(format!(
                    "stranded: it joined {gateway}'s network namespace, which {gateway} left \
                     when it restarted; it has no network until it is restarted (netguard \
                     does so when it carries the label netguard.heal=restart)"
                ));
            }
            if facts.running && cgroups.last().is_some_and(|c| frozen.contains(c)) {
                facts.problems.push(
                    "its policy could not be written (is the policy map full?): frozen, so it \
                     sends nothing, until it can be"
                        .into(),
                );
            }
            let protected = !facts.privileged
                && match (facts.running, cgroups.last()) {
                    (true, Some(cgroup)) => {
                        policies.get(cgroup).copied().unwrap_or(false)
                            && facts
                                .cgroup_path
                                .as_deref()
                                .is_some_and(|path| self.covered(path))
                    }
                    // Not running: what its next instance gets.
                    _ => removed.is_none() && registered.get(&id).copied().unwrap_or(false),
                };
            // The current (or last) instance's: a restart starts them from zero, as cAdvisor's
            // do, which Prometheus reads as a counter reset. A sum over instances would drop
            // when an agent restart forgets the older ones, and be read as a false reset.
            let counters = match removed {
                Some(last) => last,
                None => counters_of(cgroups.last())?,
            };
            let mut counters = CounterSet::from(&counters);
            counters.dns_queries = self.dns_queries(&id);
            out.push(ContainerStatus {
                name: facts.name,
                id: id.as_str().to_string(),
                image: facts.image,
                compose_project: facts.compose_project,
                compose_service: facts.compose_service,
                vpn_required: facts.vpn_required,
                protected,
                vpn_gateway: facts.vpn_gateway,
                gateway: facts.decided.gateway,
                gateway_unresolved: facts.decided.unresolved,
                stranded: facts.decided.stranded,
                running: facts.running,
                removed: removed.is_some(),
                recent_blocked: recent_of(&cgroups),
                cgroups,
                counters,
                unknown: false,
                problems: facts.problems,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    fn covered(&self, path: &Path) -> bool {
        self.attach_cgroups.iter().any(|a| path.starts_with(a))
    }
}

/// Each gateway's tunnel as written in the pinned maps.
pub fn gateways(maps: &Maps) -> Result<Vec<GatewayStatus>> {
    Ok(maps
        .gateways()?
        .into_iter()
        .map(|(slot, name, state)| GatewayStatus {
            name,
            slot: slot.0,
            tunnel_up: state.tunnel_up == 1,
            transitions: state.transitions,
            last_change_secs: state.last_change_secs,
            down_reason: None,
        })
        .collect())
}

/// What the pinned maps alone say, in the same form as the agent's answer: each cgroup with
/// a policy, named by its path (a container's id when the path names one), its policy,
/// gateway and counters. Docker's names need the agent.
pub fn status_from_pins(
    pin_dir: &Path,
    maps: &Maps,
    hierarchy: &Hierarchy,
) -> Result<(Vec<GatewayStatus>, Vec<ContainerStatus>)> {
    let gateways = gateways(maps)?;
    let slots: HashMap<u32, String> = gateways.iter().map(|g| (g.slot, g.name.clone())).collect();
    let registered: HashMap<ContainerId, CgroupPolicy> =
        maps.registrations()?.into_iter().collect();
    let attached: Vec<String> = attach_cgroup_ids(pin_dir)?
        .into_iter()
        .filter_map(|id| hierarchy.name_of(id).ok().flatten())
        .collect();
    let mut containers = Vec::new();
    for (cgroup, policy) in maps.policies()? {
        let path = hierarchy.name_of(cgroup)?;
        let id = path.as_deref().and_then(container_of_path);
        let covered = path
            .as_deref()
            .is_some_and(|p| attached.iter().any(|a| is_under(p, a)));
        let vpn_required = id
            .as_ref()
            .and_then(|id| registered.get(id))
            .map_or(policy.is_protected(), CgroupPolicy::is_protected);
        let name = path
            .clone()
            .unwrap_or_else(|| format!("cgroup {cgroup} (gone)"));
        let mut status = ContainerStatus::bare(name, cgroup);
        status.id = id.map(|id| id.as_str().to_string()).unwrap_or_default();
        status.vpn_required = vpn_required;
        status.protected = policy.is_protected() && covered;
        status.gateway = slots.get(&policy.gateway).cloned();
        status.running = path.is_some();
        status.counters = CounterSet::from(&maps.counters(cgroup)?.unwrap_or_default());
        containers.push(status);
    }
    containers.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((gateways, containers))
}

/// Whether cgroup path `path` is `ancestor` or below it.
fn is_under(path: &str, ancestor: &str) -> bool {
    ancestor == "/"
        || path == ancestor
        || path
            .strip_prefix(ancestor)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_cgroup_is_under_its_ancestors_only() {
        assert!(super::is_under("/docker/abc", "/docker"));
        assert!(super::is_under("/docker", "/docker"));
        assert!(super::is_under("/x", "/"));
        assert!(!super::is_under("/dockerx/abc", "/docker"));
    }
}
