//! Kernel WireGuard through its generic-netlink interface (`WG_CMD_GET_DEVICE`, see
//! `include/uapi/linux/wireguard.h`): a device's peers, with their current endpoints (the
//! carrier's destinations, which Gluetun picks at run time) and latest handshakes.
//!
//! The messages are built and parsed here, without `unsafe`; [`crate::sys::netlink_exchange`]
//! carries them. The calling thread must be in the device's network namespace.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    time::{Duration, SystemTime},
};

use crate::sys;

const NLMSG_HDRLEN: usize = 16;
const GENL_HDRLEN: usize = 4;
const NLA_HDRLEN: usize = 4;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
/// Attribute type bits (the rest are the nested and byte-order flags).
const NLA_TYPE_MASK: u16 = 0x3fff;

const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;

const WG_GENL_NAME: &str = "wireguard";
const WG_GENL_VERSION: u8 = 1;
const WG_CMD_GET_DEVICE: u8 = 0;
const WGDEVICE_A_IFINDEX: u16 = 1;
const WGDEVICE_A_LISTEN_PORT: u16 = 6;
const WGDEVICE_A_FWMARK: u16 = 7;
const WGDEVICE_A_PEERS: u16 = 8;
const WGPEER_A_PUBLIC_KEY: u16 = 1;
const WGPEER_A_ENDPOINT: u16 = 4;
const WGPEER_A_LAST_HANDSHAKE_TIME: u16 = 6;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// A kernel WireGuard device, as `WG_CMD_GET_DEVICE` describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Device {
    pub listen_port: u16,
    pub fwmark: u32,
    pub peers: Vec<Peer>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Peer {
    pub public_key: Vec<u8>,
    /// Where its encrypted packets go (none until configured or learned).
    pub endpoint: Option<SocketAddr>,
    /// `None`: never.
    pub last_handshake: Option<SystemTime>,
}

impl Device {
    /// Where the device's encrypted packets go.
    pub fn endpoints(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.peers.iter().filter_map(|p| p.endpoint)
    }

    /// The newest handshake of any peer (Gluetun has one peer; `None`: never).
    pub fn latest_handshake(&self) -> Option<SystemTime> {
        self.peers.iter().filter_map(|p| p.last_handshake).max()
    }
}

/// The kernel WireGuard device `ifindex` of the calling thread's namespace; `None` when the
/// kernel has no WireGuard (the module is not loaded: no such device can exist, and asking
/// would load it) or the interface is not a WireGuard device.
pub fn device(ifindex: u32) -> io::Result<Option<Device>> {
    if !available() {
        return Ok(None);
    }
    let answer = sys::netlink_exchange(libc::NETLINK_GENERIC, &family_request(WG_GENL_NAME, 1))?;
    let Some(family) = family_id(&answer)? else {
        return Ok(None);
    };
    let answer = sys::netlink_exchange(libc::NETLINK_GENERIC, &device_request(family, 2, ifindex));
    match answer {
        Ok(answer) => parse_device(&answer),
        // Not a WireGuard device (ENODEV, EOPNOTSUPP...): nothing of ours to read.
        Err(_) => Ok(None),
    }
}

/// Whether the kernel has WireGuard loaded (or built in): without it there is no device to
/// ask about.
pub fn available() -> bool {
    Path::new("/sys/module/wireguard").exists()
}

/// `CTRL_CMD_GETFAMILY` for the family `name`.
fn family_request(name: &str, seq: u32) -> Vec<u8> {
    let mut name = name.as_bytes().to_vec();
    name.push(0);
    message(
        GENL_ID_CTRL,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        CTRL_CMD_GETFAMILY,
        1,
        &attribute(CTRL_ATTR_FAMILY_NAME, &name),
    )
}

/// `WG_CMD_GET_DEVICE` (a dump, as the kernel requires) for `ifindex`.
fn device_request(family: u16, seq: u32, ifindex: u32) -> Vec<u8> {
    message(
        family,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_DUMP,
        seq,
        WG_CMD_GET_DEVICE,
        WG_GENL_VERSION,
        &attribute(WGDEVICE_A_IFINDEX, &ifindex.to_ne_bytes()),
    )
}

fn message(kind: u16, flags: u16, seq: u32, command: u8, version: u8, attrs: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + GENL_HDRLEN + attrs.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&[command, version, 0, 0]);
    out.extend_from_slice(attrs);
    out
}

fn attribute(kind: u16, payload: &[u8]) -> Vec<u8> {
    let len = NLA_HDRLEN + payload.len();
    let mut out = Vec::with_capacity(align(len));
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(align(len), 0);
    out
}

fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// The generic-netlink messages of `datagrams`: (type, payload after the genl header).
/// An error message is an error, unless it is the acknowledgement (error 0).
fn messages(datagrams: &[Vec<u8>]) -> io::Result<Vec<(u16, &[u8])>> {
    let mut out = Vec::new();
    for datagram in datagrams {
        let mut rest = datagram.as_slice();
        while rest.len() >= NLMSG_HDRLEN {
            let len = u32::from_ne_bytes(rest[..4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes(rest[4..6].try_into().unwrap());
            if len < NLMSG_HDRLEN || len > rest.len() {
                return Err(malformed("a netlink message length"));
            }
            let body = &rest[NLMSG_HDRLEN..len];
            match kind {
                NLMSG_DONE => {}
                NLMSG_ERROR => {
                    let code = body
                        .get(..4)
                        .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
                        .ok_or_else(|| malformed("a netlink error"))?;
                    if code != 0 {
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                }
                _ => {
                    let payload = body
                        .get(GENL_HDRLEN..)
                        .ok_or_else(|| malformed("a generic netlink header"))?;
                    out.push((kind, payload));
                }
            }
            rest = &rest[align(len).min(rest.len())..];
        }
    }
    Ok(out)
}

/// The attributes in `bytes`: (type without flags, payload).
fn attributes(bytes: &[u8]) -> io::Result<Vec<(u16, &[u8])>> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= NLA_HDRLEN {
        let len = u16::from_ne_bytes(rest[..2].try_into().unwrap()) as usize;
        let kind = u16::from_ne_bytes(rest[2..4].try_into().unwrap()) & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || len > rest.len() {
            return Err(malformed("a netlink attribute length"));
        }
        out.push((kind, &rest[NLA_HDRLEN..len]));
        rest = &rest[align(len).min(rest.len())..];
    }
    Ok(out)
}

/// The family id in a `CTRL_CMD_GETFAMILY` answer; `None` if the kernel has no such family.
fn family_id(datagrams: &[Vec<u8>]) -> io::Result<Option<u16>> {
    let messages = match messages(datagrams) {
        Ok(messages) => messages,
        Err(error) if error.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(error) => return Err(error),
    };
    for (_, payload) in messages {
        for (kind, value) in attributes(payload)? {
            if kind == CTRL_ATTR_FAMILY_ID && value.len() >= 2 {
                return Ok(Some(u16::from_ne_bytes([value[0], value[1]])));
            }
        }
    }
    Ok(None)
}

/// The device in a `WG_CMD_GET_DEVICE` answer. A device with many peers comes in several
/// messages, each with part of the peers.
fn parse_device(datagrams: &[Vec<u8>]) -> io::Result<Option<Device>> {
    let mut device: Option<Device> = None;
    for (_, payload) in messages(datagrams)? {
        let device = device.get_or_insert_with(Device::default);
        for (kind, value) in attributes(payload)? {
            match kind {
                WGDEVICE_A_LISTEN_PORT if value.len() >= 2 => {
                    device.listen_port = u16::from_ne_bytes([value[0], value[1]]);
                }
                WGDEVICE_A_FWMARK if value.len() >= 4 => {
                    device.fwmark = u32::from_ne_bytes(value[..4].try_into().unwrap());
                }
                WGDEVICE_A_PEERS => {
                    for (_, peer) in attributes(value)? {
                        device.peers.push(parse_peer(peer)?);
                    }
                }
                _ => {}
            }
        }
    }
    Ok(device)
}

fn parse_peer(bytes: &[u8]) -> io::Result<Peer> {
    let mut peer = Peer::default();
    for (kind, value) in attributes(bytes)? {
        match kind {
            WGPEER_A_PUBLIC_KEY => peer.public_key = value.to_vec(),
            WGPEER_A_ENDPOINT => peer.endpoint = parse_sockaddr(value),
            WGPEER_A_LAST_HANDSHAKE_TIME if value.len() >= 16 => {
                let seconds = i64::from_ne_bytes(value[..8].try_into().unwrap());
                let nanos = i64::from_ne_bytes(value[8..16].try_into().unwrap());
                if seconds > 0 {
                    peer.last_handshake = Some(
                        SystemTime::UNIX_EPOCH
                            + Duration::new(seconds as u64, nanos.clamp(0, 999_999_999) as u32),
                    );
                }
            }
            _ => {}
        }
    }
    Ok(peer)
}

/// A `sockaddr_in` or `sockaddr_in6` (family in host order, port in network order).
fn parse_sockaddr(bytes: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes(bytes.get(..2)?.try_into().ok()?);
    let port = u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?);
    let ip = match family {
        AF_INET => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes.get(4..8)?).ok()?)),
        AF_INET6 => IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(bytes.get(8..24)?).ok()?,
        )),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("malformed {what}"))
}

#[cfg(test)]
mod tests;
