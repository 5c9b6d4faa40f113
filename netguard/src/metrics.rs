//! `/metrics`: the DESIGN.md metrics in OpenMetrics text, built at scrape time from the
//! kernel's per-CPU counters (no per-packet work in user space). Labels identify the
//! container, never the destination, so cardinality is bounded by the containers.

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _, text::encode},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use crate::api::{ContainerStatus, CounterSet, GatewayStatus};

/// Everything one scrape shows.
#[derive(Debug)]
pub struct Scrape {
    pub containers: Vec<ContainerStatus>,
    pub gateways: Vec<GatewayStatus>,
    /// `None` when the agent does not follow Docker.
    pub docker_in_sync: Option<bool>,
    pub label_problems: u64,
}

/// Renders a scrape as OpenMetrics text.
pub fn render(scrape: Scrape) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut text = String::new();
    encode(&mut text, &registry)?;
    Ok(text)
}

/// The content type of [`render`]'s output.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The content type of [`to_prometheus_text`]'s output.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The same exposition in the Prometheus text format, for clients that do not ask for
/// OpenMetrics (curl, `promtool check metrics`): a counter family is named after its
/// `_total` samples, and OpenMetrics' `# UNIT` and `# EOF` lines go.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let descriptor = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|prefix| Some((prefix, line.strip_prefix(prefix)?)));
        match descriptor {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let total = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                text.push_str(&format!("{prefix}{name}{total} {tail}"));
            }
            None => text.push_str(line),
        }
        text.push('\n');
    }
    text
}

type Labels = Vec<(&'static str, String)>;

fn container_labels(c: &ContainerStatus) -> Labels {
    vec![
        ("container", c.name.clone()),
        ("container_id", c.short_id().to_string()),
        ("image", c.image.clone()),
        ("compose_project", c.compose_project.clone()),
        ("compose_service", c.compose_service.clone()),
    ]
}

/// One metric family: name (without `_total`), help, type, and its samples.
fn family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    samples: impl IntoIterator<Item = (Labels, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, value) in samples {
        let sample = metric.encode_family(&labels)?;
        match metric_type {
            MetricType::Counter => ConstCounter::new(value).encode(sample)?,
            _ => ConstGauge::new(value as i64).encode(sample)?,
        }
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let per_container = |value: fn(&CounterSet) -> u64| {
            self.containers
                .iter()
                .map(move |c| (container_labels(c), value(&c.counters)))
        };
        // A counter split by `key` (reason, path): one sample per value.
        let split =
            |key: &'static str,
             select: fn(&CounterSet) -> &std::collections::BTreeMap<String, u64>| {
                self.containers.iter().flat_map(move |c| {
                    select(&c.counters)
                        .iter()
                        .map(move |(value_of_key, value)| {
                            let mut labels = container_labels(c);
                            labels.push((key, value_of_key.clone()));
                            (labels, *value)
                        })
                })
            };
        let by_reason = move |select| split("reason", select);
        let by_outcome = move |select| split("outcome", select);
        let by_path = move |select| split("path", select);
        let counter = MetricType::Counter;
        let gauge = MetricType::Gauge;

        family(
            &mut encoder,
            "netguard_build_info",
            "The running agent's version.",
            gauge,
            [(vec![("version", env!("CARGO_PKG_VERSION").to_string())], 1)],
        )?;
        family(
            &mut encoder,
            "netguard_container_transmit_bytes",
            "Bytes the container sent that were let out (IP packet length).",
            counter,
            per_container(|c| c.transmit_bytes),
        )?;
        family(
            &mut encoder,
            "netguard_container_transmit_packets",
            "Packets the container sent that were let out.",
            counter,
            per_container(|c| c.transmit_packets),
        )?;
        family(
            &mut encoder,
            "netguard_container_transmit_path_bytes",
            "Bytes the container sent that were let out, by the way they left: path=tunnel (through its gateway's VPN), internal, endpoint (to its gateway's VPN server) or direct (a container netguard only counts).",
            counter,
            by_path(|c| &c.transmit_bytes_by_path),
        )?;
        family(
            &mut encoder,
            "netguard_container_transmit_path_packets",
            "Packets the container sent that were let out, by the way they left (see netguard_container_transmit_path_bytes).",
            counter,
            by_path(|c| &c.transmit_packets_by_path),
        )?;
        family(
            &mut encoder,
            "netguard_container_receive_bytes",
            "Bytes the container's sockets received (IP packet length).",
            counter,
            per_container(|c| c.receive_bytes),
        )?;
        family(
            &mut encoder,
            "netguard_container_receive_packets",
            "Packets the container's sockets received.",
            counter,
            per_container(|c| c.receive_packets),
        )?;
        family(
            &mut encoder,
            "netguard_container_blocked_packets",
            "Packets from the container dropped by the killswitch, by reason.",
            counter,
            by_reason(|c| &c.blocked_packets),
        )?;
        family(
            &mut encoder,
            "netguard_container_blocked_bytes",
            "Bytes from the container dropped by the killswitch, by reason.",
            counter,
            by_reason(|c| &c.blocked_bytes),
        )?;
        family(
            &mut encoder,
            "netguard_container_refused_calls",
            "connect()/sendto() calls of the container refused with EPERM, by reason (no packet was made).",
            counter,
            by_reason(|c| &c.refused_calls),
        )?;
        family(
            &mut encoder,
            "netguard_container_dns_queries",
            "DNS queries of the container taken by netguard's resolver, by outcome: answered (a Docker name, answered by netguard), forwarded (through the tunnel to its gateway's resolver, or to the resolver the operator allowed), refused (no gateway, tunnel down).",
            counter,
            by_outcome(|c| &c.dns_queries),
        )?;
        family(
            &mut encoder,
            "netguard_container_blocked_events_suppressed",
            "Blocked flows not reported as events (rate limit or full ring buffer); still counted and dropped.",
            counter,
            per_container(|c| c.events_suppressed),
        )?;
        // A destroyed container keeps its counters for the grace period, not its state: it
        // is neither protected nor labelled any more (no false "unprotected" alert).
        let state = |value: fn(&ContainerStatus) -> bool| {
            self.containers
                .iter()
                .filter(|c| !c.removed)
                .map(move |c| (container_labels(c), u64::from(value(c))))
        };
        family(
            &mut encoder,
            "netguard_container_protected",
            "1 if the kernel enforces the killswitch for the container.",
            gauge,
            state(|c| c.protected),
        )?;
        family(
            &mut encoder,
            "netguard_container_vpn_required",
            "1 if the container is labelled vpn=required (or protected by the static configuration).",
            gauge,
            state(|c| c.vpn_required),
        )?;
        family(
            &mut encoder,
            "netguard_container_running",
            "1 if the container is running.",
            gauge,
            state(|c| c.running),
        )?;
        family(
            &mut encoder,
            "netguard_container_gateway_unresolved",
            "1 if the container's netguard.gateway label matches no gateway container (it may use no tunnel; `netguard status` names the reference).",
            gauge,
            state(|c| c.gateway_unresolved.is_some()),
        )?;
        family(
            &mut encoder,
            "netguard_container_stranded",
            "1 if the container is stuck in the old network namespace of a gateway that restarted (no network until it is restarted; `netguard status` names the gateway).",
            gauge,
            state(|c| c.stranded.is_some()),
        )?;
        let gateway = |g: &GatewayStatus| vec![("gateway", g.name.clone())];
        family(
            &mut encoder,
            "netguard_tunnel_up",
            "1 if the gateway's tunnel is up (its containers may use it).",
            gauge,
            self.gateways
                .iter()
                .map(|g| (gateway(g), u64::from(g.tunnel_up))),
        )?;
        family(
            &mut encoder,
            "netguard_tunnel_transitions",
            "Times the gateway's tunnel went up or down.",
            counter,
            self.gateways.iter().map(|g| (gateway(g), g.transitions)),
        )?;
        family(
            &mut encoder,
            "netguard_tunnel_last_change_timestamp_seconds",
            "Unix time of the gateway's last tunnel up/down change (0: never changed).",
            gauge,
            self.gateways
                .iter()
                .map(|g| (gateway(g), g.last_change_secs)),
        )?;
        family(
            &mut encoder,
            "netguard_docker_in_sync",
            "1 if the agent is in sync with Docker (absent when it does not follow Docker).",
            gauge,
            self.docker_in_sync
                .map(|in_sync| (Vec::new(), u64::from(in_sync))),
        )?;
        family(
            &mut encoder,
            "netguard_unknown_container_cgroups",
            "Cgroups named like containers that the Docker daemon does not know (another engine's): see `netguard status` for each, held or not.",
            gauge,
            [(
                Vec::new(),
                self.containers.iter().filter(|c| c.unknown).count() as u64,
            )],
        )?;
        family(
            &mut encoder,
            "netguard_label_problems",
            "Malformed or unknown netguard labels seen on containers.",
            counter,
            [(Vec::new(), self.label_problems)],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(name: &str, id: &str, transmit_bytes: u64) -> ContainerStatus {
        let mut counters = CounterSet::from(&netguard_common::Counters::default());
        counters.transmit_bytes = transmit_bytes;
        ContainerStatus {
            name: name.into(),
            id: id.into(),
            image: "busybox".into(),
            compose_project: "media".into(),
            compose_service: "qbittorrent".into(),
            vpn_required: true,
            protected: true,
            vpn_gateway: false,
            gateway: Some("gluetun".into()),
            gateway_unresolved: None,
            stranded: None,
            running: true,
            removed: false,
            cgroups: vec![7],
            counters,
            recent_blocked: Vec::new(),
            unknown: false,
            problems: Vec::new(),
        }
    }

    #[test]
    fn exposition_has_the_documented_names_and_labels() {
        let text = render(Scrape {
            containers: vec![container("qbit", &"ab".repeat(32), 1234)],
            gateways: vec![GatewayStatus {
                name: "gluetun".into(),
                slot: 1,
                tunnel_up: true,
                transitions: 3,
                last_change_secs: 1_700_000_000,
                down_reason: None,
            }],
            docker_in_sync: Some(true),
            label_problems: 0,
        })
        .unwrap();
        assert!(
            text.contains(
                "netguard_container_transmit_bytes_total{container=\"qbit\",container_id=\"abababababab\",\
                 image=\"busybox\",compose_project=\"media\",compose_service=\"qbittorrent\"} 1234"
            ),
            "{text}"
        );
        assert!(
            text.contains("netguard_tunnel_up{gateway=\"gluetun\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("netguard_tunnel_transitions_total{gateway=\"gluetun\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("reason=\"tunnel_down\"} 0"),
            "every reason is present from the start: {text}"
        );
        assert!(text.trim_end().ends_with("# EOF"), "{text}");

        let plain = to_prometheus_text(&text);
        assert!(
            plain.contains("# TYPE netguard_container_transmit_bytes_total counter\n"),
            "{plain}"
        );
        assert!(
            plain.contains("# TYPE netguard_tunnel_up gauge\n"),
            "{plain}"
        );
        assert!(!plain.contains("# EOF"), "{plain}");
    }
}
