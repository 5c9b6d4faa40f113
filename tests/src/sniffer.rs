//! What arrives at the far end: every IP packet received on a lab host's eth0, recorded
//! from an AF_PACKET socket inside that host's namespace, and a TCP sink that counts bytes.

use std::{
    io::Read as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
};

use crate::lab::Netns;

/// One received IP packet, as far as the tests care.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arrival {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub dst_port: u16,
    pub payload: Vec<u8>,
}

/// Records every IP packet arriving on `eth0` of a namespace until dropped.
pub struct Sniffer {
    arrivals: Arc<Mutex<Vec<Arrival>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sniffer {
    pub fn start(netns: &Netns) -> Self {
        let fd = netns.run(|| {
            // SAFETY: socket/bind/setsockopt with valid arguments.
            unsafe {
                let proto = (libc::ETH_P_ALL as u16).to_be() as i32;
                let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto);
                assert!(
                    fd >= 0,
                    "AF_PACKET socket: {}",
                    std::io::Error::last_os_error()
                );
                let mut sa: libc::sockaddr_ll = std::mem::zeroed();
                sa.sll_family = libc::AF_PACKET as u16;
                sa.sll_protocol = proto as u16;
                sa.sll_ifindex = libc::if_nametoindex(c"eth0".as_ptr()) as i32;
                let rc = libc::bind(
                    fd,
                    (&sa as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of_val(&sa) as u32,
                );
                assert_eq!(rc, 0, "bind AF_PACKET: {}", std::io::Error::last_os_error());
                let timeout = libc::timeval {
                    tv_sec: 0,
                    tv_usec: 50_000,
                };
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&timeout as *const libc::timeval).cast(),
                    std::mem::size_of_val(&timeout) as u32,
                );
                fd
            }
        });
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let arrivals = Arc::clone(&arrivals);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    // SAFETY: recvfrom into our buffer with a matching address struct.
                    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                    let mut len = std::mem::size_of_val(&sa) as u32;
                    let n = unsafe {
                        libc::recvfrom(
                            fd,
                            buf.as_mut_ptr().cast(),
                            buf.len(),
                            0,
                            (&mut sa as *mut libc::sockaddr_ll).cast(),
                            &mut len,
                        )
                    };
                    if n <= 0 || sa.sll_pkttype == libc::PACKET_OUTGOING {
                        continue;
                    }
                    if let Some(arrival) = parse_frame(&buf[..n as usize]) {
                        arrivals.lock().unwrap().push(arrival);
                    }
                }
                // SAFETY: our descriptor, closed once.
                unsafe { libc::close(fd) };
            })
        };
        Self {
            arrivals,
            stop,
            thread: Some(thread),
        }
    }

    /// How many recorded packets match.
    pub fn count(&self, matches: impl Fn(&Arrival) -> bool) -> usize {
        self.arrivals
            .lock()
            .unwrap()
            .iter()
            .filter(|a| matches(a))
            .count()
    }

    /// Packets sent from `src` (whatever their protocol).
    pub fn from(&self, src: impl Into<IpAddr>) -> usize {
        let src = src.into();
        self.count(|a| a.src == src)
    }

    /// Packets whose payload contains `marker`.
    pub fn with_payload(&self, marker: &[u8]) -> usize {
        self.count(|a| a.payload.windows(marker.len()).any(|w| w == marker))
    }
}

impl Drop for Sniffer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn parse_frame(frame: &[u8]) -> Option<Arrival> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let ip = frame.get(14..)?;
    let (src, dst, proto, l4) = match ethertype {
        0x0800 => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
            let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
            (IpAddr::V4(src), IpAddr::V4(dst), ip[9], ip.get(ihl..)?)
        }
        0x86dd => {
            let src: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            (
                IpAddr::V6(Ipv6Addr::from(src)),
                IpAddr::V6(Ipv6Addr::from(dst)),
                ip[6],
                ip.get(40..)?,
            )
        }
        _ => return None,
    };
    let (dst_port, payload) = match proto {
        6 if l4.len() >= 20 => {
            let header = usize::from(l4[12] >> 4) * 4;
            (
                u16::from_be_bytes([l4[2], l4[3]]),
                l4.get(header..).unwrap_or(&[]).to_vec(),
            )
        }
        17 if l4.len() >= 8 => (u16::from_be_bytes([l4[2], l4[3]]), l4[8..].to_vec()),
        _ => (0, l4.to_vec()),
    };
    Some(Arrival {
        src,
        dst,
        proto,
        dst_port,
        payload,
    })
}

/// A TCP listener in a lab namespace that accepts every connection and counts the bytes.
pub struct TcpSink {
    pub received: Arc<AtomicU64>,
    pub connections: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TcpSink {
    pub fn start(netns: &Netns, port: u16) -> Self {
        let listener = netns.run(|| {
            TcpListener::bind(SocketAddr::new("::".parse().unwrap(), port)).expect("bind sink")
        });
        listener.set_nonblocking(true).unwrap();
        let received = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (received, connections, stop) = (
                Arc::clone(&received),
                Arc::clone(&connections),
                Arc::clone(&stop),
            );
            std::thread::spawn(move || {
                let mut open = Vec::new();
                let mut buf = [0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((stream, _)) = listener.accept() {
                        stream.set_nonblocking(true).unwrap();
                        connections.fetch_add(1, Ordering::Relaxed);
                        open.push(stream);
                    }
                    open.retain_mut(|stream| match stream.read(&mut buf) {
                        Ok(0) => false,
                        Ok(n) => {
                            received.fetch_add(n as u64, Ordering::Relaxed);
                            true
                        }
                        Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
                    });
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
            })
        };
        Self {
            received,
            connections,
            stop,
            thread: Some(thread),
        }
    }

    pub fn bytes(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

impl Drop for TcpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A tun device in a lab namespace and the program reading it: the far end of whatever is
/// routed or sent into the device. Records the UDP destination ports of the IPv4 packets.
pub struct TunSink {
    pub name: String,
    ports: Arc<Mutex<Vec<u16>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TunSink {
    /// Makes tun device `name` in `netns`, up.
    pub fn start(netns: &Netns, name: &str) -> Self {
        const IFF_TUN: libc::c_short = 0x0001;
        const IFF_NO_PI: libc::c_short = 0x1000;
        const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
        let fd = netns.run(|| {
            // SAFETY: open and ioctl with an ifreq that outlives the call.
            unsafe {
                let fd = libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_NONBLOCK);
                assert!(fd >= 0, "/dev/net/tun: {}", std::io::Error::last_os_error());
                let mut request: libc::ifreq = std::mem::zeroed();
                for (dst, src) in request.ifr_name.iter_mut().zip(name.as_bytes()) {
                    *dst = *src as libc::c_char;
                }
                request.ifr_ifru.ifru_flags = IFF_TUN | IFF_NO_PI;
                let rc = libc::ioctl(fd, TUNSETIFF as _, &mut request);
                assert_eq!(rc, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
                fd
            }
        });
        netns.ip(&["link", "set", name, "up"]);
        let ports = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (ports, stop) = (Arc::clone(&ports), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    // SAFETY: read into our buffer from our descriptor.
                    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
                    if n <= 0 {
                        std::thread::sleep(std::time::Duration::from_millis(2));
                        continue;
                    }
                    let packet = &buf[..n as usize];
                    let header = usize::from(packet[0] & 0x0f) * 4;
                    if packet[0] >> 4 == 4 && packet.len() >= header + 4 && packet[9] == 17 {
                        let port = u16::from_be_bytes([packet[header + 2], packet[header + 3]]);
                        ports.lock().unwrap().push(port);
                    }
                }
                // SAFETY: our descriptor, closed once (the device goes with it).
                unsafe { libc::close(fd) };
            })
        };
        Self {
            name: name.to_string(),
            ports,
            stop,
            thread: Some(thread),
        }
    }

    /// UDP datagrams read from the device with destination port `port`.
    pub fn count(&self, port: u16) -> usize {
        self.ports
            .lock()
            .unwrap()
            .iter()
            .filter(|p| **p == port)
            .count()
    }
}

impl Drop for TunSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
