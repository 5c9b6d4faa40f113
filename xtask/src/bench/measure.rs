//! The measures, each taken from the sender's cgroup and namespace: UDP 64-byte packets a
//! second and one TCP stream (iperf3), a small request/response (ping), and the kernel's own
//! count of the time netguard's programs run (bpf_stats).

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::lab::{Lab, RECEIVER_ADDR};

/// Seconds each throughput measure runs.
pub const SECONDS: &str = "4";

fn json_of(mut command: Command) -> Result<Value> {
    let output = command.output().context("running a measure")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let value: Value = serde_json::from_str(&text).with_context(|| {
        format!(
            "{command:?}: {text} {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    if let Some(error) = value.get("error") {
        bail!("{command:?}: {error}");
    }
    Ok(value)
}

/// UDP datagrams of 64 bytes sent a second, as fast as the sender can.
pub fn udp_pps(lab: &Lab, cgroup: &Path) -> Result<f64> {
    let result = json_of(lab.sender(
        cgroup,
        "iperf3",
        &[
            "-c",
            RECEIVER_ADDR,
            "-u",
            "-l",
            "64",
            "-b",
            "0",
            "-t",
            SECONDS,
            "-J",
        ],
    ))?;
    let sum = &result["end"]["sum"];
    let packets = sum["packets"].as_f64().context("iperf3: no packet count")?;
    let seconds = sum["seconds"].as_f64().context("iperf3: no duration")?;
    Ok(packets / seconds)
}

/// One TCP stream, bits a second received.
pub fn tcp_bps(lab: &Lab, cgroup: &Path) -> Result<f64> {
    let result = json_of(lab.sender(
        cgroup,
        "iperf3",
        &["-c", RECEIVER_ADDR, "-t", SECONDS, "-J"],
    ))?;
    result["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3: no received rate")
}

/// Mean round trip of 400 small echo requests 2 ms apart, in microseconds.
pub fn rr_us(lab: &Lab, cgroup: &Path) -> Result<f64> {
    let output = lab
        .sender(
            cgroup,
            "ping",
            &["-c", "400", "-i", "0.002", "-q", RECEIVER_ADDR],
        )
        .output()
        .context("ping")?;
    let text = String::from_utf8_lossy(&output.stdout);
    // rtt min/avg/max/mdev = 0.031/0.045/0.120/0.010 ms
    let stats = text
        .lines()
        .find_map(|l| {
            l.split_once(" = ")
                .filter(|(k, _)| k.contains("min/avg"))?
                .1
                .split('/')
                .nth(1)
                .map(str::to_string)
        })
        .with_context(|| format!("ping printed no round trips: {text}"))?;
    Ok(stats.parse::<f64>()? * 1000.0)
}

/// The kernel's run time and run count of every loaded program named `name`.
pub fn program_stats(name: &str) -> Result<(f64, f64)> {
    let mut command = Command::new("bpftool");
    command.args(["prog", "show", "-j"]);
    let programs = json_of(command)?;
    let mut totals = (0.0, 0.0);
    for program in programs.as_array().context("bpftool: not a list")? {
        if program["name"].as_str() == Some(name) {
            totals.0 += program["run_time_ns"].as_f64().unwrap_or(0.0);
            totals.1 += program["run_cnt"].as_f64().unwrap_or(0.0);
        }
    }
    Ok(totals)
}

/// `ng_egress`'s nanoseconds a packet over a UDP run (bpf_stats on for it alone).
pub fn egress_ns_per_packet(lab: &Lab, cgroup: &Path) -> Result<f64> {
    super::lab::sh("sysctl", &["-qw", "kernel.bpf_stats_enabled=1"])?;
    let before = program_stats("ng_egress")?;
    let run = udp_pps(lab, cgroup);
    let after = program_stats("ng_egress")?;
    super::lab::sh("sysctl", &["-qw", "kernel.bpf_stats_enabled=0"])?;
    run?;
    let count = after.1 - before.1;
    if count <= 0.0 {
        bail!("ng_egress did not run");
    }
    Ok((after.0 - before.0) / count)
}
