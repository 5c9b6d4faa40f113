//! `cargo xtask bench`: netguard beside no filter and beside the iptables + ipset
//! equivalent, in one run, in interleaved rounds; medians, spreads and ratios to no filter
//! on stdout and as JSON under `target/bench/`. The figures are the ratios: absolute numbers
//! are noise on a shared machine.

mod footprint;
mod lab;
mod measure;

use std::{collections::BTreeMap, fmt::Write as _, path::Path, process::Child};

use anyhow::{Context as _, Result};
use serde_json::json;

use self::lab::{Agent, Lab, RECEIVER_ADDR, SENDER_NS, sh};
use crate::cmd::step;

/// Interleaved rounds: every case once per round.
const ROUNDS: usize = 3;
/// The receiver's address range and the other internal CIDRs of a protected case.
const LAB_CIDR: &str = "198.18.200.0/24";

/// One case: who filters the sender's traffic, and how.
#[derive(Clone, Copy)]
enum Case {
    NoFilter,
    /// netguard attached above the sender's cgroup, which has no policy (the host's own
    /// traffic pays this when netguard attaches at the cgroup2 root).
    Unprotected,
    /// The sender protected, `cidrs` internal CIDRs, `cgroups` protected cgroups in all
    /// (the sender and siblings), the sender `depth` levels below the cgroup2 root.
    Protected {
        cidrs: usize,
        cgroups: usize,
        depth: usize,
    },
    /// iptables (xt_cgroup) + an ipset of 10 internal CIDRs in the sender's namespace; one
    /// rule per protected cgroup, the sender's last.
    Iptables {
        cgroups: usize,
    },
}

impl Case {
    fn name(self) -> String {
        match self {
            Case::NoFilter => "no filter".into(),
            Case::Unprotected => "netguard, unprotected cgroup".into(),
            Case::Protected {
                cidrs,
                cgroups,
                depth,
            } => format!("netguard, protected: {cidrs} CIDRs, {cgroups} cgroups, depth {depth}"),
            Case::Iptables { cgroups } => format!("iptables + ipset, {cgroups} cgroups"),
        }
    }

    fn depth(self) -> usize {
        match self {
            Case::Protected { depth, .. } => depth,
            _ => 2,
        }
    }
}

const CASES: [Case; 8] = [
    Case::NoFilter,
    Case::Unprotected,
    Case::Protected {
        cidrs: 10,
        cgroups: 1,
        depth: 2,
    },
    Case::Protected {
        cidrs: 10_000,
        cgroups: 1,
        depth: 2,
    },
    Case::Protected {
        cidrs: 10,
        cgroups: 1_000,
        depth: 2,
    },
    Case::Protected {
        cidrs: 10,
        cgroups: 1,
        depth: 10,
    },
    Case::Iptables { cgroups: 1 },
    Case::Iptables { cgroups: 1_000 },
];

/// The filter of a case while it is measured.
enum Filter {
    None,
    Agent(#[allow(dead_code)] Agent),
    Iptables,
}

impl Drop for Filter {
    fn drop(&mut self) {
        if let Filter::Iptables = self {
            let _ = sh(
                "ip",
                &["netns", "exec", SENDER_NS, "iptables", "-F", "OUTPUT"],
            );
            let _ = sh(
                "ip",
                &["netns", "exec", SENDER_NS, "ipset", "destroy", "ngbench"],
            );
        }
    }
}

/// `count` internal CIDRs: the lab's, then /24s of 10.0.0.0/8 that route nowhere.
fn cidrs(count: usize) -> Vec<String> {
    std::iter::once(LAB_CIDR.to_string())
        .chain((0..count.saturating_sub(1)).map(|i| format!("10.{}.{}.0/24", i / 256, i % 256)))
        .collect()
}

fn filter(case: Case, lab: &Lab, netguard: &Path) -> Result<Filter> {
    let sender = lab.sender_cgroup(case.depth())?;
    Ok(match case {
        Case::NoFilter => Filter::None,
        Case::Unprotected => Filter::Agent(Agent::start(netguard, lab, false, "")?),
        Case::Protected {
            cidrs: n, cgroups, ..
        } => {
            let mut config = format!("internal_cidrs = {:?}\n", cidrs(n));
            for cgroup in lab.others(cgroups - 1)?.iter().chain([&sender]) {
                writeln!(config, "[[protect]]\ncgroup = {:?}", lab.relative(cgroup))?;
            }
            Filter::Agent(Agent::start(netguard, lab, false, &config)?)
        }
        Case::Iptables { cgroups } => {
            let netns = |args: &[&str]| {
                let mut all = vec!["netns", "exec", SENDER_NS];
                all.extend_from_slice(args);
                sh("ip", &all)
            };
            netns(&["ipset", "create", "ngbench", "hash:net"])?;
            for cidr in cidrs(10) {
                netns(&["ipset", "add", "ngbench", &cidr])?;
            }
            for cgroup in lab.others(cgroups - 1)?.iter().chain([&sender]) {
                let path = lab.relative(cgroup);
                netns(&[
                    "iptables",
                    "-A",
                    "OUTPUT",
                    "-m",
                    "cgroup",
                    "--path",
                    &path,
                    "-m",
                    "set",
                    "!",
                    "--match-set",
                    "ngbench",
                    "dst",
                    "-j",
                    "DROP",
                ])?;
            }
            Filter::Iptables
        }
    })
}

/// Median and spread ((max - min) / median) of some figures.
fn summary(values: &[f64]) -> (f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let spread = (sorted[sorted.len() - 1] - sorted[0]) / median;
    (median, spread)
}

pub fn bench(root: &Path) -> Result<()> {
    let netguard = root.join("target/release/netguard");
    step("building netguard (release)");
    crate::cmd::cargo(&["build", "--release", "-p", "netguard"])?;
    crate::setup::apt_install(&["iperf3", "iputils-ping", "iptables", "ipset", "bpftool"])?;
    for tool in ["iperf3", "ping", "iptables", "ipset", "bpftool"] {
        which(tool)?;
    }
    let lab = Lab::new()?;
    let _server: ServerGuard = ServerGuard(lab.receiver("iperf3", &["-s"])?);
    std::thread::sleep(std::time::Duration::from_millis(500));
    // Case name -> measure -> one figure per round.
    let mut figures: BTreeMap<String, BTreeMap<&str, Vec<f64>>> = BTreeMap::new();
    for round in 1..=ROUNDS {
        for case in CASES {
            step(&format!("round {round}/{ROUNDS}: {}", case.name()));
            let sender = lab.sender_cgroup(case.depth())?;
            let _filter = filter(case, &lab, &netguard)?;
            let entry = figures.entry(case.name()).or_default();
            entry
                .entry("udp_pps")
                .or_default()
                .push(measure::udp_pps(&lab, &sender)?);
            entry
                .entry("tcp_bps")
                .or_default()
                .push(measure::tcp_bps(&lab, &sender)?);
            entry
                .entry("rr_us")
                .or_default()
                .push(measure::rr_us(&lab, &sender)?);
        }
    }
    step("ng_egress ns/packet (bpf_stats on; separate runs)");
    let mut ns_per_packet = BTreeMap::new();
    for case in CASES
        .into_iter()
        .filter(|c| matches!(c, Case::Unprotected | Case::Protected { .. }))
    {
        let sender = lab.sender_cgroup(case.depth())?;
        let _filter = filter(case, &lab, &netguard)?;
        ns_per_packet.insert(case.name(), measure::egress_ns_per_packet(&lab, &sender)?);
    }
    let footprint = footprint::with_containers(&lab, &netguard, footprint::CONTAINERS)
        .unwrap_or_else(|error| {
            eprintln!("xtask: the agent's footprint was not measured: {error:#}");
            None
        });
    report(root, &figures, &ns_per_packet, footprint)
}

struct ServerGuard(Child);

impl Drop for ServerGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn which(tool: &str) -> Result<()> {
    sh("sh", &["-c", &format!("command -v {tool}")])
        .map(drop)
        .with_context(|| {
            format!("{tool} is missing: apt-get install iperf3 iputils-ping iptables ipset bpftool")
        })
}

fn report(
    root: &Path,
    figures: &BTreeMap<String, BTreeMap<&str, Vec<f64>>>,
    ns_per_packet: &BTreeMap<String, f64>,
    footprint: Option<footprint::Footprint>,
) -> Result<()> {
    let base = &figures[&Case::NoFilter.name()];
    let baseline = |measure: &str| summary(&base[measure]).0;
    let mut table = String::from(
        "| case | UDP 64 B pkt/s | vs no filter | TCP Gbit/s | vs no filter | RR µs | vs no filter | ng_egress ns/pkt |\n|---|---|---|---|---|---|---|---|\n",
    );
    let mut json_cases = Vec::new();
    for case in CASES {
        let name = case.name();
        let measures = &figures[&name];
        let (udp, udp_spread) = summary(&measures["udp_pps"]);
        let (tcp, tcp_spread) = summary(&measures["tcp_bps"]);
        let (rr, rr_spread) = summary(&measures["rr_us"]);
        let ns = ns_per_packet.get(&name).copied();
        writeln!(
            table,
            "| {name} | {udp:.0} ±{:.0}% | {:.3} | {:.2} ±{:.0}% | {:.3} | {rr:.1} ±{:.0}% | {:.3} | {} |",
            udp_spread * 100.0,
            udp / baseline("udp_pps"),
            tcp / 1e9,
            tcp_spread * 100.0,
            tcp / baseline("tcp_bps"),
            rr_spread * 100.0,
            rr / baseline("rr_us"),
            ns.map_or("-".into(), |ns| format!("{ns:.0}")),
        )?;
        json_cases.push(json!({
            "case": name,
            "udp_pps": measures["udp_pps"],
            "tcp_bps": measures["tcp_bps"],
            "rr_us": measures["rr_us"],
            "udp_ratio": udp / baseline("udp_pps"),
            "tcp_ratio": tcp / baseline("tcp_bps"),
            "rr_ratio": rr / baseline("rr_us"),
            "ng_egress_ns_per_packet": ns,
        }));
    }
    println!("\n{table}");
    if let Some(f) = &footprint {
        println!(
            "agent with {} protected containers: RSS {:.1} MiB, idle CPU {:.2}% of one core",
            f.containers,
            f.rss_kib as f64 / 1024.0,
            f.idle_cpu_percent
        );
    }
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let path = dir.join(format!("bench-{stamp}.json"));
    std::fs::write(
        &path,
        serde_json::to_string_pretty(
            &json!({"rounds": ROUNDS, "seconds": measure::SECONDS, "receiver": RECEIVER_ADDR, "cases": json_cases, "agent": footprint.map(|f| json!({"containers": f.containers, "rss_kib": f.rss_kib, "idle_cpu_percent": f.idle_cpu_percent}))}),
        )?,
    )?;
    println!("(also in {})", path.display());
    Ok(())
}
