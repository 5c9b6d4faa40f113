//! Running a piece of work inside another network namespace.

use std::{fs::File, io, os::fd::AsRawFd as _, path::Path};

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
                // SAFETY: setns on this thread only, with a descriptor we own.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(work())
            })
            .join()
            .map_err(|_| io::Error::other("thread in the network namespace panicked"))?
    })
}

/// The cookie of the calling thread's network namespace, as `bpf_get_netns_cookie` reports.
pub fn current_cookie() -> io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: plain socket syscalls on a descriptor closed before returning.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut cookie: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        );
        let error = io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(error);
        }
        Ok(cookie)
    }
}

/// The index of `interface` in the calling thread's network namespace.
pub fn ifindex(interface: &str) -> io::Result<u32> {
    let name = std::ffi::CString::new(interface)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name has a NUL"))?;
    // SAFETY: valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no interface named {interface:?}"),
        )),
        index => Ok(index),
    }
}

/// The name of the interface with index `ifindex` in the calling thread's namespace.
pub fn interface_name(ifindex: u32) -> io::Result<String> {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer has IF_NAMESIZE bytes, as if_indextoname requires.
    if unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr()) }.is_null() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "no interface with index {ifindex}: {}",
                io::Error::last_os_error()
            ),
        ));
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name.
    Ok(unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
        .to_string_lossy()
        .into_owned())
}

/// Whether `interface` (in the calling thread's namespace) is administratively up and has
/// carrier (IFF_UP and IFF_RUNNING).
pub fn interface_up(interface: &str) -> io::Result<bool> {
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = interface.as_bytes();
    if name.len() >= request.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    for (dst, src) in request.ifr_name.iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: a socket and an ioctl on a zeroed ifreq with a NUL-terminated name.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let rc = libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut request);
        let error = io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(error);
        }
        let flags = request.ifr_ifru.ifru_flags as libc::c_int;
        Ok(flags & libc::IFF_UP != 0 && flags & libc::IFF_RUNNING != 0)
    }
}
