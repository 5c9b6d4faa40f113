//! Docker's names, as its embedded resolver answers them: a container's name and its
//! aliases on a network (a Compose service's name, the short id), to the containers on the
//! same network. Built from the watcher's inventory; pure.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use crate::{domain::ContainerId, reconcile::Container};

/// Networks without Docker's name resolution.
const WITHOUT_NAMES: [&str; 3] = ["bridge", "host", "none"];

/// Every running container's names on every user-defined network.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Directory {
    /// Network id -> name -> addresses.
    networks: HashMap<String, HashMap<String, Vec<IpAddr>>>,
    /// Network id -> its name (for `container.network`).
    network_names: HashMap<String, String>,
}

impl Directory {
    pub fn new(containers: &BTreeMap<ContainerId, Container>) -> Self {
        let mut directory = Self::default();
        for container in containers.values().filter(|c| c.running.is_some()) {
            for (network, place) in &container.networks {
                if WITHOUT_NAMES.contains(&place.network.as_str()) {
                    continue;
                }
                directory
                    .network_names
                    .insert(network.clone(), place.network.to_ascii_lowercase());
                let names = directory.networks.entry(network.clone()).or_default();
                let addresses: Vec<IpAddr> = place
                    .ipv4
                    .map(IpAddr::V4)
                    .into_iter()
                    .chain(place.ipv6.map(IpAddr::V6))
                    .collect();
                let own = container.name.to_ascii_lowercase();
                for name in std::iter::once(&own).chain(&place.names) {
                    let known = names.entry(name.clone()).or_default();
                    for address in &addresses {
                        if !known.contains(address) {
                            known.push(*address);
                        }
                    }
                }
            }
        }
        directory
    }

    /// What `name` means on `networks` (those of the asking container's namespace): its
    /// addresses when a container there has that name (or `name.network`), else `None`.
    pub fn lookup(&self, networks: &BTreeSet<String>, name: &str) -> Option<Vec<IpAddr>> {
        let mut found: Vec<IpAddr> = Vec::new();
        let mut known = false;
        for network in networks {
            let Some(names) = self.networks.get(network) else {
                continue;
            };
            let short = self
                .network_names
                .get(network)
                .and_then(|n| name.strip_suffix(n.as_str())?.strip_suffix('.'));
            for candidate in std::iter::once(name).chain(short) {
                if let Some(addresses) = names.get(candidate) {
                    known = true;
                    for address in addresses {
                        if !found.contains(address) {
                            found.push(*address);
                        }
                    }
                }
            }
        }
        known.then_some(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        domain::NetworkPlace,
        labels::ContainerLabels,
        reconcile::{Container, Instance},
    };

    fn container(n: u8, name: &str, networks: &[(&str, &str, &[&str])]) -> Container {
        let id: ContainerId = format!("{n:02x}").repeat(32).parse().unwrap();
        let mut c = Container::new(id, name.into(), ContainerLabels::default());
        c.running = Some(Instance {
            pid: 1,
            cgroup: u64::from(n),
            netns: None,
        });
        for (network, ip, aliases) in networks {
            c.networks.insert(
                format!("id-{network}"),
                NetworkPlace {
                    network: network.to_string(),
                    names: aliases.iter().map(|a| a.to_string()).collect(),
                    ipv4: Some(ip.parse().unwrap()),
                    ipv6: None,
                },
            );
        }
        c
    }

    fn directory(containers: Vec<Container>) -> Directory {
        Directory::new(&containers.into_iter().map(|c| (c.id.clone(), c)).collect())
    }

    #[test]
    fn names_and_aliases_resolve_on_shared_networks_only() {
        let d = directory(vec![
            container(
                1,
                "media_sonarr_1",
                &[("media", "172.20.0.5", &["sonarr", "0101abcd"])],
            ),
            container(
                2,
                "db",
                &[
                    ("backend", "172.21.0.2", &[]),
                    ("bridge", "172.17.0.2", &[]),
                ],
            ),
        ]);
        let media: BTreeSet<String> = ["id-media".to_string()].into();
        let ip = |a: &str| vec![a.parse::<IpAddr>().unwrap()];
        assert_eq!(d.lookup(&media, "sonarr"), Some(ip("172.20.0.5")));
        assert_eq!(d.lookup(&media, "media_sonarr_1"), Some(ip("172.20.0.5")));
        assert_eq!(d.lookup(&media, "sonarr.media"), Some(ip("172.20.0.5")));
        assert_eq!(d.lookup(&media, "db"), None, "not on a network it shares");
        assert_eq!(d.lookup(&media, "example.test"), None);
        let bridge: BTreeSet<String> = ["id-bridge".to_string()].into();
        assert_eq!(
            d.lookup(&bridge, "db"),
            None,
            "the default bridge has no names"
        );
    }

    #[test]
    fn a_stopped_container_has_no_name() {
        let mut stopped = container(3, "gone", &[("media", "172.20.0.9", &[])]);
        stopped.running = None;
        let d = directory(vec![stopped]);
        assert_eq!(d.lookup(&["id-media".to_string()].into(), "gone"), None);
    }
}
