//! The backstop's links: TC egress on the interfaces of guarded network namespaces, pinned
//! as `links/tc<netns cookie>_<ifindex>`.

use std::{fs, path::Path};

use anyhow::{Context as _, Result, bail};
use aya::programs::{LinkOrder, Program, TcAttachType, links::FdLink, tc::TcAttachOptions};

use super::{BACKSTOP_L3_PROGRAM, BACKSTOP_PROGRAM, Datapath, LinkOutcome};
use crate::{kernel::pins::remove_pin, netns};

impl Datapath {
    /// Attaches (or adopts) the backstop on TC egress of interface `ifindex` of the network
    /// namespace `netns` (a namespace file), whose cookie is `cookie`: the program for
    /// Ethernet frames, or (`ethernet` false) the one for packets without a link header.
    pub fn attach_backstop(
        &mut self,
        netns: &Path,
        cookie: u64,
        ifindex: u32,
        ethernet: bool,
    ) -> Result<LinkOutcome> {
        let pin = self
            .pin_dir
            .join("links")
            .join(backstop_pin(cookie, ifindex));
        let name = if ethernet {
            BACKSTOP_PROGRAM
        } else {
            BACKSTOP_L3_PROGRAM
        };
        self.pin_link(&pin, name, |program| {
            let Program::SchedClassifier(p) = program else {
                bail!("program {name} has an unexpected type");
            };
            // The interface is named, and the link made, in its own namespace.
            let link = netns::run_in(netns, || -> Result<FdLink> {
                let interface = netns::interface_name(ifindex)
                    .with_context(|| format!("interface {ifindex} is gone"))?;
                // First in the tcx chain: an earlier program returning "pass" would skip it.
                let order = TcAttachOptions::TcxOrder(LinkOrder::first());
                let id = p
                    .attach_with_options(&interface, TcAttachType::Egress, order)
                    .with_context(|| format!("attaching the backstop to {interface}"))?;
                Ok(FdLink::try_from(p.take_link(id)?)?)
            })?;
            link.with_context(|| format!("in network namespace {}", netns.display()))
        })
    }

    /// Removes the backstop from interface `ifindex` of the namespace with cookie `cookie`.
    pub fn detach_backstop(&mut self, cookie: u64, ifindex: u32) -> Result<()> {
        remove_pin(
            &self
                .pin_dir
                .join("links")
                .join(backstop_pin(cookie, ifindex)),
        )
    }

    /// Pinned backstop links: (netns cookie, interface index); none for a datapath loaded
    /// unpinned.
    pub fn pinned_backstops(&self) -> Result<Vec<(u64, u32)>> {
        let mut found = Vec::new();
        let links = self.pin_dir.join("links");
        if !links.exists() {
            return Ok(found);
        }
        for entry in fs::read_dir(&links)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            let parsed = name.strip_prefix("tc").and_then(|rest| {
                let (cookie, ifindex) = rest.split_once('_')?;
                Some((cookie.parse().ok()?, ifindex.parse().ok()?))
            });
            found.extend(parsed);
        }
        Ok(found)
    }
}

/// The pin of the backstop link on interface `ifindex` of namespace `cookie`.
fn backstop_pin(cookie: u64, ifindex: u32) -> String {
    format!("tc{cookie}_{ifindex}")
}
