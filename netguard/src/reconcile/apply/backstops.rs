//! Guarded network namespaces: the backstop on each of their Ethernet interfaces, each
//! interface's entry (by index and MAC: how the backstop tells the namespace a frame leaves),
//! and the namespace's guard entry. A guard entry tells the datapath the backstop is in place
//! (protected processes may then open AF_PACKET sockets) and which policy judges the kernel's
//! own frames there: it is written only once every interface has its entry and the program,
//! and removed before any program goes; an interface's entry goes after its program.

use std::collections::{BTreeMap, BTreeSet};

use netguard_common::{IfaceKey, NetnsGuard};

use super::{Applied, Applier, Prune};
use crate::{domain::NO_LINK_HEADER, kernel::Kernel, reconcile::GuardPlan};

impl Applier {
    pub(super) fn apply_guards(
        &mut self,
        wanted: &BTreeMap<u64, GuardPlan>,
        kernel: &mut impl Kernel,
        prune: Prune,
        applied: &mut Applied,
    ) {
        if prune == Prune::Yes {
            self.remove_stale_guards(wanted, kernel, applied);
        }
        for (&cookie, plan) in wanted {
            let mut complete = true;
            for (&ifindex, &mac) in &plan.interfaces {
                let key = iface_key(ifindex, mac);
                if self.mirror.ifaces.get(&key) != Some(&cookie) {
                    match kernel.write_guarded_iface(key, cookie, true) {
                        Ok(()) => {
                            self.mirror.ifaces.insert(key, cookie);
                        }
                        Err(error) => {
                            complete = false;
                            applied.fail(
                                format!("interface {ifindex} of {}", plan.netns.display()),
                                error,
                            );
                            continue;
                        }
                    }
                }
                if self.mirror.links.contains(&(cookie, ifindex)) {
                    continue;
                }
                match kernel.attach_backstop(&plan.netns, cookie, ifindex, mac != NO_LINK_HEADER) {
                    Ok(()) => {
                        self.mirror.links.insert((cookie, ifindex));
                        self.mirror.inherited.remove(&(cookie, ifindex));
                    }
                    Err(error) => {
                        complete = false;
                        applied.fail(
                            format!(
                                "backstop on interface {ifindex} of {}",
                                plan.netns.display()
                            ),
                            error,
                        );
                    }
                }
            }
            let guard = NetnsGuard {
                socketless_cgroup: plan.socketless.unwrap_or(0),
            };
            // Until every interface has the program, AF_PACKET stays refused there.
            if complete && self.mirror.guards.get(&cookie) != Some(&guard) {
                match kernel.set_guard(cookie, guard) {
                    Ok(()) => {
                        self.mirror.guards.insert(cookie, guard);
                    }
                    Err(error) => applied.fail(format!("guard of {}", plan.netns.display()), error),
                }
            }
        }
    }

    /// Guards no longer wanted go first (AF_PACKET refused again, the kernel's frames no
    /// longer judged), then the programs of namespaces and interfaces no longer wanted.
    fn remove_stale_guards(
        &mut self,
        wanted: &BTreeMap<u64, GuardPlan>,
        kernel: &mut impl Kernel,
        applied: &mut Applied,
    ) {
        let gone: Vec<u64> = self
            .mirror
            .guards
            .keys()
            .filter(|cookie| !wanted.contains_key(*cookie))
            .copied()
            .collect();
        for cookie in gone {
            match kernel.remove_guard(cookie) {
                Ok(()) => {
                    self.mirror.guards.remove(&cookie);
                }
                Err(error) => applied.fail(format!("guard of namespace {cookie}"), error),
            }
        }
        let stale: BTreeSet<(u64, u32)> = self
            .mirror
            .links
            .iter()
            .chain(&self.mirror.inherited)
            .filter(|(cookie, ifindex)| {
                !wanted
                    .get(cookie)
                    .is_some_and(|plan| plan.interfaces.contains_key(ifindex))
            })
            .copied()
            .collect();
        for link in stale {
            // Whatever the outcome, the program is no longer known to be ours: wanted again,
            // it is attached (or adopted) again.
            self.mirror.links.remove(&link);
            match kernel.detach_backstop(link.0, link.1) {
                Ok(()) => {
                    self.mirror.inherited.remove(&link);
                }
                Err(error) => applied.fail(
                    format!("backstop on interface {} of namespace {}", link.1, link.0),
                    error,
                ),
            }
        }
        let stale: Vec<(IfaceKey, u64)> = self
            .mirror
            .ifaces
            .iter()
            .filter(|(key, cookie)| {
                wanted
                    .get(cookie)
                    .is_none_or(|plan| plan.interfaces.get(&key.ifindex) != Some(&key.mac))
            })
            .map(|(key, cookie)| (*key, *cookie))
            .collect();
        for (key, cookie) in stale {
            match kernel.write_guarded_iface(key, cookie, false) {
                Ok(()) => {
                    self.mirror.ifaces.remove(&key);
                }
                Err(error) => applied.fail(format!("interface {}", key.ifindex), error),
            }
        }
    }
}

fn iface_key(ifindex: u32, mac: [u8; 6]) -> IfaceKey {
    IfaceKey {
        ifindex,
        mac,
        _pad: [0; 2],
    }
}
