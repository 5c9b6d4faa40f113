//! Interfaces and netlink: an interface's flags and Ethernet address, one netlink exchange.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use super::{check, query_socket};

/// An interface request (`ioctl` `SIOCGIF*`) about `interface`, answered by the kernel.
fn interface_request(interface: &str, request_code: libc::c_ulong) -> io::Result<libc::ifreq> {
    let name = interface.as_bytes();
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= request.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {interface:?} is too long"),
        ));
    }
    for (dst, src) in request.ifr_name.iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    let socket = query_socket()?;
    // SAFETY: a SIOCGIF* request reads a NUL-terminated name and writes its answer into
    // `request`, which is large enough for every one of them.
    check(unsafe { libc::ioctl(socket.as_raw_fd(), request_code as _, &mut request) })?;
    Ok(request)
}

/// The `IFF_*` flags of `interface` in the calling thread's namespace.
pub fn interface_flags(interface: &str) -> io::Result<libc::c_int> {
    let request = interface_request(interface, libc::SIOCGIFFLAGS)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    Ok(libc::c_int::from(unsafe { request.ifr_ifru.ifru_flags }))
}

/// The MAC address of `interface` in the calling thread's namespace, if it is an Ethernet
/// device (veth, macvlan, ipvlan, bridge...); `None` for devices without an Ethernet header
/// (tun, WireGuard, loopback).
pub fn ethernet_address(interface: &str) -> io::Result<Option<[u8; 6]>> {
    const ARPHRD_ETHER: u16 = 1;
    let request = interface_request(interface, libc::SIOCGIFHWADDR)?;
    // SAFETY: SIOCGIFHWADDR filled the hwaddr member of the union.
    let address = unsafe { request.ifr_ifru.ifru_hwaddr };
    if address.sa_family != ARPHRD_ETHER {
        return Ok(None);
    }
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(address.sa_data) {
        *dst = src as u8;
    }
    Ok(Some(mac))
}

/// Sends one netlink request (`protocol`: e.g. `libc::NETLINK_GENERIC`) from the calling
/// thread's network namespace and returns every datagram of the answer, up to the end of a
/// dump (`NLMSG_DONE`), an error or acknowledgement (`NLMSG_ERROR`), or a single answer.
/// Parsing is the caller's (safe) business.
pub fn netlink_exchange(protocol: libc::c_int, request: &[u8]) -> io::Result<Vec<Vec<u8>>> {
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    const NLM_F_MULTI: u16 = 2;
    // SAFETY: plain socket(2); a non-negative result is a new descriptor we own.
    let fd = check(unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            protocol,
        )
    })?;
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let timeout = libc::timeval {
        tv_sec: 2,
        tv_usec: 0,
    };
    // SAFETY: a timeval option of its own size, on our socket.
    check(unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    })?;
    // SAFETY: sends `request`, which outlives the call, to the kernel (the default address).
    let sent = unsafe {
        libc::send(
            socket.as_raw_fd(),
            request.as_ptr().cast(),
            request.len(),
            0,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut answers = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: receives into `buffer`, at most its length.
        let got = unsafe {
            libc::recv(
                socket.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                0,
            )
        };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        let datagram = buffer[..got as usize].to_vec();
        // The last message of the datagram tells whether more follow.
        let mut offset = 0;
        let mut finished = true;
        while offset + 16 <= datagram.len() {
            let len = u32::from_ne_bytes(datagram[offset..offset + 4].try_into().unwrap());
            let kind = u16::from_ne_bytes(datagram[offset + 4..offset + 6].try_into().unwrap());
            let flags = u16::from_ne_bytes(datagram[offset + 6..offset + 8].try_into().unwrap());
            finished = kind == NLMSG_DONE || kind == NLMSG_ERROR || flags & NLM_F_MULTI == 0;
            let len = (len as usize + 3) & !3;
            if len < 16 {
                break;
            }
            offset += len;
        }
        answers.push(datagram);
        if finished {
            return Ok(answers);
        }
    }
}
