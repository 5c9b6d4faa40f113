//! Guarded network namespaces: the backstop on their interfaces, their guard entries, and
//! the order these are written and removed in.

use std::collections::{BTreeMap, BTreeSet};

use netguard_common::SCOPE_GLOBAL;

use super::{GATEWAY, PROTECTED, World, cookie, net};
use crate::reconcile::apply::Prune;

#[test]
fn a_container_moved_between_networks_moves_its_backstop_and_the_internal_networks() {
    let mut w = World::new();
    w.run('a', "qbittorrent", &[PROTECTED], 11, 21);
    w.apply();
    assert_eq!(w.links(), BTreeSet::from([(cookie(21), 2)]));
    // docker network disconnect bridge; docker network connect media (a new interface).
    w.instance('a').netns.as_mut().unwrap().interfaces = super::interfaces(21, &[3]);
    w.discovered = vec![net("172.20.0.0/16")];
    w.apply();
    assert_eq!(w.links(), BTreeSet::from([(cookie(21), 3)]));
    assert_eq!(w.guards(), BTreeMap::from([(cookie(21), 11)]));
    let global = w.kernel.scope(SCOPE_GLOBAL);
    assert!(global.contains(&net("172.20.0.0/16")) && !global.contains(&net("172.17.0.0/16")));
    let at = |line: String| w.kernel.journal.iter().position(|l| *l == line);
    let detach = at(format!("detach backstop {} 2", cookie(21)));
    assert!(detach.is_some(), "{:?}", w.kernel.journal);
    // The backstop finds the namespace by the interface's entry: written before the
    // program is attached, removed after it is detached.
    let (added, attached) = (
        at(format!("add iface 3 of {}", cookie(21))),
        at(format!("attach backstop {} 3", cookie(21))),
    );
    assert!(
        added.is_some() && added < attached,
        "{:?}",
        w.kernel.journal
    );
    let removed = at(format!("remove iface 2 of {}", cookie(21)));
    assert!(
        removed.is_some() && detach < removed,
        "{:?}",
        w.kernel.journal
    );
    assert_eq!(
        w.kernel
            .guarded_ifaces
            .values()
            .copied()
            .collect::<Vec<_>>(),
        [cookie(21)]
    );
}

#[test]
fn an_instance_whose_cgroup_is_gone_guards_no_namespace() {
    let mut w = World::new();
    // qbittorrent (protected) shares gluetun's namespace.
    w.run('f', "gluetun", &[GATEWAY], 10, 20);
    w.run('a', "qbittorrent", &[PROTECTED], 11, 20);
    w.apply();
    assert_eq!(w.guards(), BTreeMap::from([(cookie(20), 11)]));
    // Its cgroup is gone before Docker's die event is read.
    w.collect(&[10]);
    assert!(!w.kernel.policies.contains_key(&11));
    w.apply();
    assert!(
        w.guards().is_empty() && w.links().is_empty(),
        "the gateway's namespace is not judged by a policy that is gone: {:?}",
        w.kernel.guards
    );
}

#[test]
fn a_gateways_namespace_is_guarded_for_its_protected_neighbour_and_the_hosts_never_judges_the_kernel()
 {
    let mut w = World::new();
    w.run('f', "gluetun", &[GATEWAY], 10, 20);
    w.run('a', "qbittorrent", &[PROTECTED], 12, 20);
    w.run('b', "sabnzbd", &[PROTECTED], 11, 20);
    // A protected container on the host's network: its senders are judged, the host's
    // own frames never.
    w.run('c', "hostnet", &[PROTECTED], 13, 30);
    w.instance('c').netns.as_mut().unwrap().host = true;
    w.apply();
    assert_eq!(
        w.guards(),
        BTreeMap::from([(cookie(20), 11), (cookie(30), 0)]),
        "one guard per namespace, the lowest protected cgroup judging the kernel's frames"
    );
    assert_eq!(
        w.links(),
        BTreeSet::from([(cookie(20), 2), (cookie(30), 2)])
    );
}

#[test]
fn a_namespace_is_guarded_only_once_every_interface_has_the_backstop() {
    let mut w = World::new();
    w.run('a', "app", &[PROTECTED], 11, 21);
    w.instance('a').netns.as_mut().unwrap().interfaces = super::interfaces(21, &[2, 3]);
    w.kernel
        .failing
        .push(format!("attach backstop {} 3", cookie(21)));
    let desired = w.decide();
    let applied = w.applier.apply(&desired, &mut w.kernel, Prune::Yes, 1);
    assert_eq!(applied.failures.len(), 1, "{:?}", applied.failures);
    assert!(
        w.guards().is_empty(),
        "AF_PACKET stays refused: {:?}",
        w.kernel.guards
    );
    w.kernel.failing.clear();
    w.apply();
    assert_eq!(w.guards(), BTreeMap::from([(cookie(21), 11)]));
    assert_eq!(
        w.links(),
        BTreeSet::from([(cookie(21), 2), (cookie(21), 3)])
    );
}

#[test]
fn a_failed_detach_is_retried_and_the_program_attached_again_when_wanted() {
    let mut w = World::new();
    w.run('a', "app", &[PROTECTED], 11, 21);
    w.apply();
    w.instance('a').netns.as_mut().unwrap().interfaces.clear();
    w.kernel
        .failing
        .push(format!("detach backstop {} 2", cookie(21)));
    let desired = w.decide();
    let applied = w.applier.apply(&desired, &mut w.kernel, Prune::Yes, 1);
    assert_eq!(applied.failures.len(), 1);
    w.kernel.failing.clear();
    w.instance('a').netns.as_mut().unwrap().interfaces = super::interfaces(21, &[2]);
    w.apply();
    assert_eq!(
        w.links(),
        BTreeSet::from([(cookie(21), 2)]),
        "attached again"
    );
    assert_eq!(w.guards(), BTreeMap::from([(cookie(21), 11)]));
}
