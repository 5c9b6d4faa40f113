//! The cgroup_mkdir classifier, driven by real cgroup creation in a test-owned tree: it must
//! recognise Docker's container cgroups under both drivers and any parent, and nothing else.

use netguard::{domain::ContainerId, kernel::Datapath};
use netguard_common::CgroupPolicy;
use netguard_tests::{agent::PinDir, cgroups::TestCgroup, require_root};

fn id(fill: char) -> String {
    std::iter::repeat_n(fill, 64).collect()
}

#[test]
fn container_cgroups_of_both_drivers_are_classified_at_creation() {
    require_root();
    let pin = PinDir::new();
    let mut datapath = Datapath::load(&pin.path).unwrap();
    datapath.attach_classifier().unwrap();
    let protected = CgroupPolicy {
        flags: netguard_common::POLICY_PROTECTED,
        gateway: 0,
    };
    datapath
        .maps
        .register(&id('a').parse::<ContainerId>().unwrap(), protected)
        .unwrap();
    datapath
        .maps
        .register(
            &id('b').parse::<ContainerId>().unwrap(),
            CgroupPolicy::default(),
        )
        .unwrap();

    let mut tree = TestCgroup::new_parent();
    // cgroupfs driver, custom parent: <parent>/<id>.
    let cgroupfs = tree.child(&id('a'));
    // systemd driver, custom slice: <parent>/<slice>/docker-<id>.scope.
    tree.child("ngt.slice");
    let systemd = tree.child(&format!("ngt.slice/docker-{}.scope", id('b')));
    // Unregistered container: held as unclassified.
    let unknown = tree.child(&format!("docker-{}.scope", id('c')));
    // Not containers.
    let upper = tree.child(&"A".repeat(64));
    let plain = tree.child("not-a-container");
    let short = tree.child(&format!("docker-{}.scope", "d".repeat(63)));

    let policies = datapath.maps.policies().unwrap();
    let policy_of = |path| {
        policies
            .iter()
            .find(|(id, _)| *id == TestCgroup::id(path))
            .map(|(_, p)| *p)
    };
    assert_eq!(policy_of(&cgroupfs), Some(protected));
    assert_eq!(policy_of(&systemd), Some(CgroupPolicy::default()));
    assert_eq!(policy_of(&unknown), Some(CgroupPolicy::UNCLASSIFIED));
    for other in [&upper, &plain, &short] {
        assert_eq!(
            policy_of(other),
            None,
            "{} is not a container",
            other.display()
        );
    }
}
