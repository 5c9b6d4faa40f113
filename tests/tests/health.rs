//! Tunnel health: the killswitch follows the VPN's real state (real dockerd, real WireGuard).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::TcpListener,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use netguard_common::BlockReason;
use netguard_tests::{
    agent::{PinDir, pinned_maps},
    docker::DockerLab,
    lab::{INTERNET_V4, TUNNEL_CLIENT_V4, addr},
    probe::{EPERM, LiveProbe},
    sniffer::Sniffer,
    wait_for,
    wireguard::{Tunnel, ip_in},
};

/// A gateway container with `labels` and a WireGuard tunnel to the lab's provider carrying
/// the internet host's subnet; returns its id, netns and the tunnel.
fn gateway(lab: &DockerLab, labels: &[&str], extra: &[&str]) -> (String, PathBuf, Tunnel) {
    let wg = format!("wg{}g", lab.lab.tag);
    // No endpoints: the gateway's own traffic is its own, whatever its neighbours' policy.
    let mut all = vec!["netguard.role=vpn-gateway".to_string()];
    all.push(format!("netguard.tunnel={wg}"));
    all.extend(labels.iter().map(|l| l.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let id = lab.start(&all, extra);
    let netns = netguard::netns::of_process(lab.pid(&id));
    let tunnel = Tunnel::from_netns(&netns, Some(&lab.cgroup_dir(&id)), &wg, &lab.lab);
    ip_in(&netns, &["route", "add", "198.18.2.0/24", "dev", &wg]);
    (id, netns, tunnel)
}

fn tunnel_up(pin: &PinDir) -> Option<bool> {
    let gateways = pinned_maps(pin).gateways().unwrap();
    gateways.first().map(|(_, _, state)| state.tunnel_up == 1)
}

fn behind(lab: &DockerLab, gateway: &str, pin: &PinDir) -> (String, u64) {
    let id = lab.start(
        &["vpn=required"],
        &["--network", &format!("container:{gateway}")],
    );
    let cgroup = lab.cgroup_id(&id);
    wait_for("the container classified behind the gateway", || {
        pinned_maps(pin)
            .policies()
            .unwrap()
            .iter()
            .any(|(c, p)| *c == cgroup && p.gateway != 0)
    });
    (id, cgroup)
}

#[test]
fn a_stale_handshake_takes_the_tunnel_down_and_a_fresh_one_brings_it_back() {
    let lab = DockerLab::new();
    let pin = PinDir::new();
    let agent = lab.start_agent(&pin, "");
    let internet = Sniffer::start(&lab.lab.internet);
    let (gw, netns, mut tunnel) = gateway(
        &lab,
        &[
            "netguard.health=interface,handshake",
            // Long enough for two health rounds after a handshake on a loaded machine (the
            // next handshake comes only 2 minutes later), short enough for the test.
            "netguard.handshake.max-age=15",
        ],
        &[],
    );
    let (client, cgroup) = behind(&lab, &gw, &pin);
    wait_for("the first handshake and the tunnel up", || {
        tunnel.handshake_done() && tunnel_up(&pin) == Some(true)
    });
    let through = lab.exec_probe(&client, &["udp", &addr(INTERNET_V4), "7100", "2", "8"]);
    assert!(through.ok, "{through:?}");
    wait_for("the tunnelled datagrams", || {
        internet.count(|a| a.dst_port == 7100 && a.src == TUNNEL_CLIENT_V4) == 2
    });

    let died = Instant::now();
    tunnel.stop_provider();
    wait_for("the stale handshake to take the tunnel down", || {
        tunnel_up(&pin) == Some(false)
    });
    eprintln!(
        "MEASURED provider dying -> tunnel down: {} ms (handshake max age 15 s)",
        died.elapsed().as_millis()
    );
    assert!(agent.count("tunnel down") >= 1);

    // Through wg0 and around it (Gluetun's firewall failing): nothing arrives.
    let via_tunnel = lab.exec_probe(&client, &["udp", &addr(INTERNET_V4), "7101", "3", "8"]);
    assert_eq!(via_tunnel.errno, EPERM, "{via_tunnel:?}");
    netguard_tests::docker::route_around_tunnel(&netns);
    let around = lab.exec_probe(&client, &["tcp", &addr(INTERNET_V4), "7101", "8"]);
    assert_eq!(around.errno, EPERM, "{around:?}");
    let counters = pinned_maps(&pin).counters(cgroup).unwrap().unwrap();
    assert_eq!(
        counters.refused_calls[BlockReason::TunnelDown as usize],
        4,
        "{counters:?}"
    );

    // The provider comes back: traffic resumes by itself.
    ip_in(
        &netns,
        &[
            "route",
            "replace",
            "198.18.2.0/24",
            "dev",
            &tunnel.client_if,
        ],
    );
    tunnel.start_provider();
    // WireGuard re-handshakes when something is sent through it: as Gluetun's own health
    // check does, from the (unprotected) gateway process.
    wait_for("a fresh handshake and the tunnel up again", || {
        let _ = lab.exec_probe(&gw, &["udp", &addr(INTERNET_V4), "7109", "1", "8"]);
        tunnel_up(&pin) == Some(true)
    });
    let resumed = lab.exec_probe(&client, &["udp", &addr(INTERNET_V4), "7102", "1", "8"]);
    assert!(resumed.ok, "{resumed:?}");
    wait_for("traffic resumed", || {
        internet.count(|a| a.dst_port == 7102) == 1
    });
    assert_eq!(
        internet.count(|a| a.dst_port == 7101),
        0,
        "something got out while the tunnel was down"
    );
    // Kept in the pinned slot: up, down, up again; shown by `netguard status` and /metrics.
    let slot = pinned_maps(&pin).gateways().unwrap()[0].2;
    assert_eq!(slot.transitions, 3, "{slot:?}");
    assert!(slot.last_change_secs > 0);
    let api = agent.http_address();
    let status = std::process::Command::new(netguard_tests::agent::netguard_bin())
        .args(["status", "--json", "--agent", &api.to_string()])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains("\"tunnel_up\":true") && status.contains("\"transitions\":3"),
        "{status}"
    );
    let (_, metrics) = netguard_tests::http::get(api, "/metrics");
    let samples = netguard_tests::http::parse_exposition(&metrics);
    let gateway_sample = |name: &str| {
        samples
            .iter()
            .find(|s| s.name == name && s.label("gateway").is_some())
            .map(|s| s.value)
    };
    assert_eq!(gateway_sample("netguard_tunnel_up"), Some(1.0), "{metrics}");
    assert_eq!(
        gateway_sample("netguard_tunnel_transitions_total"),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(
        gateway_sample("netguard_tunnel_last_change_timestamp_seconds"),
        Some(slot.last_change_secs as f64)
    );
}

#[test]
fn docker_health_status_drives_the_tunnel_state() {
    let lab = DockerLab::new();
    let pin = PinDir::new();
    let _agent = lab.start_agent(&pin, "");
    let health = [
        "--health-cmd",
        "test -f /healthy",
        "--health-interval",
        "1s",
        "--health-retries",
        "1",
    ];
    let (gw, _netns, _tunnel) = gateway(&lab, &[], &health);
    let (client, _) = behind(&lab, &gw, &pin);
    // No file: unhealthy, down, whatever the interface says.
    wait_for("unhealthy: down", || tunnel_up(&pin) == Some(false));
    let refused = lab.exec_probe(&client, &["udp", &addr(INTERNET_V4), "7110", "1", "8"]);
    assert_eq!(refused.errno, EPERM, "{refused:?}");
    netguard_tests::sh(&["docker", "exec", &gw, "touch", "/healthy"]);
    wait_for("healthy: up", || tunnel_up(&pin) == Some(true));
    let through = lab.exec_probe(&client, &["udp", &addr(INTERNET_V4), "7110", "1", "8"]);
    assert!(through.ok, "{through:?}");
    netguard_tests::sh(&["docker", "exec", &gw, "rm", "/healthy"]);
    wait_for("unhealthy again: down", || tunnel_up(&pin) == Some(false));
}

/// A stand-in for Gluetun's control server, answering as Gluetun does today
/// (`GET /v1/vpn/status` -> `{"status":"running"}`) to a request with the API key of a role
/// for that route, and `401` with body `Unauthorized` to any other (no key, a wrong one),
/// inside the gateway's namespace.
struct ControlServer {
    status: Arc<Mutex<&'static str>>,
    keys: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl ControlServer {
    fn start(netns: &std::path::Path, role_key: &'static str) -> Self {
        let listener = netguard::netns::run_in(netns, || TcpListener::bind("127.0.0.1:8000"))
            .unwrap()
            .unwrap();
        listener.set_nonblocking(true).unwrap();
        let server = Self {
            status: Arc::new(Mutex::new("running")),
            keys: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (status, keys, stop) = (
            Arc::clone(&server.status),
            Arc::clone(&server.keys),
            Arc::clone(&server.stop),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Ok((mut stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                stream.set_nonblocking(false).unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request = Vec::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    request.push(line);
                }
                if let Some(key) = request.iter().find_map(|l| l.strip_prefix("X-API-Key: ")) {
                    keys.lock().unwrap().push(key.trim().to_string());
                }
                let body = format!("{{\"status\":\"{}\"}}", status.lock().unwrap());
                let key = request
                    .iter()
                    .find_map(|l| l.strip_prefix("X-API-Key: "))
                    .map(str::trim);
                let route = request
                    .first()
                    .is_some_and(|l| l.starts_with("GET /v1/vpn/status "));
                let response = if route && key != Some(role_key) {
                    "HTTP/1.1 401 Unauthorized\r\nContent-Type: text/plain; charset=utf-8\r\n\
                     Content-Length: 13\r\n\r\nUnauthorized\n"
                        .to_string()
                } else if route {
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_string()
                };
                let _ = stream.write_all(response.as_bytes());
            }
        });
        server
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn gluetun_control_server_drives_the_tunnel_state() {
    let lab = DockerLab::new();
    let pin = PinDir::new();
    let _agent = lab.start_agent(&pin, "");
    let (gw, netns, _tunnel) = gateway(
        &lab,
        &[
            "netguard.health=gluetun",
            "netguard.gluetun.apikey=ngt-secret",
        ],
        &[],
    );
    let (client, _) = behind(&lab, &gw, &pin);
    // Unreachable control server: down.
    wait_for("unreachable: down", || tunnel_up(&pin) == Some(false));
    let server = ControlServer::start(&netns, "ngt-secret");
    wait_for("running: up", || tunnel_up(&pin) == Some(true));
    assert!(
        lab.exec_probe(&client, &["udp", &addr(INTERNET_V4), "7120", "1", "8"])
            .ok
    );
    *server.status.lock().unwrap() = "stopped";
    wait_for("stopped: down", || tunnel_up(&pin) == Some(false));
    assert_eq!(
        lab.exec_probe(&client, &["udp", &addr(INTERNET_V4), "7120", "1", "8"])
            .errno,
        EPERM
    );
    *server.status.lock().unwrap() = "running";
    wait_for("running again: up", || tunnel_up(&pin) == Some(true));
    let keys = server.keys.lock().unwrap().clone();
    assert!(
        !keys.is_empty() && keys.iter().all(|k| k == "ngt-secret"),
        "the API key is sent: {keys:?}"
    );
    drop(server);
    wait_for("the server gone: down", || tunnel_up(&pin) == Some(false));
}

#[test]
fn measured_from_the_down_decision_to_the_first_refused_packet() {
    let lab = DockerLab::new();
    let pin = PinDir::new();
    let _agent = lab.start_agent(&pin, "");
    let (gw, _netns, _tunnel) = gateway(&lab, &["netguard.health=interface"], &[]);
    let (client, _) = behind(&lab, &gw, &pin);
    wait_for("the tunnel up", || tunnel_up(&pin) == Some(true));
    let slot = pinned_maps(&pin).gateways().unwrap()[0].0;
    let mut watch = std::process::Command::new("docker");
    watch.args([
        "exec",
        "-i",
        &client,
        "ng-probe",
        "udp-watch",
        &addr(INTERNET_V4),
        "7130",
    ]);
    let mut watch = LiveProbe::spawn(watch);
    assert!(watch.line().starts_with("sent "));
    let mut latencies = Vec::new();
    let now_ns = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    };
    for _ in 0..20 {
        let mut maps = pinned_maps(&pin);
        let decided = now_ns();
        maps.set_tunnel_state(slot, false).unwrap();
        let line = watch.line();
        let refused: u128 = line
            .strip_prefix("refused ")
            .expect("refused after down")
            .parse()
            .unwrap();
        latencies.push(refused.saturating_sub(decided));
        pinned_maps(&pin).set_tunnel_state(slot, true).unwrap();
        assert!(watch.line().starts_with("sent "));
    }
    latencies.sort_unstable();
    eprintln!(
        "MEASURED down decision -> first refused packet over 20 flips: median {} us, max {} us",
        latencies[10] / 1000,
        latencies[19] / 1000
    );
    // The agent's own health rounds would flip it back; nothing here relies on timing.
    assert_eq!(latencies.len(), 20);
}

/// What a container sent, split by the way it left, as `/metrics` says.
fn sent_by_path(api: std::net::SocketAddr, container: &str) -> Vec<(String, f64, f64)> {
    let (_, text) = netguard_tests::http::get(api, "/metrics");
    let samples = netguard_tests::http::parse_exposition(&text);
    let value = |name: &str, path: &str| {
        samples
            .iter()
            .find(|s| {
                s.name == name
                    && container.starts_with(s.label("container_id").unwrap_or("-"))
                    && s.label("path") == Some(path)
            })
            .map_or(0.0, |s| s.value)
    };
    ["tunnel", "internal", "endpoint", "direct"]
        .into_iter()
        .map(|path| {
            (
                path.to_string(),
                value("netguard_container_transmit_path_bytes_total", path),
                value("netguard_container_transmit_path_packets_total", path),
            )
        })
        .collect()
}

#[test]
fn what_a_container_sends_is_counted_by_the_way_it_left() {
    let lab = DockerLab::new();
    let pin = PinDir::new();
    let agent = lab.start_agent(&pin, "");
    let api = agent.http_address();
    let endpoint = format!(
        "netguard.endpoints={}:{}/udp",
        addr(netguard_tests::lab::VPN_V4),
        netguard_tests::wireguard::ENDPOINT_PORT
    );
    let (gw, _netns, tunnel) = gateway(&lab, &[&endpoint], &[]);
    let (client, _) = behind(&lab, &gw, &pin);
    wait_for("the tunnel up", || {
        tunnel.handshake_done() && tunnel_up(&pin) == Some(true)
    });
    // 3 datagrams of 100 bytes through the tunnel, 2 to the LAN (internal), 1 to the VPN
    // server (an endpoint): 128, 128 and 128 bytes each as IP packets.
    for (to, port, count) in [
        (addr(INTERNET_V4), "7130", "3"),
        (addr(netguard_tests::lab::LAN_V4), "7131", "2"),
        (addr(netguard_tests::lab::VPN_V4), "51820", "1"),
    ] {
        let sent = lab.exec_probe(&client, &["udp", &to, port, count, "100"]);
        assert!(sent.ok, "{to}: {sent:?}");
    }
    let expected = [
        ("tunnel".to_string(), 384.0, 3.0),
        ("internal".to_string(), 256.0, 2.0),
        ("endpoint".to_string(), 128.0, 1.0),
        ("direct".to_string(), 0.0, 0.0),
    ];
    wait_for("the split in /metrics", || {
        sent_by_path(api, &client) == expected
    });
    // The gateway itself is only counted: its traffic (the tunnel's carrier) left directly.
    assert!(
        sent_by_path(api, &gw)[3].2 > 0.0,
        "{:?}",
        sent_by_path(api, &gw)
    );
}

#[test]
fn gluetun_credentials_come_from_a_file_and_a_refusal_is_named_as_such() {
    let lab = DockerLab::new();
    let pin = PinDir::new();
    let secrets = netguard_tests::TempDir::new("gluetun-key");
    let key_file = secrets.path.join("apikey");
    std::fs::write(&key_file, "wrong-key\n").unwrap();
    let agent = lab.start_agent(
        &pin,
        &format!(
            "[[gluetun_auth]]\napi_key_file = {:?}\n",
            key_file.display().to_string()
        ),
    );
    let api = agent.http_address();
    // No label carries the key.
    let (gw, netns, _tunnel) = gateway(&lab, &["netguard.health=gluetun"], &[]);
    let (client, _) = behind(&lab, &gw, &pin);
    let _server = ControlServer::start(&netns, "k3y-of-the-role");
    // The wrong key: refused, said so (not a tunnel outage), and still down.
    let why_down = || {
        let (_, body) = netguard_tests::http::get(api, "/api/v1/gateways");
        let gateways: serde_json::Value = serde_json::from_str(&body).unwrap();
        gateways[0]["down_reason"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    wait_for("the refusal named", || {
        why_down().contains("the control server refused netguard's credentials (HTTP 401")
    });
    assert_eq!(tunnel_up(&pin), Some(false));
    let held = lab.exec_probe(&client, &["udp", &addr(INTERNET_V4), "7140", "1", "8"]);
    assert_eq!(held.errno, EPERM, "{held:?}");
    let doctor = netguard_tests::agent::netguard_through(&[])
        .args(["doctor", "--agent", &api.to_string()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        said.contains("gluetun auth") && said.contains("refused netguard's credentials"),
        "{said}"
    );
    let status = netguard_tests::agent::netguard_through(&[])
        .args(["status", "--agent", &api.to_string()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&status.stdout);
    assert!(
        said.contains("why down: gluetun: the control server refused"),
        "{said}"
    );
    // The right key in the file (rotated, no restart): up.
    std::fs::write(&key_file, "k3y-of-the-role\n").unwrap();
    wait_for("the role's key accepted: up", || {
        tunnel_up(&pin) == Some(true)
    });
    let through = lab.exec_probe(&client, &["udp", &addr(INTERNET_V4), "7141", "1", "8"]);
    assert!(through.ok, "{through:?}");
}
