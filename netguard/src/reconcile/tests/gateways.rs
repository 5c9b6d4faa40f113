//! Which gateway a container uses, and gateways' slots: renames, removals, tunnel changes.

use std::collections::BTreeSet;

use netguard_common::{CgroupPolicy, POLICY_PROTECTED, TUNNEL_UP};

use super::{GATEWAY, PROTECTED, World, id};
use crate::reconcile::{GatewayChoice, apply::Prune};

#[test]
fn the_shared_namespace_decides_and_a_label_naming_another_gateway_resolves_to_nothing() {
    let mut w = World::new();
    w.run('f', "gluetun", &[GATEWAY], 10, 20);
    w.run('e', "wireguard", &[GATEWAY], 13, 23);
    w.run(
        'a',
        "by-label",
        &[PROTECTED, ("netguard.gateway", "wireguard")],
        11,
        20,
    );
    w.container('a').network_mode = format!("container:{}", id('f'));
    w.run('b', "shares-gluetun", &[PROTECTED], 12, 20);
    w.container('b').network_mode = format!("container:{}", id('f'));
    w.run('c', "neither", &[PROTECTED], 14, 24);
    w.apply();
    let decisions = w.decide().decisions;
    // In gluetun's namespace, only gluetun's tunnel could carry it: the label is a mistake.
    assert_eq!(
        decisions[&id('a')].gateway,
        GatewayChoice::Missing("wireguard".into())
    );
    assert_eq!(
        decisions[&id('b')].gateway,
        GatewayChoice::SharedNamespace("gluetun".into())
    );
    assert_eq!(
        decisions[&id('c')].gateway,
        GatewayChoice::None,
        "two gateways: no default"
    );
    assert_eq!(w.policy(11), Some((true, None)), "no tunnel at all");
    assert_eq!(w.policy(12), Some((true, Some("gluetun".into()))));
    assert_eq!(w.policy(14), Some((true, None)));
    assert_eq!(
        w.policy(10),
        Some((false, None)),
        "a gateway itself is counted only"
    );
}

#[test]
fn a_shared_namespace_is_found_by_name_id_or_id_prefix() {
    for reference in [
        "gluetun".to_string(),
        id('f').to_string(),
        "ffffffffffff".into(),
    ] {
        let mut w = World::new();
        w.run('f', "gluetun", &[GATEWAY], 10, 20);
        w.run('e', "other", &[GATEWAY], 13, 23);
        w.run('a', "qbittorrent", &[PROTECTED], 11, 20);
        w.container('a').network_mode = format!("container:{reference}");
        w.apply();
        assert_eq!(
            w.policy(11),
            Some((true, Some("gluetun".into()))),
            "{reference}"
        );
    }
}

#[test]
fn the_only_gateway_is_the_default_and_a_missing_named_one_gives_no_tunnel() {
    let mut w = World::new();
    w.run('f', "gluetun", &[GATEWAY], 10, 20);
    w.run('a', "sonarr", &[PROTECTED], 11, 21);
    w.run(
        'b',
        "typo",
        &[PROTECTED, ("netguard.gateway", "gluten")],
        12,
        22,
    );
    w.apply();
    assert_eq!(w.policy(11), Some((true, Some("gluetun".into()))));
    assert_eq!(
        w.policy(12),
        Some((true, None)),
        "stricter, never another gateway"
    );
    assert_eq!(
        w.decide().decisions[&id('b')].gateway,
        GatewayChoice::Missing("gluten".into())
    );
}

#[test]
fn a_renamed_gateway_leaves_no_slot_behind_and_its_containers_follow() {
    let mut w = World::new();
    w.run(
        'f',
        "gluetun",
        &[GATEWAY, ("netguard.endpoints", "203.0.113.7:51820/udp")],
        10,
        20,
    );
    w.tunnel('f', true);
    w.run('a', "qbittorrent", &[PROTECTED], 11, 20);
    w.apply();
    let (old_slot, _) = w.kernel.gateway("gluetun").unwrap();
    assert_eq!(w.kernel.endpoints.len(), 1);

    w.container('f').name = "vpn".into();
    w.apply();
    assert_eq!(w.gateway_names(), BTreeSet::from(["vpn".to_string()]));
    assert_eq!(w.policy(11), Some((true, Some("vpn".into()))));
    assert_eq!(w.registration('a'), Some((true, Some("vpn".into()))));
    let (new_slot, state) = w.kernel.gateway("vpn").unwrap();
    assert_ne!(new_slot, old_slot);
    assert_eq!(state.tunnel_up, TUNNEL_UP);
    assert!(
        w.kernel
            .endpoints
            .iter()
            .all(|key| key.gateway == new_slot.0),
        "the old slot's endpoints went with it: {:?}",
        w.kernel.endpoints
    );
    assert!(
        w.kernel
            .gateways
            .get(&old_slot.0)
            .is_none_or(|s| s.in_use == 0)
    );
}

#[test]
fn a_removed_gateway_rewrites_every_reference_before_its_slot_is_reused() {
    let mut w = World::new();
    w.run('f', "gluetun", &[GATEWAY], 10, 20);
    w.run('a', "qbittorrent", &[PROTECTED], 11, 20);
    w.apply();
    let (slot, _) = w.kernel.gateway("gluetun").unwrap();
    // An entry the classifier wrote from a registration the agent has not reconciled yet.
    let behind = CgroupPolicy {
        flags: POLICY_PROTECTED,
        gateway: slot.0,
    };
    w.kernel.policies.insert(99, behind);
    w.containers.remove(&id('f'));
    w.apply();
    assert_eq!(w.policy(11), Some((true, None)));
    w.run('e', "other", &[GATEWAY], 13, 23);
    w.apply();
    let (reused, _) = w.kernel.gateway("other").unwrap();
    assert_eq!(reused, slot, "the freed slot is reused");
    assert_eq!(
        w.kernel.policies[&99].gateway, 0,
        "the classifier's entry was rewritten"
    );
    // qbittorrent now follows the only gateway there is, by decision, not by accident.
    assert_eq!(w.policy(11), Some((true, Some("other".into()))));
    let rewrite = w
        .kernel
        .journal
        .iter()
        .rposition(|l| l.starts_with("policy 99"));
    let freed = w
        .kernel
        .journal
        .iter()
        .rposition(|l| l.contains("\"\" up=0"));
    assert!(rewrite < freed, "{:?}", w.kernel.journal);
}

#[test]
fn a_tunnel_change_is_one_slot_write_counted_once() {
    let mut w = World::new();
    w.run('f', "gluetun", &[GATEWAY], 10, 20);
    w.tunnel('f', false);
    w.run('a', "qbittorrent", &[PROTECTED], 11, 20);
    w.run('b', "sabnzbd", &[PROTECTED], 12, 20);
    w.apply();
    for up in [true, false, true] {
        w.tunnel('f', up);
        let writes = w.kernel.journal.len();
        let applied = w.apply();
        assert_eq!(
            w.kernel.journal[writes..],
            [format!("gateway slot 1 \"gluetun\" up={}", u32::from(up))],
            "one write for both containers behind it"
        );
        assert_eq!(applied.tunnel_changes.len(), 1);
    }
    let (_, state) = w.kernel.gateway("gluetun").unwrap();
    assert_eq!(state.transitions, 3);
    assert_eq!(state.last_change_secs, w.now);
}

#[test]
fn a_stopped_gateway_takes_its_tunnel_down() {
    let mut w = World::new();
    w.run('f', "gluetun", &[GATEWAY], 10, 20);
    w.tunnel('f', true);
    w.apply();
    assert_eq!(w.kernel.gateway("gluetun").unwrap().1.tunnel_up, TUNNEL_UP);
    w.container('f').running = None;
    w.apply();
    let (_, state) = w.kernel.gateway("gluetun").unwrap();
    assert_eq!((state.tunnel_up, state.tunnel_ifindex), (0, 0));
}

#[test]
fn a_gateway_slot_is_freed_only_once_its_endpoints_are_gone() {
    let mut w = World::new();
    w.run(
        'f',
        "gluetun",
        &[GATEWAY, ("netguard.endpoints", "203.0.113.7:51820/udp")],
        10,
        20,
    );
    w.apply();
    let (slot, _) = w.kernel.gateway("gluetun").unwrap();
    w.containers.clear();
    w.kernel.failing.push("remove endpoint".into());
    let desired = w.decide();
    let applied = w.applier.apply(&desired, &mut w.kernel, Prune::Yes, 1);
    assert_eq!(applied.failures.len(), 1);
    assert!(
        w.kernel.gateway("gluetun").is_some(),
        "the slot stays while its endpoint does"
    );
    // A new gateway does not get that slot and its old endpoint meanwhile.
    w.run('e', "other", &[GATEWAY], 13, 23);
    let desired = w.decide();
    w.applier.apply(&desired, &mut w.kernel, Prune::Yes, 2);
    let (other, _) = w.kernel.gateway("other").unwrap();
    assert_ne!(other, slot);
    w.kernel.failing.clear();
    w.apply();
    assert!(w.kernel.gateway("gluetun").is_none());
    assert!(w.kernel.endpoints.is_empty());
}

#[test]
fn a_container_gateway_named_like_a_configured_one_is_reported_and_the_configuration_wins() {
    let mut w = World::new();
    w.statics.gateways.push(crate::reconcile::StaticGateway {
        name: "gluetun".into(),
        tunnel: None,
        endpoints: Vec::new(),
        tunnel_up: false,
    });
    w.run('f', "gluetun", &[GATEWAY], 10, 20);
    w.tunnel('f', true);
    let desired = w.decide();
    assert!(!desired.gateways["gluetun"].up);
    assert_eq!(desired.problems.len(), 1, "{:?}", desired.problems);
    assert!(desired.problems[0].contains("rename"));
}

#[test]
fn a_kernel_tunnels_peers_are_let_out_of_its_namespace_and_follow_server_changes() {
    let mut w = World::new();
    w.run('f', "gluetun", &[GATEWAY], 10, 20);
    w.run('a', "qbittorrent", &[PROTECTED], 11, 20);
    w.tunnel('f', true);
    let cookie = w.tunnels[&id('f')].interface.unwrap().netns_cookie;
    let first: std::net::SocketAddr = "198.51.100.9:51820".parse().unwrap();
    w.tunnels.get_mut(&id('f')).unwrap().carriers = BTreeSet::from([first]);
    w.apply();
    let keys = |w: &World| -> BTreeSet<(u64, u16, [u8; 4])> {
        w.kernel
            .carriers
            .iter()
            .map(|k| (k.netns_cookie, k.port, k.addr[..4].try_into().unwrap()))
            .collect()
    };
    assert_eq!(
        keys(&w),
        BTreeSet::from([(cookie, 51820, [198, 51, 100, 9])])
    );

    // Gluetun picks another server: the old one goes before the new one is let out.
    let second: std::net::SocketAddr = "203.0.113.4:1637".parse().unwrap();
    w.tunnels.get_mut(&id('f')).unwrap().carriers = BTreeSet::from([second]);
    w.kernel.journal.clear();
    w.apply();
    assert_eq!(keys(&w), BTreeSet::from([(cookie, 1637, [203, 0, 113, 4])]));
    let order: Vec<&String> = w
        .kernel
        .journal
        .iter()
        .filter(|line| line.contains("carrier"))
        .collect();
    assert_eq!(
        order,
        [
            &format!("remove carrier {cookie} port 51820"),
            &format!("add carrier {cookie} port 1637")
        ]
    );

    // A stopped gateway has no tunnel, and nothing is let out for it.
    w.container('f').running = None;
    w.apply();
    assert!(w.kernel.carriers.is_empty());
}
