//! Keeping what the watcher knows in line with Docker, and the kernel with the decision.

use std::collections::{BTreeSet, HashMap};

use anyhow::{Context as _, Result};
use bollard::{Docker, query_parameters::ListContainersOptionsBuilder};
use ipnet::IpNet;
use tracing::{debug, info, warn};

use super::{Watcher, gateways::Change, inspect};
use crate::{
    domain::ContainerId,
    host::network::{direct_subnets, private},
    kernel::maps::now_secs,
    labels::{ContainerLabels, ImageLabels},
    netns,
    reconcile::{
        Container, DesiredState, Instance, Netns, Snapshot,
        apply::{Applied, Prune},
        decide,
    },
    report::DockerSync,
};

impl Watcher {
    /// Re-reads every container and the internal networks from Docker, and the kernel's
    /// state, and reconciles everything.
    pub(super) async fn full_sync(&mut self, docker: &Docker) -> Result<()> {
        self.sync_internal(docker).await?;
        let listed = docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default().all(true).build(),
            ))
            .await
            .context("listing containers")?;
        let mut ids = BTreeSet::new();
        for summary in &listed {
            let Some(id) = summary.id.as_deref().and_then(|id| id.parse().ok()) else {
                continue;
            };
            match inspect::inspect(docker, &id, self.hierarchy.root(), &mut self.images).await {
                Ok(found) => self.update(&id, found),
                // Still listed: registered and, if a gateway, known by what the listing says.
                Err(error) => {
                    warn!(
                        container = id.short(),
                        "inspecting: {error:#} (retried at the next resync)"
                    );
                    self.update(&id, Some(inspect::from_summary(summary, &self.images)));
                }
            }
            ids.insert(id);
        }
        let gone: Vec<ContainerId> = self
            .containers
            .keys()
            .filter(|id| !ids.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            self.destroyed(&id)?;
        }
        // Writes lost, or made by an earlier agent, are redone from what the kernel holds.
        self.applier.reload(&self.datapath)?;
        self.reconcile();
        self.collect_garbage(true)?;
        // Running containers' policies first, then the classifier's reserves for new ones.
        self.datapath.restore_reserves();
        self.report.set_docker(DockerSync::InSync);
        let protected = self
            .decisions
            .values()
            .filter(|(d, _)| d.policy.is_protected())
            .count();
        info!(
            containers = self.containers.len(),
            protected, "Docker: in sync"
        );
        Ok(())
    }

    /// A container was created: what its create event says is enough to register it before
    /// its cgroup exists.
    pub(super) fn created(&mut self, id: &ContainerId, attributes: &HashMap<String, String>) {
        if self.containers.contains_key(id) {
            return;
        }
        // The event's labels include the image's: nothing loosening counts before the
        // inspect that tells them apart.
        let labels = ContainerLabels::parse_container(
            attributes.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            ImageLabels::Unknown,
        );
        let name = attributes.get("name").cloned().unwrap_or_default();
        self.containers
            .insert(id.clone(), Container::new(id.clone(), name, labels));
    }

    /// Inspects one container again and reconciles.
    pub(super) async fn refresh(&mut self, docker: &Docker, id: &ContainerId) -> Result<()> {
        let found = inspect::inspect(docker, id, self.hierarchy.root(), &mut self.images).await?;
        if found.is_none() {
            self.destroyed(id)?;
        } else {
            self.update(id, found);
        }
        self.reconcile();
        Ok(())
    }

    /// Takes in what an inspect found.
    fn update(&mut self, id: &ContainerId, found: Option<inspect::Inspected>) {
        let Some(found) = found else {
            return;
        };
        let reported = self.reported.entry(id.clone()).or_default();
        for problem in &found.labels.problems {
            if reported.insert(problem.clone()) {
                self.report.label_problem();
                warn!(container = found.name, id = id.short(), "{problem}");
            }
        }
        let container = self.containers.entry(id.clone()).or_insert_with(|| {
            Container::new(id.clone(), String::new(), ContainerLabels::default())
        });
        container.name = found.name.clone();
        container.project = found.project.clone();
        container.service = found.service.clone();
        container.labels = found.labels;
        container.network_mode = found.network_mode;
        container.docker_healthy = found.docker_healthy;
        container.networks = found.networks;
        let mut cgroup = container.running.as_ref().map(|i| i.cgroup);
        match found.running {
            Some(Ok(running)) => {
                let previous = container.running.take();
                let same = previous.as_ref().filter(|i| i.cgroup == running.cgroup.id);
                let netns = match (running.netns, same) {
                    (Ok((cookie, interfaces)), _) => {
                        let host = cookie == self.statics.host_netns;
                        let interfaces = if host {
                            netns::host_backstop_interfaces(
                                interfaces,
                                self.statics.host_interfaces.as_deref(),
                            )
                        } else {
                            interfaces
                        };
                        Some(Netns {
                            cookie,
                            path: netns::of_process(running.pid),
                            interfaces: interfaces.into_iter().collect(),
                            host,
                        })
                    }
                    // Unreadable now: what was found for this instance stands.
                    (Err(error), previous) => {
                        warn!(container = container.name, "{error}");
                        previous.and_then(|i| i.netns.clone())
                    }
                };
                cgroup = Some(running.cgroup.id);
                container.started(Instance {
                    pid: running.pid,
                    cgroup: running.cgroup.id,
                    netns,
                });
            }
            // Docker says it runs, but the host's facts are unreadable: what was known stays
            // (the classifier's entry keeps enforcing a new instance meanwhile).
            Some(Err(error)) => warn!(container = container.name, "{error}"),
            None => {
                container.running = None;
                cgroup = None;
            }
        }
        if let Some(cgroup) = cgroup
            && let Err(error) = self.datapath.maps.set_owner(cgroup, id, &found.name)
        {
            // Only the naming of its blocked flows after it is gone suffers.
            debug!(container = found.name, "{error:#}");
        }
        self.report.container_seen(id, found.facts, cgroup);
        if let Some((decision, _)) = self.decisions.get(id) {
            let (gateway, unresolved) = decision.gateway.shown();
            self.report.set_gateway(id, gateway, unresolved);
        }
    }

    /// The container is gone from Docker: its last counters stay visible for the metrics'
    /// grace period; the kernel entries of its cgroups go once they are gone (GC).
    pub(super) fn destroyed(&mut self, id: &ContainerId) -> Result<()> {
        let Some(container) = self.containers.remove(id) else {
            return Ok(());
        };
        let last = match container.instances.last() {
            Some(cgroup) => self.datapath.maps.counters(*cgroup)?.unwrap_or_default(),
            None => netguard_common::Counters::default(),
        };
        self.report.container_removed(id, last);
        self.reported.remove(id);
        self.decisions.remove(id);
        Ok(())
    }

    fn desired(&self) -> DesiredState {
        let tunnels = self.tunnels.tunnels();
        decide(&Snapshot {
            statics: &self.statics,
            discovered_internal: &self.discovered_internal,
            containers: &self.containers,
            tunnels: &tunnels,
        })
    }

    /// Brings the kernel in line with the decision for every container at once.
    pub(super) fn reconcile(&mut self) {
        self.tunnels.sync(&self.containers);
        let desired = self.desired();
        let applied = self
            .applier
            .apply(&desired, &mut self.datapath, Prune::Yes, now_secs());
        self.freeze_unenforced(&applied.unwritten);
        self.log_applied(applied);
        self.sync_resolvers(&desired);
        self.note_stranded();
        for problem in &desired.problems {
            if self.problems.insert(problem.clone()) {
                warn!("{problem}");
            }
        }
        for (id, decision) in desired.decisions {
            let container = &self.containers[&id];
            let cgroup = container.running.as_ref().map(|i| i.cgroup);
            let now = (decision, cgroup);
            if self.decisions.get(&id) == Some(&now) {
                continue;
            }
            info!(
                container = container.name,
                id = id.short(),
                cgroup,
                protected = now.0.policy.is_protected(),
                gateway = ?now.0.gateway,
                "classified"
            );
            if let Some(reference) = now.0.gateway.unresolved() {
                warn!(
                    container = container.name,
                    id = id.short(),
                    "netguard.gateway={reference:?} matches no gateway container (by name, \
                     Compose service of its project, or id prefix): it may use no tunnel until \
                     it does; fix the label, or label the gateway netguard.role=vpn-gateway"
                );
            }
            let (gateway, unresolved) = now.0.gateway.shown();
            self.report.set_gateway(&id, gateway, unresolved);
            self.decisions.insert(id, now);
        }
    }

    /// Takes in a round of tunnel health; a tunnel that went up or down is one slot write
    /// for every container behind it.
    pub(super) fn on_health(&mut self, rounds: Vec<crate::tunnel::probe::HealthRound>) {
        let mut changed = false;
        for round in rounds {
            for change in self.tunnels.record(round) {
                changed = true;
                match change {
                    Change::Moved { gateway, interface } => {
                        let name = self.containers.get(&gateway).map_or("", |c| &c.name);
                        info!(gateway = name, tunnel = ?interface, "tunnel interface changed");
                    }
                    Change::Carriers { gateway } => {
                        let name = self.containers.get(&gateway).map_or("", |c| &c.name);
                        let peers = self.tunnels.carriers(&gateway);
                        info!(gateway = name, ?peers, "kernel tunnel peers changed");
                    }
                    Change::Health { .. } => {}
                }
            }
        }
        let reasons = self
            .containers
            .values()
            .filter_map(|c| Some((c.name.clone(), self.tunnels.down_reason(&c.id)?.to_string())))
            .collect();
        self.report.set_down_reasons(reasons);
        if changed {
            let desired = self.desired();
            let mut applied = Applied::default();
            self.applier.apply_gateways(
                &desired.gateways,
                &mut self.datapath,
                now_secs(),
                &mut applied,
            );
            self.applier.apply_carriers(
                &desired.carriers,
                &mut self.datapath,
                Prune::Yes,
                &mut applied,
            );
            self.log_applied(applied);
            // External names go through the tunnel, or are refused at once, as it is now.
            self.sync_resolvers(&desired);
        }
    }

    /// netguard's resolvers in line with the decision and the tunnels.
    fn sync_resolvers(&mut self, desired: &DesiredState) {
        self.resolvers.sync(
            crate::dns::names::Directory::new(&self.containers),
            crate::dns::plan(&self.containers, desired),
            &mut self.datapath.maps,
        );
    }

    pub(super) fn log_applied(&self, applied: Applied) {
        for failure in applied.failures {
            warn!(
                "{}: {:#} (retried at the next resync)",
                failure.subject, failure.error
            );
        }
        for change in applied.tunnel_changes {
            if change.up {
                info!(
                    gateway = change.gateway,
                    transitions = change.transitions,
                    "tunnel up"
                );
            } else {
                let reason = self
                    .containers
                    .values()
                    .find(|c| c.name == change.gateway)
                    .and_then(|c| self.tunnels.last_reason(&c.id))
                    .unwrap_or("stopped");
                warn!(
                    gateway = change.gateway,
                    reason,
                    transitions = change.transitions,
                    "tunnel down: traffic behind it is blocked (reason tunnel_down)"
                );
            }
        }
    }

    /// Internal destinations: the subnets of Docker's bridge networks the host reaches
    /// directly (its own address on the bridge), and the host's directly connected private
    /// subnets. A macvlan, ipvlan, overlay or config-only network's subnet is only a
    /// declaration: it counts only if configured (`internal_cidrs`).
    pub(super) async fn sync_internal(&mut self, docker: &Docker) -> Result<()> {
        let direct = direct_subnets()?;
        let mut cidrs = Vec::new();
        for network in docker
            .list_networks(None)
            .await
            .context("listing networks")?
        {
            let bridge = network.driver.as_deref() == Some("bridge");
            let config_only = network.config_only.unwrap_or(false);
            for config in network.ipam.and_then(|i| i.config).unwrap_or_default() {
                let Some(subnet) = config.subnet.and_then(|s| s.parse::<IpNet>().ok()) else {
                    continue;
                };
                if bridge && !config_only && direct.contains(&subnet.trunc()) {
                    cidrs.push(subnet);
                } else {
                    debug!(
                        network = network.name.as_deref().unwrap_or_default(),
                        %subnet,
                        "not internal: not a bridge network the host reaches directly"
                    );
                }
            }
        }
        // The host's LANs: the private ones of the routes just read.
        cidrs.extend(private(&direct));
        cidrs.sort();
        cidrs.dedup();
        debug!(?cidrs, "internal networks");
        self.discovered_internal = cidrs;
        Ok(())
    }
}
