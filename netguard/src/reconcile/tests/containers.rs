//! Containers' policies, allowances and backstops through their lives.

use std::collections::{BTreeMap, BTreeSet};

use netguard_common::{Counters, SCOPE_GLOBAL};

use super::{GATEWAY, PROTECTED, World, id, net};
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
    // Only the protected container's veth gets a backstop, entry before program.
    assert_eq!(w.kernel.backstops, BTreeMap::from([(21, 11)]));
    assert_eq!(w.kernel.links, BTreeSet::from([21]));
    let entry = w
        .kernel
        .journal
        .iter()
        .position(|l| l == "backstop entry 21 11");
    let attach = w
        .kernel
        .journal
        .iter()
        .position(|l| l == "attach backstop 21");
    assert!(entry < attach, "{:?}", w.kernel.journal);
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
        ["attach backstop 20"],
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
            veths: vec![21],
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
fn a_container_moved_between_networks_moves_its_backstop_and_the_internal_networks() {
    let mut w = World::new();
    w.run('a', "qbittorrent", &[PROTECTED], 11, 21);
    w.apply();
    assert_eq!(w.kernel.links, BTreeSet::from([21]));
    // docker network disconnect bridge; docker network connect media (a new veth).
    w.container('a').running.as_mut().unwrap().veths = vec![31];
    w.discovered = vec![net("172.20.0.0/16")];
    w.apply();
    assert_eq!(w.kernel.links, BTreeSet::from([31]));
    assert_eq!(w.kernel.backstops, BTreeMap::from([(31, 11)]));
    let global = w.kernel.scope(SCOPE_GLOBAL);
    assert!(global.contains(&net("172.20.0.0/16")) && !global.contains(&net("172.17.0.0/16")));
    let detach = w
        .kernel
        .journal
        .iter()
        .position(|l| l == "detach backstop 21");
    assert!(detach.is_some(), "{:?}", w.kernel.journal);
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
    assert!(w.kernel.links.is_empty() && w.kernel.backstops.is_empty());
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
        backstops: vec![60],
    });
    w.run('a', "app", &[PROTECTED], 11, 21);
    w.apply();
    assert_eq!(w.policy(50), Some((true, Some("vpn".into()))));
    assert_eq!(w.kernel.backstops, BTreeMap::from([(21, 11), (60, 50)]));
    w.containers.clear();
    w.apply();
    w.collect(&[50]);
    assert_eq!(w.policy(50), Some((true, Some("vpn".into()))));
    assert_eq!(w.kernel.links, BTreeSet::from([60]));
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
    assert_eq!(w.kernel.links, BTreeSet::from([21]));
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
    // Retried at the next apply once the map has room.
    w.kernel.failing.clear();
    w.apply();
    assert_eq!(w.policy(11), Some((true, None)));
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

#[test]
fn an_instance_whose_cgroup_is_gone_owns_no_backstop() {
    let mut w = World::new();
    // qbittorrent (protected) shares gluetun's namespace, and so its veth.
    w.run('f', "gluetun", &[GATEWAY], 10, 20);
    w.run('a', "qbittorrent", &[PROTECTED], 11, 20);
    w.apply();
    assert_eq!(w.kernel.backstops, BTreeMap::from([(20, 11)]));
    // Its cgroup is gone before Docker's die event is read.
    w.collect(&[10]);
    assert!(!w.kernel.policies.contains_key(&11));
    w.apply();
    assert!(
        w.kernel.backstops.is_empty() && w.kernel.links.is_empty(),
        "the gateway's veth is not judged by a policy that is gone: {:?}",
        w.kernel.backstops
    );
}

#[test]
fn a_failed_detach_is_retried_and_the_program_attached_again_when_wanted() {
    let mut w = World::new();
    w.run('a', "app", &[PROTECTED], 11, 21);
    w.apply();
    w.container('a').running.as_mut().unwrap().veths = vec![];
    w.kernel.failing.push("remove backstop entry 21".into());
    let desired = w.decide();
    let applied = w.applier.apply(&desired, &mut w.kernel, Prune::Yes, 1);
    assert_eq!(applied.failures.len(), 1);
    w.kernel.failing.clear();
    w.container('a').running.as_mut().unwrap().veths = vec![21];
    w.apply();
    assert_eq!(w.kernel.links, BTreeSet::from([21]), "attached again");
    assert_eq!(w.kernel.backstops, BTreeMap::from([(21, 11)]));
}
