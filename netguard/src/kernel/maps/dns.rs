//! Where each protected container's DNS is steered: netguard's resolver in its namespace.

use anyhow::Result;
use netguard_common::{DnsPortKey, DnsSteer};

use super::{Maps, remove_if_present};
use crate::domain::CgroupId;

impl Maps {
    pub fn dns_resolvers(&self) -> Result<Vec<(CgroupId, DnsSteer)>> {
        Ok(self.dns.iter().collect::<Result<_, _>>()?)
    }

    pub fn set_dns_resolver(&mut self, cgroup: CgroupId, resolver: DnsSteer) -> Result<()> {
        Ok(self.dns.insert(cgroup, resolver, 0)?)
    }

    pub fn remove_dns_resolver(&mut self, cgroup: CgroupId) -> Result<()> {
        remove_if_present(self.dns.remove(&cgroup))
    }

    /// Whose each resolver port is.
    pub fn dns_ports(&self) -> Result<Vec<(DnsPortKey, CgroupId)>> {
        Ok(self.dns_ports.iter().collect::<Result<_, _>>()?)
    }

    pub fn set_dns_port(&mut self, key: DnsPortKey, cgroup: CgroupId) -> Result<()> {
        Ok(self.dns_ports.insert(key, cgroup, 0)?)
    }

    pub fn remove_dns_port(&mut self, key: DnsPortKey) -> Result<()> {
        remove_if_present(self.dns_ports.remove(&key))
    }
}
