//! The maps of guarded network namespaces: their guards, their interfaces, kernel tunnels'
//! carriers, and the processes held for a raw socket made before the guard was there.

use anyhow::Result;
use aya::maps::MapError;
use netguard_common::{CarrierKey, CgroupPolicy, IfaceKey, NetnsGuard, StoppedTask};

use super::{Maps, remove_if_present};
use crate::domain::CgroupId;

impl Maps {
    // Guarded network namespaces: netns cookie -> what judges the kernel's own frames there.

    pub fn guards(&self) -> Result<Vec<(u64, NetnsGuard)>> {
        Ok(self.backstop.iter().collect::<Result<_, _>>()?)
    }

    pub fn set_guard(&mut self, netns: u64, guard: NetnsGuard) -> Result<()> {
        Ok(self.backstop.insert(netns, guard, 0)?)
    }

    pub fn remove_guard(&mut self, netns: u64) -> Result<()> {
        remove_if_present(self.backstop.remove(&netns))
    }

    // Guarded namespaces' interfaces: (index, MAC) -> netns cookie.

    pub fn guarded_ifaces(&self) -> Result<Vec<(IfaceKey, u64)>> {
        Ok(self.guarded_ifaces.iter().collect::<Result<_, _>>()?)
    }

    pub fn write_guarded_iface(&mut self, key: IfaceKey, cookie: u64, add: bool) -> Result<()> {
        if add {
            Ok(self.guarded_ifaces.insert(key, cookie, 0)?)
        } else {
            remove_if_present(self.guarded_ifaces.remove(&key))
        }
    }

    // Processes stopped for a raw socket made before their namespace was guarded.

    pub fn stopped(&self) -> Result<Vec<(u32, StoppedTask)>> {
        Ok(self.stopped.iter().collect::<Result<_, _>>()?)
    }

    pub fn forget_stopped(&mut self, tgid: u32) -> Result<()> {
        remove_if_present(self.stopped.remove(&tgid))
    }

    /// The policy entry of `cgroup` itself.
    pub fn policy(&self, cgroup: CgroupId) -> Result<Option<CgroupPolicy>> {
        match self.policy.get(&cgroup, 0) {
            Ok(policy) => Ok(Some(policy)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// Whether namespace `cookie` is guarded (the backstop on its interfaces).
    pub fn guarded(&self, cookie: u64) -> Result<bool> {
        match self.backstop.get(&cookie, 0) {
            Ok(_) => Ok(true),
            Err(MapError::KeyNotFound) => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    // Carriers: kernel tunnels' peers, let out of guarded namespaces.

    pub fn carriers(&self) -> Result<Vec<CarrierKey>> {
        Ok(self.carriers.keys().collect::<Result<_, _>>()?)
    }

    pub fn write_carrier(&mut self, key: CarrierKey, add: bool) -> Result<()> {
        if add {
            Ok(self.carriers.insert(key, 0, 0)?)
        } else {
            remove_if_present(self.carriers.remove(&key))
        }
    }
}
