//! The lab: a homelab in a box on one machine, nothing leaving it.
//!
//! Network namespaces joined by veth stand for the hosts; every address a test sends to lives
//! in one of them, in 198.18.0.0/15 and fd0e::/16, which the root namespace is made to treat
//! as unreachable while a lab exists. Every fixture cleans up on drop, including on panic.
//! Tests run one at a time (`--test-threads=1`): they share the kernel.

pub mod agent;
pub mod cgroups;
pub mod docker;
pub mod http;
pub mod lab;
pub mod observe;
pub mod probe;
pub mod prometheus;
pub mod sniffer;
pub mod standins;
pub mod wireguard;

use std::{
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

/// Runs a command and panics with its output if it fails.
pub fn sh(args: &[&str]) -> String {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        output.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs a command, ignoring failure (cleanup paths).
pub fn sh_quiet(args: &[&str]) {
    let _ = Command::new(args[0]).args(&args[1..]).output();
}

/// The repository's root (the Dockerfile, deploy/, target/dist/).
pub fn repository_root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A short name unique to this test process and fixture, prefixed `ngt` so leftovers are
/// recognisable.
pub fn unique_tag() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{:x}{n:x}", std::process::id() & 0xffff)
}

/// Waits until `condition` holds. The deadline only bounds a broken run (CI's limit is the
/// real timer); it is generous so a loaded machine never fails a correct test.
pub fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A directory under the system temp dir, removed on drop (and so on panic).
pub struct TempDir {
    pub path: std::path::PathBuf,
}

impl TempDir {
    pub fn new(purpose: &str) -> Self {
        let path = std::env::temp_dir().join(format!("ngt{}-{purpose}", unique_tag()));
        std::fs::create_dir_all(&path).expect("creating a temp dir");
        Self { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Panics unless running as root: the lab needs namespaces, cgroups and BPF.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the privileged tests need root: run them through `cargo xtask test`"
    );
}
