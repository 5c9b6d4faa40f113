//! The kernel's socket buffers (cgroup_skb packets and TC frames alike) as [`Packet`]s for
//! the shared parser.

use aya_ebpf::programs::sk_buff::SkBuff;
use netguard_common::parse::{Malformed, Packet};

/// A socket buffer: from the IP header for cgroup_skb, from the Ethernet header for TC.
pub struct Buffer<'a>(pub &'a SkBuff);

impl Packet for Buffer<'_> {
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Result<[u8; N], Malformed> {
        self.0.load(offset).map_err(|_| Malformed)
    }

    #[inline(always)]
    fn len(&self) -> usize {
        self.0.len() as usize
    }
}
