//! Running ng-probe inside a lab namespace and cgroup.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Child, ChildStdin, ChildStdout, Stdio},
};

use serde::Deserialize;

use crate::lab::{Netns, command_in};

pub const EPERM: i32 = libc::EPERM;

/// What the probe reported.
#[derive(Debug, Deserialize)]
pub struct ProbeResult {
    pub ok: bool,
    pub errno: i32,
    pub done: u64,
    pub elapsed_us: u64,
    pub error: String,
    /// What came back (a DNS answer: its first address, or `rcode N`).
    #[serde(default)]
    pub answer: String,
}

impl ProbeResult {
    /// An AF_PACKET frame the kernel took: sent, or dropped by a TC program in the sender's
    /// own namespace (the drop comes back as ENOBUFS; through a TX ring it may not).
    pub fn frame_taken(&self) -> bool {
        self.ok || self.errno == libc::ENOBUFS
    }
}

/// ng-probe is built beside the test binaries (`target/<profile>/ng-probe`; tests run from
/// `target/<profile>/deps`) by `cargo xtask test` (`cargo build -p ng-probe`).
fn probe_path() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let path = profile_dir.join("ng-probe");
    assert!(
        path.exists(),
        "{} missing: build the netguard-tests crate",
        path.display()
    );
    path
}

/// Runs `ng-probe ARGS` in `netns` (and `cgroup`) to completion.
pub fn probe(netns: &Netns, cgroup: Option<&Path>, args: &[&str]) -> ProbeResult {
    let output = command_in(probe_path(), netns, cgroup)
        .args(args)
        .output()
        .expect("running ng-probe");
    parse_output(args, &output)
}

/// Runs `ng-probe ARGS` like [`probe`]; the signal that killed it, if one did.
pub fn probe_or_signal(
    netns: &Netns,
    cgroup: Option<&Path>,
    args: &[&str],
) -> Result<ProbeResult, i32> {
    use std::os::unix::process::ExitStatusExt as _;
    let output = command_in(probe_path(), netns, cgroup)
        .args(args)
        .output()
        .expect("running ng-probe");
    match output.status.signal() {
        Some(signal) => Err(signal),
        None => Ok(parse_output(args, &output)),
    }
}

fn parse_output(args: &[&str], output: &std::process::Output) -> ProbeResult {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| {
        panic!(
            "ng-probe {args:?}: unparseable output {stdout:?} ({e}); stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// A probe that keeps running (`stream`, `udp-recv`), driven line by line.
pub struct LiveProbe {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl LiveProbe {
    pub fn start(netns: &Netns, cgroup: Option<&Path>, args: &[&str]) -> Self {
        let mut command = command_in(probe_path(), netns, cgroup);
        command.args(args);
        Self::spawn(command)
    }

    /// Any command that runs ng-probe (e.g. `docker exec -i ... ng-probe ...`).
    pub fn spawn(mut command: std::process::Command) -> Self {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting ng-probe");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Self {
            child,
            stdin,
            stdout,
        }
    }

    /// The next line the probe prints.
    pub fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("reading ng-probe");
        line.trim().to_string()
    }

    pub fn send(&mut self, command: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{command}").expect("writing to ng-probe");
    }

    /// Closes stdin and returns the final report.
    pub fn finish(mut self) -> ProbeResult {
        drop(self.stdin.take());
        let mut last = String::new();
        loop {
            let line = self.line();
            if line.is_empty() {
                break;
            }
            last = line;
        }
        let _ = self.child.wait();
        serde_json::from_str(&last).unwrap_or_else(|e| panic!("ng-probe final line {last:?}: {e}"))
    }
}

impl Drop for LiveProbe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
