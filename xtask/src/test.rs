//! `cargo xtask test`: everything, in order: setup, formatting, lints, the module graph,
//! unit tests, the static binaries (and the aarch64 one under qemu), then the privileged
//! tests in the lab, one at a time.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    cmd::{cargo, host_triple, is_root, privileged, run_checked, step},
    dist::dist,
    layers,
    setup::{ensure_dockerd, install_missing},
};

pub fn test(root: &Path, lab: &[String]) -> Result<()> {
    install_missing()?;
    check(root)?;
    unit_and_lab(root, lab)
}

/// Formatting, lints and the module graph: what needs no root and no lab.
pub fn check(root: &Path) -> Result<()> {
    step("cargo fmt --check");
    cargo(&["fmt", "--all", "--check"])?;
    step("clippy (user space)");
    cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
    // The object is built for the agent's architecture (aya-build's bpf_target_arch): each
    // shipped one is checked.
    for arch in ["x86_64", "aarch64"] {
        step(&format!("clippy (eBPF, for {arch})"));
        run_checked(
            Command::new("cargo")
                .args(["+nightly", "clippy", "-p", "netguard-ebpf", "--bins"])
                .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
                .args(["--", "-D", "warnings"])
                .env(
                    "CARGO_TARGET_DIR",
                    root.join("target/ebpf-clippy").join(arch),
                )
                .env("RUSTFLAGS", format!("--cfg bpf_target_arch=\"{arch}\"")),
        )?;
    }
    step("the agent's module graph: no import cycle, no file over 400 lines");
    layers::check(&root.join("netguard/src"))
}

fn unit_and_lab(root: &Path, lab: &[String]) -> Result<()> {
    step("unit tests");
    let mut totals = Totals::default();
    totals.run(Command::new("cargo").args([
        "test",
        "-p",
        "netguard",
        "-p",
        "netguard-common",
        "-p",
        "xtask",
    ]))?;
    let binaries = dist(root)?;
    step("the aarch64 binary under qemu-user");
    for args in [&["--version"][..], &["doctor", "--help"]] {
        let output = Command::new("qemu-aarch64-static")
            .arg(&binaries[1].1)
            .args(args)
            .output()
            .context("qemu-aarch64-static (apt-get install qemu-user-static)")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() || !stdout.contains("netguard") && !stdout.contains("Usage") {
            bail!("netguard {args:?} under qemu-aarch64: {output:?}");
        }
        print!("{stdout}");
    }
    step("building the agent and the probe for the lab");
    cargo(&["build", "-p", "netguard", "-p", "ng-probe"])?;
    step("building the static probe for the test image");
    let host = host_triple()?;
    run_checked(
        Command::new("cargo")
            .args(["build", "--release", "-p", "ng-probe", "--target", &host])
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .env("CARGO_TARGET_DIR", root.join("target/static")),
    )?;
    ensure_dockerd(root)?;
    step("removing what an interrupted earlier run left behind");
    run_checked(
        privileged(std::env::current_exe()?)
            .arg("sweep")
            .arg(root.join("target/debug/netguard")),
    )?;
    step("privileged tests, one at a time");
    let mut command = Command::new("cargo");
    command.args(["test", "--no-fail-fast", "-p", "netguard-tests"]);
    for target in lab {
        command.args(["--test", target]);
    }
    command
        .args(["--", "--test-threads=1"])
        .env("NETGUARD_BIN", root.join("target/debug/netguard"))
        .env(
            "NG_PROBE_STATIC",
            root.join(format!("target/static/{host}/release/ng-probe")),
        )
        .env("RUST_BACKTRACE", "1");
    if !is_root() {
        // Run the test binaries (not cargo) as root.
        let runner = format!(
            "CARGO_TARGET_{}_RUNNER",
            host.to_uppercase().replace('-', "_")
        );
        command.env(runner, "sudo -E");
    }
    let result = totals.run(&mut command);
    println!("{} passed, {} failed", totals.passed, totals.failed);
    result
}

/// Test counts summed over cargo's `test result:` lines.
#[derive(Debug, Default)]
struct Totals {
    passed: u64,
    failed: u64,
}

impl Totals {
    /// Runs a `cargo test` command, echoing its output and adding up its results.
    fn run(&mut self, command: &mut Command) -> Result<()> {
        let mut child = command.stdout(Stdio::piped()).spawn()?;
        let stdout = BufReader::new(child.stdout.take().context("cargo test stdout")?);
        for line in stdout.lines() {
            let line = line?;
            println!("{line}");
            if let Some(summary) = line.strip_prefix("test result: ") {
                self.passed += count_before(summary, " passed");
                self.failed += count_before(summary, " failed");
            }
        }
        let status = child.wait()?;
        if !status.success() {
            bail!("{command:?} failed with {status}");
        }
        Ok(())
    }
}

/// The number just before `label` in "ok. 7 passed; 0 failed; ...".
fn count_before(summary: &str, label: &str) -> u64 {
    summary
        .split(';')
        .find(|part| part.ends_with(label))
        .and_then(|part| {
            part.trim_end_matches(label)
                .rsplit(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::count_before;

    #[test]
    fn counts_are_read_from_cargo_summaries() {
        let summary = "ok. 7 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out";
        assert_eq!(count_before(summary, " passed"), 7);
        assert_eq!(count_before(summary, " failed"), 2);
    }
}
