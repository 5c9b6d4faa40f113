//! `netguard run`: load or adopt the datapath, apply the configured policy, report blocked
//! flows, and on shutdown leave enforcement in place.

use std::{collections::HashSet, path::Path};

use anyhow::{Context as _, Result};
use ipnet::IpNet;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::{
    cgroup::{Cgroup, cgroup2_root},
    config::Config,
    datapath::Datapath,
    events, netns,
    policy::{BUILTIN_INTERNAL_CIDRS, GatewaySpec, TunnelInterface},
};

/// Runs the agent until SIGINT or SIGTERM.
pub async fn run(config: Config) -> Result<()> {
    let mut datapath = start(&config)?;
    let events = datapath
        .take_events()
        .context("event ring buffer already taken")?;
    let mut reader = tokio::spawn(events::log_blocked_flows(events));

    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = terminate.recv() => info!("SIGTERM received"),
        _ = interrupt.recv() => info!("SIGINT received"),
        result = &mut reader => warn!("blocked-flow reader stopped: {result:?}"),
    }
    reader.abort();
    info!(
        "stopping; enforcement stays in place (pinned under {}); `netguard unload` removes it",
        datapath.pin_dir().display()
    );
    Ok(())
}

/// Loads or adopts the datapath and makes the maps match `config`. Returns when the policy
/// is enforced; the caller keeps the returned datapath for events.
pub fn start(config: &Config) -> Result<Datapath> {
    let root = cgroup2_root()?;
    // Resolve everything before touching the kernel: a typo must not half-apply.
    let attach = resolve_all(
        &root,
        if config.attach_cgroups.is_empty() {
            std::slice::from_ref(&root)
        } else {
            &config.attach_cgroups
        },
    )?;
    let protected = resolve_all(
        &root,
        &config
            .protect
            .iter()
            .map(|p| p.cgroup.clone())
            .collect::<Vec<_>>(),
    )?;
    let tunnels = config
        .gateways
        .iter()
        .map(|g| resolve_tunnel(g.tunnel_interface.as_deref(), g.netns.as_deref()))
        .collect::<Result<Vec<_>>>()?;

    let mut datapath = Datapath::load(&config.pin_dir)?;
    for cgroup in &attach {
        for (program, outcome) in datapath.attach_cgroup(cgroup)? {
            info!(cgroup = %cgroup.path.display(), program, ?outcome, "cgroup program");
        }
    }
    for path in datapath.foreign_cgroup_links(&attach)? {
        warn!(
            "{} is attached by an earlier configuration and left in place: `netguard unload` \
             removes it",
            path.display()
        );
    }

    let mut internal: Vec<IpNet> = BUILTIN_INTERNAL_CIDRS
        .iter()
        .map(|cidr| cidr.parse().expect("built-in CIDRs are valid"))
        .collect();
    internal.extend(config.internal_cidrs.iter().copied());
    datapath.maps.set_internal_cidrs(&internal)?;

    let mut gateway_ids = Vec::new();
    for (gateway, tunnel) in config.gateways.iter().zip(tunnels) {
        let spec = GatewaySpec {
            tunnel,
            endpoints: gateway.endpoints.clone(),
        };
        let id = datapath.maps.set_gateway(&gateway.name, &spec)?;
        datapath.maps.set_tunnel_state(id, gateway.tunnel_up)?;
        info!(
            gateway = gateway.name,
            slot = id.0,
            tunnel_up = gateway.tunnel_up,
            "gateway"
        );
        gateway_ids.push((gateway.name.clone(), id));
    }

    let mut backstops = HashSet::new();
    for (entry, cgroup) in config.protect.iter().zip(&protected) {
        let gateway = entry.gateway.as_ref().and_then(|name| {
            gateway_ids
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, id)| *id)
        });
        datapath.maps.protect(cgroup.id, gateway, &entry.allow)?;
        for interface in &entry.backstop_interfaces {
            let outcome = datapath.attach_backstop(interface, cgroup)?;
            backstops.insert(netns::ifindex(interface)?);
            info!(interface, cgroup = %cgroup.path.display(), ?outcome, "backstop");
        }
        info!(cgroup = %cgroup.path.display(), id = cgroup.id, "protected");
    }

    remove_stale(&mut datapath, &protected, &gateway_ids, &backstops)?;
    info!(
        protected = protected.len(),
        gateways = gateway_ids.len(),
        backstops = backstops.len(),
        "netguard ready"
    );
    Ok(datapath)
}

/// After the desired state is written: whatever an earlier run left that is no longer
/// wanted goes, so a restart with the same configuration changes nothing.
fn remove_stale(
    datapath: &mut Datapath,
    protected: &[Cgroup],
    gateways: &[(String, crate::policy::GatewayId)],
    backstops: &HashSet<u32>,
) -> Result<()> {
    for (cgroup, _) in datapath.maps.policies()? {
        if !protected.iter().any(|c| c.id == cgroup) {
            info!(cgroup, "no longer configured: unprotecting");
            datapath.maps.unprotect(cgroup)?;
        }
    }
    for (id, name, _) in datapath.maps.gateways()? {
        if !gateways.iter().any(|(_, wanted)| *wanted == id) {
            info!(gateway = name, "no longer configured: removing");
            datapath.maps.remove_gateway(id)?;
        }
    }
    for ifindex in datapath.pinned_backstops()? {
        if !backstops.contains(&ifindex) {
            info!(ifindex, "backstop no longer configured: detaching");
            datapath.detach_backstop(ifindex)?;
        }
    }
    Ok(())
}

fn resolve_all(root: &Path, paths: &[std::path::PathBuf]) -> Result<Vec<Cgroup>> {
    paths
        .iter()
        .map(|path| Cgroup::resolve(root, path).map_err(Into::into))
        .collect()
}

fn resolve_tunnel(
    interface: Option<&str>,
    netns: Option<&Path>,
) -> Result<Option<TunnelInterface>> {
    let Some(interface) = interface else {
        return Ok(None);
    };
    let locate = || -> std::io::Result<TunnelInterface> {
        Ok(TunnelInterface {
            ifindex: netns::ifindex(interface)?,
            netns_cookie: netns::current_cookie()?,
        })
    };
    let tunnel = match netns {
        Some(path) => netns::run_in(path, locate)?,
        None => locate(),
    }
    .with_context(|| format!("tunnel interface {interface:?}: create it or fix the name"))?;
    Ok(Some(tunnel))
}
