use netguard_common::{BlockReason, Hook};

use super::*;
use crate::domain::BlockedFlowEvent;
use std::time::SystemTime;

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
        at_boot_ns: crate::sys::boottime_ns(),
    };
    let early = report.blocked(&event);
    assert!(!early.before_start);
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

/// A flow read from the pinned ring buffer after a restart keeps the kernel's time of the
/// block and is marked as from before the start.
#[test]
fn a_flow_blocked_before_the_start_keeps_its_time_and_says_so() {
    let report = Report::new(Vec::new(), Duration::from_secs(1), true, None);
    let ten_minutes = 600 * 1_000_000_000;
    let event = BlockedFlowEvent {
        cgroup_id: 78,
        destination: Some("198.18.2.2".parse().unwrap()),
        port: 7,
        proto: 17,
        reason: Some(BlockReason::NotAllowed),
        hook: Some(Hook::Sendmsg),
        bytes: 0,
        at_boot_ns: crate::sys::boottime_ns().saturating_sub(ten_minutes),
    };
    let record = report.blocked(&event);
    assert!(record.before_start);
    let at = humantime::parse_rfc3339(&record.time).unwrap();
    let age = SystemTime::now().duration_since(at).unwrap();
    assert!(
        (Duration::from_secs(599)..Duration::from_secs(602)).contains(&age),
        "{age:?}"
    );
}
