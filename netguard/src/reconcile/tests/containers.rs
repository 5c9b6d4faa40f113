//! Containers' policies, allowances and backstops through their lives.

use std::collections::{BTreeMap, BTreeSet};

use netguard_common::{Counters, SCOPE_GLOBAL};

use super::{GATEWAY, PROTECTED, World, cookie, id, net, netns};
use crate::{
    config::INSTANCES_KEPT,
    domain::CgroupId,
    labels::ContainerLabels,
    reconcile::{
        Instance, Policy, Snapshot, StaticCgroup, StaticGateway, StaticPolicy,
        apply::{Applier, Prune},
        decide,
    },
};

#[test]
fn a_labeled_container_is_protected_and_an_unlabeled_one_counted_only() {
    let mut w = World::new();
    w.run(
        'a',
        "qbittorrent",
        &[PROTECTED, ("netguard.allow", "192.168.1.0/24")],
        11,
        21,
    );
    w.run('b', "plex", &[], 12, 22);
    w.apply();
    assert_eq!(w.policy(11), Some((true, None)));
    assert_eq!(w.policy(12), Some((false, None)));
    assert_eq!(w.registration('a'), Some((true, None)));
    assert_eq!(w.registration('b'), Some((false, None)));
    assert_eq!(w.kernel.scope(11), BTreeSet::from([net("192.168.1.0/24")]));
    assert_eq!(
        w.kernel.scope(SCOPE_GLOBAL),
        BTreeSet::from([net("127.0.0.0/8"), net("172.17.0.0/16")])
    );
    // Only the protected container's namespace is guarded: the program on every interface
    // first, then the guard entry (which lets AF_PACKET sockets be opened there).
    assert_eq!(w.guards(), BTreeMap::from([(cookie(21), 11)]));
    assert_eq!(w.links(), BTreeSet::from([(cookie(21), 2)]));
    let journal = &w.kernel.journal;
    let attach = journal
        .iter()
        .position(|l| *l == format!("attach backstop {} 2", cookie(21)));
    let guard = journal
        .iter()
        .position(|l| *l == format!("guard {} 11", cookie(21)));
    assert!(attach.is_some() && attach < guard, "{journal:?}");
}

#[test]
fn a_second_apply_of_the_same_facts_writes_nothing() {
    let mut w = World::new();
    w.run('f', "gluetun", &[GATEWAY], 10, 20);
    w.tunnel('f', true);
    w.run('a', "qbittorrent", &[PROTECTED], 11, 20);
    w.apply();
    let writes = w.kernel.journal.len();
    w.apply();
    assert_eq!(
        w.kernel.journal.len(),
        writes,
        "{:?}",
        &w.kernel.journal[writes..]
    );
    // An agent restarted on the same kernel adopts it: still nothing to write.
    w.applier = Applier::load(&w.kernel).unwrap();
    let desired = w.decide();
    w.applier.apply(&desired, &mut w.kernel, Prune::Yes, w.now);
    let relinked: Vec<&String> = w.kernel.journal[writes..].iter().collect();
    assert_eq!(
        relinked,
        [&format!("attach backstop {} 2", cookie(20))],
        "only the inherited backstop program is adopted again (or replaced by this build's)"
    );
}

#[test]
fn a_crash_loop_remembers_a_bounded_number_of_instances_and_collects_the_rest() {
    let mut w = World::new();
    w.run('a', "looping", &[PROTECTED], 1000, 21);
    w.apply();
    for cgroup in 1001..1100 {
        w.kernel.counters.insert(cgroup - 1, Counters::default());
        w.container('a').started(Instance {
            pid: 7,
            cgroup,
            netns: Some(netns(21)),
        });
        w.apply();
        w.collect(&[cgroup]);
    }
    let container = &w.containers[&id('a')];
    assert_eq!(container.instances.len(), INSTANCES_KEPT);
    assert_eq!(container.instances.last(), Some(&1099));
    assert_eq!(
        w.kernel.policies.keys().copied().collect::<Vec<_>>(),
        [1099]
    );
    // Counters of the instances still remembered stay for the metrics; older ones go.
    let counted: BTreeSet<CgroupId> = w.kernel.counters.keys().copied().collect();
    let remembered: BTreeSet<CgroupId> = container.instances.iter().copied().collect();
    assert!(counted.is_subset(&remembered), "{counted:?}");
    assert_eq!(counted.len(), INSTANCES_KEPT - 1);
}

#[test]
fn malformed_labels_keep_the_container_protected_with_the_stricter_reading() {
    let mut w = World::new();
    let labels = [
        ("vpn", "yes"),
        ("netguard.allow", "10.0.0.0/8,10.1.0.0/33"),
        ("netguard.alow", "0.0.0.0/0"),
    ];
    w.run('a', "odd", &labels, 11, 21);
    w.apply();
    assert_eq!(w.policy(11), Some((true, None)));
    assert_eq!(w.kernel.scope(11), BTreeSet::from([net("10.0.0.0/8")]));
    let problems = &w.containers[&id('a')].labels.problems;
    assert_eq!(problems.len(), 3, "{problems:?}");
}

#[test]
fn a_label_removed_by_a_recreate_flips_the_policy_allowances_first() {
    let mut w = World::new();
    w.run(
        'a',
        "app",
        &[PROTECTED, ("netguard.allow", "10.9.0.0/16")],
        11,
        21,
    );
    w.apply();
    w.container('a').labels = ContainerLabels::parse([]);
    w.apply();
    assert_eq!(w.policy(11), Some((false, None)));
    assert!(w.kernel.scope(11).is_empty());
    let removed = w
        .kernel
        .journal
        .iter()
        .position(|l| l.starts_with("remove cidr 11"));
    let flipped = w
        .kernel
        .journal
        .iter()
        .rposition(|l| l.starts_with("policy 11"));
    assert!(removed < flipped, "{:?}", w.kernel.journal);
    assert!(
        w.kernel.links.is_empty(),
        "no backstop for a container counted only"
    );
}

#[test]
fn a_destroyed_container_is_unregistered_and_its_cgroups_forgotten_once_gone() {
    let mut w = World::new();
    w.run('a', "app", &[PROTECTED], 11, 21);
    w.apply();
    w.kernel.counters.insert(11, Counters::default());
    w.containers.remove(&id('a'));
    w.apply();
    assert!(w.kernel.registrations.is_empty());
    assert!(w.links().is_empty() && w.guards().is_empty());
    // Its cgroup still exists a moment: the entry stays until the kernel says it is gone.
    w.collect(&[11]);
    assert!(w.kernel.policies.contains_key(&11));
    w.collect(&[]);
    assert!(w.kernel.policies.is_empty() && w.kernel.counters.is_empty());
}

#[test]
fn static_cgroups_and_gateways_coexist_with_docker_and_survive_pruning() {
    let mut w = World::new();
    w.statics.gateways.push(StaticGateway {
        name: "vpn".into(),
        tunnel: None,
        endpoints: vec!["198.51.100.1:1194/udp".parse().unwrap()],
        tunnel_up: false,
    });
    w.statics.cgroups.push(StaticCgroup {
        name: "/media".into(),
        id: 50,
        gateway: Some("vpn".into()),
        allow: vec![net("10.0.0.0/8")],
        netns: Some(netns(60)),
    });
    w.run('a', "app", &[PROTECTED], 11, 21);
    w.apply();
    assert_eq!(w.policy(50), Some((true, Some("vpn".into()))));
    assert_eq!(
        w.guards(),
        BTreeMap::from([(cookie(21), 11), (cookie(60), 50)])
    );
    w.containers.clear();
    w.apply();
    w.collect(&[50]);
    assert_eq!(w.policy(50), Some((true, Some("vpn".into()))));
    assert_eq!(w.links(), BTreeSet::from([(cookie(60), 2)]));
}

#[test]
fn without_pruning_what_an_earlier_agent_registered_stays() {
    let mut w = World::new();
    w.run('a', "app", &[PROTECTED], 11, 21);
    w.run('f', "gluetun", &[GATEWAY], 10, 20);
    w.apply();
    // A restarted agent applies its static configuration before Docker answers.
    let mut applier = Applier::load(&w.kernel).unwrap();
    let statics = StaticPolicy::default();
    let desired = decide(&Snapshot {
        statics: &statics,
        discovered_internal: &[],
        containers: &BTreeMap::new(),
        tunnels: &BTreeMap::new(),
    });
    applier.apply(&desired, &mut w.kernel, Prune::No, 5);
    assert_eq!(w.registration('a'), Some((true, Some("gluetun".into()))));
    assert!(w.kernel.gateway("gluetun").is_some());
    assert_eq!(w.links(), BTreeSet::from([(cookie(21), 2)]));
}

#[test]
fn a_failed_policy_write_is_reported_and_the_rest_is_written() {
    let mut w = World::new();
    w.run('a', "app", &[PROTECTED], 11, 21);
    w.run('b', "other", &[PROTECTED], 12, 22);
    w.kernel.failing.push("policy 11 ".into());
    let desired = w.decide();
    let applied = w.applier.apply(&desired, &mut w.kernel, Prune::Yes, 1);
    assert_eq!(applied.failures.len(), 1);
    assert_eq!(applied.failures[0].subject, "cgroup 11");
    assert!(applied.failures[0].error.to_string().contains("full"));
    assert_eq!(w.policy(12), Some((true, None)));
    assert_eq!(
        applied.unwritten,
        BTreeSet::from([11]),
        "nothing enforces cgroup 11: the watcher freezes it"
    );
    // Retried at the next apply once the map has room.
    w.kernel.failing.clear();
    let applied = w.apply();
    assert_eq!(w.policy(11), Some((true, None)));
    assert!(applied.unwritten.is_empty());

    // A cgroup the classifier already holds is enforced even if its update fails.
    w.run('c', "held", &[PROTECTED], 13, 23);
    w.kernel
        .policies
        .insert(13, netguard_common::CgroupPolicy::UNCLASSIFIED);
    w.applier.reload(&w.kernel).unwrap();
    w.kernel.failing.push("policy 13 ".into());
    let desired = w.decide();
    let applied = w.applier.apply(&desired, &mut w.kernel, Prune::Yes, 2);
    assert_eq!(applied.failures.len(), 1);
    assert!(applied.unwritten.is_empty(), "held, so enforced");
}

#[test]
fn protected_policies_are_exactly_the_decisions() {
    let mut w = World::new();
    w.run('a', "app", &[PROTECTED], 11, 21);
    let desired = w.decide();
    assert_eq!(
        desired.policies[&11],
        Policy::Protected {
            gateway: None,
            allow: BTreeSet::new()
        }
    );
    assert_eq!(desired.registrations[&id('a')], desired.policies[&11]);
}

#[test]
fn a_failed_removal_of_an_internal_network_adds_nothing_new() {
    let mut w = World::new();
    w.apply();
    w.kernel.failing.push("remove cidr 0 172.17.0.0/16".into());
    w.discovered = vec![net("172.20.0.0/16")];
    let desired = w.decide();
    let applied = w.applier.apply(&desired, &mut w.kernel, Prune::Yes, 1);
    assert_eq!(applied.failures.len(), 1, "{:?}", applied.failures);
    let global = w.kernel.scope(SCOPE_GLOBAL);
    assert!(
        global.contains(&net("172.17.0.0/16")) && !global.contains(&net("172.20.0.0/16")),
        "never the union of the old and new sets: {global:?}"
    );
    w.kernel.failing.clear();
    w.apply();
    assert!(!w.kernel.scope(SCOPE_GLOBAL).contains(&net("172.17.0.0/16")));
}
