//! Start-up: everything resolved and validated before the kernel is touched, then the
//! programs attached and the static configuration applied, before anything that may fail.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use ipnet::IpNet;
use tracing::info;

use crate::{
    cgroup::{Cgroup, cgroup2_root},
    config::{BUILTIN_INTERNAL_CIDRS, Config, ConfigError},
    domain::TunnelInterface,
    host::network::connected_private_subnets,
    kernel::{Datapath, maps::now_secs},
    netns,
    reconcile::{
        Netns, Snapshot, StaticCgroup, StaticGateway, StaticPolicy,
        apply::{Applier, Prune},
        decide,
    },
};

/// The datapath with the static policy applied, and what the rest of the agent needs.
pub struct Started {
    pub datapath: Datapath,
    /// What was written, for the Docker watcher to continue from.
    pub applier: Applier,
    pub statics: StaticPolicy,
    /// The cgroup2 mount.
    pub root: PathBuf,
    /// Where the programs are attached.
    pub attach_cgroups: Vec<PathBuf>,
}

/// Loads or adopts the datapath and makes the kernel enforce `config`. Returns when the
/// policy is enforced.
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
    let mut statics = StaticPolicy {
        internal: BUILTIN_INTERNAL_CIDRS
            .iter()
            .map(|cidr| cidr.parse().expect("built-in CIDRs are valid"))
            .chain(config.internal_cidrs.iter().copied())
            .collect::<Vec<IpNet>>(),
        host_interfaces: config.backstop_host_interfaces.clone(),
        host_netns: netns::current_cookie()
            .map_err(|error| anyhow::anyhow!("reading the host's network namespace: {error}"))?,
        ..StaticPolicy::default()
    };
    for gateway in &config.gateways {
        statics.gateways.push(StaticGateway {
            name: gateway.name.clone(),
            tunnel: resolve_tunnel(
                gateway.tunnel_interface.as_deref(),
                gateway.netns.as_deref(),
            )?,
            endpoints: gateway.endpoints.clone(),
            tunnel_up: gateway.tunnel_up,
        });
    }
    let host = statics.host_netns;
    for (entry, cgroup) in config.protect.iter().zip(&protected) {
        let netns = match &entry.backstop_netns {
            Some(path) => {
                let (cookie, interfaces) = netns::cookie_and_interfaces(path).map_err(|error| {
                    ConfigError(format!(
                        "backstop_netns {} of cgroup {}: {error}: fix the path",
                        path.display(),
                        cgroup.path.display()
                    ))
                })?;
                let interfaces = if cookie == host {
                    netns::host_backstop_interfaces(
                        interfaces,
                        config.backstop_host_interfaces.as_deref(),
                    )
                } else {
                    interfaces
                };
                Some(Netns {
                    cookie,
                    path: path.clone(),
                    interfaces: interfaces.into_iter().collect(),
                    host: cookie == host,
                })
            }
            None => None,
        };
        statics.cgroups.push(StaticCgroup {
            name: cgroup.relative(&root),
            id: cgroup.id,
            gateway: entry.gateway.clone(),
            allow: entry.allow.clone(),
            netns,
        });
    }

    let mut datapath = Datapath::load(&config.pin_dir)?;
    let root_id = Cgroup::resolve(&root, &root)?.id;
    // The classifier holds unknown container cgroups until the Docker watcher classifies
    // them: only with a watcher. It and the cgroup programs attach as one step.
    let classifier = config.docker_socket.as_ref().map(|_| root_id);
    if classifier.is_none() {
        datapath.set_root_cgroup(root_id)?;
        datapath.detach_classifier()?;
    }
    for (program, outcome) in datapath.attach_enforcement(classifier, &attach)? {
        info!(program, ?outcome, "attached");
    }
    // Every protected cgroup is under a configured attach cgroup (checked above), so links
    // an earlier configuration left elsewhere only add a second run of every program.
    for path in datapath.detach_other_cgroups(&attach)? {
        info!(link = %path.display(), "detached: its cgroup is no longer configured");
    }

    datapath.restore_reserves();
    let mut applier = Applier::load(&datapath)?;
    // With Docker, the host's directly connected subnets (Docker's bridges among them) until
    // the watcher says more; without, only what is configured.
    let discovered = match config.docker_socket {
        Some(_) => connected_private_subnets()?,
        None => Vec::new(),
    };
    let desired = decide(&Snapshot {
        statics: &statics,
        discovered_internal: &discovered,
        containers: &Default::default(),
        tunnels: &Default::default(),
    });
    // With Docker, what an earlier agent wrote for containers stays until the watcher's
    // first full reconcile; without, whatever is no longer configured goes now.
    let prune = match config.docker_socket {
        Some(_) => Prune::No,
        None => Prune::Yes,
    };
    let applied = applier.apply(&desired, &mut datapath, prune, now_secs());
    if !applied.failures.is_empty() {
        let count = applied.failures.len();
        for failure in applied.failures {
            tracing::error!("{}: {:#}", failure.subject, failure.error);
        }
        anyhow::bail!(
            "{count} writes of the configured policy failed (see above): fix the cause and start \
             again; what was written stays enforced"
        );
    }
    if prune == Prune::Yes {
        applier.retire_all_but(&desired.policies, &mut datapath)?;
    }
    for gateway in &statics.gateways {
        info!(
            gateway = gateway.name,
            slot = applier.gateway_slot(&gateway.name).map(|s| s.0),
            tunnel_up = gateway.tunnel_up,
            "gateway"
        );
    }
    for cgroup in &statics.cgroups {
        let backstop = cgroup.netns.as_ref().map(|n| n.path.display().to_string());
        info!(cgroup = cgroup.name, id = cgroup.id, backstop, "protected");
    }
    info!(
        protected = statics.cgroups.len(),
        gateways = statics.gateways.len(),
        guarded_namespaces = desired.guards.len(),
        "netguard ready"
    );
    // Not fatal: enforcement is attached, new container cgroups are held (unclassified) by
    // the kernel until Docker answers, and the watcher keeps trying.
    if let Some(socket) = &config.docker_socket
        && let Err(error) = crate::host::check_docker_socket(socket)
    {
        tracing::error!("{error}; until then new containers are held (blocked, unclassified)");
    }
    Ok(Started {
        datapath,
        applier,
        statics,
        root,
        attach_cgroups: attach.into_iter().map(|c| c.path).collect(),
    })
}

/// Refuses configurations the datapath would silently not enforce, or count twice: a
/// protected cgroup outside every attach cgroup or deeper than the programs look, the root
/// as a protected cgroup, nested attach cgroups.
fn check_coverage(root: &Path, attach: &[Cgroup], protected: &[Cgroup]) -> Result<(), ConfigError> {
    for (i, a) in attach.iter().enumerate() {
        for b in &attach[i + 1..] {
            if a.path.starts_with(&b.path) || b.path.starts_with(&a.path) {
                return Err(ConfigError(format!(
                    "attach cgroups {} and {} are nested, so every packet would be judged and \
                     counted twice: keep only the outer one",
                    a.path.display(),
                    b.path.display()
                )));
            }
        }
    }
    for cgroup in protected {
        if cgroup.path == root {
            return Err(ConfigError(format!(
                "cannot protect the cgroup2 root {}: that would cut the host; protect the \
                 containers' cgroups",
                root.display()
            )));
        }
        if !attach.iter().any(|a| cgroup.path.starts_with(&a.path)) {
            return Err(ConfigError(format!(
                "protected cgroup {} is not under any attach cgroup ({}): add an attach cgroup \
                 above it",
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
        if depth > netguard_common::MAX_CGROUP_DEPTH as usize {
            return Err(ConfigError(format!(
                "protected cgroup {} is {depth} levels deep; netguard looks {} levels down: \
                 protect an ancestor within that depth",
                cgroup.path.display(),
                netguard_common::MAX_CGROUP_DEPTH
            )));
        }
    }
    Ok(())
}

/// A cgroup path in the configuration that does not resolve is a configuration error.
fn resolve_all(root: &Path, paths: &[PathBuf]) -> Result<Vec<Cgroup>, ConfigError> {
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
        assert!(!error.contains("  "), "no runs of spaces: {error}");
    }

    #[test]
    fn protected_cgroups_outside_every_attach_cgroup_at_the_root_or_too_deep_are_refused() {
        let root = Path::new("/sys/fs/cgroup");
        let attach = [cgroup("/sys/fs/cgroup/docker", 2)];
        let outside = [cgroup("/sys/fs/cgroup/system.slice/x.scope", 9)];
        let error = check_coverage(root, &attach, &outside).unwrap_err().0;
        assert!(
            error.contains("system.slice/x.scope") && error.contains("attach"),
            "{error}"
        );
        let deep = format!("/sys/fs/cgroup/docker{}", "/d".repeat(20));
        let errors = [
            check_coverage(
                root,
                &[cgroup("/sys/fs/cgroup", 1)],
                &[cgroup("/sys/fs/cgroup", 1)],
            ),
            check_coverage(root, &attach, &[cgroup(&deep, 11)]),
        ]
        .map(|result| result.unwrap_err().0);
        for message in errors.iter().chain([&error]) {
            assert!(!message.contains("  "), "no runs of spaces: {message}");
        }
        let inside = [cgroup("/sys/fs/cgroup/docker/abc", 10)];
        assert!(check_coverage(root, &attach, &inside).is_ok());
    }
}
