//! `cargo xtask test`: the one command that sets up a fresh machine and runs every check.
//! `cargo xtask run`: builds the agent and runs `netguard run` with its built-in defaults.

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

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

/// Test fixtures clean up on drop and on panic, but not after SIGKILL (a CI time-out, a
/// killed session): everything the lab names `ngt*` or labels `netguard.test=1` goes
/// before the tests run, so a leftover container (`--restart always` brings it back with
/// dockerd) cannot skew them. `$1` is the netguard binary, for pinned state.
const SWEEP_LAB_LEFTOVERS: &str = r#"
ids=$(docker ps -aq --filter label=netguard.test=1)
[ -n "$ids" ] && docker rm -f $ids >/dev/null && echo "removed containers: $ids"
docker network ls --format '{{.Name}}' | grep '^ngt' | xargs -r -n1 docker network rm
for ns in $(ip netns list | awk '{print $1}' | grep '^ngt'); do
    ip netns pids "$ns" | xargs -r kill -9
    ip netns delete "$ns" && echo "removed netns $ns"
done
for link in $(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | grep '^ngt'); do
    ip link delete "$link" && echo "removed link $link"
done
for top in /sys/fs/cgroup/ngt* /sys/fs/cgroup/*/ngt*; do
    [ -d "$top" ] || continue
    if [ -f "$top/cgroup.kill" ]; then
        echo 1 > "$top/cgroup.kill"
        for _ in $(seq 100); do
            [ -z "$(find "$top" -name cgroup.procs -exec cat {} +)" ] && break
            sleep 0.1
        done
    fi
    find "$top" -depth -type d -exec rmdir {} \; 2>/dev/null
    [ -d "$top" ] && echo "could not remove $top" || echo "removed cgroup $top"
done
for pin in /sys/fs/bpf/ngt*; do
    [ -d "$pin" ] && "$1" unload --pin-dir "$pin"
done
rm -rf /tmp/ngt*
true
"#;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing, check formatting and lints, run unit and privileged tests.
    Test {
        /// Only these privileged test targets (e.g. `killswitch`); default: all.
        #[arg(long = "lab")]
        lab: Vec<String>,
    },
    /// Static (musl) release binaries for x86_64 and aarch64 in target/dist/.
    Dist,
    /// The container image (`netguard:latest`, FROM scratch) from the Dockerfile.
    Image,
    /// Install what is missing, build, and run the agent (`netguard run ARGS...`).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let root = workspace_root();
    env::set_current_dir(&root)?;
    match cli.command {
        Task::Test { lab } => test(&root, &lab),
        Task::Dist => dist(&root).map(drop),
        Task::Image => {
            dist(&root)?;
            step("docker build -t netguard:latest .");
            run_checked(Command::new("docker").args(["build", "-t", "netguard:latest", "."]))
        }
        Task::Run { args } => {
            install_missing()?;
            step("building netguard (release)");
            cargo(&["build", "--release", "-p", "netguard"])?;
            let binary = root.join("target/release/netguard");
            let mut command = privileged(&binary);
            command.arg("run").args(args);
            let status = command.status().context("starting netguard")?;
            if !status.success() {
                bail!("netguard run exited with {status}");
            }
            Ok(())
        }
    }
}

fn test(root: &Path, lab: &[String]) -> Result<()> {
    install_missing()?;
    step("cargo fmt --check");
    cargo(&["fmt", "--all", "--check"])?;
    step("clippy (user space)");
    cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
    step("clippy (eBPF)");
    let status = Command::new("cargo")
        .args(["+nightly", "clippy", "-p", "netguard-ebpf", "--bins"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(["--", "-D", "warnings"])
        .env("CARGO_TARGET_DIR", root.join("target/ebpf-clippy"))
        .status()?;
    if !status.success() {
        bail!("clippy on netguard-ebpf failed");
    }
    step("unit tests");
    let mut totals = Totals::default();
    let mut unit = Command::new("cargo");
    unit.args([
        "test",
        "-p",
        "netguard",
        "-p",
        "netguard-common",
        "-p",
        "xtask",
    ]);
    totals.run(&mut unit)?;
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
        privileged("sh")
            .args(["-c", SWEEP_LAB_LEFTOVERS, "sweep"])
            .arg(root.join("target/debug/netguard")),
    )?;
    step("privileged tests, one at a time");
    let mut command = Command::new("cargo");
    command.args(["test", "-p", "netguard-tests"]);
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
        use std::io::{BufRead as _, BufReader};
        let mut child = command.stdout(std::process::Stdio::piped()).spawn()?;
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

/// Installs the Debian packages, the nightly rust-src and bpf-linker that are missing.
fn install_missing() -> Result<()> {
    let mut missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    let need_linker = !Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if need_linker {
        missing.extend(LLVM_PACKAGES.iter().copied().filter(|p| !installed(p)));
    }
    if !missing.is_empty() {
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
        )?;
    }
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

/// Starts dockerd (Debian's docker.io) unless a daemon answers, and waits for it.
fn ensure_dockerd(root: &Path) -> Result<()> {
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
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !answers() {
        if std::time::Instant::now() > deadline {
            bail!("dockerd did not answer within 2 minutes: see target/dockerd.log");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    Ok(())
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `program`, through `sudo -E` unless already root.
fn privileged(program: impl AsRef<std::ffi::OsStr>) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut command = Command::new("sudo");
        command.arg("-E").arg(program);
        command
    }
}

fn host_triple() -> Result<String> {
    let out = Command::new("rustc").arg("-vV").output()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .context("rustc -vV printed no host")
}

fn cargo(args: &[&str]) -> Result<()> {
    run_checked(Command::new("cargo").args(args))
}

/// Docker's name for each architecture netguard ships for, and Rust's target.
const DIST_TARGETS: [(&str, &str); 2] = [
    ("amd64", "x86_64-unknown-linux-musl"),
    ("arm64", "aarch64-unknown-linux-musl"),
];

/// Builds the static binaries into target/dist/netguard-<arch>; returns (arch, path).
fn dist(root: &Path) -> Result<Vec<(&'static str, PathBuf)>> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()?;
    let installed = String::from_utf8_lossy(&installed.stdout).into_owned();
    let dist = root.join("target/dist");
    std::fs::create_dir_all(&dist)?;
    let mut built = Vec::new();
    for (arch, target) in DIST_TARGETS {
        if !installed.lines().any(|l| l.trim() == target) {
            step(&format!("rustup target add {target}"));
            run_checked(Command::new("rustup").args(["target", "add", target]))?;
        }
        step(&format!("static netguard for {arch} ({target})"));
        // rust-lld links musl's self-contained start files for any architecture: no cross
        // C toolchain needed.
        let linker = format!(
            "CARGO_TARGET_{}_LINKER",
            target.to_uppercase().replace('-', "_")
        );
        run_checked(
            Command::new("cargo")
                .args(["build", "--release", "-p", "netguard", "--target", target])
                .env(linker, "rust-lld")
                .env(
                    "RUSTFLAGS",
                    "-C target-feature=+crt-static -C strip=symbols",
                ),
        )?;
        let path = dist.join(format!("netguard-{arch}"));
        std::fs::copy(
            root.join(format!("target/{target}/release/netguard")),
            &path,
        )?;
        built.push((arch, path));
    }
    Ok(built)
}

fn run_checked(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("starting {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}

fn step(what: &str) {
    eprintln!("\n==> {what}");
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
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
