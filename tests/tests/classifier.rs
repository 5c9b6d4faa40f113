//! The cgroup_mkdir classifier, driven by real cgroup creation in a test-owned tree: it must
//! recognise Docker's container cgroups under both drivers and any parent, and nothing else.

use std::path::Path;

use netguard::{cgroup::Cgroup, domain::ContainerId, kernel::Datapath};
use netguard_common::{CgroupPolicy, RESERVED_POLICY_KEYS, reserved_policy_key};
use netguard_tests::{
    agent::{AS_NOBODY, PinDir},
    cgroups::TestCgroup,
    require_root, sh,
};

fn id(fill: char) -> String {
    std::iter::repeat_n(fill, 64).collect()
}

/// The datapath with only the classifier attached (no cgroup program: nothing enforces).
fn classifier(pin: &PinDir) -> Datapath {
    require_root();
    let mut datapath = Datapath::load(&pin.path).unwrap();
    let root = netguard::cgroup::cgroup2_root().unwrap();
    let root_id = Cgroup::resolve(&root, &root).unwrap().id;
    datapath.attach_enforcement(Some(root_id), &[]).unwrap();
    datapath
}

fn policy_of(datapath: &Datapath, path: &Path) -> Option<CgroupPolicy> {
    let id = TestCgroup::id(path);
    datapath
        .maps
        .policies()
        .unwrap()
        .into_iter()
        .find(|(cgroup, _)| *cgroup == id)
        .map(|(_, p)| p)
}

#[test]
fn container_cgroups_of_both_drivers_are_classified_at_creation() {
    let pin = PinDir::new();
    let mut datapath = classifier(&pin);
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

    assert_eq!(policy_of(&datapath, &cgroupfs), Some(protected));
    assert_eq!(
        policy_of(&datapath, &systemd),
        Some(CgroupPolicy::default())
    );
    assert_eq!(
        policy_of(&datapath, &unknown),
        Some(CgroupPolicy::UNCLASSIFIED)
    );
    for other in [&upper, &plain, &short] {
        assert_eq!(
            policy_of(&datapath, other),
            None,
            "{} is not a container",
            other.display()
        );
    }
}

#[test]
fn cgroups_a_user_makes_in_a_delegated_subtree_take_no_entry() {
    let pin = PinDir::new();
    let datapath = classifier(&pin);
    let mut tree = TestCgroup::new_parent();
    let delegated = tree.child("user.slice");
    sh(&["chown", "65534:65534", &delegated.to_string_lossy()]);
    let before = datapath.maps.policies().unwrap().len();
    // What a user filling the policy map would do: container-like names, by the thousand.
    let mut made = Vec::new();
    for i in 0..200 {
        let dir = delegated.join(format!("{:064x}", 0xabc0 + i));
        let text = dir.to_string_lossy().to_string();
        let mut mkdir: Vec<&str> = AS_NOBODY.to_vec();
        mkdir.extend(["mkdir", &text]);
        sh(&mkdir);
        made.push(dir);
    }
    assert_eq!(
        datapath.maps.policies().unwrap().len(),
        before,
        "a user's cgroups are not container engines'"
    );
    // Root making the same kind of cgroup there (an engine) is classified.
    let engine = tree.child(&format!("user.slice/docker-{}.scope", id('9')));
    assert_eq!(
        policy_of(&datapath, &engine),
        Some(CgroupPolicy::UNCLASSIFIED)
    );
    for dir in made {
        std::fs::remove_dir(dir).unwrap();
    }
}

#[test]
fn a_container_cgroup_is_classified_whatever_the_length_of_its_path() {
    let pin = PinDir::new();
    let datapath = classifier(&pin);
    let mut tree = TestCgroup::new_parent();
    let mut relative = String::new();
    for c in ['a', 'b', 'c', 'd', 'e', 'f'] {
        if !relative.is_empty() {
            relative.push('/');
        }
        relative.push_str(&c.to_string().repeat(240));
        tree.child(&relative);
    }
    let container = tree.child(&format!("{relative}/{}", id('7')));
    assert!(container.to_string_lossy().len() > 1400);
    assert_eq!(
        policy_of(&datapath, &container),
        Some(CgroupPolicy::UNCLASSIFIED)
    );
}

#[test]
fn a_full_policy_map_gives_up_a_reserve_for_a_new_container_and_no_more_than_it_has() {
    let pin = PinDir::new();
    let mut datapath = classifier(&pin);
    datapath.restore_reserves();
    // Fill every free entry with keys no cgroup has (ids count up from small numbers).
    let mut fillers = 0u64;
    while datapath
        .maps
        .set_policy((1 << 48) + fillers, CgroupPolicy::default())
        .is_ok()
    {
        fillers += 1;
    }
    assert!(fillers > 60_000, "{fillers}");
    let mut tree = TestCgroup::new_parent();
    let first = tree.child(&id('1'));
    assert_eq!(
        policy_of(&datapath, &first),
        Some(CgroupPolicy::UNCLASSIFIED),
        "held through a reserve"
    );
    for i in 0..RESERVED_POLICY_KEYS {
        let _ = datapath.maps.remove_policy(reserved_policy_key(i));
    }
    let mut more = 0;
    while datapath
        .maps
        .set_policy((1 << 49) + more, CgroupPolicy::default())
        .is_ok()
    {
        more += 1;
    }
    assert_eq!(
        more,
        RESERVED_POLICY_KEYS - 1,
        "the reserves' room, less the one used"
    );
    let second = tree.child(&id('2'));
    assert_eq!(policy_of(&datapath, &second), None, "no reserve left");
}
