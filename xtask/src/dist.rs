//! Static (musl) binaries for x86_64 and aarch64, and the container image.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Result;

use crate::{
    cmd::{run_checked, step},
    setup::ensure_targets,
};

/// Docker's name for each architecture netguard ships for, and Rust's target. The linker
/// and static flags for each target are in `.cargo/config.toml`, so a plain
/// `cargo build --target <target>` builds the same binary.
const DIST_TARGETS: [(&str, &str); 2] = [
    ("amd64", "x86_64-unknown-linux-musl"),
    ("arm64", "aarch64-unknown-linux-musl"),
];

/// Builds the static binaries into target/dist/netguard-<arch>; returns (arch, path).
pub fn dist(root: &Path) -> Result<Vec<(&'static str, PathBuf)>> {
    ensure_targets(&DIST_TARGETS.map(|(_, target)| target))?;
    let dist = root.join("target/dist");
    std::fs::create_dir_all(&dist)?;
    let mut built = Vec::new();
    for (arch, target) in DIST_TARGETS {
        step(&format!("static netguard for {arch} ({target})"));
        run_checked(Command::new("cargo").args([
            "build",
            "--profile",
            "dist",
            "-p",
            "netguard",
            "--target",
            target,
        ]))?;
        let path = dist.join(format!("netguard-{arch}"));
        std::fs::copy(root.join(format!("target/{target}/dist/netguard")), &path)?;
        built.push((arch, path));
    }
    Ok(built)
}

/// `netguard:latest`, FROM scratch, from the Dockerfile.
pub fn image(root: &Path) -> Result<()> {
    dist(root)?;
    step("docker build -t netguard:latest .");
    run_checked(Command::new("docker").args(["build", "-t", "netguard:latest", "."]))
}
