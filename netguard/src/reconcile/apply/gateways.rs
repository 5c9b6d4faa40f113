//! Gateway slots: names to slots, endpoints, the tunnel state; and freeing a slot only once
//! nothing points at it.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use anyhow::{Result, anyhow};
use netguard_common::{EndpointKey, GATEWAY_NAME_LEN, GatewayState, MAX_GATEWAYS};

use super::{Applied, Applier, TunnelChange};
use crate::{
    domain::GatewayId,
    kernel::{Kernel, maps::set_tunnel},
    reconcile::GatewayPlan,
};

impl Applier {
    /// Writes only the gateways' slots (a tunnel went up or down): one write per gateway.
    pub fn apply_gateways(
        &mut self,
        gateways: &BTreeMap<String, GatewayPlan>,
        kernel: &mut impl Kernel,
        now_secs: u64,
        applied: &mut Applied,
    ) {
        for (name, plan) in gateways {
            if let Err(error) = self.write_gateway(kernel, name, plan, now_secs, applied) {
                applied.fail(format!("gateway {name}"), error);
            }
        }
    }

    pub(super) fn write_gateway(
        &mut self,
        kernel: &mut impl Kernel,
        name: &str,
        plan: &GatewayPlan,
        now_secs: u64,
        applied: &mut Applied,
    ) -> Result<()> {
        let (slot, before) = match self.mirror.gateways.get(name) {
            Some((slot, state)) => (*slot, *state),
            None => (self.free_slot(name)?, new_slot_state(name)),
        };
        let mut state = before;
        // Old endpoints go first: in between, only endpoints in both sets are allowed.
        let wanted: HashSet<EndpointKey> = plan.endpoints.iter().map(|e| e.key(slot)).collect();
        let present = self.mirror.endpoints.entry(slot.0).or_default();
        for key in present.difference(&wanted).copied().collect::<Vec<_>>() {
            kernel.write_endpoint(key, false)?;
            present.remove(&key);
        }
        for key in wanted.difference(present).copied().collect::<Vec<_>>() {
            kernel.write_endpoint(key, true)?;
            present.insert(key);
        }
        (state.tunnel_ifindex, state.tunnel_netns_cookie) =
            plan.tunnel.map_or((0, 0), |t| (t.ifindex, t.netns_cookie));
        set_tunnel(&mut state, plan.up && plan.tunnel.is_some(), now_secs);
        if self.mirror.gateways.get(name) != Some(&(slot, state)) {
            kernel.set_gateway_slot(slot, state)?;
            self.mirror.gateways.insert(name.to_string(), (slot, state));
            if state.tunnel_up != before.tunnel_up {
                applied.tunnel_changes.push(TunnelChange {
                    gateway: name.to_string(),
                    up: state.tunnel_up != 0,
                    transitions: state.transitions,
                });
            }
        }
        Ok(())
    }

    fn free_slot(&self, name: &str) -> Result<GatewayId> {
        if name.is_empty() || name.len() > GATEWAY_NAME_LEN {
            return Err(anyhow!(
                "gateway name {name:?} must be 1 to {GATEWAY_NAME_LEN} bytes long: shorten it"
            ));
        }
        let used: BTreeSet<GatewayId> = self.mirror.gateways.values().map(|(s, _)| *s).collect();
        (1..MAX_GATEWAYS)
            .map(GatewayId)
            .find(|slot| !used.contains(slot))
            .ok_or_else(|| anyhow!("all {} gateway slots are in use", MAX_GATEWAYS - 1))
    }

    /// Frees the slot of `name`. Every policy and registration pointing at it is first
    /// rewritten to no gateway (stricter), so a slot reused later never hands another
    /// gateway's allowances to them; the kernel is read for that, since the classifier
    /// writes entries of its own.
    pub(super) fn remove_gateway(&mut self, kernel: &mut impl Kernel, name: &str) -> Result<()> {
        let Some((slot, _)) = self.mirror.gateways.get(name).copied() else {
            return Ok(());
        };
        for (cgroup, mut policy) in kernel.policies()? {
            if policy.gateway == slot.0 {
                policy.gateway = 0;
                kernel.set_policy(cgroup, policy)?;
                self.mirror.policies.insert(cgroup, policy);
            }
        }
        for (id, mut policy) in kernel.registrations()? {
            if policy.gateway == slot.0 {
                policy.gateway = 0;
                kernel.register(&id, policy)?;
                self.mirror.registrations.insert(id, policy);
            }
        }
        // Its endpoints before the slot: a slot is free only once nothing of it is left.
        let keys: Vec<EndpointKey> = self
            .mirror
            .endpoints
            .get(&slot.0)
            .map(|keys| keys.iter().copied().collect())
            .unwrap_or_default();
        for key in keys {
            kernel.write_endpoint(key, false)?;
            if let Some(present) = self.mirror.endpoints.get_mut(&slot.0) {
                present.remove(&key);
            }
        }
        self.mirror.endpoints.remove(&slot.0);
        kernel.set_gateway_slot(slot, GatewayState::default())?;
        self.mirror.gateways.remove(name);
        Ok(())
    }
}

fn new_slot_state(name: &str) -> GatewayState {
    let mut state = GatewayState {
        in_use: 1,
        ..GatewayState::default()
    };
    state.name[..name.len()].copy_from_slice(name.as_bytes());
    state
}
