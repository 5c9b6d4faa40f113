//! Writing a [`DesiredState`] into the kernel: only what differs from what was written
//! before, and in an order where every intermediate state is at least as strict as the end
//! states on both sides (an entry before its allowances, a reference rewritten before the
//! slot it points at is freed, a backstop's entry before its program and after it), through
//! [`Kernel`].

mod backstops;
mod carriers;
mod gateways;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use anyhow::Result;
use ipnet::IpNet;
use netguard_common::{
    CarrierKey, CgroupPolicy, EndpointKey, GatewayState, IfaceKey, NetnsGuard, POLICY_PROTECTED,
    SCOPE_GLOBAL,
};

use super::{DesiredState, Policy, garbage::Garbage};
use crate::{
    domain::{CgroupId, ContainerId, GatewayId},
    kernel::{Kernel, maps::gateway_name},
};

/// Whether entries netguard manages but no longer wants are removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prune {
    /// Everything managed is exactly as desired (a full reconcile).
    Yes,
    /// Only add and update (the static configuration at start-up, before Docker is read:
    /// what an earlier agent left for containers stays until the first full reconcile).
    No,
}

/// A write that failed; everything else was still written.
#[derive(Debug)]
pub struct Failure {
    /// What it was about, in the user's words ("cgroup 1234", "gateway gluetun").
    pub subject: String,
    pub error: anyhow::Error,
}

/// A gateway whose tunnel went up or down.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunnelChange {
    pub gateway: String,
    pub up: bool,
    /// Its transitions so far, as counted in its slot.
    pub transitions: u64,
}

/// What an apply did besides writing.
#[derive(Debug, Default)]
pub struct Applied {
    pub failures: Vec<Failure>,
    pub tunnel_changes: Vec<TunnelChange>,
    /// Protected cgroups whose policy could not be written (a full map): nothing enforces
    /// them, so the watcher freezes them.
    pub unwritten: BTreeSet<CgroupId>,
}

impl Applied {
    fn fail(&mut self, subject: impl Into<String>, error: anyhow::Error) {
        self.failures.push(Failure {
            subject: subject.into(),
            error,
        });
    }
}

/// What the applier last wrote (or read at start): the kernel state it manages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Mirror {
    policies: BTreeMap<CgroupId, CgroupPolicy>,
    cidrs: BTreeMap<u64, BTreeSet<IpNet>>,
    registrations: BTreeMap<ContainerId, CgroupPolicy>,
    gateways: BTreeMap<String, (GatewayId, GatewayState)>,
    endpoints: HashMap<u32, HashSet<EndpointKey>>,
    guards: BTreeMap<u64, NetnsGuard>,
    /// Guarded namespaces' interfaces: (index, MAC) -> netns cookie.
    ifaces: BTreeMap<IfaceKey, u64>,
    carriers: BTreeSet<CarrierKey>,
    /// Backstop programs this agent attached or adopted: (netns cookie, interface).
    links: BTreeSet<(u64, u32)>,
    /// Backstop programs pinned before this agent started: adopted (or replaced by this
    /// build's program) when next wanted, detached when not.
    inherited: BTreeSet<(u64, u32)>,
}

/// Writes desired states into a [`Kernel`], remembering what it wrote.
#[derive(Debug)]
pub struct Applier {
    mirror: Mirror,
}

impl Applier {
    /// Starts from what the kernel holds now (a restarted agent adopts it).
    pub fn load(kernel: &impl Kernel) -> Result<Self> {
        let mut applier = Self {
            mirror: Mirror::default(),
        };
        applier.reload(kernel)?;
        Ok(applier)
    }

    /// Reads the kernel's state again, so that writes lost or made by others are redone.
    pub fn reload(&mut self, kernel: &impl Kernel) -> Result<()> {
        let (links, inherited) = kernel
            .backstop_links()?
            .into_iter()
            .partition(|ifindex| self.mirror.links.contains(ifindex));
        let mut mirror = Mirror {
            policies: kernel.policies()?.into_iter().collect(),
            registrations: kernel.registrations()?.into_iter().collect(),
            guards: kernel.guards()?.into_iter().collect(),
            carriers: kernel.carriers()?.into_iter().collect(),
            ifaces: kernel.guarded_ifaces()?.into_iter().collect(),
            links,
            inherited,
            ..Mirror::default()
        };
        for (scope, cidr) in kernel.cidrs()? {
            mirror.cidrs.entry(scope).or_default().insert(cidr);
        }
        for (slot, state) in kernel.gateway_slots()? {
            mirror.gateways.insert(gateway_name(&state), (slot, state));
        }
        for key in kernel.endpoints()? {
            mirror.endpoints.entry(key.gateway).or_default().insert(key);
        }
        self.mirror = mirror;
        Ok(())
    }

    /// The slot of gateway `name`, as written.
    pub fn gateway_slot(&self, name: &str) -> Option<GatewayId> {
        self.mirror.gateways.get(name).map(|(slot, _)| *slot)
    }

    /// Makes the kernel match `desired`. `now_secs` times tunnel changes.
    pub fn apply(
        &mut self,
        desired: &DesiredState,
        kernel: &mut impl Kernel,
        prune: Prune,
        now_secs: u64,
    ) -> Applied {
        let mut applied = Applied::default();
        // The internal networks are the configuration's and the host's, never an earlier
        // agent's: exact even when nothing else is pruned.
        self.write_scope(
            kernel,
            SCOPE_GLOBAL,
            &desired.internal,
            Prune::Yes,
            &mut applied,
        );
        self.apply_gateways(&desired.gateways, kernel, now_secs, &mut applied);
        for (id, policy) in &desired.registrations {
            let wanted = self.kernel_policy(policy);
            if self.mirror.registrations.get(id) != Some(&wanted) {
                match kernel.register(id, wanted) {
                    Ok(()) => {
                        self.mirror.registrations.insert(id.clone(), wanted);
                    }
                    Err(error) => applied.fail(format!("container {}", id.short()), error),
                }
            }
        }
        for (cgroup, policy) in &desired.policies {
            self.write_policy(kernel, *cgroup, policy, &mut applied);
        }
        self.apply_guards(&desired.guards, kernel, prune, &mut applied);
        self.apply_carriers(&desired.carriers, kernel, prune, &mut applied);
        if prune == Prune::Yes {
            let stale: Vec<ContainerId> = self
                .mirror
                .registrations
                .keys()
                .filter(|id| !desired.registrations.contains_key(*id))
                .cloned()
                .collect();
            for id in stale {
                match kernel.unregister(&id) {
                    Ok(()) => {
                        self.mirror.registrations.remove(&id);
                    }
                    Err(error) => applied.fail(format!("container {}", id.short()), error),
                }
            }
            let gone: Vec<String> = self
                .mirror
                .gateways
                .keys()
                .filter(|name| !desired.gateways.contains_key(*name))
                .cloned()
                .collect();
            for name in gone {
                if let Err(error) = self.remove_gateway(kernel, &name) {
                    applied.fail(format!("gateway {name}"), error);
                }
            }
        }
        applied
    }

    /// Removes the entries of cgroups that are gone, as [`super::garbage::collect`] found.
    pub fn collect(&mut self, garbage: &Garbage, kernel: &mut impl Kernel) -> Applied {
        let mut applied = Applied::default();
        for cgroup in garbage.retire.iter().chain(&garbage.forget) {
            if let Err(error) = self.remove_policy(kernel, *cgroup) {
                applied.fail(format!("cgroup {cgroup}"), error);
            }
        }
        for cgroup in &garbage.forget {
            if let Err(error) = kernel.remove_counters(*cgroup) {
                applied.fail(format!("cgroup {cgroup}"), error);
            }
        }
        applied
    }

    /// Removes every policy entry but `keep`'s (counters stay): without Docker, every entry
    /// is the configuration's, so one it no longer names goes.
    pub fn retire_all_but(
        &mut self,
        keep: &BTreeMap<CgroupId, Policy>,
        kernel: &mut impl Kernel,
    ) -> Result<()> {
        let stale: Vec<CgroupId> = self
            .mirror
            .policies
            .keys()
            .filter(|cgroup| !keep.contains_key(*cgroup))
            .copied()
            .collect();
        for cgroup in stale {
            tracing::info!(cgroup, "no longer configured: unprotecting");
            self.remove_policy(kernel, cgroup)?;
        }
        Ok(())
    }

    /// The policy as the kernel stores it: gateways by slot (none if it has no slot).
    fn kernel_policy(&self, policy: &Policy) -> CgroupPolicy {
        match policy {
            Policy::CountOnly => CgroupPolicy::default(),
            Policy::Protected { gateway, .. } => CgroupPolicy {
                flags: POLICY_PROTECTED,
                gateway: gateway
                    .as_deref()
                    .and_then(|name| self.gateway_slot(name))
                    .map_or(0, |slot| slot.0),
            },
        }
    }

    fn write_policy(
        &mut self,
        kernel: &mut impl Kernel,
        cgroup: CgroupId,
        policy: &Policy,
        applied: &mut Applied,
    ) {
        let wanted = self.kernel_policy(policy);
        let result = match policy {
            // The entry first: until the allowances follow, the cgroup is only stricter.
            Policy::Protected { allow, .. } => self.write_entry(kernel, cgroup, wanted).map(|()| {
                self.write_scope(kernel, cgroup, allow, Prune::Yes, applied);
            }),
            // Allowances go first (stricter while protected), then the entry flips.
            Policy::CountOnly => {
                self.write_scope(kernel, cgroup, &BTreeSet::new(), Prune::Yes, applied);
                self.write_entry(kernel, cgroup, wanted)
            }
        };
        if let Err(error) = result {
            // Unenforced only if the kernel has no protected entry at all (an older one of
            // another gateway still blocks everything else).
            let enforced = self
                .mirror
                .policies
                .get(&cgroup)
                .is_some_and(CgroupPolicy::is_protected);
            if policy.is_protected() && !enforced {
                applied.unwritten.insert(cgroup);
            }
            applied.fail(format!("cgroup {cgroup}"), error);
        }
    }

    fn write_entry(
        &mut self,
        kernel: &mut impl Kernel,
        cgroup: CgroupId,
        wanted: CgroupPolicy,
    ) -> Result<()> {
        if self.mirror.policies.get(&cgroup) != Some(&wanted) {
            kernel.set_policy(cgroup, wanted)?;
            self.mirror.policies.insert(cgroup, wanted);
        }
        Ok(())
    }

    fn remove_policy(&mut self, kernel: &mut impl Kernel, cgroup: CgroupId) -> Result<()> {
        kernel.remove_policy(cgroup)?;
        self.mirror.policies.remove(&cgroup);
        let mut applied = Applied::default();
        self.write_scope(kernel, cgroup, &BTreeSet::new(), Prune::Yes, &mut applied);
        match applied.failures.pop() {
            Some(failure) => Err(failure.error),
            None => Ok(()),
        }
    }

    /// Removes the CIDRs of `scope` no longer wanted (if pruning), then adds the new ones: in
    /// between, the allowed set is the intersection of the old and new sets. If a removal
    /// fails, nothing is added (the union would be looser than both sets).
    fn write_scope(
        &mut self,
        kernel: &mut impl Kernel,
        scope: u64,
        wanted: &BTreeSet<IpNet>,
        prune: Prune,
        applied: &mut Applied,
    ) {
        let present = self.mirror.cidrs.entry(scope).or_default();
        if prune == Prune::Yes {
            for cidr in present.difference(wanted).copied().collect::<Vec<_>>() {
                match kernel.write_cidr(scope, cidr, false) {
                    Ok(()) => {
                        present.remove(&cidr);
                    }
                    Err(error) => {
                        applied.fail(scope_name(scope), error);
                        return;
                    }
                }
            }
        }
        for cidr in wanted.difference(present).copied().collect::<Vec<_>>() {
            match kernel.write_cidr(scope, cidr, true) {
                Ok(()) => {
                    present.insert(cidr);
                }
                Err(error) => applied.fail(scope_name(scope), error),
            }
        }
        if present.is_empty() {
            self.mirror.cidrs.remove(&scope);
        }
    }
}

fn scope_name(scope: u64) -> String {
    if scope == SCOPE_GLOBAL {
        "internal networks".into()
    } else {
        format!("allowances of cgroup {scope}")
    }
}
