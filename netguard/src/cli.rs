//! The commands besides `run`, as the binary's `main` calls them: each returns what to print
//! or an error naming the fix.

use std::path::Path;

use anyhow::{Result, bail};

use crate::{
    api::StatusReport,
    cgroup::{Hierarchy, cgroup2_root},
    client::{self, AgentClient},
    config::ConfigError,
    doctor::{self, DoctorOptions, Outcome},
    kernel::{Maps, pins},
    report,
};

/// A runtime for the CLI's few HTTP calls.
fn client_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// `netguard status`: from the agent's API, or, when none answers, from the pinned maps
/// that keep enforcing; the same table, and the same JSON, either way.
pub fn status(agent: Option<AgentClient>, pin_dir: &Path, json: bool) -> Result<()> {
    let from_agent = match agent {
        Some(client) => client_runtime()?.block_on(async {
            Ok::<_, anyhow::Error>((client.gateways().await?, client.containers().await?))
        }),
        None => Err(anyhow::anyhow!(
            "the agent's HTTP server is off (--listen off)"
        )),
    };
    let report = match from_agent {
        Ok((gateways, containers)) => StatusReport {
            source: "agent".into(),
            gateways,
            containers,
        },
        Err(error) if pin_dir.exists() => {
            eprintln!("netguard: {error:#}");
            eprintln!(
                "netguard: showing the pinned maps at {} instead (enforcement continues \
                 without the agent; container names need it)",
                pin_dir.display()
            );
            let maps = Maps::open_pinned(pin_dir)?;
            let hierarchy = Hierarchy::open(&cgroup2_root()?)?;
            let (gateways, containers) = report::status_from_pins(pin_dir, &maps, &hierarchy)?;
            StatusReport {
                source: "pins".into(),
                gateways,
                containers,
            }
        }
        Err(error) => return Err(error),
    };
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!(
            "{}",
            client::status_table(&report.gateways, &report.containers)
        );
    }
    Ok(())
}

/// `netguard observe`: blocked flows as they happen.
pub fn observe(agent: Option<AgentClient>, json: bool) -> Result<()> {
    let Some(client) = agent else {
        return Err(ConfigError(
            "observe needs the agent's HTTP server, which is off (--listen off): run the agent \
             with --listen"
                .into(),
        )
        .into());
    };
    client_runtime()?.block_on(client::observe(&client, json))
}

/// `netguard doctor`: the checks' table; an error if any failed.
pub fn doctor(agent: Option<AgentClient>, pin_dir: &Path, docker_socket: &Path) -> Result<()> {
    let checks = client_runtime()?.block_on(doctor::examine(DoctorOptions {
        pin_dir,
        docker_socket,
        agent,
    }));
    print!("{}", doctor::table(&checks));
    let failed = checks.iter().filter(|c| c.outcome == Outcome::Fail).count();
    if failed > 0 {
        bail!("{failed} checks failed: see the remedies above");
    }
    Ok(())
}

/// `netguard enforcing`: succeeds only when the datapath under `pin_dir` enforces — its
/// maps of this build's layout, every cgroup program on an attach cgroup, and (unless
/// `without_classifier`) the classifier. What docker.service waits for at boot.
pub fn enforcing(pin_dir: &Path, without_classifier: bool) -> Result<()> {
    Maps::open_pinned(pin_dir)?;
    let attach = pins::attach_cgroup_ids(pin_dir)?;
    if attach.is_empty() {
        bail!(
            "not enforcing: no cgroup under {} has programs attached; start `netguard run`",
            pin_dir.display()
        );
    }
    let incomplete: Vec<u64> = attach
        .iter()
        .copied()
        .filter(|id| !pins::has_every_cgroup_program(pin_dir, *id))
        .collect();
    if !incomplete.is_empty() {
        bail!(
            "not enforcing: cgroups {incomplete:?} under {} lack some of the programs; start \
             `netguard run`",
            pin_dir.display()
        );
    }
    if !pins::has_sock_guard(pin_dir) {
        bail!(
            "not enforcing: the raw-socket guard is not attached under {}; start `netguard run`",
            pin_dir.display()
        );
    }
    let classifier = pin_dir.join("links").join("tp_cgroup_mkdir");
    if !without_classifier && !pins::link_is_live(&classifier) {
        bail!(
            "not enforcing: the container classifier is not attached under {}; start `netguard \
             run` (with Docker), or pass --without-classifier for a static configuration",
            pin_dir.display()
        );
    }
    println!(
        "enforcing: {} attach cgroups{}",
        attach.len(),
        if without_classifier {
            ""
        } else {
            " and the container classifier"
        }
    );
    Ok(())
}

/// `netguard unload`: every pinned program and map goes; protection stops.
pub fn unload(pin_dir: &Path) -> Result<()> {
    if pins::unload(pin_dir)? {
        eprintln!(
            "netguard unloaded from {}: protection is off",
            pin_dir.display()
        );
    } else {
        eprintln!("nothing pinned at {}", pin_dir.display());
    }
    Ok(())
}
