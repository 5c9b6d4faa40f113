//! Network namespaces: running a piece of work inside another one, and what an interface
//! looks like from the calling thread's.

use std::{
    fs::File,
    io,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use crate::sys;

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

/// Whether `interface` (in the calling thread's namespace) is administratively up and has
/// carrier (IFF_UP and IFF_RUNNING).
pub fn interface_up(interface: &str) -> io::Result<bool> {
    let flags = sys::interface_flags(interface)?;
    Ok(flags & libc::IFF_UP != 0 && flags & libc::IFF_RUNNING != 0)
}
