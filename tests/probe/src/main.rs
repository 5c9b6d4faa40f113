//! ng-probe: sends one kind of traffic and reports, as one JSON line, what the syscalls
//! returned. The lab runs it inside a protected cgroup and network namespace.
//!
//! ```text
//! ng-probe tcp ADDR PORT BYTES          connect, send BYTES
//! ng-probe udp ADDR PORT COUNT SIZE     COUNT datagrams of SIZE payload bytes (all tried)
//! ng-probe dns ADDR udp|tcp             one DNS query for example.test
//! ng-probe dns-lookup NAME [SERVER|- [connected|unconnected|tcp]]
//!                                       an A query for NAME, as a stub resolver makes it: to
//!                                       the first nameserver of /etc/resolv.conf (or SERVER)
//!                                       port 53, over a connected UDP socket (glibc), an
//!                                       unconnected one whose answer must come from the
//!                                       address asked (musl), or TCP; the answer's first
//!                                       address (or "rcode N") in "answer"; waits 5 s
//! ng-probe dns-serve ADDR ANSWER        a DNS server on ADDR:53 (UDP and TCP) answering every
//!                                       A query with ANSWER; prints "ready", then "query NAME"
//!                                       per query (until killed)
//! ng-probe ping ADDR                    one ICMP / ICMPv6 echo request (raw socket)
//! ng-probe raw-frame IFACE DST_MAC SRC DST PORT [dgram|legacy] [bypass|bypass32|mux32] [ring]
//!                                       hand-built IPv4/UDP frame via AF_PACKET: SOCK_RAW
//!                                       (or SOCK_DGRAM; legacy: AF_INET SOCK_PACKET),
//!                                       optionally with PACKET_QDISC_BYPASS (bypass32: set
//!                                       through the 32-bit ABI, int 0x80; mux32: through
//!                                       ia32 socketcall, and SO_PRIORITY only), optionally
//!                                       through a PACKET_TX_RING
//! ng-probe xdp-umem                     an AF_XDP socket registering a UMEM (what it needs
//!                                       before it can send past TC)
//! ng-probe spoof-udp SRC DST PORT       a UDP datagram from a forged SRC to DST (one of the
//!                                       sender's own addresses) through a raw IP socket: the
//!                                       kernel answers SRC with an ICMP error, sent by nobody
//! ng-probe stream ADDR PORT             connect, then per stdin line "send N": send N bytes
//! ng-probe udp-recv PORT COUNT          print "ready", wait for COUNT datagrams
//! ng-probe udp-watch ADDR PORT          send without pause; on each change between sent and
//!                                       refused print "sent|refused <unix ns>" (until stdin closes)
//! ```
//!
//! With `NG_PROBE_RETRY_MS=N` an operation refused with EPERM is repeated for up to N ms;
//! with `NG_PROBE_DEVICE=IFACE` UDP sockets are bound to that interface.

mod dns;

use std::{
    io::{self, BufRead as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = Instant::now();
    // NG_PROBE_RETRY_MS: repeat the whole operation while it is refused with EPERM, up to that
    // long (an unprotected container is held only until the agent has classified it).
    let retry_for = std::env::var("NG_PROBE_RETRY_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or_default();
    loop {
        let outcome = run(&args);
        let refused = outcome.error.as_ref().and_then(io::Error::raw_os_error) == Some(libc::EPERM);
        if !refused || started.elapsed() >= retry_for {
            report(&outcome, started.elapsed());
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn run(args: &[&str]) -> Outcome {
    match args {
        ["tcp", addr, port, bytes] => tcp(sock(addr, port), bytes.parse().unwrap()),
        ["udp", addr, port, count, size] => udp(
            sock(addr, port),
            count.parse().unwrap(),
            size.parse().unwrap(),
        ),
        ["dns", addr, "udp"] => udp_payload(sock(addr, "53"), &dns_query()),
        ["dns", addr, "tcp"] => {
            let query = dns_query();
            let mut framed = (query.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&query);
            tcp_payload(sock(addr, "53"), &framed)
        }
        ["dns-lookup", name] => dns::lookup(name, None, dns::Transport::Connected),
        ["dns-lookup", name, server] => dns::lookup(
            name,
            Some(server)
                .filter(|s| **s != "-")
                .map(|s| s.parse().unwrap()),
            dns::Transport::Connected,
        ),
        ["dns-lookup", name, server, transport] => dns::lookup(
            name,
            Some(server)
                .filter(|s| **s != "-")
                .map(|s| s.parse().unwrap()),
            transport.parse().unwrap(),
        ),
        ["dns-serve", addr, answer] => dns::serve(addr.parse().unwrap(), answer.parse().unwrap()),
        ["ping", addr] => ping(addr.parse().unwrap()),
        ["raw-frame", iface, mac, src, dst, port, modes @ ..] => raw_frame(
            iface,
            parse_mac(mac),
            src.parse().unwrap(),
            dst.parse().unwrap(),
            port.parse().unwrap(),
            FrameModes {
                dgram: modes.contains(&"dgram"),
                bypass: modes.contains(&"bypass"),
                bypass32: modes.contains(&"bypass32"),
                mux32: modes.contains(&"mux32"),
                legacy: modes.contains(&"legacy"),
                ring: modes.contains(&"ring"),
            },
        ),
        ["xdp-umem"] => xdp_umem(),
        ["spoof-udp", src, dst, port] => spoof_udp(
            src.parse().unwrap(),
            dst.parse().unwrap(),
            port.parse().unwrap(),
        ),
        ["stream", addr, port] => stream(sock(addr, port)),
        ["udp-recv", port, count] => udp_recv(port.parse().unwrap(), count.parse().unwrap()),
        ["udp-watch", addr, port] => udp_watch(sock(addr, port)),
        _ => {
            eprintln!("usage: see the doc comment of tests/probe/src/main.rs");
            std::process::exit(2);
        }
    }
}

/// What happened: `Ok(units)` (bytes, datagrams...) or the first error, after `done` units.
struct Outcome {
    done: u64,
    error: Option<io::Error>,
    /// What came back, when that is the point (a DNS answer).
    answer: String,
}

impl Outcome {
    fn ok(done: u64) -> Self {
        Self {
            done,
            error: None,
            answer: String::new(),
        }
    }
    fn failed(done: u64, error: io::Error) -> Self {
        Self {
            done,
            error: Some(error),
            answer: String::new(),
        }
    }
}

fn report(outcome: &Outcome, elapsed: Duration) {
    let errno = outcome
        .error
        .as_ref()
        .and_then(io::Error::raw_os_error)
        .unwrap_or(0);
    let message = outcome
        .error
        .as_ref()
        .map(|e| e.to_string())
        .unwrap_or_default();
    println!(
        "{{\"ok\":{},\"errno\":{errno},\"done\":{},\"elapsed_us\":{},\"error\":{:?},\"answer\":{:?}}}",
        outcome.error.is_none(),
        outcome.done,
        elapsed.as_micros(),
        message,
        outcome.answer
    );
}

fn sock(addr: &str, port: &str) -> SocketAddr {
    SocketAddr::new(
        addr.parse().expect("an IP address"),
        port.parse().expect("a port"),
    )
}

fn tcp(to: SocketAddr, bytes: usize) -> Outcome {
    tcp_payload(to, &vec![b'x'; bytes])
}

fn tcp_payload(to: SocketAddr, payload: &[u8]) -> Outcome {
    let mut stream = match TcpStream::connect_timeout(&to, Duration::from_secs(10)) {
        Ok(stream) => stream,
        Err(error) => return Outcome::failed(0, error),
    };
    match stream.write_all(payload).and_then(|()| stream.flush()) {
        Ok(()) => {
            // Half-close and wait for the peer to close, so the bytes have arrived.
            let _ = stream.shutdown(std::net::Shutdown::Write);
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = io::Read::read(&mut stream, &mut [0u8; 1]);
            Outcome::ok(payload.len() as u64)
        }
        Err(error) => Outcome::failed(0, error),
    }
}

fn udp_socket(to: &SocketAddr) -> io::Result<UdpSocket> {
    let bind: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    let socket = UdpSocket::bind(bind)?;
    // NG_PROBE_DEVICE=IFACE: the socket sends through that interface only (SO_BINDTODEVICE).
    if let Ok(device) = std::env::var("NG_PROBE_DEVICE") {
        use std::os::fd::AsRawFd as _;
        // SAFETY: setsockopt with the interface name's bytes and their length.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_BINDTODEVICE,
                device.as_ptr().cast(),
                device.len() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(socket)
}

fn udp(to: SocketAddr, count: u64, size: usize) -> Outcome {
    let payload = vec![b'u'; size];
    let socket = match udp_socket(&to) {
        Ok(socket) => socket,
        Err(error) => return Outcome::failed(0, error),
    };
    // Keeps going after a refusal so every datagram meets the datapath; reports the first error.
    let mut sent = 0;
    let mut first_error = None;
    for _ in 0..count {
        match socket.send_to(&payload, to) {
            Ok(_) => sent += 1,
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    match first_error {
        None => Outcome::ok(sent),
        Some(error) => Outcome::failed(sent, error),
    }
}

fn udp_payload(to: SocketAddr, payload: &[u8]) -> Outcome {
    match udp_socket(&to).and_then(|s| s.send_to(payload, to)) {
        Ok(_) => Outcome::ok(1),
        Err(error) => Outcome::failed(0, error),
    }
}

fn dns_query() -> Vec<u8> {
    let mut query = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["example", "test"] {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    query
}

fn ping(to: IpAddr) -> Outcome {
    let (family, proto, kind) = match to {
        IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP, 8u8),
        IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6, 128u8),
    };
    let mut packet = [
        kind, 0, 0, 0, 0x4e, 0x47, 0, 1, b'n', b'g', b'p', b'r', b'o', b'b', b'e', b'!',
    ];
    if to.is_ipv4() {
        let sum = checksum(&packet);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    // SAFETY: raw socket syscalls with buffers that outlive the calls.
    unsafe {
        let fd = libc::socket(family, libc::SOCK_RAW, proto);
        if fd < 0 {
            return Outcome::failed(0, io::Error::last_os_error());
        }
        match to {
            IpAddr::V4(ip) => {
                let mut sa: libc::sockaddr_in = std::mem::zeroed();
                sa.sin_family = libc::AF_INET as u16;
                sa.sin_addr.s_addr = u32::from_ne_bytes(ip.octets());
                send_once(fd, &packet, &sa)
            }
            IpAddr::V6(ip) => {
                let mut sa: libc::sockaddr_in6 = std::mem::zeroed();
                sa.sin6_family = libc::AF_INET6 as u16;
                sa.sin6_addr.s6_addr = ip.octets();
                send_once(fd, &packet, &sa)
            }
        }
    }
}

/// Sends `data` to the socket address `sa` on `fd`, closes `fd`, reports the result.
///
/// # Safety
/// `fd` is an open socket this function may close; `A` is a sockaddr type matching it.
unsafe fn send_once<A>(fd: libc::c_int, data: &[u8], sa: &A) -> Outcome {
    // SAFETY: per the contract; the buffers outlive the call.
    unsafe {
        let rc = libc::sendto(
            fd,
            data.as_ptr().cast(),
            data.len(),
            0,
            (sa as *const A).cast(),
            std::mem::size_of::<A>() as u32,
        );
        let error = io::Error::last_os_error();
        libc::close(fd);
        if rc < 0 {
            Outcome::failed(0, error)
        } else {
            Outcome::ok(1)
        }
    }
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn parse_mac(text: &str) -> [u8; 6] {
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(text.split(':')) {
        *byte = u8::from_str_radix(part, 16).expect("a MAC like 02:00:00:00:00:01");
    }
    mac
}

/// An Ethernet/IPv4/UDP frame sent through AF_PACKET: no socket hook ever sees it.
/// How a raw frame is sent.
struct FrameModes {
    /// SOCK_DGRAM: the kernel builds the link-layer header.
    dgram: bool,
    /// PACKET_QDISC_BYPASS: straight to the driver, past TC.
    bypass: bool,
    /// The same, set by a 32-bit system call (which cgroup setsockopt programs never see).
    bypass32: bool,
    /// A harmless option (SO_PRIORITY) set through ia32 `socketcall`.
    mux32: bool,
    /// The old packet socket: `socket(AF_INET, SOCK_PACKET, ...)`.
    legacy: bool,
    /// Through a PACKET_TX_RING (TPACKET_V2) rather than sendto().
    ring: bool,
}

/// An IPv4/UDP packet from `src` to `dst`:`port` with `payload`, checksummed (UDP checksum 0).
fn ipv4_udp(src: Ipv4Addr, dst: Ipv4Addr, port: u16, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let ip_len = 20 + udp_len;
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip.extend_from_slice(&40000u16.to_be_bytes());
    ip.extend_from_slice(&port.to_be_bytes());
    ip.extend_from_slice(&(udp_len as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 0]); // UDP checksum 0: none, valid for IPv4
    ip.extend_from_slice(payload);
    ip
}

fn raw_frame(
    iface: &str,
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    port: u16,
    modes: FrameModes,
) -> Outcome {
    let packet = ipv4_udp(src, dst, port, b"netguard raw frame");
    let mut frame = Vec::with_capacity(14 + packet.len());
    if !modes.dgram {
        frame.extend_from_slice(&dst_mac);
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
        frame.extend_from_slice(&0x0800u16.to_be_bytes());
    }
    frame.extend_from_slice(&packet);

    let name = std::ffi::CString::new(iface).unwrap();
    // SAFETY: packet socket syscalls with buffers that outlive the calls.
    unsafe {
        let ifindex = libc::if_nametoindex(name.as_ptr());
        if ifindex == 0 {
            return Outcome::failed(0, io::Error::last_os_error());
        }
        let kind = if modes.dgram {
            libc::SOCK_DGRAM
        } else {
            libc::SOCK_RAW
        };
        let protocol = i32::from((libc::ETH_P_IP as u16).to_be());
        if modes.legacy {
            return send_legacy(iface, &frame, protocol);
        }
        let fd = libc::socket(libc::AF_PACKET, kind, protocol);
        if fd < 0 {
            return Outcome::failed(0, io::Error::last_os_error());
        }
        if modes.bypass && set_int(fd, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, 1) != 0 {
            return Outcome::failed(0, io::Error::last_os_error());
        }
        let ia32 = if modes.bypass32 {
            set_int_ia32(fd, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, 1, false)
        } else if modes.mux32 {
            set_int_ia32(fd, libc::SOL_SOCKET, libc::SO_PRIORITY, 1, true)
        } else {
            0
        };
        if ia32 < 0 {
            return Outcome::failed(0, io::Error::from_raw_os_error(-ia32 as i32));
        }
        let mut sa: libc::sockaddr_ll = std::mem::zeroed();
        sa.sll_family = libc::AF_PACKET as u16;
        sa.sll_protocol = (libc::ETH_P_IP as u16).to_be();
        sa.sll_ifindex = ifindex as i32;
        sa.sll_halen = 6;
        sa.sll_addr[..6].copy_from_slice(&dst_mac);
        if modes.ring {
            return send_through_ring(fd, &frame, &sa);
        }
        send_once(fd, &frame, &sa)
    }
}

/// # Safety
/// `fd` is a socket.
unsafe fn set_int(fd: i32, level: i32, name: i32, value: i32) -> i32 {
    // SAFETY: an int option of the size given.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const value).cast(),
            std::mem::size_of::<i32>() as u32,
        )
    }
}

/// The frame through an old-style packet socket (`AF_INET`, `SOCK_PACKET`), addressed by
/// device name.
fn send_legacy(iface: &str, frame: &[u8], protocol: i32) -> Outcome {
    #[repr(C)]
    struct SockaddrPkt {
        family: u16,
        device: [u8; 14],
        protocol: u16,
    }
    let mut to = SockaddrPkt {
        family: libc::AF_PACKET as u16,
        device: [0; 14],
        protocol: protocol as u16,
    };
    to.device[..iface.len()].copy_from_slice(iface.as_bytes());
    // SAFETY: socket and sendto with buffers that outlive the calls.
    unsafe {
        // The old type, deprecated for AF_PACKET, which is the point here.
        const SOCK_PACKET: i32 = 10;
        let fd = libc::socket(libc::AF_INET, SOCK_PACKET, protocol);
        if fd < 0 {
            return Outcome::failed(0, io::Error::last_os_error());
        }
        let sent = libc::sendto(
            fd,
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&raw const to).cast(),
            std::mem::size_of::<SockaddrPkt>() as u32,
        );
        libc::close(fd);
        if sent < 0 {
            return Outcome::failed(0, io::Error::last_os_error());
        }
        Outcome::ok(1)
    }
}

/// `setsockopt` through the ia32 ABI (`int 0x80`): a 32-bit program's call, direct (number
/// 366) or through `socketcall` (102, `SYS_SETSOCKOPT`). The value (and socketcall's
/// arguments) live below 4 GiB, where a 32-bit pointer reaches. Returns 0 or -errno.
///
/// # Safety
/// `fd` is a socket.
#[cfg(target_arch = "x86_64")]
unsafe fn set_int_ia32(fd: i32, level: i32, name: i32, value: i32, socketcall: bool) -> i64 {
    // SAFETY: a private anonymous page below 4 GiB holding the value and the arguments; the
    // ia32 system call reads them and writes nothing of ours.
    unsafe {
        let page = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_32BIT,
            -1,
            0,
        );
        if page == libc::MAP_FAILED {
            return -i64::from(io::Error::last_os_error().raw_os_error().unwrap_or(1));
        }
        let words = page.cast::<u32>();
        words.write(value as u32);
        // socketcall's arguments: fd, level, optname, optval, optlen.
        let args = [fd as u32, level as u32, name as u32, page as u32, 4];
        for (i, arg) in args.iter().enumerate() {
            words.add(4 + i).write(*arg);
        }
        let (mut rc, first, second, third): (i64, i64, i64, i64) = if socketcall {
            (102, 14, words.add(4) as i64, 0)
        } else {
            (366, i64::from(fd), i64::from(level), i64::from(name))
        };
        std::arch::asm!(
            "push rbx",
            "mov ebx, {first:e}",
            "int 0x80",
            "pop rbx",
            first = in(reg) first,
            inout("rax") rc,
            in("rcx") second,
            in("rdx") third,
            in("rsi") page as i64,
            in("rdi") 4i64,
        );
        libc::munmap(page, 4096);
        rc
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn set_int_ia32(_fd: i32, _level: i32, _name: i32, _value: i32, _mux: bool) -> i64 {
    -i64::from(libc::ENOSYS)
}

/// An AF_XDP socket and its UMEM registration (`SOL_XDP`, `XDP_UMEM_REG`).
fn xdp_umem() -> Outcome {
    const AF_XDP: i32 = 44;
    const SOL_XDP: i32 = 283;
    const XDP_UMEM_REG: i32 = 4;
    #[repr(C)]
    struct UmemReg {
        addr: u64,
        len: u64,
        chunk_size: u32,
        headroom: u32,
        flags: u32,
        tx_metadata_len: u32,
    }
    // SAFETY: socket/mmap/setsockopt with buffers that outlive the calls.
    unsafe {
        let fd = libc::socket(AF_XDP, libc::SOCK_RAW, 0);
        if fd < 0 {
            return Outcome::failed(0, io::Error::last_os_error());
        }
        let len = 16 * 4096;
        let area = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        let reg = UmemReg {
            addr: area as u64,
            len: len as u64,
            chunk_size: 4096,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        let rc = libc::setsockopt(
            fd,
            SOL_XDP,
            XDP_UMEM_REG,
            (&raw const reg).cast(),
            std::mem::size_of::<UmemReg>() as u32,
        );
        let outcome = if rc == 0 {
            Outcome::ok(1)
        } else {
            Outcome::failed(0, io::Error::last_os_error())
        };
        libc::close(fd);
        libc::munmap(area, len);
        outcome
    }
}

/// `enum tpacket_versions`: TPACKET_V2.
const TPACKET_V2: i32 = 1;

/// Sends `frame` through a TPACKET_V2 transmit ring bound to the interface of `sa`.
///
/// # Safety
/// `fd` is an AF_PACKET socket.
unsafe fn send_through_ring(fd: i32, frame: &[u8], sa: &libc::sockaddr_ll) -> Outcome {
    const BLOCK: u32 = 4096;
    // SAFETY: ring set-up syscalls on our socket; the frame is copied into the mapped ring
    // at the TPACKET_V2 data offset, within the mapping.
    unsafe {
        let fail = || Outcome::failed(0, io::Error::last_os_error());
        if set_int(fd, libc::SOL_PACKET, libc::PACKET_VERSION, TPACKET_V2) != 0 {
            return fail();
        }
        let request = libc::tpacket_req {
            tp_block_size: BLOCK,
            tp_block_nr: 1,
            tp_frame_size: BLOCK / 2,
            tp_frame_nr: 2,
        };
        let size = std::mem::size_of::<libc::tpacket_req>() as u32;
        if libc::setsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_TX_RING,
            (&raw const request).cast(),
            size,
        ) != 0
        {
            return fail();
        }
        let bound = libc::bind(
            fd,
            (sa as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        if bound != 0 {
            return fail();
        }
        let ring = libc::mmap(
            std::ptr::null_mut(),
            BLOCK as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        );
        if ring == libc::MAP_FAILED {
            return fail();
        }
        let header = ring.cast::<libc::tpacket2_hdr>();
        let data_offset = 32; // TPACKET_ALIGN(sizeof(struct tpacket2_hdr))
        std::ptr::copy_nonoverlapping(
            frame.as_ptr(),
            ring.cast::<u8>().add(data_offset),
            frame.len(),
        );
        (*header).tp_len = frame.len() as u32;
        (*header).tp_status = libc::TP_STATUS_SEND_REQUEST;
        // With the address: SOCK_DGRAM frames get their link header from it.
        let sent = libc::sendto(
            fd,
            std::ptr::null(),
            0,
            0,
            (sa as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        if sent < 0 {
            return fail();
        }
        Outcome::ok(1)
    }
}

/// A UDP datagram from a forged source to one of our own addresses (to a closed port): the
/// kernel answers the forged source with ICMP port unreachable, from no socket of ours.
fn spoof_udp(src: Ipv4Addr, dst: Ipv4Addr, port: u16) -> Outcome {
    let packet = ipv4_udp(src, dst, port, b"netguard spoofed");
    // SAFETY: a raw IP socket (IP_HDRINCL) and a send of a buffer that outlives the call.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
        if fd < 0 {
            return Outcome::failed(0, io::Error::last_os_error());
        }
        let mut to: libc::sockaddr_in = std::mem::zeroed();
        to.sin_family = libc::AF_INET as u16;
        to.sin_addr.s_addr = u32::from_ne_bytes(dst.octets());
        let sent = libc::sendto(
            fd,
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&raw const to).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        );
        libc::close(fd);
        if sent < 0 {
            return Outcome::failed(0, io::Error::last_os_error());
        }
        Outcome::ok(1)
    }
}

/// A long-lived connection driven from stdin, to cut it while established.
fn stream(to: SocketAddr) -> Outcome {
    let mut stream = match TcpStream::connect_timeout(&to, Duration::from_secs(10)) {
        Ok(stream) => stream,
        Err(error) => return Outcome::failed(0, error),
    };
    println!("connected");
    let mut sent = 0u64;
    for line in io::stdin().lock().lines() {
        let line = line.unwrap_or_default();
        let Some(count) = line
            .strip_prefix("send ")
            .and_then(|n| n.trim().parse::<usize>().ok())
        else {
            break;
        };
        match stream.write_all(&vec![b's'; count]) {
            Ok(()) => {
                sent += count as u64;
                println!("sent {sent}");
            }
            Err(error) => return Outcome::failed(sent, error),
        }
    }
    Outcome::ok(sent)
}

fn udp_recv(port: u16, count: u64) -> Outcome {
    let socket = match UdpSocket::bind(SocketAddr::new("::".parse().unwrap(), port)) {
        Ok(socket) => socket,
        Err(error) => return Outcome::failed(0, error),
    };
    let _ = socket.set_read_timeout(Some(Duration::from_secs(30)));
    println!("ready");
    let mut buf = [0u8; 65536];
    for received in 0..count {
        if let Err(error) = socket.recv_from(&mut buf) {
            return Outcome::failed(received, error);
        }
    }
    Outcome::ok(count)
}

/// Sends continuously and reports, with a wall-clock timestamp, every change between a
/// datagram leaving and being refused: how fast a policy change takes effect.
fn udp_watch(to: SocketAddr) -> Outcome {
    let socket = match udp_socket(&to) {
        Ok(socket) => socket,
        Err(error) => return Outcome::failed(0, error),
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let _ = io::copy(&mut io::stdin(), &mut io::sink());
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
    }
    let mut last: Option<bool> = None;
    let mut sent = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let ok = socket.send_to(b"w", to).is_ok();
        sent += u64::from(ok);
        if last != Some(ok) {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            println!("{} {}", if ok { "sent" } else { "refused" }, now.as_nanos());
            last = Some(ok);
        }
        std::thread::sleep(Duration::from_micros(20));
    }
    Outcome::ok(sent)
}
