//! `cargo xtask bench`: netguard beside no filter and beside the iptables + ipset
//! equivalent, in one run, in interleaved rounds; medians, spreads and ratios to no filter
//! on stdout and as JSON under `target/bench/`. The figures are the ratios: absolute numbers
//! are noise on a shared machine.

pub mod flood;
mod footprint;
mod lab;
mod measure;
mod paired;
mod rules;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Child,
};

use anyhow::{Context as _, Result};
use serde_json::json;

use self::lab::{Agent, Lab, RECEIVER_ADDR, SENDER_NS, sh};
use crate::cmd::step;

/// Rounds of the separate bpf_stats runs.
const STATS_ROUNDS: usize = 3;
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
    /// The same with nftables (`socket cgroupv2` + an interval set).
    Nftables {
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
            Case::Nftables { cgroups } => format!("nftables, {cgroups} cgroups"),
        }
    }

    fn depth(self) -> usize {
        match self {
            Case::Protected { depth, .. } => depth,
            _ => 2,
        }
    }
}

const CASES: [Case; 10] = [
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
    Case::Nftables { cgroups: 1 },
    Case::Nftables { cgroups: 1_000 },
];

/// The filter of a case while it is measured.
enum Filter {
    None,
    Agent(#[allow(dead_code)] Agent),
    /// In this namespace.
    Iptables(&'static str),
    Nftables,
}

impl Drop for Filter {
    fn drop(&mut self) {
        match self {
            Filter::Iptables(ns) => rules::remove_iptables(ns),
            Filter::Nftables => rules::remove_nftables(),
            Filter::None | Filter::Agent(_) => {}
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
            rules::iptables(
                lab,
                SENDER_NS,
                &protected(lab, sender, cgroups)?,
                &cidrs(10),
            )?;
            Filter::Iptables(SENDER_NS)
        }
        Case::Nftables { cgroups } => {
            rules::nftables(lab, &protected(lab, sender, cgroups)?, &cidrs(10))?;
            Filter::Nftables
        }
    })
}

/// The protected cgroups of a firewall case: `cgroups - 1` siblings, then the sender.
fn protected(lab: &Lab, sender: PathBuf, cgroups: usize) -> Result<Vec<PathBuf>> {
    Ok(lab
        .others(cgroups - 1)?
        .into_iter()
        .chain([sender])
        .collect())
}

/// Median and spread ((max - min) / median) of some figures.
fn summary(values: &[f64]) -> (f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let spread = (sorted[sorted.len() - 1] - sorted[0]) / median;
    (median, spread)
}

pub fn bench(
    root: &Path,
    netguard: Option<PathBuf>,
    rounds: usize,
    paired_rounds: usize,
) -> Result<()> {
    anyhow::ensure!(rounds > 0, "--rounds 0: at least one round is needed");
    let netguard = match netguard {
        Some(path) => path
            .canonicalize()
            .with_context(|| format!("--netguard {}: no such binary", path.display()))?,
        None => {
            step("building netguard (release)");
            crate::cmd::cargo(&["build", "--release", "-p", "netguard"])?;
            root.join("target/release/netguard")
        }
    };
    crate::setup::apt_install(&[
        "iperf3",
        "iputils-ping",
        "iptables",
        "ipset",
        "nftables",
        "bpftool",
    ])?;
    for tool in [
        "iperf3", "ping", "iptables", "ipset", "nft", "bpftool", "taskset",
    ] {
        which(tool)?;
    }
    let lab = Lab::new()?;
    let _server: ServerGuard = ServerGuard(lab.receiver("iperf3", &["-s"])?);
    std::thread::sleep(std::time::Duration::from_millis(500));
    // Filters this kernel or host cannot set up (nftables' cgroupv2 match on a hybrid
    // mount): case name -> why. They are left out of the rounds and reported as such.
    let mut unsupported = BTreeMap::new();
    for case in CASES {
        if let Case::Nftables { .. } = case
            && let Err(error) = filter(case, &lab, &netguard)
        {
            eprintln!("xtask: {}: unsupported here: {error:#}", case.name());
            unsupported.insert(case.name(), format!("{error:#}"));
        }
    }
    let cases: Vec<Case> = CASES
        .into_iter()
        .filter(|case| !unsupported.contains_key(&case.name()))
        .collect();
    // Case name -> measure -> one figure per round.
    let mut figures: BTreeMap<String, BTreeMap<&'static str, Vec<f64>>> = BTreeMap::new();
    for round in 1..=rounds {
        for &case in &cases {
            step(&format!("round {round}/{rounds}: {}", case.name()));
            let sender = lab.sender_cgroup(case.depth())?;
            let _filter = filter(case, &lab, &netguard)?;
            let entry = figures.entry(case.name()).or_default();
            let (pps, cpu_ns) = measure::udp(&lab, &sender)?;
            entry.entry("udp_pps").or_default().push(pps);
            entry.entry("udp_cpu_ns").or_default().push(cpu_ns);
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
    let mut ns_per_packet: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut test_run_ns: BTreeMap<String, f64> = BTreeMap::new();
    for round in 1..=STATS_ROUNDS {
        step(&format!(
            "ng_egress ns/packet, round {round}/{STATS_ROUNDS} (bpf_stats on; separate runs)"
        ));
        for case in CASES
            .into_iter()
            .filter(|c| matches!(c, Case::Unprotected | Case::Protected { .. }))
        {
            let sender = lab.sender_cgroup(case.depth())?;
            let _filter = filter(case, &lab, &netguard)?;
            ns_per_packet
                .entry(case.name())
                .or_default()
                .push(measure::egress_ns_per_packet(&lab, &sender)?);
            // The fastest batch of all rounds: a shared machine only ever adds time.
            let fastest = measure::egress_test_run_ns(&lab, &sender)?;
            test_run_ns
                .entry(case.name())
                .and_modify(|ns| *ns = fastest.min(*ns))
                .or_insert(fastest);
        }
    }
    let paired = (paired_rounds > 0)
        .then(|| paired::run(&lab, &netguard, paired_rounds))
        .and_then(|paired| {
            paired
                .inspect_err(|error| {
                    eprintln!("xtask: the paired measure was not taken: {error:#}");
                })
                .ok()
        });
    let footprint = crate::setup::ensure_dockerd(root)
        .and_then(|()| footprint::with_containers(&lab, &netguard, footprint::CONTAINERS))
        .unwrap_or_else(|error| {
            eprintln!("xtask: the agent's footprint was not measured: {error:#}");
            None
        });
    report(
        root,
        &netguard,
        &Results {
            rounds,
            figures,
            ns_per_packet,
            test_run_ns,
            unsupported,
            paired,
            footprint,
        },
    )
}

/// What one run measured.
struct Results {
    rounds: usize,
    /// Case name -> measure -> one figure per round.
    figures: BTreeMap<String, BTreeMap<&'static str, Vec<f64>>>,
    /// Case name -> `ng_egress` ns/packet by bpf_stats, one per stats round.
    ns_per_packet: BTreeMap<String, Vec<f64>>,
    /// Case name -> `ng_egress` ns/packet by test run, the fastest batch.
    test_run_ns: BTreeMap<String, f64>,
    /// Case name -> why its filter could not be set up here.
    unsupported: BTreeMap<String, String>,
    paired: Option<paired::Paired>,
    footprint: Option<footprint::Footprint>,
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
            format!("{tool} is missing: apt-get install iperf3 iputils-ping iptables ipset nftables bpftool util-linux")
        })
}

/// Each round's figure over the same round's no-filter figure: the rounds' drift cancels.
fn ratios(case: &[f64], baseline: &[f64]) -> Vec<f64> {
    case.iter().zip(baseline).map(|(c, b)| c / b).collect()
}

fn report(root: &Path, netguard: &Path, results: &Results) -> Result<()> {
    let Results {
        rounds,
        figures,
        ns_per_packet,
        test_run_ns,
        unsupported,
        paired,
        footprint,
    } = results;
    let base = &figures[&Case::NoFilter.name()];
    let mut table = String::from(
        "| case | UDP 64 B pkt/s | vs no filter | sender CPU ns/pkt | vs no filter | TCP Gbit/s | vs no filter | RR µs | vs no filter | ng_egress ns/pkt (bpf_stats) | ng_egress ns/pkt (test run) |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut json_cases = Vec::new();
    for case in CASES {
        let name = case.name();
        if let Some(why) = unsupported.get(&name) {
            writeln!(
                table,
                "| {name} | unsupported here: {why} | | | | | | | | | |"
            )?;
            json_cases.push(json!({"case": name, "unsupported": why}));
            continue;
        }
        let measures = &figures[&name];
        let mut cells = Vec::new();
        let mut json_ratios = serde_json::Map::new();
        for (measure, scale, unit_digits) in [
            ("udp_pps", 1.0, 0),
            ("udp_cpu_ns", 1.0, 0),
            ("tcp_bps", 1e-9, 2),
            ("rr_us", 1.0, 1),
        ] {
            let (value, spread) = summary(&measures[measure]);
            let (ratio, ratio_spread) = summary(&ratios(&measures[measure], &base[measure]));
            cells.push(format!(
                "{:.*} ±{:.0}% | {ratio:.3} ±{:.1}%",
                unit_digits,
                value * scale,
                spread * 100.0,
                ratio_spread * 100.0
            ));
            json_ratios.insert(
                measure.into(),
                json!({"median": ratio, "spread": ratio_spread}),
            );
        }
        let ns = ns_per_packet.get(&name).map(|ns| summary(ns));
        writeln!(
            table,
            "| {name} | {} | {} | {} |",
            cells.join(" | "),
            ns.map_or("-".into(), |(ns, spread)| format!(
                "{ns:.0} ±{:.0}%",
                spread * 100.0
            )),
            test_run_ns
                .get(&name)
                .map_or("-".into(), |ns| format!("{ns:.0}")),
        )?;
        json_cases.push(json!({
            "case": name,
            "udp_pps": measures["udp_pps"],
            "udp_cpu_ns": measures["udp_cpu_ns"],
            "tcp_bps": measures["tcp_bps"],
            "rr_us": measures["rr_us"],
            "ratios_to_no_filter": json_ratios,
            "ng_egress_ns_per_packet": ns_per_packet.get(&name),
            "ng_egress_test_run_ns": test_run_ns.get(&name),
        }));
    }
    println!("\n{table}");
    println!(
        "(medians of {rounds} interleaved rounds, ±: (max - min) / median; ratios are each \
         round's figure over the same round's no filter; CPU ns/pkt and RR: lower is \
         better; CPU ns/pkt: the sender's user + system time a datagram, which excludes the \
         time the hypervisor steals; ng_egress ns/pkt: \
         bpf_stats over the UDP measure, medians of {STATS_ROUNDS} runs, and BPF_PROG_TEST_RUN \
         on the same packet, the fastest of {} batches of a million)",
        STATS_ROUNDS * measure::TEST_RUN_BATCHES
    );
    let paired = paired.as_ref().map(paired::Paired::report).transpose()?;
    if let Some((table, _)) = &paired {
        println!("\n{table}");
    }
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
        serde_json::to_string_pretty(&json!({
            "netguard": netguard,
            "rounds": rounds,
            "stats_rounds": STATS_ROUNDS,
            "seconds": measure::SECONDS,
            "receiver": RECEIVER_ADDR,
            "cases": json_cases,
            "paired": paired.map(|(_, json)| json),
            "agent": footprint.as_ref().map(|f| json!({"containers": f.containers, "rss_kib": f.rss_kib, "idle_cpu_percent": f.idle_cpu_percent})),
        }))?,
    )?;
    println!("(also in {})", path.display());
    Ok(())
}
