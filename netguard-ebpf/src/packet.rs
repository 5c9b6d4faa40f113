//! The kernel's socket buffers (cgroup_skb packets and TC frames alike) as [`Packet`]s for
//! the shared parser.

use core::ptr::read_unaligned;

use aya_ebpf::programs::sk_buff::SkBuff;
use netguard_common::parse::{Malformed, Packet};

/// A socket buffer: from the IP header for cgroup_skb, from the Ethernet header for TC.
pub struct Buffer<'a>(pub &'a SkBuff);

impl Packet for Buffer<'_> {
    /// Reads the headers in place where they are in the buffer's linear part (direct packet
    /// access: no helper call, no copy through the helper), else through
    /// `bpf_skb_load_bytes`, which also reaches paged data. Only IPv4 options are read a
    /// byte at a time.
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Result<[u8; N], Malformed> {
        // SAFETY: fields of the program's own context.
        let (data, end) = unsafe { ((*self.0.skb).data as usize, (*self.0.skb).data_end as usize) };
        let start = data + offset;
        // One byte is read through the helper: LLVM turns `start + 1 <= end` into
        // `start < end`, which the verifier does not take as a bound.
        if N > 1 && start + N <= end {
            // SAFETY: the N bytes lie between data and data_end, which the verifier checks
            // too; packet data has no alignment, hence the unaligned read.
            return Ok(unsafe { read_unaligned(start as *const [u8; N]) });
        }
        self.0.load(offset).map_err(|_| Malformed)
    }

    #[inline(always)]
    fn len(&self) -> usize {
        self.0.len() as usize
    }
}
