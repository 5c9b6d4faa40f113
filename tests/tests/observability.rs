//! What operators see: `/metrics` scraped by a real Prometheus, the JSON API, `netguard
//! status` and `netguard observe`, and the deploy/ files checked against the live agent.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    process::{Command, Stdio},
    time::Instant,
};

use netguard::api::{ContainerStatus, StatusReport};
use netguard_tests::{
    agent::{PinDir, netguard_bin},
    docker::DockerLab,
    http::{self, Sample, parse_exposition},
    lab::{INTERNET_V4, LAN_V4, addr},
    observe::Observer,
    probe::EPERM,
    prometheus::Prometheus,
    wait_for,
};

const PROTECTED: &str = "vpn=required";
const IMAGE: &str = "netguard-test/probe:latest";

fn metrics(agent: SocketAddr) -> Vec<Sample> {
    let (status, body) = http::get(agent, "/metrics");
    assert_eq!(status, 200, "{body}");
    parse_exposition(&body)
}

/// The value of `name` for the container whose id starts with `id`'s first 12 characters.
fn value_of(samples: &[Sample], name: &str, id: &str, reason: Option<&str>) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.label("container_id") == Some(&id[..12])
                && reason.is_none_or(|r| s.label("reason") == Some(r))
        })
        .map(|s| s.value)
}

fn containers(agent: SocketAddr) -> Vec<ContainerStatus> {
    let (status, body) = http::get(agent, "/api/v1/containers");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn container(agent: SocketAddr, id: &str) -> Option<ContainerStatus> {
    containers(agent).into_iter().find(|c| c.id == id)
}

/// Waits until the agent has classified the running container `id`.
fn wait_classified(agent: SocketAddr, id: &str) {
    wait_for("the agent to classify the container", || {
        container(agent, id).is_some_and(|c| c.running && !c.cgroups.is_empty())
    });
}

fn docker_name(id: &str) -> String {
    netguard_tests::sh(&["docker", "inspect", "-f", "{{.Name}}", id])
        .trim()
        .trim_start_matches('/')
        .to_string()
}

/// Every `expr` of the Grafana dashboard.
fn dashboard_expressions() -> Vec<String> {
    let path = netguard_tests::repository_root().join("deploy/grafana/dashboards/netguard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            exprs.push(target["expr"].as_str().unwrap().to_string());
        }
    }
    // Query variables (the data source variable has no expression).
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(definition) = variable["definition"].as_str() {
            exprs.push(definition.to_string());
        }
    }
    exprs
}

/// The `netguard_*` metric names (as sampled: counters with `_total`) in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("netguard_"))
        .map(str::to_string)
        .collect()
}

/// Grafana's variables as Prometheus would see them.
fn as_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__range", "5m")
        .replace("$container", ".*")
        .replace("$instance", ".*")
        .replace("$job", ".*")
}

#[test]
fn prometheus_scrapes_each_containers_bytes_with_the_documented_labels() {
    let lab = DockerLab::new();
    let pin = PinDir::new();
    let agent = lab.start_agent(&pin, "");
    let api = agent.http_address();
    let project = format!("ngt{}", lab.lab.tag);
    let compose = |service: &str| {
        [
            format!("com.docker.compose.project={project}"),
            format!("com.docker.compose.service={service}"),
        ]
    };
    let [p1, p2] = compose("downloader");
    let protected = lab.start(&[PROTECTED, &p1, &p2], &[]);
    let [o1, o2] = compose("indexer");
    let open = lab.start(&[&o1, &o2], &[]);
    wait_classified(api, &protected);
    wait_classified(api, &open);

    // IPv4 + UDP headers are 28 bytes: counters are IP packet lengths.
    let sent = lab.exec_probe(&protected, &["udp", &addr(LAN_V4), "7301", "5", "100"]);
    assert!(sent.ok, "{sent:?}");
    let sent = lab.exec_probe(&open, &["udp", &addr(LAN_V4), "7302", "2", "50"]);
    assert!(sent.ok, "{sent:?}");
    let refused = lab.exec_probe(&protected, &["udp", &addr(INTERNET_V4), "7303", "3", "10"]);
    assert_eq!(refused.errno, EPERM, "{refused:?}");

    let prometheus = Prometheus::start(
        api,
        &[&netguard_tests::repository_root().join("deploy/prometheus/alerts.yml")],
    );
    let series = |id: &str| {
        format!(
            "netguard_container_transmit_bytes_total{{job=\"netguard\",container_id=\"{}\"}}",
            &id[..12]
        )
    };
    wait_for("Prometheus to hold both containers' transmit bytes", || {
        let p = prometheus.query(&series(&protected));
        let o = prometheus.query(&series(&open));
        p.len() == 1 && p[0].1 == 640.0 && o.len() == 1 && o[0].1 == 156.0
    });
    let (labels, _) = prometheus.query(&series(&protected)).remove(0);
    let label = |key: &str| labels[key].as_str().unwrap_or_default().to_string();
    assert_eq!(label("container"), docker_name(&protected), "{labels:?}");
    assert_eq!(label("image"), IMAGE, "{labels:?}");
    assert_eq!(label("compose_project"), project, "{labels:?}");
    assert_eq!(label("compose_service"), "downloader", "{labels:?}");

    let one = |expr: &str| {
        let result = prometheus.query(expr);
        assert_eq!(result.len(), 1, "{expr}: {result:?}");
        result[0].1
    };
    let short = |id: &str| id[..12].to_string();
    assert_eq!(
        one(&format!(
            "netguard_container_refused_calls_total{{container_id=\"{}\",reason=\"not_allowed\"}}",
            short(&protected)
        )),
        3.0
    );
    assert_eq!(
        one(&format!(
            "netguard_container_protected{{container_id=\"{}\"}}",
            short(&protected)
        )),
        1.0
    );
    assert_eq!(
        one(&format!(
            "netguard_container_protected{{container_id=\"{}\"}}",
            short(&open)
        )),
        0.0
    );

    // The dashboard's queries and the alert rules run against real data without errors.
    for expr in dashboard_expressions() {
        if expr.starts_with("label_values") {
            continue;
        }
        prometheus.query(&as_promql(&expr));
    }
    wait_for("Prometheus to evaluate every alert rule", || {
        let (_, body) = http::get(prometheus.address, "/api/v1/rules");
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
        let rules: Vec<&serde_json::Value> = answer["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap())
            .collect();
        for rule in &rules {
            assert_ne!(rule["health"], "err", "alert rule failed: {rule}");
        }
        rules.len() == 8 && rules.iter().all(|r| r["health"] == "ok")
    });
    // Nothing is firing that should not: the protected container is protected.
    let unprotected = prometheus.query("ALERTS{alertname=\"NetguardContainerUnprotected\"}");
    assert!(unprotected.is_empty(), "{unprotected:?}");
}

#[test]
fn every_metric_of_the_dashboard_and_alerts_is_live_and_promtool_accepts_them() {
    let lab = DockerLab::new();
    let pin = PinDir::new();
    let agent = lab.start_agent(&pin, "");
    let api = agent.http_address();
    // A gateway, so the tunnel series exist too.
    let gateway = lab.start(&["netguard.role=vpn-gateway"], &[]);
    let protected = lab.start(&[PROTECTED], &[]);
    wait_classified(api, &gateway);
    wait_classified(api, &protected);
    let (status, text) = http::get(api, "/metrics");
    assert_eq!(status, 200);

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install prometheus)");
    std::io::Write::write_all(&mut promtool.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let linted = promtool.wait_with_output().unwrap();
    assert!(
        linted.status.success() && linted.stdout.is_empty() && linted.stderr.is_empty(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&linted.stdout),
        String::from_utf8_lossy(&linted.stderr)
    );
    let rules = netguard_tests::repository_root().join("deploy/prometheus/alerts.yml");
    let checked = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    let live: BTreeSet<String> = parse_exposition(&text)
        .into_iter()
        .map(|s| s.name)
        .collect();
    let mut used = metric_names(&std::fs::read_to_string(&rules).unwrap());
    assert!(used.len() >= 5, "{used:?}");
    for expr in dashboard_expressions() {
        used.extend(metric_names(&expr));
    }
    let missing: Vec<&String> = used.difference(&live).collect();
    assert!(
        missing.is_empty(),
        "used by deploy/ but not in the live exposition: {missing:?}\nlive: {live:?}"
    );
    // And the DESIGN.md contract.
    for name in [
        "netguard_container_transmit_bytes_total",
        "netguard_container_transmit_packets_total",
        "netguard_container_receive_bytes_total",
        "netguard_container_receive_packets_total",
        "netguard_container_blocked_packets_total",
        "netguard_container_blocked_bytes_total",
        "netguard_container_protected",
        "netguard_tunnel_up",
        "netguard_tunnel_transitions_total",
        "netguard_build_info",
    ] {
        assert!(live.contains(name), "{name} missing from {live:?}");
    }
}

#[test]
fn containers_sharing_a_gateway_netns_are_counted_apart_in_metrics() {
    let lab = DockerLab::new();
    let pin = PinDir::new();
    let agent = lab.start_agent(&pin, "");
    let api = agent.http_address();
    let gateway = lab.start(&["netguard.role=vpn-gateway"], &[]);
    wait_classified(api, &gateway);
    let shared = format!("container:{gateway}");
    let first = lab.start(&[PROTECTED], &["--network", &shared]);
    let second = lab.start(&[PROTECTED], &["--network", &shared]);
    wait_for("both containers classified behind the gateway", || {
        [&first, &second].iter().all(|id| {
            container(api, id).is_some_and(|c| c.running && c.protected && c.gateway.is_some())
        })
    });
    let gateway_name = docker_name(&gateway);
    assert_eq!(
        container(api, &first).unwrap().gateway.as_deref(),
        Some(gateway_name.as_str())
    );

    let sent = lab.exec_probe(&first, &["udp", &addr(LAN_V4), "7311", "3", "64"]);
    assert!(sent.ok, "{sent:?}");
    let sent = lab.exec_probe(&second, &["udp", &addr(LAN_V4), "7312", "5", "64"]);
    assert!(sent.ok, "{sent:?}");
    let samples = metrics(api);
    let tx = |id: &str| {
        value_of(
            &samples,
            "netguard_container_transmit_bytes_total",
            id,
            None,
        )
    };
    let packets = |id: &str| {
        value_of(
            &samples,
            "netguard_container_transmit_packets_total",
            id,
            None,
        )
    };
    assert_eq!((tx(&first), packets(&first)), (Some(276.0), Some(3.0)));
    assert_eq!((tx(&second), packets(&second)), (Some(460.0), Some(5.0)));
    assert_eq!(
        tx(&gateway),
        Some(0.0),
        "the gateway sent nothing itself: its neighbours' traffic is theirs"
    );
}

#[test]
fn observe_prints_each_blocked_flow_as_it_happens() {
    let lab = DockerLab::new();
    let pin = PinDir::new();
    let agent = lab.start_agent(&pin, "");
    let api = agent.http_address();
    let protected = lab.start(&[PROTECTED], &[]);
    wait_classified(api, &protected);
    let name = docker_name(&protected);
    let observer = Observer::start(api);

    // From just before `docker exec` starts the probe to the line on observe's stdout: an
    // upper bound of attempt-to-screen (it includes docker exec's own start-up).
    let mut latencies = Vec::new();
    for i in 0..10u16 {
        let port = 7320 + i;
        let before = Instant::now();
        let refused = lab.exec_probe(
            &protected,
            &["udp", &addr(INTERNET_V4), &port.to_string(), "1", "8"],
        );
        assert_eq!(refused.errno, EPERM, "{refused:?}");
        let destination = format!("{}:{port}/udp", addr(INTERNET_V4));
        wait_for("observe to print the blocked flow", || {
            observer.line_with(&destination).is_some()
        });
        let (at, line) = observer.line_with(&destination).unwrap();
        assert!(
            line.contains(&name) && line.contains(&protected[..12]) && line.contains("not_allowed"),
            "{line}"
        );
        latencies.push(at - before);
    }
    latencies.sort();
    eprintln!(
        "observe: attempt (upper bound) to printed line over {} flows: median {:?}, max {:?}",
        latencies.len(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );

    // The same flows through the API, in the user's words.
    let (status, body) = http::get(api, "/api/v1/flows?limit=5");
    assert_eq!(status, 200);
    let flows: Vec<netguard::api::BlockedFlowRecord> = serde_json::from_str(&body).unwrap();
    assert_eq!(flows.len(), 5, "{body}");
    assert!(
        flows
            .iter()
            .all(|f| f.container == name && f.reason == "not_allowed" && f.hook == "sendmsg"),
        "{flows:?}"
    );
    let recent = container(api, &protected).unwrap().recent_blocked;
    assert_eq!(
        recent.last().map(|f| f.destination.as_str()),
        Some(format!("{}:7329/udp", addr(INTERNET_V4)).as_str())
    );
}

#[test]
fn the_api_is_read_only_status_names_containers_and_destroyed_series_expire() {
    let lab = DockerLab::new();
    let pin = PinDir::new();
    let mut agent = lab.start_agent(&pin, "metrics_grace_secs = 5\n");
    let api = agent.http_address();
    assert_eq!(http::get(api, "/healthz").0, 200);
    let (status, body) = http::get(api, "/readyz");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"docker\":\"in_sync\""), "{body}");
    for (method, path) in [
        ("POST", "/metrics"),
        ("PUT", "/api/v1/containers"),
        ("DELETE", "/api/v1/containers"),
        ("POST", "/api/v1/flows"),
        ("PATCH", "/api/v1/gateways"),
    ] {
        let (status, _) = http::request(api, method, path);
        assert_eq!(status, 405, "{method} {path} must not be allowed");
    }
    assert_eq!(http::get(api, "/api/v1/policy").0, 404);

    let protected = lab.start(&[PROTECTED], &[]);
    wait_classified(api, &protected);
    let name = docker_name(&protected);
    let sent = lab.exec_probe(&protected, &["udp", &addr(LAN_V4), "7331", "4", "22"]);
    assert!(sent.ok, "{sent:?}");

    let status = Command::new(netguard_bin())
        .args(["status", "--agent", &api.to_string()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with(&name))
        .unwrap_or_else(|| panic!("{name} missing from\n{table}"));
    assert!(
        row.contains(&protected[..12]) && row.contains("protected") && row.contains("200 B"),
        "4 datagrams of 22 + 28 bytes: {row}"
    );
    let json = Command::new(netguard_bin())
        .args(["status", "--json", "--agent", &api.to_string()])
        .output()
        .unwrap();
    let parsed: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert!(
        parsed["containers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == name.as_str() && c["counters"]["transmit_bytes"] == 200),
        "{parsed}"
    );

    // Destroyed: its last counters stay for the grace period (its state does not: it is no
    // longer a protected or labelled container), then its series go.
    netguard_tests::sh(&["docker", "rm", "-f", &protected]);
    wait_for("the agent to see the container destroyed", || {
        container(api, &protected).is_some_and(|c| c.removed)
    });
    let tx = |samples: &[Sample]| {
        value_of(
            samples,
            "netguard_container_transmit_bytes_total",
            &protected,
            None,
        )
    };
    let samples = metrics(api);
    assert_eq!(tx(&samples), Some(200.0), "kept during the grace period");
    for gauge in [
        "netguard_container_protected",
        "netguard_container_vpn_required",
    ] {
        assert_eq!(value_of(&samples, gauge, &protected, None), None, "{gauge}");
    }
    wait_for("the destroyed container's series to expire", || {
        tx(&metrics(api)).is_none()
    });

    // The agent gone: status says so and falls back to what stays enforced, in the same
    // format, for a container that still runs.
    let running = lab.start(&[PROTECTED], &[]);
    wait_classified(api, &running);
    let sent = lab.exec_probe(&running, &["udp", &addr(LAN_V4), "7332", "2", "22"]);
    assert!(sent.ok, "{sent:?}");
    let status_json = |with_agent: bool| {
        let mut command = Command::new(netguard_bin());
        command.args(["status", "--json", "--agent", &api.to_string(), "--pin-dir"]);
        let output = command.arg(&pin.path).output().unwrap();
        assert!(output.status.success(), "{output:?}");
        let report: StatusReport = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)));
        assert_eq!(report.source, if with_agent { "agent" } else { "pins" });
        let entry = report
            .containers
            .into_iter()
            .find(|c| c.id == running)
            .unwrap_or_else(|| panic!("{running} missing: {output:?}"));
        assert!(entry.protected && entry.running, "{entry:?}");
        assert_eq!(entry.counters.transmit_bytes, 100, "{entry:?}");
        (String::from_utf8_lossy(&output.stderr).into_owned(), entry)
    };
    let (_, from_agent) = status_json(true);
    assert_eq!(from_agent.name, docker_name(&running));
    agent.kill9();
    let (stderr, from_pins) = status_json(false);
    assert!(
        stderr.contains("no netguard agent answers") && stderr.contains("pinned maps"),
        "{stderr}"
    );
    assert!(
        from_pins.name.ends_with(&running),
        "named by its cgroup: {from_pins:?}"
    );
    let fallback = Command::new(netguard_bin())
        .args(["status", "--agent", &api.to_string(), "--pin-dir"])
        .arg(&pin.path)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&fallback.stdout);
    assert!(fallback.status.success(), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.contains(&running[..12]) && l.contains("protected")),
        "the same table from the pins: {table}"
    );
}

#[test]
#[ignore = "a measurement: cargo test -p netguard-tests --test observability -- --ignored"]
fn scrape_cost_with_200_containers() {
    let lab = DockerLab::new();
    let pin = PinDir::new();
    let agent = lab.start_agent(&pin, "");
    let api = agent.http_address();
    let script = format!(
        "seq 200 | xargs -P 8 -I{{}} sh -c 'docker run -d --label netguard.test=1 --label ngt.lab={tag} \
         --cgroup-parent /{parent} $( [ $(({{}} % 2)) -eq 0 ] && echo --label vpn=required ) \
         {IMAGE} sleep 3600 >/dev/null'",
        tag = lab.lab.tag,
        parent = lab.parent.path.file_name().unwrap().to_string_lossy(),
    );
    netguard_tests::sh(&["sh", "-c", &script]);
    wait_for("200 containers classified", || {
        containers(api).iter().filter(|c| c.running).count() == 200
    });
    let pid = agent.pid();
    let cpu = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<u64> = stat[stat.rfind(')').unwrap() + 2..]
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        // utime + stime, in clock ticks (fields 14 and 15 of stat; 11 and 12 after state).
        fields[10] + fields[11]
    };
    let rss = || {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().to_string()))
            .unwrap()
    };
    let scrapes = 100;
    let (ticks_before, started) = (cpu(), Instant::now());
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..scrapes {
        let t = Instant::now();
        let (status, body) = http::get(api, "/metrics");
        times.push(t.elapsed());
        assert_eq!(status, 200);
        size = body.len();
    }
    let wall = started.elapsed();
    let ticks = cpu() - ticks_before;
    times.sort();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    eprintln!(
        "scrape cost, 200 containers (100 protected), {scrapes} scrapes: median {:?}, max {:?}, \
         {size} bytes, agent CPU {:.2} ms per scrape, agent RSS {} (wall {wall:?})",
        times[times.len() / 2],
        times[times.len() - 1],
        ticks as f64 / hz * 1000.0 / scrapes as f64,
        rss()
    );
}

#[test]
fn an_unresolved_gateway_reference_and_a_stranded_container_are_loud() {
    let lab = DockerLab::new();
    let pin = PinDir::new();
    let agent = lab.start_agent(&pin, "");
    let api = agent.http_address();
    let typo = lab.start(&[PROTECTED, "netguard.gateway=gluten"], &[]);
    let gateway = lab.start(&["netguard.role=vpn-gateway"], &[]);
    wait_classified(api, &gateway);
    // Joins the gateway's namespace (without netguard.heal: reported only).
    let dependent = lab.start(
        &[PROTECTED],
        &["--network", &format!("container:{gateway}")],
    );
    wait_for("both classified", || {
        container(api, &typo).is_some_and(|c| c.gateway_unresolved.as_deref() == Some("gluten"))
            && container(api, &dependent).is_some_and(|c| c.gateway.is_some())
    });
    let status = container(api, &typo).unwrap();
    assert!(
        status.gateway.is_none()
            && status
                .problems
                .iter()
                .any(|p| p.contains("\"gluten\" matches no gateway")),
        "{status:?}"
    );
    assert_eq!(
        value_of(
            &metrics(api),
            "netguard_container_gateway_unresolved",
            &typo,
            None
        ),
        Some(1.0)
    );
    assert!(agent.count("matches no gateway container") >= 1);
    assert_eq!(
        value_of(
            &metrics(api),
            "netguard_container_stranded",
            &dependent,
            None
        ),
        Some(0.0)
    );

    netguard_tests::sh(&["docker", "restart", "-t", "1", &gateway]);
    let name = docker_name(&gateway);
    wait_for("the dependent reported stranded", || {
        container(api, &dependent).is_some_and(|c| c.stranded.as_deref() == Some(name.as_str()))
    });
    assert_eq!(
        value_of(
            &metrics(api),
            "netguard_container_stranded",
            &dependent,
            None
        ),
        Some(1.0)
    );
    let status = container(api, &dependent).unwrap();
    assert!(
        status.problems.iter().any(|p| p.contains("stranded")),
        "{status:?}"
    );
    assert!(agent.count("stranded:") >= 1);
}

#[test]
fn flows_blocked_while_no_agent_ran_keep_their_time_and_their_container() {
    let lab = DockerLab::new();
    let pin = PinDir::new();
    let mut agent = lab.start_agent(&pin, "");
    let api = agent.http_address();
    let protected = lab.start(&[PROTECTED], &[]);
    wait_classified(api, &protected);
    let name = docker_name(&protected);
    agent.terminate();

    // Five refused sends while no agent runs: the pinned programs refuse them, and their
    // events wait in the pinned ring buffer.
    let before = std::time::SystemTime::now();
    let sent = lab.exec_probe(&protected, &["udp", &addr(INTERNET_V4), "7901", "5", "8"]);
    assert_eq!(sent.errno, EPERM, "{sent:?}");
    let after = std::time::SystemTime::now();
    // Its cgroup gone too: only the pinned state still knows whose the flows were.
    let cgroup_dir = lab.cgroup_dir(&protected);
    netguard_tests::sh(&["docker", "rm", "-f", &protected]);
    wait_for("the container's cgroup gone", || !cgroup_dir.exists());
    let restarted = std::time::SystemTime::now();
    agent.restart();
    let api = agent.http_address();

    let flows = || -> Vec<netguard::api::BlockedFlowRecord> {
        let (_, body) = http::get(api, "/api/v1/flows?limit=100");
        serde_json::from_str::<Vec<netguard::api::BlockedFlowRecord>>(&body)
            .unwrap()
            .into_iter()
            .filter(|f| f.destination.ends_with(":7901/udp"))
            .collect()
    };
    wait_for("the five flows read from the pinned ring buffer", || {
        flows().len() == 5
    });
    let slack = std::time::Duration::from_millis(5);
    for flow in flows() {
        let at = humantime::parse_rfc3339(&flow.time).unwrap();
        assert!(
            at + slack >= before && at <= after + slack && at < restarted,
            "blocked at {} but shown at {} ({flow:?})",
            humantime::format_rfc3339_millis(before),
            flow.time
        );
        assert!(flow.before_start, "{flow:?}");
        assert_eq!(
            (flow.container.as_str(), flow.container_id.as_str()),
            (name.as_str(), protected.as_str())
        );
    }
    let logged = agent.log_lines("before this agent started");
    assert_eq!(logged.len(), 5, "{logged:?}");
    assert!(logged.iter().all(|l| l.contains(&name)), "{logged:?}");
}
