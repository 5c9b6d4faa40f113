//! Which VPN gateway a protected container may use, and why.

use std::collections::BTreeMap;

use super::Container;
use crate::domain::ContainerId;

/// The gateway of a container and the rule that chose it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GatewayChoice {
    /// Not protected: no gateway applies.
    NotProtected,
    /// Its `netguard.gateway` label names this gateway.
    Named(String),
    /// Its `netguard.gateway` label names no gateway: it gets no tunnel allowance at all
    /// (stricter), and this is reported.
    Missing(String),
    /// It joins this gateway's network namespace (`network_mode: service:gluetun`).
    SharedNamespace(String),
    /// The only gateway there is.
    Only(String),
    /// No gateway: internal destinations only.
    None,
}

impl GatewayChoice {
    /// The gateway whose tunnel and endpoints it may use.
    pub fn gateway(&self) -> Option<&str> {
        match self {
            GatewayChoice::Named(name)
            | GatewayChoice::SharedNamespace(name)
            | GatewayChoice::Only(name) => Some(name),
            GatewayChoice::NotProtected | GatewayChoice::Missing(_) | GatewayChoice::None => None,
        }
    }

    /// The `netguard.gateway` reference that matches no gateway.
    pub fn unresolved(&self) -> Option<&str> {
        match self {
            GatewayChoice::Missing(reference) => Some(reference),
            _ => None,
        }
    }

    /// What the report shows: the gateway, and the reference that matched none.
    pub fn shown(&self) -> (Option<String>, Option<String>) {
        (
            self.gateway().map(str::to_string),
            self.unresolved().map(str::to_string),
        )
    }
}

/// The rules, in order: the container's own label, then the gateway whose network namespace
/// it joins, then the only gateway.
pub fn choose(
    container: &Container,
    containers: &BTreeMap<ContainerId, Container>,
) -> GatewayChoice {
    if !container.labels.protected {
        return GatewayChoice::NotProtected;
    }
    let joined = container
        .joins()
        .and_then(|reference| find(reference, containers))
        .filter(|joined| joined.labels.is_gateway);
    if let Some(reference) = &container.labels.gateway {
        // In a gateway's namespace, only that gateway's tunnel can carry it: a label naming
        // another is a mistake, and resolves to nothing (loudly).
        return match resolve(reference, container, containers) {
            Some(gateway) if joined.is_none_or(|j| j.id == gateway.id) => {
                GatewayChoice::Named(gateway.name.clone())
            }
            _ => GatewayChoice::Missing(reference.clone()),
        };
    }
    if let Some(joined) = joined {
        return GatewayChoice::SharedNamespace(joined.name.clone());
    }
    let mut all = containers.values().filter(|c| c.labels.is_gateway);
    match (all.next(), all.next()) {
        (Some(only), None) => GatewayChoice::Only(only.name.clone()),
        _ => GatewayChoice::None,
    }
}

/// The gateway a `netguard.gateway` reference of `from` means, as a user writes it: a
/// service of `from`'s own Compose project or Swarm stack (`gluetun`), a container name
/// (`gluetun`, or Compose's `media_gluetun_1` / `media-gluetun-1`), or an id prefix of 4+
/// hex digits. Every rule that matches must match the same one gateway: `None` when none
/// does, or when they disagree (a `gluetun` elsewhere must not stand in for the project's
/// own).
pub fn resolve<'a>(
    reference: &str,
    from: &Container,
    containers: &'a BTreeMap<ContainerId, Container>,
) -> Option<&'a Container> {
    let gateways = || containers.values().filter(|c| c.labels.is_gateway);
    let by_service = match &from.project {
        Some(project) => gateways()
            .filter(|g| g.project.as_ref() == Some(project) && serves(g, Some(project), reference))
            .collect(),
        None => Vec::new(),
    };
    let by_name = gateways().filter(|g| g.name == reference).collect();
    let by_prefix = gateways().filter(|g| id_prefix(reference, g)).collect();
    let mut found: Option<&Container> = None;
    for matches in [by_service, by_name, by_prefix] {
        match (matches.as_slice(), found) {
            ([], _) => {}
            ([one], None) => found = Some(one),
            ([one], Some(already)) if one.id == already.id => {}
            _ => return None,
        }
    }
    found
}

/// Whether `gateway` is service `reference` (Compose), or `<project>_<reference>` (a Swarm
/// stack's service) of `project`.
fn serves(gateway: &Container, project: Option<&str>, reference: &str) -> bool {
    gateway.service.as_deref().is_some_and(|service| {
        service == reference
            || project.is_some_and(|project| {
                service
                    .strip_prefix(project)
                    .and_then(|rest| rest.strip_prefix('_'))
                    == Some(reference)
            })
    })
}

/// Whether `reference` is an id prefix (4+ hex digits) of `gateway`.
fn id_prefix(reference: &str, gateway: &Container) -> bool {
    reference.len() >= 4
        && reference.bytes().all(|b| b.is_ascii_hexdigit())
        && gateway.id.matches_prefix(reference)
}

/// Whether `reference`, written in the agent's configuration, names `gateway`: its name, its
/// Compose service (or Swarm service, with or without the stack's prefix), or an id prefix.
pub fn names(reference: &str, gateway: &Container) -> bool {
    gateway.name == reference
        || serves(gateway, gateway.project.as_deref(), reference)
        || id_prefix(reference, gateway)
}

/// The container Docker means by `reference`: its name, its id or an id prefix.
pub fn find<'a>(
    reference: &str,
    containers: &'a BTreeMap<ContainerId, Container>,
) -> Option<&'a Container> {
    containers
        .values()
        .find(|c| c.name == reference)
        .or_else(|| containers.values().find(|c| c.id.matches_prefix(reference)))
}

/// Containers stuck in the network namespace of a gateway that has since got a new one (it
/// restarted: `network_mode: service:gluetun` joined the old one, which has no way out any
/// more), with that gateway's name.
pub fn stranded(containers: &BTreeMap<ContainerId, Container>) -> BTreeMap<ContainerId, String> {
    let cookie = |c: &Container| Some(c.running.as_ref()?.netns.as_ref()?.cookie);
    containers
        .values()
        .filter_map(|container| {
            let gateway = find(container.joins()?, containers)?;
            let stuck = gateway.labels.is_gateway && cookie(container)? != cookie(gateway)?;
            stuck.then(|| (container.id.clone(), gateway.name.clone()))
        })
        .collect()
}
