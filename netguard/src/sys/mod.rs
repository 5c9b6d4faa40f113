//! Every call into the C library, behind safe functions: namespaces, interfaces, mounts,
//! cgroups by handle. The rest of the crate has no `unsafe` (`#![deny(unsafe_code)]`).
#![expect(
    unsafe_code,
    reason = "the one module that calls the C library; each block says why it is sound"
)]

use std::{
    ffi::{CStr, CString, OsStr},
    io,
    os::{
        fd::{AsFd, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

mod net;

pub use self::net::{ethernet_address, interface_flags, netlink_exchange};

/// `SO_NETNS_COOKIE` (Linux 5.14), not in every libc crate version.
const SO_NETNS_COOKIE: libc::c_int = 71;
/// `FILEID_KERNFS`: cgroup ids are kernfs file handles.
const FILEID_KERNFS: i32 = 0xfe;

fn c_string(text: impl AsRef<OsStr>) -> io::Result<CString> {
    CString::new(text.as_ref().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in a name"))
}

/// Returns `Err(last OS error)` when `rc` is negative.
fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Moves the calling thread into the namespace of `namespace` (a `/proc/.../ns/*` or
/// `/run/netns/*` file); `kind` is `libc::CLONE_NEWNET` or `libc::CLONE_NEWCGROUP`.
pub fn setns(namespace: BorrowedFd<'_>, kind: libc::c_int) -> io::Result<()> {
    // SAFETY: setns takes a descriptor we borrow for the call and a namespace type.
    check(unsafe { libc::setns(namespace.as_raw_fd(), kind) }).map(drop)
}

/// A datagram socket in the calling thread's network namespace (for queries, not traffic).
fn query_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); a non-negative result is a new descriptor we own.
    let fd =
        check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The cookie of the calling thread's network namespace, as `bpf_get_netns_cookie` reports.
pub fn netns_cookie() -> io::Result<u64> {
    let socket = query_socket()?;
    u64_option(socket.as_fd(), SO_NETNS_COOKIE)
}

/// Raises the soft limit on open files to the hard one.
pub fn raise_open_files_limit() -> io::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid resource and a pointer to a local.
    check(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) })?;
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: as above.
    check(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) })?;
    Ok(())
}

/// A socket's cookie, as `bpf_get_socket_cookie` reports it.
pub fn socket_cookie(socket: BorrowedFd<'_>) -> io::Result<u64> {
    u64_option(socket, libc::SO_COOKIE)
}

/// A `SOL_SOCKET` option of `u64` size.
fn u64_option(socket: BorrowedFd<'_>, option: libc::c_int) -> io::Result<u64> {
    let mut value: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `value`, which is that large.
    check(unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&raw mut value).cast(),
            &mut len,
        )
    })?;
    Ok(value)
}

/// The index of `interface` in the calling thread's network namespace.
pub fn if_nametoindex(interface: &str) -> io::Result<u32> {
    let name = c_string(interface)?;
    // SAFETY: a valid NUL-terminated string for the duration of the call.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no interface named {interface:?}"),
        )),
        index => Ok(index),
    }
}

/// The name of the interface with index `ifindex` in the calling thread's namespace.
pub fn if_indextoname(ifindex: u32) -> io::Result<String> {
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
    // SAFETY: if_indextoname wrote a NUL-terminated name into the buffer.
    Ok(unsafe { CStr::from_ptr(name.as_ptr()) }
        .to_string_lossy()
        .into_owned())
}

/// Every interface of the calling thread's network namespace: (index, name).
pub fn if_nameindex() -> io::Result<Vec<(u32, String)>> {
    // SAFETY: if_nameindex returns an array ended by a zero entry, or NULL on error.
    let list = unsafe { libc::if_nameindex() };
    if list.is_null() {
        return Err(io::Error::last_os_error());
    }
    let mut found = Vec::new();
    let mut entry = list;
    // SAFETY: walked up to the zero entry; each name is NUL-terminated; freed once.
    unsafe {
        while (*entry).if_index != 0 {
            let name = CStr::from_ptr((*entry).if_name)
                .to_string_lossy()
                .into_owned();
            found.push(((*entry).if_index, name));
            entry = entry.add(1);
        }
        libc::if_freenameindex(list);
    }
    Ok(found)
}

/// `CLOCK_MONOTONIC` in nanoseconds (the clock of `bpf_ktime_get_ns`).
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// `CLOCK_BOOTTIME` in nanoseconds (the clock of `bpf_ktime_get_boot_ns`: it counts
/// suspend too).
pub fn boottime_ns() -> u64 {
    clock_ns(libc::CLOCK_BOOTTIME)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    // SAFETY: timespec is plain data; clock_gettime writes it.
    let mut now: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid clock id and a timespec that outlives the call.
    unsafe { libc::clock_gettime(clock, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Sends `signal` to process `pid`.
pub fn kill(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    // SAFETY: kill(2) with plain integers.
    check(unsafe { libc::kill(pid, signal) }).map(drop)
}

/// Mounts a filesystem of type `fstype` (no source, no options) at `path`.
pub fn mount(fstype: &str, path: &Path) -> io::Result<()> {
    let c_path = c_string(path)?;
    let c_type = c_string(fstype)?;
    // SAFETY: NUL-terminated strings that outlive the call; no mount data.
    check(unsafe {
        libc::mount(
            c_type.as_ptr(),
            c_path.as_ptr(),
            c_type.as_ptr(),
            0,
            std::ptr::null(),
        )
    })
    .map(drop)
}

/// The filesystem magic number at `path`; `None` if nothing is there.
pub fn filesystem_magic(path: &Path) -> io::Result<Option<i64>> {
    let c_path = c_string(path)?;
    // SAFETY: statfs is plain data; all zeroes is a valid value.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid path and a statfs struct to fill.
    match check(unsafe { libc::statfs(c_path.as_ptr(), &mut stat) }) {
        Ok(_) => Ok(Some(stat.f_type as i64)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

/// Opens the cgroup `id` of the hierarchy mounted at `mount` (an open directory of it):
/// `None` when no such cgroup exists any more.
pub fn open_cgroup_by_id(mount: BorrowedFd<'_>, id: u64) -> io::Result<Option<OwnedFd>> {
    #[repr(C)]
    struct Handle {
        bytes: u32,
        kind: i32,
        id: u64,
    }
    let mut handle = Handle {
        bytes: 8,
        kind: FILEID_KERNFS,
        id,
    };
    // SAFETY: a file handle of the size it declares and a directory descriptor we borrow.
    let opened = check(unsafe {
        libc::open_by_handle_at(
            mount.as_raw_fd(),
            (&raw mut handle).cast(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    });
    match opened {
        // SAFETY: a new descriptor owned by nobody else.
        Ok(fd) => Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) })),
        Err(error) if matches!(error.raw_os_error(), Some(libc::ESTALE | libc::ENOENT)) => Ok(None),
        Err(error) => Err(error),
    }
}

/// The path an open descriptor refers to.
pub fn path_of(fd: impl AsFd) -> io::Result<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd()))
}

/// `BPF_LINK_CREATE` for program `program` on cgroup `cgroup` with `attach_type` (for the
/// program types whose aya link cannot be pinned); returns the link.
pub fn bpf_link_create(
    program: BorrowedFd<'_>,
    cgroup: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<OwnedFd> {
    const BPF_LINK_CREATE: libc::c_long = 28;
    // The link_create member of `union bpf_attr`, zero-padded to the size the kernel reads.
    #[repr(C)]
    struct LinkCreate {
        prog_fd: u32,
        target_fd: u32,
        attach_type: u32,
        flags: u32,
        rest: [u64; 12],
    }
    let attr = LinkCreate {
        prog_fd: program.as_raw_fd() as u32,
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type,
        flags: 0,
        rest: [0; 12],
    };
    let fd = bpf(BPF_LINK_CREATE, &attr)?;
    // SAFETY: a new descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// bpf(2) with command `command` and its attribute struct `attr` (plain data, fully
/// initialised, padding made explicit); the call's non-negative result.
fn bpf<T>(command: libc::c_long, attr: &T) -> io::Result<libc::c_long> {
    // SAFETY: bpf(2) reads `size_of::<T>()` bytes of `attr`, which outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            std::ptr::from_ref(attr),
            std::mem::size_of::<T>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// `BPF_OBJ_PIN`: pins the BPF object `fd` at `path` on a bpffs.
pub fn bpf_obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    const BPF_OBJ_PIN: libc::c_long = 6;
    #[repr(C)]
    struct ObjPin {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        rest: [u64; 4],
    }
    let path = c_string(path)?;
    let attr = ObjPin {
        pathname: path.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        file_flags: 0,
        rest: [0; 4],
    };
    // The NUL-terminated path the attr points at outlives the call.
    bpf(BPF_OBJ_PIN, &attr).map(drop)
}

/// Registers `inner` (a map's ring buffer) with the tokio reactor, to wait for it to be
/// readable.
pub fn readable_fd<T: std::os::fd::AsRawFd>(inner: T) -> io::Result<tokio::io::unix::AsyncFd<T>> {
    // SAFETY: `inner` owns its descriptor and keeps it open for as long as the AsyncFd that
    // owns `inner` lives; nothing else closes it.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(inner, tokio::io::Interest::READABLE)
    }
    .map_err(std::io::Error::from)
}

/// A plain-data value from the start of `bytes` (as the kernel wrote it); `None` if too short.
pub fn read_pod<T: aya::Pod>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: T is Pod (any bit pattern is valid), the bytes are long enough, and the read
    // does not assume alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
}

/// Returns once every CPU has passed an RCU grace period: every BPF program running when it
/// was called (they run under RCU) has finished. `membarrier(MEMBARRIER_CMD_GLOBAL)` is
/// `synchronize_rcu()`; kernels with `nohz_full` refuse it.
pub fn wait_for_rcu_grace_period() -> io::Result<()> {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: a syscall without pointers.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    check(rc as libc::c_int).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_index_one_and_up() {
        assert_eq!(if_nametoindex("lo").unwrap(), 1);
        assert_eq!(if_indextoname(1).unwrap(), "lo");
        let flags = interface_flags("lo").unwrap();
        assert_ne!(flags & libc::IFF_UP, 0);
        assert!(if_nametoindex("ngt-no-such-if").is_err());
        assert!(interface_flags(&"x".repeat(40)).is_err());
    }

    #[test]
    fn pods_are_read_from_short_or_unaligned_bytes() {
        let bytes = [0u8, 1, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(read_pod::<u64>(&bytes[1..]), Some(1));
        assert_eq!(read_pod::<u64>(&bytes[2..]), None);
    }

    #[test]
    fn the_netns_cookie_is_stable() {
        assert_eq!(netns_cookie().unwrap(), netns_cookie().unwrap());
    }

    #[test]
    fn proc_has_a_filesystem_magic_and_a_missing_path_has_none() {
        assert_eq!(filesystem_magic(Path::new("/proc")).unwrap(), Some(0x9fa0));
        assert_eq!(
            filesystem_magic(Path::new("/ngt/no/such/path")).unwrap(),
            None
        );
    }
}
