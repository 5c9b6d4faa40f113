//! The agent's memory and idle CPU with many protected containers (real Docker): its
//! resident set and the CPU it uses over a quiet half minute once it has seen them all.

use std::{fs, path::Path, process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};

use super::lab::{Agent, Lab, sh};

pub const CONTAINERS: usize = 200;
const IMAGE: &str = "ngbench/sleep:latest";
const LABEL: &str = "ngbench=1";

pub struct Footprint {
    pub containers: usize,
    pub rss_kib: u64,
    pub idle_cpu_percent: f64,
}

/// `None` when Docker does not answer.
pub fn with_containers(lab: &Lab, netguard: &Path, count: usize) -> Result<Option<Footprint>> {
    if sh("docker", &["version"]).is_err() {
        return Ok(None);
    }
    crate::cmd::step(&format!("the agent with {count} protected containers"));
    build_image()?;
    let agent = Agent::start(netguard, lab, true, "")?;
    let parent = format!("/{}", lab.relative(&lab.parent));
    let result = (|| {
        for _ in 0..count {
            sh(
                "docker",
                &[
                    "run",
                    "-d",
                    "--label",
                    LABEL,
                    "--label",
                    "vpn=required",
                    "--network",
                    "none",
                    "--cgroup-parent",
                    &parent,
                    IMAGE,
                ],
            )?;
        }
        // Settled: every start seen and reconciled.
        std::thread::sleep(Duration::from_secs(15));
        let pid = agent.pid();
        let ticks = || -> Result<u64> {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
            let after_name = stat.rsplit_once(')').context("/proc/PID/stat")?.1;
            let fields: Vec<&str> = after_name.split_whitespace().collect();
            // utime and stime: fields 14 and 15 of stat, 12 and 13 after the name.
            Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
        };
        let before = ticks()?;
        let idle = Duration::from_secs(30);
        std::thread::sleep(idle);
        let used = ticks()? - before;
        let hertz: f64 = sh("getconf", &["CLK_TCK"])?.trim().parse()?;
        let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("VmRSS")?;
        Ok(Footprint {
            containers: count,
            rss_kib,
            idle_cpu_percent: used as f64 / hertz / idle.as_secs_f64() * 100.0,
        })
    })();
    let ids = sh(
        "docker",
        &["ps", "-aq", "--filter", &format!("label={LABEL}")],
    )?;
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if !ids.is_empty() {
        let mut args = vec!["rm", "-f"];
        args.extend(ids);
        sh("docker", &args)?;
    }
    drop(agent);
    result.map(Some)
}

/// A FROM-scratch image whose one program sleeps (busybox, static).
fn build_image() -> Result<()> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("busybox is missing: apt-get install busybox-static")?;
    let dir = std::env::temp_dir().join("ngbench-image");
    fs::create_dir_all(&dir)?;
    fs::copy(busybox, dir.join("busybox"))?;
    fs::write(
        dir.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nENTRYPOINT [\"/bin/busybox\", \"sleep\", \"3600\"]\n",
    )?;
    let status = Command::new("docker")
        .args(["build", "-q", "-t", IMAGE, "--label", LABEL])
        .arg(&dir)
        .status()?;
    if !status.success() {
        bail!("docker build of {IMAGE} failed");
    }
    Ok(())
}
