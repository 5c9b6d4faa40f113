//! Healing after a gateway restart: a container that joined a gateway's network namespace
//! (`network_mode: service:gluetun`) stays in the old one when the gateway restarts, with no
//! network, until it is restarted. With an opt-in (`netguard.heal=restart` on it, or
//! `heal_stranded = true`), the agent restarts it once the gateway's tunnel is up again,
//! with backoff and a cap; without, `status`, a metric and an alert name it.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use bollard::{Docker, query_parameters::RestartContainerOptionsBuilder};
use tracing::{error, info, warn};

use super::Watcher;
use crate::{
    config::{HEAL_ATTEMPTS, HEAL_FIRST_BACKOFF},
    domain::ContainerId,
    labels::Heal,
    reconcile::{Container, gateways::stranded},
};

impl Watcher {
    /// Takes in who is stranded now: said once per stranding, shown in `status`.
    pub(super) fn note_stranded(&mut self) {
        let now = stranded(&self.containers);
        for (id, gateway) in &now {
            if !self.stranded.contains_key(id) {
                warn!(
                    container = self.containers[id].name,
                    gateway,
                    "stranded: it joined {gateway}'s network namespace, which {gateway} left \
                     when it restarted; it has no network until it is restarted (label it \
                     netguard.heal=restart, or set heal_stranded, and netguard does so once \
                     {gateway}'s tunnel is up)"
                );
            }
        }
        if now != self.stranded {
            self.report.set_stranded(&now);
            self.stranded = now;
        }
    }

    /// Restarts the stranded containers that are due (Docker's restart, in the background:
    /// it waits for the container to stop).
    pub(super) fn heal(&mut self, docker: &Docker) {
        let up = |gateway: &str| {
            self.containers
                .values()
                .find(|c| c.name == gateway)
                .is_some_and(|c| self.tunnels.is_up(&c.id))
        };
        let due = self
            .healer
            .due(&self.stranded, &self.containers, up, Instant::now());
        for (id, action) in due {
            let name = self.containers[&id].name.clone();
            let gateway = self.stranded[&id].clone();
            match action {
                Action::GiveUp => error!(
                    container = name,
                    gateway,
                    "still stranded after {HEAL_ATTEMPTS} restarts: giving up; restart it by \
                     hand (docker restart {name}) and look at why it does not rejoin"
                ),
                Action::Restart { attempt } => {
                    info!(
                        container = name,
                        gateway,
                        attempt,
                        "restarting it to rejoin {gateway}'s new network namespace (its tunnel \
                         is up)"
                    );
                    let docker = docker.clone();
                    tokio::spawn(async move {
                        let options = RestartContainerOptionsBuilder::default().t(10).build();
                        if let Err(error) =
                            docker.restart_container(id.as_str(), Some(options)).await
                        {
                            warn!(container = name, "restarting it: {error}");
                        }
                    });
                }
            }
        }
    }
}

/// Restarts asked for one stranded container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Attempts {
    made: u32,
    next: Instant,
}

/// Which stranded containers to restart, and when.
#[derive(Debug)]
pub struct Healer {
    /// `heal_stranded`: restart every stranded container not labelled `netguard.heal=off`.
    by_default: bool,
    attempts: BTreeMap<ContainerId, Attempts>,
}

/// What [`Healer::due`] decided for a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Restart {
        attempt: u32,
    },
    /// The cap is reached: it is left as it is (and said once).
    GiveUp,
}

impl Healer {
    pub fn new(by_default: bool) -> Self {
        Self {
            by_default,
            attempts: BTreeMap::new(),
        }
    }

    /// The containers to restart now: stranded, opted in, their gateway's tunnel up, and
    /// their backoff over. Containers running unstranded are forgotten (a later restart of
    /// the gateway starts their count again).
    pub fn due(
        &mut self,
        stranded: &BTreeMap<ContainerId, String>,
        containers: &BTreeMap<ContainerId, Container>,
        gateway_up: impl Fn(&str) -> bool,
        now: Instant,
    ) -> Vec<(ContainerId, Action)> {
        // Forgotten only once it runs unstranded (or is gone): stopped mid-restart, it is
        // neither, and its count must stand, or the cap would never be reached.
        self.attempts.retain(|id, _| {
            stranded.contains_key(id) || containers.get(id).is_some_and(|c| c.running.is_none())
        });
        let mut due = Vec::new();
        for (id, gateway) in stranded {
            let opted_in = match containers.get(id).map(|c| c.labels.heal) {
                Some(Heal::Restart) => true,
                Some(Heal::Off) | None => false,
                Some(Heal::Default) => self.by_default,
            };
            if !opted_in || !gateway_up(gateway) {
                continue;
            }
            let attempts = self
                .attempts
                .entry(id.clone())
                .or_insert(Attempts { made: 0, next: now });
            if now < attempts.next {
                continue;
            }
            if attempts.made == HEAL_ATTEMPTS {
                // Said once: the next due time never comes.
                attempts.next = now + Duration::from_secs(u64::from(u32::MAX));
                due.push((id.clone(), Action::GiveUp));
                continue;
            }
            attempts.made += 1;
            attempts.next = now + HEAL_FIRST_BACKOFF * 2u32.pow(attempts.made - 1);
            due.push((
                id.clone(),
                Action::Restart {
                    attempt: attempts.made,
                },
            ));
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::ContainerLabels;

    fn container(fill: char, labels: &[(&str, &str)]) -> (ContainerId, Container) {
        let id: ContainerId = fill.to_string().repeat(64).parse().unwrap();
        let labels = ContainerLabels::parse(labels.iter().copied());
        (id.clone(), Container::new(id, "qbittorrent".into(), labels))
    }

    #[test]
    fn only_opted_in_containers_are_restarted_once_the_gateway_is_up_with_backoff_and_a_cap() {
        let (opted, a) = container('a', &[("netguard.heal", "restart")]);
        let (silent, b) = container('b', &[]);
        let (refused, c) = container('c', &[("netguard.heal", "off")]);
        let containers = BTreeMap::from([(opted.clone(), a), (silent, b), (refused, c)]);
        let stranded: BTreeMap<ContainerId, String> = containers
            .keys()
            .map(|id| (id.clone(), "gluetun".to_string()))
            .collect();
        let mut healer = Healer::new(false);
        let start = Instant::now();
        assert!(
            healer
                .due(&stranded, &containers, |_| false, start)
                .is_empty(),
            "not while the gateway is down"
        );
        let mut restarts = Vec::new();
        let mut at = start;
        while at < start + Duration::from_secs(3600) {
            for (id, action) in healer.due(&stranded, &containers, |_| true, at) {
                assert_eq!(id, opted);
                restarts.push((at.duration_since(start).as_secs(), action));
            }
            at += Duration::from_secs(1);
        }
        let expected: Vec<(u64, Action)> = [0, 10, 30, 70, 150]
            .into_iter()
            .zip(1..)
            .map(|(secs, attempt)| (secs, Action::Restart { attempt }))
            .chain([(310, Action::GiveUp)])
            .collect();
        assert_eq!(restarts, expected);

        // The configuration opts everyone in but those labelled off.
        let mut healer = Healer::new(true);
        let due: Vec<ContainerId> = healer
            .due(&stranded, &containers, |_| true, start)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(due.len(), 2);
        assert!(!due.contains(&"c".repeat(64).parse().unwrap()));

        // Stopped (as during its restart): neither stranded nor forgotten.
        let mut stopped = containers.clone();
        for container in stopped.values_mut() {
            container.running = None;
        }
        healer.due(&BTreeMap::new(), &stopped, |_| true, start);
        assert!(
            healer
                .due(&stranded, &containers, |_| true, start)
                .is_empty(),
            "the backoff stands"
        );
        // Running unstranded: forgotten, counted afresh next time.
        let mut running = containers.clone();
        for container in running.values_mut() {
            container.running = Some(crate::reconcile::Instance {
                pid: 1,
                cgroup: 2,
                netns: None,
            });
        }
        healer.due(&BTreeMap::new(), &running, |_| true, start);
        assert_eq!(healer.due(&stranded, &containers, |_| true, start).len(), 2);
    }
}
