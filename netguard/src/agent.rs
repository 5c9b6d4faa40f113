//! `netguard run`: load or adopt the datapath, apply the configured policy, report blocked
//! flows, and on shutdown leave enforcement in place.

use std::{
    collections::HashSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context as _, Result};
use ipnet::IpNet;
use netguard_common::MAX_CGROUP_DEPTH;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::{
    cgroup::{Cgroup, cgroup2_root},
    config::{Config, ConfigError},
    datapath::Datapath,
    docker::{WatchOptions, Watcher},
    events, http,
    maps::Maps,
    netns,
    policy::{BUILTIN_INTERNAL_CIDRS, GatewaySpec, TunnelInterface},
    report::{Report, StaticCgroup},
};

/// Runs the agent until SIGINT or SIGTERM.
pub async fn run(config: Config) -> Result<()> {
    let Started {
        mut datapath,
        watch,
        attach_cgroups,
        static_cgroups,
    } = start(&config)?;
    // After enforcement is in place: an agent that cannot serve HTTP exits (64), but what it
    // attached stays pinned and enforcing; exiting before attaching could let a container
    // that Docker starts meanwhile out unguarded.
    let listener = config.listen.map(listen).transpose()?;
    let pin_dir = datapath.pin_dir().to_path_buf();
    let report = Arc::new(Report::new(
        attach_cgroups,
        config.metrics_grace,
        watch.is_some(),
    ));
    report.set_static_cgroups(static_cgroups);
    let events = datapath
        .take_events()
        .context("event ring buffer already taken")?;
    let mut reader = tokio::spawn(events::report_blocked_flows(events, Arc::clone(&report)));
    let mut server = match listener {
        Some(listener) => {
            let maps = Maps::open_pinned(&pin_dir)?;
            info!(
                "serving /metrics and /api/v1 on http://{}",
                listener.local_addr()?
            );
            tokio::spawn(http::serve(listener, Arc::clone(&report), maps))
        }
        None => tokio::spawn(std::future::pending::<Result<()>>()),
    };
    // The Docker watcher owns the datapath from here on; without Docker it just stays open.
    let mut watcher = match (watch, &config.docker_socket) {
        (Some(options), Some(_)) => tokio::spawn(Watcher::new(datapath, options, report).run()),
        _ => tokio::spawn(async move {
            let _datapath = datapath;
            std::future::pending::<Result<()>>().await
        }),
    };

    if let Err(error) = crate::host::notify_ready() {
        warn!("telling systemd we are ready: {error}");
    }
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = terminate.recv() => info!("SIGTERM received"),
        _ = interrupt.recv() => info!("SIGINT received"),
        result = &mut reader => warn!("blocked-flow reader stopped: {result:?}"),
        result = &mut watcher => warn!("Docker watcher stopped: {result:?}"),
        result = &mut server => warn!("HTTP server stopped: {result:?}"),
    }
    reader.abort();
    watcher.abort();
    server.abort();
    info!(
        "stopping; enforcement stays in place (pinned under {}); `netguard unload` removes it",
        pin_dir.display()
    );
    Ok(())
}

/// The HTTP server's socket.
fn listen(address: SocketAddr) -> Result<tokio::net::TcpListener> {
    let listener = std::net::TcpListener::bind(address)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|error| {
            ConfigError(format!(
                "cannot listen on {address}: {error}: pick a free address with --listen \
                 (NETGUARD_LISTEN), or --listen off"
            ))
        })?;
    Ok(tokio::net::TcpListener::from_std(listener)?)
}

/// The datapath with the static policy applied, and what the Docker watcher and the report
/// need.
pub struct Started {
    pub datapath: Datapath,
    pub watch: Option<WatchOptions>,
    /// Where the programs are attached.
    pub attach_cgroups: Vec<PathBuf>,
    /// Cgroups protected by the static configuration.
    pub static_cgroups: Vec<StaticCgroup>,
}

/// Loads or adopts the datapath and makes the maps match `config`. Returns when the policy
/// is enforced; the caller keeps the returned datapath for events.
pub fn start(config: &Config) -> Result<Started> {
    crate::host::check_privileges()?;
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
    check_coverage(&root, &attach, &protected)?;
    let tunnels = config
        .gateways
        .iter()
        .map(|g| resolve_tunnel(g.tunnel_interface.as_deref(), g.netns.as_deref()))
        .collect::<Result<Vec<_>>>()?;

    let mut datapath = Datapath::load(&config.pin_dir)?;
    // The classifier holds unknown container cgroups until the Docker watcher classifies
    // them: only with a watcher.
    if config.docker_socket.is_some() {
        let outcome = datapath.attach_classifier()?;
        info!(
            ?outcome,
            "container cgroup classifier (cgroup:cgroup_mkdir)"
        );
    } else {
        datapath.detach_classifier()?;
    }
    for cgroup in &attach {
        for (program, outcome) in datapath.attach_cgroup(cgroup)? {
            info!(cgroup = %cgroup.path.display(), program, ?outcome, "cgroup program");
        }
    }
    // Every protected cgroup is under a configured attach cgroup (checked above), so links
    // an earlier configuration left elsewhere only add a second run of every program.
    for path in datapath.detach_other_cgroups(&attach)? {
        info!(link = %path.display(), "detached: its cgroup is no longer configured");
    }

    let mut internal: Vec<IpNet> = BUILTIN_INTERNAL_CIDRS
        .iter()
        .map(|cidr| cidr.parse().expect("built-in CIDRs are valid"))
        .collect();
    internal.extend(config.internal_cidrs.iter().copied());
    datapath.maps.set_internal_cidrs(&internal)?;
    let base_internal = internal;

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

    // With Docker, containers' entries are the watcher's to reconcile; without, stale ones go.
    if config.docker_socket.is_none() {
        remove_stale(&mut datapath, &protected, &gateway_ids, &backstops)?;
    }
    info!(
        protected = protected.len(),
        gateways = gateway_ids.len(),
        backstops = backstops.len(),
        "netguard ready"
    );
    // Not fatal: enforcement is attached, new container cgroups are held (unclassified) by
    // the kernel until Docker answers, and the watcher keeps trying.
    if let Some(socket) = &config.docker_socket
        && let Err(error) = crate::host::check_docker_socket(socket)
    {
        tracing::error!("{error}; until then new containers are held (blocked, unclassified)");
    }
    let watch = config.docker_socket.as_ref().map(|socket| WatchOptions {
        socket: socket.clone(),
        cgroup_root: root.clone(),
        static_cgroups: protected.iter().map(|c| c.id).collect(),
        static_backstops: backstops,
        base_internal,
    });
    let static_cgroups = protected
        .iter()
        .map(|cgroup| StaticCgroup {
            name: cgroup
                .path
                .strip_prefix(&root)
                .map_or_else(|_| cgroup.path.clone(), |p| Path::new("/").join(p))
                .display()
                .to_string(),
            id: cgroup.id,
        })
        .collect();
    Ok(Started {
        datapath,
        watch,
        attach_cgroups: attach.into_iter().map(|c| c.path).collect(),
        static_cgroups,
    })
}

/// After the desired state is written: whatever an earlier run left that is no longer
/// wanted goes, so a restart with the same configuration changes nothing.
fn remove_stale(
    datapath: &mut Datapath,
    protected: &[Cgroup],
    gateways: &[(String, crate::policy::GatewayId)],
    backstops: &HashSet<u32>,
) -> Result<()> {
    // Backstops first: a backstop whose cgroup has no policy would drop everything.
    for ifindex in datapath.pinned_backstops()? {
        if !backstops.contains(&ifindex) {
            info!(ifindex, "backstop no longer configured: detaching");
            datapath.detach_backstop(ifindex)?;
        }
    }
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
    Ok(())
}

/// Refuses configurations the datapath would silently not enforce, or count twice: a
/// protected cgroup outside every attach cgroup or deeper than the programs look, the root
/// as a protected cgroup, nested attach cgroups.
fn check_coverage(root: &Path, attach: &[Cgroup], protected: &[Cgroup]) -> Result<(), ConfigError> {
    for (i, a) in attach.iter().enumerate() {
        for b in &attach[i + 1..] {
            if a.path.starts_with(&b.path) || b.path.starts_with(&a.path) {
                return Err(ConfigError(format!(
                    "attach cgroups {} and {} are nested, so every packet would be judged and                      counted twice: keep only the outer one",
                    a.path.display(),
                    b.path.display()
                )));
            }
        }
    }
    for cgroup in protected {
        if cgroup.path == root {
            return Err(ConfigError(format!(
                "cannot protect the cgroup2 root {}: that would cut the host; protect the                  containers' cgroups",
                root.display()
            )));
        }
        if !attach.iter().any(|a| cgroup.path.starts_with(&a.path)) {
            return Err(ConfigError(format!(
                "protected cgroup {} is not under any attach cgroup ({}): add an attach cgroup                  above it",
                cgroup.path.display(),
                attach
                    .iter()
                    .map(|a| a.path.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let depth = cgroup
            .path
            .strip_prefix(root)
            .map_or(0, |p| p.components().count());
        if depth > MAX_CGROUP_DEPTH as usize {
            return Err(ConfigError(format!(
                "protected cgroup {} is {depth} levels deep; netguard looks {MAX_CGROUP_DEPTH}                  levels down: protect an ancestor within that depth",
                cgroup.path.display()
            )));
        }
    }
    Ok(())
}

/// A cgroup path in the configuration that does not resolve is a configuration error.
fn resolve_all(root: &Path, paths: &[std::path::PathBuf]) -> Result<Vec<Cgroup>, ConfigError> {
    paths
        .iter()
        .map(|path| Cgroup::resolve(root, path).map_err(|error| ConfigError(error.to_string())))
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn cgroup(path: &str, id: u64) -> Cgroup {
        Cgroup {
            path: PathBuf::from(path),
            id,
        }
    }

    #[test]
    fn nested_attach_cgroups_are_refused() {
        let root = Path::new("/sys/fs/cgroup");
        let attach = [
            cgroup("/sys/fs/cgroup/docker", 2),
            cgroup("/sys/fs/cgroup/docker/a", 3),
        ];
        let error = check_coverage(root, &attach, &[]).unwrap_err().0;
        assert!(
            error.contains("nested") && error.contains("/sys/fs/cgroup/docker/a"),
            "{error}"
        );
    }

    #[test]
    fn protected_cgroup_outside_every_attach_cgroup_is_refused() {
        let root = Path::new("/sys/fs/cgroup");
        let attach = [cgroup("/sys/fs/cgroup/docker", 2)];
        let outside = [cgroup("/sys/fs/cgroup/system.slice/x.scope", 9)];
        let error = check_coverage(root, &attach, &outside).unwrap_err().0;
        assert!(
            error.contains("system.slice/x.scope") && error.contains("attach"),
            "{error}"
        );
        let inside = [cgroup("/sys/fs/cgroup/docker/abc", 10)];
        assert!(check_coverage(root, &attach, &inside).is_ok());
    }
}
