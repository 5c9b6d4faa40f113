//! What an interrupted test run leaves behind. Fixtures clean up on drop and on panic, but
//! not after SIGKILL (a CI time-out, a killed session): everything the lab names `ngt*` or
//! labels `netguard.test=1` goes before the tests run, so a leftover (a container with
//! `--restart always` comes back with dockerd) cannot skew them. Runs as root.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use crate::cmd::output_of;

/// Removes the lab's leftovers; `netguard` is the binary that unloads pinned state.
pub fn sweep(netguard: &Path) {
    let containers: Vec<String> = words(&output_of(Command::new("docker").args([
        "ps",
        "-aq",
        "--filter",
        "label=netguard.test=1",
    ])));
    if !containers.is_empty() {
        let _ = Command::new("docker")
            .args(["rm", "-f"])
            .args(&containers)
            .output();
        println!("removed containers: {}", containers.join(" "));
    }
    // The Compose test's stack (its containers carry Compose's labels, not the lab's) and
    // what its agent pinned, as the marker the test keeps in `target/` meanwhile says.
    if let Some(marker) = netguard
        .parent()
        .and_then(Path::parent)
        .map(|target| target.join("ngt-compose-stack"))
        && let Ok(text) = fs::read_to_string(&marker)
    {
        let lines: Vec<&str> = text.lines().collect();
        if let [pin_dir, env, project] = lines[..] {
            let filter = format!("label=com.docker.compose.project={project}");
            for id in words(&output_of(
                Command::new("docker").args(["ps", "-aq", "--filter", &filter]),
            )) {
                quiet("docker", &["rm", "-f", &id]);
                println!("removed container {id} of the Compose test's stack {project}");
            }
            let _ = Command::new(netguard)
                .args(["unload", "--pin-dir", pin_dir])
                .status();
            let _ = fs::remove_file(env);
            println!("unloaded {pin_dir} and removed {env} of the Compose test");
        }
        let _ = fs::remove_file(&marker);
    }
    for network in lab_names(&output_of(Command::new("docker").args([
        "network",
        "ls",
        "--format",
        "{{.Name}}",
    ]))) {
        quiet("docker", &["network", "rm", &network]);
        println!("removed docker network {network}");
    }
    for netns in lab_names(&output_of(Command::new("ip").args(["netns", "list"]))) {
        for pid in words(&output_of(
            Command::new("ip").args(["netns", "pids", &netns]),
        )) {
            quiet("kill", &["-9", &pid]);
        }
        quiet("ip", &["netns", "delete", &netns]);
        println!("removed netns {netns}");
    }
    for link in links(&output_of(Command::new("ip").args(["-o", "link", "show"]))) {
        quiet("ip", &["link", "delete", &link]);
        println!("removed link {link}");
    }
    for cgroup in lab_cgroups() {
        remove_cgroup(&cgroup);
    }
    for pin in lab_entries(Path::new("/sys/fs/bpf")) {
        let _ = Command::new(netguard)
            .arg("unload")
            .arg("--pin-dir")
            .arg(&pin)
            .status();
    }
    for temp in lab_entries(&std::env::temp_dir()) {
        let _ = fs::remove_dir_all(&temp).or_else(|_| fs::remove_file(&temp));
    }
}

fn quiet(program: &str, args: &[&str]) {
    let _ = Command::new(program).args(args).output();
}

fn words(text: &str) -> Vec<String> {
    text.split_whitespace().map(String::from).collect()
}

/// The first word of each line that names a lab object (`ngt...`).
fn lab_names(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with("ngt"))
        .map(String::from)
        .collect()
}

/// Lab interfaces in `ip -o link show` output (`3: ngt1a2h@if4: <...>`).
fn links(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter_map(|line| line.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name))
        .filter(|name| name.starts_with("ngt"))
        .map(String::from)
        .collect()
}

fn lab_entries(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("ngt"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `/sys/fs/cgroup/ngt*` and `/sys/fs/cgroup/*/ngt*` (v2 on pure hosts, v1 hierarchies and
/// the unified mount on hybrid ones).
fn lab_cgroups() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut found = lab_entries(root);
    for entry in fs::read_dir(root).into_iter().flatten().flatten() {
        if entry.path().is_dir() {
            found.extend(lab_entries(&entry.path()));
        }
    }
    found.retain(|p| p.is_dir());
    found
}

/// Kills what runs in a lab cgroup tree and removes it, deepest first.
fn remove_cgroup(top: &Path) {
    if fs::write(top.join("cgroup.kill"), "1").is_ok() {
        let deadline = Instant::now() + Duration::from_secs(10);
        while has_processes(top) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    remove_tree(top);
    if top.exists() {
        println!("could not remove {}", top.display());
    } else {
        println!("removed cgroup {}", top.display());
    }
}

fn has_processes(dir: &Path) -> bool {
    let here = fs::read_to_string(dir.join("cgroup.procs")).is_ok_and(|p| !p.trim().is_empty());
    here || subdirs(dir).iter().any(|d| has_processes(d))
}

fn remove_tree(dir: &Path) {
    for child in subdirs(dir) {
        remove_tree(&child);
    }
    let _ = fs::remove_dir(dir);
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_lab_objects_are_picked() {
        assert_eq!(
            lab_names("ngt12-cli (id: 3)\nother\nngt12-rtr\n"),
            ["ngt12-cli", "ngt12-rtr"]
        );
        let listing = "1: lo: <LOOPBACK,UP> mtu 65536\n\
                       5: ngt3ah@if4: <BROADCAST> mtu 1500\n\
                       6: docker0: <BROADCAST> mtu 1500\n";
        assert_eq!(links(listing), ["ngt3ah"]);
    }
}
