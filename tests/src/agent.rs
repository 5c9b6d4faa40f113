//! The real agent binary (`netguard run`) as a lab fixture.

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Stdio},
    sync::{Arc, Mutex},
};

use netguard::kernel::Maps;

use crate::{
    lab::{Netns, command_in_netns},
    unique_tag, wait_for,
};

/// Path of the netguard binary: `NETGUARD_BIN`, else the workspace's debug build.
pub fn netguard_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("NETGUARD_BIN") {
        return PathBuf::from(path);
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/netguard");
    assert!(
        path.exists(),
        "{} is missing: run the tests through `cargo xtask test` (or `cargo build -p netguard`)",
        path.display()
    );
    path
}

/// `setpriv` arguments that run a program as `nobody`, with no capabilities at all.
pub const AS_NOBODY: [&str; 6] = [
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    "--inh-caps=-all",
    "--bounding-set=-all",
];

/// The netguard binary as a command, run through `wrapper` (e.g. [`AS_NOBODY`]) if given.
pub fn netguard_through(wrapper: &[&str]) -> std::process::Command {
    match wrapper.split_first() {
        Some((program, args)) => {
            let mut command = std::process::Command::new(program);
            command.args(args).arg(netguard_bin());
            command
        }
        None => std::process::Command::new(netguard_bin()),
    }
}

/// A pin directory of its own, unloaded on drop.
pub struct PinDir {
    pub path: PathBuf,
}

impl PinDir {
    pub fn new() -> Self {
        Self {
            path: PathBuf::from(format!("/sys/fs/bpf/ngt{}", unique_tag())),
        }
    }
}

impl Default for PinDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(error) = netguard::kernel::pins::unload(&self.path) {
            eprintln!("unloading {}: {error:#}", self.path.display());
        }
    }
}

/// `netguard run --config <file>` started in a namespace (the one holding the backstop
/// interfaces), with its log captured.
pub struct Agent {
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
    pub config_path: PathBuf,
    /// Network namespace it runs in; `None`: the host's.
    netns: Option<PathBuf>,
    /// The log line that says it is ready.
    ready: &'static str,
}

impl Agent {
    /// Starts the agent in the host's namespaces and waits until it has synced with Docker.
    pub fn start_on_host(config: &str, config_path: PathBuf) -> Self {
        Self::start_on_host_until(config, config_path, "Docker: in sync")
    }

    /// Starts the agent in the host's namespaces and waits for the log line `ready`.
    pub fn start_on_host_until(config: &str, config_path: PathBuf, ready: &'static str) -> Self {
        std::fs::write(&config_path, config).expect("writing the agent config");
        let mut agent = Self {
            child: None,
            log: Arc::new(Mutex::new(Vec::new())),
            config_path,
            netns: None,
            ready,
        };
        agent.spawn();
        agent
    }

    /// Starts the agent and waits until it reports the policy is enforced.
    pub fn start(netns: &Netns, config: &str, config_path: PathBuf) -> Self {
        std::fs::write(&config_path, config).expect("writing the agent config");
        let mut agent = Self {
            child: None,
            log: Arc::new(Mutex::new(Vec::new())),
            config_path,
            netns: Some(netns.path()),
            ready: "netguard ready",
        };
        agent.spawn();
        agent
    }

    fn spawn(&mut self) {
        let mut command = match &self.netns {
            Some(path) => command_in_netns(netguard_bin(), path),
            None => std::process::Command::new(netguard_bin()),
        };
        // A port of its own: a real agent (or a leftover) on the default port must not matter.
        let mut child = command
            .args(["run", "--listen", "127.0.0.1:0", "--config"])
            .arg(&self.config_path)
            .env("NETGUARD_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting netguard run");
        let stderr = BufReader::new(child.stderr.take().expect("stderr"));
        let log = Arc::clone(&self.log);
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                eprintln!("[agent] {line}");
                log.lock().unwrap().push(line);
            }
        });
        self.child = Some(child);
        let ready = self.ready;
        let runs = self.count(ready) + 1;
        wait_for("the agent to be ready", || {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "netguard run exited with {status}: {:?}",
                    self.log.lock().unwrap()
                );
            }
            self.count(ready) >= runs
        });
    }

    /// Restarts the agent (after a kill) where it ran, with the same configuration.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart after kill");
        self.spawn();
    }

    /// The running agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the agent runs").id()
    }

    /// SIGKILL: the agent gets no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9 the agent");
            child.wait().expect("reap the agent");
        }
    }

    /// SIGTERM, and wait for the agent to exit on its own.
    pub fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let status = child.wait().expect("reap the agent");
            assert!(
                status.success(),
                "netguard run exited with {status} on SIGTERM"
            );
        }
    }

    /// Log lines containing `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// The address its HTTP server listens on (in its network namespace), from its log.
    pub fn http_address(&self) -> std::net::SocketAddr {
        const SERVING: &str = "serving /metrics and /api/v1 on http://";
        let mut address = None;
        wait_for("the agent's HTTP address in its log", || {
            address = self
                .log_lines(SERVING)
                .last()
                .and_then(|line| line.split(SERVING).nth(1))
                .and_then(|rest| rest.trim().parse().ok());
            address.is_some()
        });
        address.unwrap()
    }

    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_file(&self.config_path);
    }
}

/// The pinned maps, as the test (standing in for later issues' controllers) drives them.
pub fn pinned_maps(pin: &PinDir) -> Maps {
    Maps::open_pinned(&pin.path).expect("opening the agent's pinned maps")
}

/// Whether a gateway slot with a tunnel interface says its tunnel is `up` (1) or down (0).
pub fn some_tunnel_is(pin: &PinDir, up: u32) -> bool {
    pinned_maps(pin)
        .gateways()
        .unwrap()
        .iter()
        .any(|(_, _, state)| state.tunnel_up == up && state.tunnel_ifindex != 0)
}
