//! Keeping what the watcher knows in line with Docker, and the kernel with the decision.

use std::collections::{BTreeSet, HashMap};

use anyhow::{Context as _, Result};
use bollard::{Docker, query_parameters::ListContainersOptionsBuilder};
use ipnet::IpNet;
use tracing::{debug, info, warn};

use super::{Watcher, gateways::Change, inspect};
use crate::{
    domain::ContainerId,
    host::network::connected_private_subnets,
    kernel::maps::now_secs,
    labels::ContainerLabels,
    reconcile::{
        Container, DesiredState, Instance, Snapshot,
        apply::{Applied, Prune},
        decide,
        garbage::{self, Keep, KernelView},
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
            match inspect::inspect(docker, &id, self.hierarchy.root()).await {
                Ok(found) => self.update(&id, found),
                // Still listed: registered and, if a gateway, known by what the listing says.
                Err(error) => {
                    warn!(
                        container = id.short(),
                        "inspecting: {error:#} (retried at the next resync)"
                    );
                    self.update(&id, Some(inspect::from_summary(summary)));
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
        let labels =
            ContainerLabels::parse(attributes.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let name = attributes.get("name").cloned().unwrap_or_default();
        self.containers
            .insert(id.clone(), Container::new(id.clone(), name, labels));
    }

    /// Inspects one container again and reconciles.
    pub(super) async fn refresh(&mut self, docker: &Docker, id: &ContainerId) -> Result<()> {
        let found = inspect::inspect(docker, id, self.hierarchy.root()).await?;
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
        container.labels = found.labels;
        container.network_mode = found.network_mode;
        container.docker_healthy = found.docker_healthy;
        let mut cgroup = container.running.as_ref().map(|i| i.cgroup);
        match found.running {
            Some(Ok(running)) => {
                let previous = container.running.take();
                let same = previous.as_ref().filter(|i| i.cgroup == running.cgroup.id);
                let veths = match (running.veths, same) {
                    (Ok(veths), _) => veths,
                    // Unreadable now: what was found for this instance stands.
                    (Err(error), previous) => {
                        warn!(container = container.name, "listing its veths: {error}");
                        previous.map(|i| i.veths.clone()).unwrap_or_default()
                    }
                };
                if same.is_none() && container.labels.protected {
                    warn_without_backstop(container, &veths);
                }
                cgroup = Some(running.cgroup.id);
                container.started(Instance {
                    pid: running.pid,
                    cgroup: running.cgroup.id,
                    veths,
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
        self.report.container_seen(id, found.facts, cgroup);
        if let Some((decision, _)) = self.decisions.get(id) {
            self.report
                .set_gateway(id, decision.gateway.gateway().map(str::to_string));
        }
    }

    /// Docker says the container stopped: so it is until Docker says otherwise (a gateway's
    /// tunnel is down for everyone behind it at once). Its entries stay until its cgroup is
    /// gone.
    pub(super) fn stopped(&mut self, id: &ContainerId) {
        if let Some(container) = self.containers.get_mut(id) {
            container.running = None;
        }
        self.report.container_stopped(id);
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
        self.log_applied(applied);
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
            self.report
                .set_gateway(&id, now.0.gateway.gateway().map(str::to_string));
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
                if let Change::Moved { gateway, interface } = change {
                    let name = self.containers.get(&gateway).map_or("", |c| &c.name);
                    info!(gateway = name, tunnel = ?interface, "tunnel interface changed");
                }
            }
        }
        if changed {
            let desired = self.desired();
            let mut applied = Applied::default();
            self.applier.apply_gateways(
                &desired.gateways,
                &mut self.datapath,
                now_secs(),
                &mut applied,
            );
            self.log_applied(applied);
        }
    }

    fn log_applied(&self, applied: Applied) {
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

    /// Drops the kernel entries of cgroups that no longer exist. At a full sync, a held cgroup
    /// Docker did not account for at two syncs running is not a Docker container: it is
    /// counted only from then on.
    pub(super) fn collect_garbage(&mut self, full_sync: bool) -> Result<()> {
        let mut view = KernelView {
            policies: self.datapath.maps.policies()?,
            counted: self.datapath.maps.counted_cgroups()?,
            alive: BTreeSet::new(),
        };
        for cgroup in view.cgroups() {
            if self.hierarchy.exists(cgroup)? {
                view.alive.insert(cgroup);
            }
        }
        let keep = Keep::of(&self.statics, &self.containers);
        let garbage = garbage::collect(&view, &keep, &self.unaccounted, full_sync);
        for cgroup in &garbage.count_only {
            warn!(
                cgroup,
                "a cgroup named like a container that Docker does not know: counting it only"
            );
        }
        if !garbage.retire.is_empty() || !garbage.forget.is_empty() {
            debug!(retired = ?garbage.retire, forgotten = ?garbage.forget, "cgroups gone");
        }
        let applied = self.applier.collect(&garbage, &mut self.datapath);
        self.log_applied(applied);
        if full_sync {
            self.unaccounted = garbage.unaccounted.clone();
        }
        if garbage.mark_stopped(&mut self.containers) {
            self.reconcile();
        }
        Ok(())
    }

    /// Internal destinations from Docker's network subnets and the host's directly
    /// connected private subnets.
    pub(super) async fn sync_internal(&mut self, docker: &Docker) -> Result<()> {
        let mut cidrs = Vec::new();
        for network in docker
            .list_networks(None)
            .await
            .context("listing networks")?
        {
            for config in network.ipam.and_then(|i| i.config).unwrap_or_default() {
                if let Some(subnet) = config.subnet.and_then(|s| s.parse::<IpNet>().ok()) {
                    cidrs.push(subnet);
                }
            }
        }
        cidrs.extend(connected_private_subnets()?);
        cidrs.sort();
        cidrs.dedup();
        debug!(?cidrs, "internal networks");
        self.discovered_internal = cidrs;
        Ok(())
    }
}

/// A protected container whose raw frames no backstop can stop says so once per start.
fn warn_without_backstop(container: &Container, veths: &[u32]) {
    match container.network_mode.as_str() {
        "host" => warn!(
            container = container.name,
            "protected container uses the host network: its sockets are enforced, but raw \
             frames cannot be stopped without a veth of its own"
        ),
        "none" => {}
        _ if veths.is_empty() => warn!(
            container = container.name,
            "no veth of the container's namespace found on the host: raw frames from it are \
             not stopped (sockets are)"
        ),
        _ => {}
    }
}
