//! Network namespaces: running a piece of work inside another one, and what an interface
//! looks like from the calling thread's.

use std::{
    fs::File,
    io,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use crate::{
    domain::{Mac, NO_LINK_HEADER},
    sys,
};

/// Runs `work` on a thread that has joined the network namespace at `netns` (a file such
/// as `/run/netns/NAME` or `/proc/PID/ns/net`), so the caller's own namespace is untouched.
pub fn run_in<T: Send>(netns: &Path, work: impl FnOnce() -> T + Send) -> io::Result<T> {
    let file = File::open(netns).map_err(|error| {
        io::Error::new(
            error.kind(),
            format!("cannot open network namespace {}: {error}", netns.display()),
        )
    })?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                sys::setns(file.as_fd(), libc::CLONE_NEWNET)?;
                Ok(work())
            })
            .join()
            .map_err(|_| io::Error::other("thread in the network namespace panicked"))?
    })
}

/// The network namespace file of `pid`.
pub fn of_process(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/ns/net"))
}

/// The cookie of the calling thread's network namespace, as `bpf_get_netns_cookie` reports.
pub fn current_cookie() -> io::Result<u64> {
    sys::netns_cookie()
}

/// The index of `interface` in the calling thread's network namespace.
pub fn ifindex(interface: &str) -> io::Result<u32> {
    sys::if_nametoindex(interface)
}

/// The name of the interface with index `ifindex` in the calling thread's namespace.
pub fn interface_name(ifindex: u32) -> io::Result<String> {
    sys::if_indextoname(ifindex)
}

/// Whether an interface with this index exists in the calling thread's namespace.
pub fn interface_exists(ifindex: u32) -> bool {
    interface_name(ifindex).is_ok()
}

/// The cookie and the interfaces but loopback (index and MAC address;
/// [`NO_LINK_HEADER`] for one without a link-layer header, such as tun or WireGuard) of the
/// network namespace at `netns`: every way out of it.
pub fn cookie_and_interfaces(netns: &Path) -> io::Result<(u64, Vec<(u32, Mac)>)> {
    run_in(netns, || -> io::Result<(u64, Vec<(u32, Mac)>)> {
        let mut interfaces = Vec::new();
        for (index, name) in sys::if_nameindex()? {
            if name == "lo" {
                continue;
            }
            match sys::ethernet_address(&name) {
                Ok(mac) => interfaces.push((index, mac.unwrap_or(NO_LINK_HEADER))),
                // Gone since it was listed: nothing to guard.
                Err(error) if error.raw_os_error() == Some(libc::ENODEV) => {}
                Err(error) => {
                    return Err(io::Error::new(
                        error.kind(),
                        format!("reading interface {name}: {error}"),
                    ));
                }
            }
        }
        Ok((current_cookie()?, interfaces))
    })?
}

/// The interfaces of the host's namespace that carry the backstop: `names` only, if given
/// (`backstop_host_interfaces`), else every one. Resolved in the calling thread's namespace.
pub fn host_backstop_interfaces(
    interfaces: Vec<(u32, Mac)>,
    names: Option<&[String]>,
) -> Vec<(u32, Mac)> {
    let Some(names) = names else {
        return interfaces;
    };
    interfaces
        .into_iter()
        .filter(|(ifindex, _)| interface_name(*ifindex).is_ok_and(|name| names.contains(&name)))
        .collect()
}

/// Whether `interface` (in the calling thread's namespace) is administratively up and has
/// carrier (IFF_UP and IFF_RUNNING).
pub fn interface_up(interface: &str) -> io::Result<bool> {
    let flags = sys::interface_flags(interface)?;
    Ok(flags & libc::IFF_UP != 0 && flags & libc::IFF_RUNNING != 0)
}
