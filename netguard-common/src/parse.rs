//! Bounds-checked parsing of the packet headers a verdict needs, shared by the kernel programs
//! and the host (unit tests, fuzzing).
//!
//! Every read has a fixed size and goes through [`Packet::load`], so a packet shorter than a
//! read is an error, never an out-of-bounds read (the kernel's reader reaches paged data
//! too). Anything that cannot be parsed, or that could be rerouted after it was looked at
//! (IPv4 source routing, an IPv6 routing header with segments left), is [`Malformed`]: the
//! caller blocks it with reason `malformed`.

use crate::{FAMILY_V4, FAMILY_V6};

/// EtherType of IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// EtherType of ARP.
pub const ETH_P_ARP: u16 = 0x0806;

const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;
const IPPROTO_SCTP: u8 = 132;
const IPPROTO_UDPLITE: u8 = 136;

const IPOPT_END: u8 = 0;
const IPOPT_NOOP: u8 = 1;
const IPOPT_LSRR: u8 = 0x83;
const IPOPT_SSRR: u8 = 0x89;
/// Longest IPv4 options area (a 60-byte header less the fixed 20).
const MAX_IPV4_OPTIONS: usize = 40;

/// IPv6 extension headers walked before giving up (and blocking).
const MAX_IPV6_EXT_HEADERS: usize = 8;

/// The packet cannot be judged: blocked as `malformed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed;

/// Where a packet is going, as far as the verdict is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Destination address; IPv4 in the first four bytes, the rest zero.
    pub addr: [u8; 16],
    /// IP protocol number of the transport header (after IPv6 extension headers).
    pub proto: u8,
    /// Destination port in host order; meaningful only when `port_known`.
    pub port: u16,
    /// False for non-first fragments and protocols without ports.
    pub port_known: bool,
}

/// A packet buffer the parser can read from: the kernel's socket buffers, or bytes on the host.
pub trait Packet {
    /// The `N` bytes at `offset`, or [`Malformed`] if the packet is shorter.
    fn load<const N: usize>(&self, offset: usize) -> Result<[u8; N], Malformed>;
    /// Length of the whole buffer, from its start.
    fn len(&self) -> usize;
    /// Whether the buffer holds no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Packet for [u8] {
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Result<[u8; N], Malformed> {
        let end = offset.checked_add(N).ok_or(Malformed)?;
        let bytes = self.get(offset..end).ok_or(Malformed)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    #[inline(always)]
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
}

/// Parses the IP packet starting at `offset`, of the family named by `ethertype`.
#[inline(always)]
pub fn parse_ip<P: Packet + ?Sized>(
    pkt: &P,
    offset: usize,
    ethertype: u16,
) -> Result<Flow, Malformed> {
    match ethertype {
        ETH_P_IP => parse_v4(pkt, offset),
        ETH_P_IPV6 => parse_v6(pkt, offset),
        _ => Err(Malformed),
    }
}

/// Bytes of the packet from `offset` on.
#[inline(always)]
fn available<P: Packet + ?Sized>(pkt: &P, offset: usize) -> usize {
    pkt.len().saturating_sub(offset)
}

#[inline(always)]
fn parse_v4<P: Packet + ?Sized>(pkt: &P, offset: usize) -> Result<Flow, Malformed> {
    let hdr: [u8; 20] = pkt.load(offset)?;
    if hdr[0] >> 4 != 4 {
        return Err(Malformed);
    }
    let ihl = usize::from(hdr[0] & 0x0f) * 4;
    if ihl < 20 {
        return Err(Malformed);
    }
    let total_len = usize::from(u16::from_be_bytes([hdr[2], hdr[3]]));
    let available = available(pkt, offset);
    // BIG TCP super-packets carry total length 0; anything else must fit what we hold.
    let big_gso = total_len == 0 && available > 0xffff;
    if !big_gso && (total_len < ihl || total_len > available) {
        return Err(Malformed);
    }
    if ihl > 20 {
        check_v4_options(pkt, offset + 20, ihl - 20)?;
    }
    let fragment_offset = u16::from_be_bytes([hdr[6], hdr[7]]) & 0x1fff;
    let mut flow = Flow {
        family: FAMILY_V4,
        addr: [0; 16],
        proto: hdr[9],
        port: 0,
        port_known: false,
    };
    flow.addr[..4].copy_from_slice(&hdr[16..20]);
    if fragment_offset == 0 {
        load_port(pkt, offset + ihl, &mut flow)?;
    }
    Ok(flow)
}

/// Rejects source-route options: with them the header's destination is only the next hop.
#[inline(always)]
fn check_v4_options<P: Packet + ?Sized>(
    pkt: &P,
    start: usize,
    len: usize,
) -> Result<(), Malformed> {
    let mut i = 0usize;
    for _ in 0..MAX_IPV4_OPTIONS {
        // Options must end exactly at the header's end; one running past it is malformed.
        if i >= len || i >= MAX_IPV4_OPTIONS {
            return if i == len { Ok(()) } else { Err(Malformed) };
        }
        let [kind] = pkt.load::<1>(start + i)?;
        match kind {
            IPOPT_END => return Ok(()),
            IPOPT_NOOP => i += 1,
            IPOPT_LSRR | IPOPT_SSRR => return Err(Malformed),
            _ => {
                let [opt_len] = pkt.load::<1>(start + i + 1)?;
                if opt_len < 2 {
                    return Err(Malformed);
                }
                i += usize::from(opt_len);
            }
        }
    }
    if i == len { Ok(()) } else { Err(Malformed) }
}

#[inline(always)]
fn parse_v6<P: Packet + ?Sized>(pkt: &P, offset: usize) -> Result<Flow, Malformed> {
    let hdr: [u8; 40] = pkt.load(offset)?;
    if hdr[0] >> 4 != 6 {
        return Err(Malformed);
    }
    let payload_len = usize::from(u16::from_be_bytes([hdr[4], hdr[5]]));
    let available = available(pkt, offset);
    let jumbo = payload_len == 0 && available > 0xffff;
    if !jumbo && payload_len + 40 > available {
        return Err(Malformed);
    }
    let mut flow = Flow {
        family: FAMILY_V6,
        addr: [0; 16],
        proto: hdr[6],
        port: 0,
        port_known: false,
    };
    flow.addr.copy_from_slice(&hdr[24..40]);

    let mut l4 = offset + 40;
    let mut first_fragment = true;
    let mut walked_all = false;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match flow.proto {
            IPPROTO_HOPOPTS | IPPROTO_DSTOPTS => {
                let ext: [u8; 2] = pkt.load(l4)?;
                flow.proto = ext[0];
                l4 += (usize::from(ext[1]) + 1) * 8;
            }
            IPPROTO_ROUTING => {
                let ext: [u8; 4] = pkt.load(l4)?;
                // Segments left: the header's destination is not the final one.
                if ext[3] != 0 {
                    return Err(Malformed);
                }
                flow.proto = ext[0];
                l4 += (usize::from(ext[1]) + 1) * 8;
            }
            IPPROTO_FRAGMENT => {
                let ext: [u8; 4] = pkt.load(l4)?;
                flow.proto = ext[0];
                l4 += 8;
                if u16::from_be_bytes([ext[2], ext[3]]) >> 3 != 0 {
                    // What follows is the middle of a payload, not more headers.
                    first_fragment = false;
                    walked_all = true;
                    break;
                }
            }
            IPPROTO_AH => {
                let ext: [u8; 2] = pkt.load(l4)?;
                flow.proto = ext[0];
                l4 += (usize::from(ext[1]) + 2) * 4;
            }
            _ => {
                walked_all = true;
                break;
            }
        }
    }
    if !walked_all {
        return Err(Malformed);
    }
    if first_fragment {
        load_port(pkt, l4, &mut flow)?;
    }
    Ok(flow)
}

/// Reads the destination port of port-carrying protocols. The whole minimum L4 header must
/// be there (8 bytes UDP, 12 SCTP, 20 TCP): a shorter one is malformed, which also refuses
/// tiny first fragments that push the header into a later fragment (RFC 1858).
#[inline(always)]
fn load_port<P: Packet + ?Sized>(pkt: &P, l4: usize, flow: &mut Flow) -> Result<(), Malformed> {
    let ports = match flow.proto {
        IPPROTO_TCP => first_four(pkt.load::<20>(l4)?),
        IPPROTO_UDP | IPPROTO_UDPLITE => first_four(pkt.load::<8>(l4)?),
        IPPROTO_SCTP => first_four(pkt.load::<12>(l4)?),
        _ => return Ok(()),
    };
    flow.port = u16::from_be_bytes([ports[2], ports[3]]);
    flow.port_known = true;
    Ok(())
}

#[inline(always)]
fn first_four<const N: usize>(header: [u8; N]) -> [u8; 4] {
    [header[0], header[1], header[2], header[3]]
}

#[cfg(test)]
mod tests;
