//! Where a protected container's external names go, from the watcher's facts (no root).

use std::collections::BTreeMap;

use super::{DEFAULT_GATEWAY_RESOLVER, Upstream, plan};
use crate::{
    domain::{ContainerId, TunnelInterface},
    labels::ContainerLabels,
    reconcile::{Container, Instance, Netns, Snapshot, StaticPolicy, Tunnel, decide},
};

fn container(n: u8, name: &str, labels: &[(&str, &str)]) -> Container {
    let id: ContainerId = format!("{n:02x}").repeat(32).parse().unwrap();
    let mut c = Container::new(
        id,
        name.into(),
        ContainerLabels::parse(labels.iter().copied()),
    );
    c.running = Some(Instance {
        pid: u32::from(n),
        cgroup: u64::from(n),
        netns: Some(Netns {
            cookie: 1000 + u64::from(n),
            path: format!("/run/netns/c{n}").into(),
            interfaces: BTreeMap::new(),
            host: false,
        }),
    });
    c
}

/// The upstream of container 2 (protected, with `labels`) beside gateway 1 (`gateway`
/// labels), whose tunnel is `up`.
fn upstream_of(labels: &[(&str, &str)], gateway: &[(&str, &str)], up: bool) -> Upstream {
    let mut gateway_labels = vec![("netguard.role", "vpn-gateway")];
    gateway_labels.extend_from_slice(gateway);
    let gw = container(1, "gluetun", &gateway_labels);
    let mut protected_labels = vec![("vpn", "required")];
    protected_labels.extend_from_slice(labels);
    let protected = container(2, "qbittorrent", &protected_labels);
    let tunnels = BTreeMap::from([(
        gw.id.clone(),
        Tunnel {
            interface: Some(TunnelInterface {
                ifindex: 7,
                netns_cookie: 1001,
            }),
            up,
            carriers: Default::default(),
        },
    )]);
    let containers: BTreeMap<ContainerId, Container> = [gw, protected]
        .into_iter()
        .map(|c| (c.id.clone(), c))
        .collect();
    let statics = StaticPolicy {
        internal: vec![
            "127.0.0.0/8".parse().unwrap(),
            "192.168.1.0/24".parse().unwrap(),
        ],
        ..StaticPolicy::default()
    };
    let desired = decide(&Snapshot {
        statics: &statics,
        discovered_internal: &[],
        containers: &containers,
        tunnels: &tunnels,
    });
    plan(&containers, &desired)[&2].upstream.clone()
}

#[test]
fn external_names_go_to_the_gateways_resolver_in_its_namespace_while_the_tunnel_is_up() {
    assert_eq!(
        upstream_of(&[], &[], true),
        Upstream::Forward {
            netns: "/run/netns/c1".into(),
            resolver: DEFAULT_GATEWAY_RESOLVER,
            through: None,
        },
        "Gluetun's own resolver, on loopback in its namespace"
    );
    assert_eq!(
        upstream_of(&[], &[("netguard.dns", "10.64.0.1")], true),
        Upstream::Forward {
            netns: "/run/netns/c1".into(),
            resolver: "10.64.0.1:53".parse().unwrap(),
            through: Some(7),
        },
        "any other resolver only through the tunnel interface"
    );
    assert_eq!(
        upstream_of(&[], &[("netguard.dns", "10.64.0.1")], false),
        Upstream::TunnelDown {
            gateway: "gluetun".into()
        }
    );
}

#[test]
fn a_resolver_the_operator_allows_a_container_is_used_when_internal_only() {
    assert_eq!(
        upstream_of(&[("netguard.dns", "192.168.1.2")], &[], false),
        Upstream::Forward {
            netns: "/run/netns/c2".into(),
            resolver: "192.168.1.2:53".parse().unwrap(),
            through: None,
        },
        "a LAN resolver the operator named, from the container's own namespace"
    );
    assert_eq!(
        upstream_of(&[("netguard.dns", "10.8.0.53:5353")], &[], true),
        Upstream::Forward {
            netns: "/run/netns/c1".into(),
            resolver: "10.8.0.53:5353".parse().unwrap(),
            through: Some(7),
        },
        "a resolver behind the VPN, through the tunnel"
    );
}

#[test]
fn without_a_gateway_only_local_names_resolve() {
    let protected = container(2, "alone", &[("vpn", "required")]);
    let containers = BTreeMap::from([(protected.id.clone(), protected)]);
    let desired = decide(&Snapshot {
        statics: &StaticPolicy::default(),
        discovered_internal: &[],
        containers: &containers,
        tunnels: &BTreeMap::new(),
    });
    assert_eq!(
        plan(&containers, &desired)[&2].upstream,
        Upstream::LocalOnly
    );
}
