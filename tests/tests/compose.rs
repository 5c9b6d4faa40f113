//! The shipped Compose stack, run as the README says: `docker-compose up -d` in
//! `deploy/compose` with nothing changed but `.env` (made from `.env.example`). The images no
//! registry here can give are stand-ins built under their real names (Gluetun with a real
//! WireGuard tunnel, its control server's current auth and its HEALTHCHECK); netguard is the
//! real image. Everything is judged at the far end: what reaches the lab's internet host.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
};

use netguard_tests::{
    docker::{DockerLab, exec_probe_with},
    http,
    lab::{INTERNET_V4, TUNNEL_CLIENT_V4, VPN_V4, addr},
    probe::{EPERM, ProbeResult},
    sh, sh_quiet,
    sniffer::{Sniffer, TcpSink},
    standins::StandIns,
    wait_for,
    wireguard::{ENDPOINT_PORT, Tunnel},
};

/// Where Gluetun's stand-in checks its health, through the tunnel (HEALTH_TARGET_ADDRESSES).
const HEALTH_PORT: u16 = 7443;
const AGENT: &str = "127.0.0.1:9477";
const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/netguard";

/// `deploy/compose` with the test's `.env`; on drop: `docker-compose down`, the agent's
/// pins, and every file Compose made there.
struct Stack {
    dir: PathBuf,
    project: String,
    /// Bind-mount sources Compose creates, that did not exist before.
    made: Vec<PathBuf>,
}

impl Stack {
    fn up(env: &str, project: &str) -> Self {
        let dir = netguard_tests::repository_root().join("deploy/compose");
        assert!(
            !dir.join(".env").exists(),
            "{} exists: the Compose test writes its own .env there; move yours away",
            dir.join(".env").display()
        );
        assert!(
            !Path::new(DEFAULT_PIN_DIR).exists(),
            "{DEFAULT_PIN_DIR} exists: an agent with the default pin dir runs here; the \
             Compose stack's agent needs it"
        );
        let made = ["netguard-token", "qbittorrent", "downloads", "sabnzbd"]
            .iter()
            .map(|d| dir.join(d))
            .filter(|d| !d.exists())
            .collect();
        std::fs::write(dir.join(".env"), env).unwrap();
        // For `cargo xtask test`'s sweep, should this run be interrupted.
        std::fs::write(
            marker(),
            format!(
                "{DEFAULT_PIN_DIR}\n{}\n{project}\n",
                dir.join(".env").display()
            ),
        )
        .unwrap();
        let stack = Self {
            dir,
            project: project.to_string(),
            made,
        };
        stack.compose(&["up", "-d"]);
        stack
    }

    fn compose(&self, args: &[&str]) -> String {
        let output = Command::new("docker-compose")
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("docker-compose");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "docker-compose {args:?}: {text}");
        text
    }

    /// The container Compose made for `service` (its name is Compose's, not the test's).
    fn container(&self, service: &str) -> String {
        let id = self.compose(&["ps", "-q", service]);
        let id = id.lines().last().unwrap_or_default().trim().to_string();
        assert!(!id.is_empty(), "no container for {service}");
        id
    }

    fn token(&self) -> String {
        std::fs::read_to_string(self.dir.join("netguard-token/token"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    fn api(&self, path: &str) -> Option<serde_json::Value> {
        let token = self.token();
        if token.is_empty() {
            return None;
        }
        let address: SocketAddr = AGENT.parse().unwrap();
        std::net::TcpStream::connect(address).ok()?;
        let (status, body) = http::get_with_token(address, path, &token);
        (status == 200).then(|| serde_json::from_str(&body).ok())?
    }

    fn tunnel_up(&self) -> Option<bool> {
        let gateways = self.api("/api/v1/gateways")?;
        gateways.as_array()?.first()?["tunnel_up"].as_bool()
    }

    fn logs(&self, service: &str) -> String {
        self.compose(&["logs", "--no-color", service])
    }

    /// [`wait_for`], saying what the stack logged and Docker's health checks found if it
    /// times out.
    fn wait(&self, what: &str, condition: impl FnMut() -> bool) {
        let waited =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| wait_for(what, condition)));
        if let Err(panic) = waited {
            eprintln!("{}", self.compose(&["logs", "--no-color", "--tail", "60"]));
            let gluetun = self.container("gluetun");
            eprintln!(
                "Gluetun's health checks: {}",
                sh(&[
                    "docker",
                    "inspect",
                    "--format",
                    "{{json .State.Health}}",
                    &gluetun
                ])
            );
            std::panic::resume_unwind(panic);
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = Command::new("docker-compose")
            .args(["down", "-t", "1"])
            .current_dir(&self.dir)
            .output();
        // Anything left by an interrupted `down`.
        let filter = format!("label=com.docker.compose.project={}", self.project);
        if let Ok(out) = Command::new("docker")
            .args(["ps", "-aq", "--filter", &filter])
            .output()
        {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                sh_quiet(&["docker", "rm", "-f", id]);
            }
        }
        if let Some(binary) = std::env::var_os("NETGUARD_BIN") {
            let _ = Command::new(binary)
                .args(["unload", "--pin-dir", DEFAULT_PIN_DIR])
                .output();
        }
        let _ = std::fs::remove_file(self.dir.join(".env"));
        let _ = std::fs::remove_file(marker());
        for dir in &self.made {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// What `cargo xtask test`'s sweep reads to undo an interrupted run's stack (in `target/`,
/// not the world-writable temp dir).
fn marker() -> PathBuf {
    netguard_tests::repository_root().join("target/ngt-compose-stack")
}

/// The cgroup under which dockerd puts containers (cgroupfs driver): the Docker parent this
/// test controls, and the only place its agent may enforce.
fn docker_parent() -> PathBuf {
    let driver = sh(&["docker", "info", "--format", "{{.CgroupDriver}}"]);
    assert_eq!(
        driver.trim(),
        "cgroupfs",
        "the Compose test confines its agent to Docker's parent cgroup, /docker with the \
         cgroupfs driver"
    );
    netguard::cgroup::cgroup2_root().unwrap().join("docker")
}

/// The user's `.env`: `.env.example` filled in as the README says, for the lab's VPN
/// provider (Gluetun's custom provider), plus the lab's own settings.
fn dot_env(client_key: &str, provider_key: &str, project: &str) -> String {
    let example = std::fs::read_to_string(
        netguard_tests::repository_root().join("deploy/compose/.env.example"),
    )
    .unwrap();
    let key = format!("ngt{}", netguard_tests::unique_tag());
    let values = [
        ("WIREGUARD_PRIVATE_KEY", client_key.to_string()),
        ("WIREGUARD_ADDRESSES", format!("{TUNNEL_CLIENT_V4}/32")),
        ("WIREGUARD_PUBLIC_KEY", provider_key.to_string()),
        ("VPN_ENDPOINT_IP", VPN_V4.to_string()),
        ("VPN_ENDPOINT_PORT", ENDPOINT_PORT.to_string()),
        ("NETGUARD_GLUETUN_API_KEY", key),
        (
            "NETGUARD_ATTACH_CGROUPS",
            docker_parent().display().to_string(),
        ),
    ];
    let mut env = String::new();
    for line in example.lines() {
        let name = line.split('=').next().unwrap_or_default();
        match values.iter().find(|(key, _)| *key == name) {
            Some((key, value)) => env += &format!("{key}={value}\n"),
            None => env += &format!("{line}\n"),
        }
    }
    // The lab's: the project name (its containers are found and removed by it), and
    // Gluetun's health target (a lab host, not cloudflare.com).
    env += &format!("COMPOSE_PROJECT_NAME={project}\n");
    env += &format!(
        "HEALTH_TARGET_ADDRESSES={}:{HEALTH_PORT}\n",
        addr(INTERNET_V4)
    );
    env
}

fn health(container: &str) -> String {
    sh(&[
        "docker",
        "inspect",
        "--format",
        "{{.State.Health.Status}}",
        container,
    ])
    .trim()
    .to_string()
}

/// Two datagrams from `container` to the internet host's `port`.
fn send(container: &str, port: u16) -> ProbeResult {
    exec_probe_with(
        container,
        &[],
        &["udp", &addr(INTERNET_V4), &port.to_string(), "2", "16"],
    )
}

#[test]
fn the_shipped_compose_stack_keeps_qbittorrent_in_the_tunnel_through_gluetun_restarts() {
    let lab = DockerLab::new();
    let images = StandIns::build();
    // The real netguard image, as `cargo xtask image` builds it.
    sh(&[
        "docker",
        "build",
        "-q",
        "-t",
        "netguard:latest",
        &netguard_tests::repository_root().to_string_lossy(),
    ]);
    let (provider, client_key, provider_key) = Tunnel::provider_for_client(&lab.lab);
    let mut target = Some(TcpSink::start(&lab.lab.internet, HEALTH_PORT));
    let internet = Sniffer::start(&lab.lab.internet);
    let project = format!("ngt{}", lab.lab.tag);
    let stack = Stack::up(&dot_env(&client_key, &provider_key, &project), &project);

    let gluetun = stack.container("gluetun");
    stack.wait("Gluetun healthy (its tunnel and health check work)", || {
        health(&gluetun) == "healthy"
    });
    stack.wait("netguard's agent to say the tunnel is up", || {
        stack.tunnel_up() == Some(true)
    });
    // The Compose service name in qBittorrent's netguard.gateway label found the gateway.
    let qbittorrent = stack.container("qbittorrent");
    let containers = stack.api("/api/v1/containers").unwrap();
    let entry = containers
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == qbittorrent.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("qBittorrent not listed: {containers}"));
    assert_eq!(entry["protected"], true, "{entry}");
    assert_eq!(entry["gateway"], format!("{project}_gluetun_1"), "{entry}");

    let through = send(&qbittorrent, 7601);
    assert!(through.ok, "{through:?}");
    stack.wait("qBittorrent's datagrams through the tunnel", || {
        internet.count(|a| a.dst_port == 7601 && a.src == TUNNEL_CLIENT_V4) == 2
    });
    let sabnzbd = stack.container("sabnzbd");
    let refused = send(&sabnzbd, 7602);
    assert_eq!(refused.errno, EPERM, "{refused:?}");

    // Gluetun unhealthy (its health target unreachable; the tunnel itself still carries):
    // nothing of qBittorrent's gets out.
    drop(target.take());
    stack.wait("Gluetun unhealthy", || health(&gluetun) == "unhealthy");
    stack.wait("netguard to take the tunnel down", || {
        stack.tunnel_up() == Some(false)
    });
    let held = send(&qbittorrent, 7603);
    assert_eq!(held.errno, EPERM, "{held:?}");

    // Healthy again: traffic resumes by itself.
    target = Some(TcpSink::start(&lab.lab.internet, HEALTH_PORT));
    stack.wait("Gluetun healthy again", || health(&gluetun) == "healthy");
    stack.wait("netguard to bring the tunnel up", || {
        stack.tunnel_up() == Some(true)
    });
    let resumed = send(&qbittorrent, 7604);
    assert!(resumed.ok, "{resumed:?}");
    stack.wait("qBittorrent's datagrams through the tunnel again", || {
        internet.count(|a| a.dst_port == 7604 && a.src == TUNNEL_CLIENT_V4) == 2
    });

    // Gluetun restarts: qBittorrent is stranded in the old namespace; netguard restarts it
    // into the new one (netguard.heal=restart), without a hand.
    let before = sh(&[
        "docker",
        "inspect",
        "--format",
        "{{.State.StartedAt}}",
        &qbittorrent,
    ]);
    sh(&["docker", "restart", &gluetun]);
    stack.wait("Gluetun healthy after its restart", || {
        health(&gluetun) == "healthy"
    });
    stack.wait(
        "netguard to restart qBittorrent into Gluetun's new namespace",
        || {
            sh(&[
                "docker",
                "inspect",
                "--format",
                "{{.State.StartedAt}}",
                &qbittorrent,
            ]) != before
        },
    );
    stack.wait("the tunnel up for the new instance", || {
        stack.tunnel_up() == Some(true)
    });
    let healed = exec_probe_with(
        &qbittorrent,
        &["-e", "NG_PROBE_RETRY_MS=20000"],
        &["udp", &addr(INTERNET_V4), "7605", "2", "16"],
    );
    assert!(healed.ok, "{healed:?}");
    stack.wait("qBittorrent's datagrams through the new tunnel", || {
        internet.count(|a| a.dst_port == 7605 && a.src == TUNNEL_CLIENT_V4) == 2
    });
    let log = stack.logs("netguard");
    assert!(log.contains("stranded"), "{log}");
    assert!(log.contains("restarting it to rejoin"), "{log}");

    // SABnzbd never reached the internet host; qBittorrent only through the tunnel.
    assert_eq!(internet.count(|a| a.dst_port == 7602), 0, "SABnzbd got out");
    assert_eq!(
        internet.count(|a| a.dst_port == 7603),
        0,
        "out while unhealthy"
    );
    assert_eq!(
        internet.count(|a| (7601..=7605).contains(&a.dst_port) && a.src != TUNNEL_CLIENT_V4),
        0,
        "qBittorrent got out around the tunnel"
    );
    drop(stack);
    drop((provider, target, images));
}
