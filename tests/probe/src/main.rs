//! ng-probe: sends one kind of traffic and reports, as one JSON line, what the syscalls
//! returned. The lab runs it inside a protected cgroup and network namespace.
//!
//! ```text
//! ng-probe tcp ADDR PORT BYTES          connect, send BYTES
//! ng-probe udp ADDR PORT COUNT SIZE     COUNT datagrams of SIZE payload bytes (all tried)
//! ng-probe dns ADDR udp|tcp             one DNS query for example.test
//! ng-probe ping ADDR                    one ICMP / ICMPv6 echo request (raw socket)
//! ng-probe raw-frame IFACE DST_MAC SRC DST PORT   hand-built IPv4/UDP frame via AF_PACKET
//! ng-probe stream ADDR PORT             connect, then per stdin line "send N": send N bytes
//! ng-probe udp-recv PORT COUNT          print "ready", wait for COUNT datagrams
//! ng-probe udp-watch ADDR PORT          send without pause; on each change between sent and
//!                                       refused print "sent|refused <unix ns>" (until stdin closes)
//! ```
//!
//! With `NG_PROBE_RETRY_MS=N` an operation refused with EPERM is repeated for up to N ms.

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
        ["ping", addr] => ping(addr.parse().unwrap()),
        ["raw-frame", iface, mac, src, dst, port] => raw_frame(
            iface,
            parse_mac(mac),
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
}

impl Outcome {
    fn ok(done: u64) -> Self {
        Self { done, error: None }
    }
    fn failed(done: u64, error: io::Error) -> Self {
        Self {
            done,
            error: Some(error),
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
        "{{\"ok\":{},\"errno\":{errno},\"done\":{},\"elapsed_us\":{},\"error\":{:?}}}",
        outcome.error.is_none(),
        outcome.done,
        elapsed.as_micros(),
        message
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
    UdpSocket::bind(bind)
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
fn raw_frame(iface: &str, dst_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, port: u16) -> Outcome {
    let payload = b"netguard raw frame";
    let udp_len = 8 + payload.len();
    let ip_len = 20 + udp_len;
    let mut frame = Vec::with_capacity(14 + ip_len);
    frame.extend_from_slice(&dst_mac);
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&40000u16.to_be_bytes());
    frame.extend_from_slice(&port.to_be_bytes());
    frame.extend_from_slice(&(udp_len as u16).to_be_bytes());
    frame.extend_from_slice(&[0, 0]); // UDP checksum 0: none, valid for IPv4
    frame.extend_from_slice(payload);

    let name = std::ffi::CString::new(iface).unwrap();
    // SAFETY: packet socket syscalls with buffers that outlive the calls.
    unsafe {
        let ifindex = libc::if_nametoindex(name.as_ptr());
        if ifindex == 0 {
            return Outcome::failed(0, io::Error::last_os_error());
        }
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        if fd < 0 {
            return Outcome::failed(0, io::Error::last_os_error());
        }
        let mut sa: libc::sockaddr_ll = std::mem::zeroed();
        sa.sll_family = libc::AF_PACKET as u16;
        sa.sll_ifindex = ifindex as i32;
        sa.sll_halen = 6;
        sa.sll_addr[..6].copy_from_slice(&dst_mac);
        send_once(fd, &frame, &sa)
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
