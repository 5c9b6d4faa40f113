use netguard_common::{BlockReason, Hook};

use super::*;

#[test]
fn a_flow_blocked_before_its_cgroup_was_linked_is_attributed_once_it_is() {
    let report = Report::new(Vec::new(), Duration::from_secs(1), true, None);
    let event = BlockedFlowEvent {
        cgroup_id: 77,
        destination: Some("198.18.2.2".parse().unwrap()),
        port: 53,
        proto: 17,
        reason: Some(BlockReason::Unclassified),
        hook: Some(Hook::Egress),
        bytes: 60,
    };
    let early = report.blocked(&event);
    assert_eq!(early.who(), "unclassified cgroup 77");
    let id: ContainerId = "a".repeat(64).parse().unwrap();
    let facts = ContainerFacts {
        name: "qbittorrent".into(),
        ..ContainerFacts::default()
    };
    report.container_seen(&id, facts, Some(77));
    let later = &report.recent_flows(10)[0];
    assert_eq!(later.who(), "qbittorrent (aaaaaaaaaaaa)");
    assert_eq!(report.blocked(&event).container, "qbittorrent");
}

#[test]
fn a_crash_loop_does_not_grow_what_is_remembered() {
    let report = Report::new(Vec::new(), Duration::from_secs(1), true, None);
    let id: ContainerId = "a".repeat(64).parse().unwrap();
    for cgroup in 1..=100 {
        let facts = ContainerFacts {
            name: "looping".into(),
            running: true,
            ..ContainerFacts::default()
        };
        report.container_seen(&id, facts, Some(cgroup));
    }
    let inventory = report.inventory.read().unwrap();
    assert_eq!(
        inventory.containers[&id].cgroups,
        (85..=100).collect::<Vec<CgroupId>>()
    );
    assert_eq!(inventory.owner.len(), INSTANCES_KEPT);
    assert!(inventory.owner.contains_key(&100) && !inventory.owner.contains_key(&84));
}
