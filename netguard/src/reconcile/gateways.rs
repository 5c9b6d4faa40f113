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
    let gateways = || containers.values().filter(|c| c.labels.is_gateway);
    if let Some(name) = &container.labels.gateway {
        return match gateways().find(|g| &g.name == name) {
            Some(gateway) => GatewayChoice::Named(gateway.name.clone()),
            None => GatewayChoice::Missing(name.clone()),
        };
    }
    if let Some(joined) = container
        .joins()
        .and_then(|reference| find(reference, containers))
        && joined.labels.is_gateway
    {
        return GatewayChoice::SharedNamespace(joined.name.clone());
    }
    let mut all = gateways();
    match (all.next(), all.next()) {
        (Some(only), None) => GatewayChoice::Only(only.name.clone()),
        _ => GatewayChoice::None,
    }
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
