//! What a fresh machine lacks: Debian packages, the nightly toolchain's rust-src, the musl
//! targets, bpf-linker; and a running Docker daemon for the lab.

use std::{env, path::Path, process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};

use crate::cmd::{output_of, privileged, run_checked, step};

/// Debian packages the build and the lab need.
const PACKAGES: [&str; 8] = [
    "iproute2",
    "wireguard-go",
    "wireguard-tools",
    "docker.io",
    "busybox-static",
    "prometheus",
    "qemu-user-static",
    "docker-compose",
];
/// Debian packages bpf-linker links against (only needed to build it).
const LLVM_PACKAGES: [&str; 3] = ["llvm-22-dev", "libpolly-22-dev", "libzstd-dev"];
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// bpf-linker release built against LLVM 22 (newer ones may need a newer rustc).
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Rust targets of the static binaries.
pub const MUSL_TARGETS: [&str; 2] = ["x86_64-unknown-linux-musl", "aarch64-unknown-linux-musl"];

/// Installs those of `packages` that are not installed yet.
pub fn apt_install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    step(&format!(
        "installing Debian packages: {}",
        missing.join(" ")
    ));
    run_checked(privileged("apt-get").arg("update").arg("-qq"))?;
    run_checked(
        privileged("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Installs what is missing; a machine that has everything is left alone.
pub fn install_missing() -> Result<()> {
    let mut wanted = PACKAGES.to_vec();
    let need_linker = !Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if need_linker {
        wanted.extend(LLVM_PACKAGES);
    }
    apt_install(&wanted)?;
    ensure_nightly_rust_src()?;
    ensure_targets(&MUSL_TARGETS)?;
    if need_linker {
        step(&format!(
            "building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (a few minutes)"
        ));
        let path = format!("{LLVM_PREFIX}/bin:{}", env::var("PATH").unwrap_or_default());
        run_checked(
            Command::new("cargo")
                .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
                .args(["--no-default-features", "--features", "llvm-22"])
                .env("LLVM_PREFIX", LLVM_PREFIX)
                .env("PATH", path),
        )?;
    }
    Ok(())
}

fn ensure_nightly_rust_src() -> Result<()> {
    let nightly = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output();
    match nightly {
        Ok(out) if out.status.success() => {
            if !String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l.starts_with("rust-src"))
            {
                step("adding rust-src to the nightly toolchain");
                run_checked(Command::new("rustup").args([
                    "component",
                    "add",
                    "rust-src",
                    "--toolchain",
                    "nightly",
                ]))?;
            }
        }
        _ => {
            step("installing the nightly toolchain with rust-src");
            run_checked(Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]))?;
        }
    }
    Ok(())
}

/// `rustup target add` for each of `targets` not installed yet.
pub fn ensure_targets(targets: &[&str]) -> Result<()> {
    let installed = output_of(Command::new("rustup").args(["target", "list", "--installed"]));
    for target in targets {
        if !installed.lines().any(|l| l.trim() == *target) {
            step(&format!("rustup target add {target}"));
            run_checked(Command::new("rustup").args(["target", "add", target]))?;
        }
    }
    Ok(())
}

/// `cargo-fuzz`, for the fuzz task.
pub fn ensure_cargo_fuzz() -> Result<()> {
    let present = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !present {
        step("installing cargo-fuzz");
        run_checked(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}

/// Starts dockerd (Debian's docker.io) unless a daemon answers, and waits for it.
pub fn ensure_dockerd(root: &Path) -> Result<()> {
    let answers = || {
        Command::new("docker")
            .args(["version", "--format", "{{.Server.Version}}"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if answers() {
        return Ok(());
    }
    step("starting dockerd");
    let log = std::fs::File::create(root.join("target/dockerd.log"))?;
    privileged("dockerd")
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting dockerd (apt-get install docker.io)")?;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !answers() {
        if std::time::Instant::now() > deadline {
            bail!("dockerd did not answer within 2 minutes: see target/dockerd.log");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}
