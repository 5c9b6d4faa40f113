//! Who each container cgroup belonged to (`NG_OWNERS`), kept past the cgroup's end and the
//! agent's restart: blocked flows read from the pinned ring buffer later are named by it.

use std::path::Path;

use anyhow::{Context as _, Result};
use aya::maps::{HashMap, Map, MapData};
use netguard_common::{CgroupOwner, OWNER_NAME_LEN, maps};

use super::Maps;
use crate::domain::{CgroupId, ContainerId};

impl Maps {
    /// Records that `cgroup` is container `id`'s, named `name` (cut to what fits).
    pub fn set_owner(&mut self, cgroup: CgroupId, id: &ContainerId, name: &str) -> Result<()> {
        let mut owner = CgroupOwner {
            id: id.key().id,
            ..CgroupOwner::default()
        };
        let name = name.as_bytes();
        let len = name.len().min(OWNER_NAME_LEN);
        owner.name[..len].copy_from_slice(&name[..len]);
        self.owners
            .insert(cgroup, owner, 0)
            .with_context(|| format!("recording the owner of cgroup {cgroup}"))
    }
}

/// A read-only handle on the pinned owners, for naming blocked flows.
pub struct PinnedOwners(HashMap<MapData, u64, CgroupOwner>);

impl PinnedOwners {
    pub fn open(pin_dir: &Path) -> Result<Self> {
        let path = pin_dir.join(maps::OWNERS);
        let data = MapData::from_pin(&path)
            .with_context(|| format!("opening the pinned map {}", path.display()))?;
        Ok(Self(HashMap::try_from(Map::from_map_data(data)?)?))
    }

    /// The container (name, full id) `cgroup` belonged to; the name is empty when only the
    /// classifier saw it.
    pub fn get(&self, cgroup: CgroupId) -> Option<(String, ContainerId)> {
        let owner = self.0.get(&cgroup, 0).ok()?;
        let id = std::str::from_utf8(&owner.id).ok()?.parse().ok()?;
        Some((super::nul_terminated(&owner.name), id))
    }
}

/// The agent's own sockets in guarded namespaces (`NG_AGENT_SOCKETS`), by socket cookie:
/// the backstop lets them out whatever cgroup the agent runs in.
#[derive(Clone)]
pub struct AgentSockets(std::sync::Arc<std::sync::Mutex<HashMap<MapData, u64, u32>>>);

impl AgentSockets {
    pub fn open(pin_dir: &Path) -> Result<Self> {
        let path = pin_dir.join(maps::AGENT_SOCKETS);
        let data = MapData::from_pin(&path)
            .with_context(|| format!("opening the pinned map {}", path.display()))?;
        let map = HashMap::try_from(Map::from_map_data(data)?)?;
        Ok(Self(std::sync::Arc::new(std::sync::Mutex::new(map))))
    }

    /// Registers the socket with `cookie` until the returned guard is dropped.
    pub fn register(&self, cookie: u64) -> Result<AgentSocket> {
        self.0
            .lock()
            .unwrap()
            .insert(cookie, 0, 0)
            .context("registering one of the agent's sockets")?;
        Ok(AgentSocket {
            sockets: self.clone(),
            cookie,
        })
    }
}

/// One registered socket of the agent's; unregistered on drop.
pub struct AgentSocket {
    sockets: AgentSockets,
    cookie: u64,
}

impl Drop for AgentSocket {
    fn drop(&mut self) {
        let _ = self.sockets.0.lock().unwrap().remove(&self.cookie);
    }
}
