//! Kernel tunnels' carriers: the peers the backstop lets out of a guarded namespace.

use std::collections::BTreeSet;

use netguard_common::CarrierKey;

use super::{Applied, Applier, Prune};
use crate::kernel::Kernel;

impl Applier {
    /// Makes the kernel tunnels' carriers those of `wanted`: the ones no longer wanted go
    /// first (if pruning), so that in between only carriers in both sets are let out.
    pub fn apply_carriers(
        &mut self,
        wanted: &BTreeSet<CarrierKey>,
        kernel: &mut impl Kernel,
        prune: Prune,
        applied: &mut Applied,
    ) {
        let subject = |key: &CarrierKey| format!("carrier of namespace {}", key.netns_cookie);
        if prune == Prune::Yes {
            for key in self
                .mirror
                .carriers
                .difference(wanted)
                .copied()
                .collect::<Vec<_>>()
            {
                match kernel.write_carrier(key, false) {
                    Ok(()) => {
                        self.mirror.carriers.remove(&key);
                    }
                    Err(error) => {
                        applied.fail(subject(&key), error);
                        return;
                    }
                }
            }
        }
        for key in wanted
            .difference(&self.mirror.carriers)
            .copied()
            .collect::<Vec<_>>()
        {
            match kernel.write_carrier(key, true) {
                Ok(()) => {
                    self.mirror.carriers.insert(key);
                }
                Err(error) => applied.fail(subject(&key), error),
            }
        }
    }
}
