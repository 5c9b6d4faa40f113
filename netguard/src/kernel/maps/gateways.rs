//! Gateway slots (their name, tunnel and state) and their VPN endpoints.

use anyhow::{Context as _, Result, bail};
use netguard_common::{EndpointKey, GatewayState, MAX_GATEWAYS};

use super::{Maps, now_secs, remove_if_present};
use crate::domain::GatewayId;

impl Maps {
    // Gateway slots and their VPN endpoints.

    /// Every gateway slot in use.
    pub fn gateway_slots(&self) -> Result<Vec<(GatewayId, GatewayState)>> {
        let mut found = Vec::new();
        for slot in 1..MAX_GATEWAYS {
            let state = self.gateways.get(&slot, 0)?;
            if state.in_use != 0 {
                found.push((GatewayId(slot), state));
            }
        }
        Ok(found)
    }

    /// Every gateway slot in use, with its name.
    pub fn gateways(&self) -> Result<Vec<(GatewayId, String, GatewayState)>> {
        Ok(self
            .gateway_slots()?
            .into_iter()
            .map(|(id, state)| (id, gateway_name(&state), state))
            .collect())
    }

    pub fn set_gateway_slot(&mut self, slot: GatewayId, state: GatewayState) -> Result<()> {
        self.gateways
            .set(slot.0, state, 0)
            .with_context(|| format!("writing gateway slot {}", slot.0))
    }

    /// Sets the tunnel state of `slot` for every container behind it, in one map write.
    pub fn set_tunnel_state(&mut self, slot: GatewayId, up: bool) -> Result<()> {
        let mut state = self.gateways.get(&slot.0, 0)?;
        if state.in_use == 0 {
            bail!("gateway slot {} is not in use", slot.0);
        }
        set_tunnel(&mut state, up, now_secs());
        self.set_gateway_slot(slot, state)
    }

    pub fn endpoints(&self) -> Result<Vec<EndpointKey>> {
        Ok(self.endpoints.keys().collect::<Result<_, _>>()?)
    }

    pub fn add_endpoint(&mut self, key: EndpointKey) -> Result<()> {
        Ok(self.endpoints.insert(key, 1, 0)?)
    }

    pub fn remove_endpoint(&mut self, key: EndpointKey) -> Result<()> {
        remove_if_present(self.endpoints.remove(&key))
    }
}

/// Records the tunnel of a gateway slot as up or down; a change is counted and timed here,
/// the one place transitions are counted.
pub fn set_tunnel(state: &mut GatewayState, up: bool, now_secs: u64) {
    let wanted = u32::from(up) * netguard_common::TUNNEL_UP;
    if state.tunnel_up != wanted {
        state.transitions += 1;
        state.last_change_secs = now_secs;
    }
    state.tunnel_up = wanted;
}

/// The name stored in a gateway slot.
pub fn gateway_name(state: &GatewayState) -> String {
    super::nul_terminated(&state.name)
}
