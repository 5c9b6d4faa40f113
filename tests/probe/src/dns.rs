//! DNS as a container's stub resolver makes it, and a lab resolver that answers it.

use std::{
    io::{self, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket},
    time::Duration,
};

use crate::Outcome;

/// An A query for `name` with id `id`.
pub fn query(name: &str, id: u16) -> Vec<u8> {
    let mut out = id.to_be_bytes().to_vec();
    out.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.extend_from_slice(&[0, 0, 1, 0, 1]);
    out
}

/// The first nameserver of /etc/resolv.conf.
fn nameserver() -> io::Result<IpAddr> {
    std::fs::read_to_string("/etc/resolv.conf")?
        .lines()
        .find_map(|line| line.trim().strip_prefix("nameserver")?.trim().parse().ok())
        .ok_or_else(|| io::Error::other("no nameserver in /etc/resolv.conf"))
}

/// How a lookup travels.
#[derive(Clone, Copy)]
pub enum Transport {
    /// A connected UDP socket (glibc).
    Connected,
    /// `sendto`/`recvfrom`, the answer checked to come from the server asked (musl).
    Unconnected,
    Tcp,
}

impl std::str::FromStr for Transport {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "connected" => Ok(Self::Connected),
            "unconnected" => Ok(Self::Unconnected),
            "tcp" => Ok(Self::Tcp),
            other => Err(format!("unknown transport {other}")),
        }
    }
}

pub fn lookup(name: &str, server: Option<IpAddr>, transport: Transport) -> Outcome {
    match try_lookup(name, server, transport) {
        Ok(answer) => Outcome {
            done: u64::from(!answer.starts_with("rcode")),
            error: None,
            answer,
        },
        Err(error) => Outcome::failed(0, error),
    }
}

fn try_lookup(name: &str, server: Option<IpAddr>, transport: Transport) -> io::Result<String> {
    let server = match server {
        Some(server) => server,
        None => nameserver()?,
    };
    let to = SocketAddr::new(server, 53);
    let any: SocketAddr = match server {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let query = query(name, 0x4e47);
    let mut buf = [0u8; 1500];
    let answer = match transport {
        Transport::Connected => {
            let socket = UdpSocket::bind(any)?;
            // A connected socket, so an ICMP error or a refusal is heard at once.
            socket.connect(to)?;
            socket.set_read_timeout(Some(Duration::from_secs(5)))?;
            socket.send(&query)?;
            let n = socket.recv(&mut buf)?;
            &buf[..n]
        }
        Transport::Unconnected => {
            let socket = UdpSocket::bind(any)?;
            socket.set_read_timeout(Some(Duration::from_secs(5)))?;
            socket.send_to(&query, to)?;
            let (n, from) = socket.recv_from(&mut buf)?;
            if from != to {
                return Err(io::Error::other(format!("an answer from {from}, not {to}")));
            }
            &buf[..n]
        }
        Transport::Tcp => {
            let mut stream = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut framed = (query.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&query);
            stream.write_all(&framed)?;
            let mut len = [0u8; 2];
            stream.read_exact(&mut len)?;
            let n = usize::from(u16::from_be_bytes(len)).min(buf.len());
            stream.read_exact(&mut buf[..n])?;
            &buf[..n]
        }
    };
    read_answer(answer)
}

/// The first A record of an answer to the probe's query, or its response code.
fn read_answer(answer: &[u8]) -> io::Result<String> {
    if answer.len() < 12 || answer[..2] != [0x4e, 0x47] {
        return Err(io::Error::other("an answer to another query"));
    }
    let rcode = answer[3] & 0x0f;
    let count = u16::from_be_bytes([answer[6], answer[7]]);
    if rcode != 0 || count == 0 {
        return Ok(format!("rcode {rcode}"));
    }
    // The first record's data: an A record is its last 4 bytes when it is the only one;
    // find it after the question by walking the records.
    let mut at = 12;
    while answer.get(at).is_some_and(|&b| b != 0) {
        at += 1 + usize::from(answer[at]);
    }
    at += 5;
    for _ in 0..count {
        if answer.get(at).is_some_and(|b| b & 0xc0 == 0xc0) {
            at += 2;
        } else {
            while answer.get(at).is_some_and(|&b| b != 0) {
                at += 1 + usize::from(answer[at]);
            }
            at += 1;
        }
        let field = |i: usize| u16::from_be_bytes([answer[at + i], answer[at + i + 1]]);
        let (kind, len) = (field(0), usize::from(field(8)));
        let data = answer.get(at + 10..at + 10 + len).unwrap_or_default();
        if kind == 1 && len == 4 {
            return Ok(Ipv4Addr::new(data[0], data[1], data[2], data[3]).to_string());
        }
        at += 10 + len;
    }
    Ok("no A record".into())
}

/// The answer to `query` with one A record, `address`.
fn answer(query: &[u8], address: Ipv4Addr) -> Vec<u8> {
    let mut out = query.to_vec();
    out[2] = 0x81;
    out[3] = 0x80;
    out[6..8].copy_from_slice(&1u16.to_be_bytes());
    out[8..12].fill(0);
    let mut end = 12;
    while out.get(end).is_some_and(|&b| b != 0) {
        end += 1 + usize::from(out[end]);
    }
    out.truncate(end + 5);
    out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
    out.extend_from_slice(&address.octets());
    out
}

fn name_of(query: &[u8]) -> String {
    let mut labels = Vec::new();
    let mut at = 12;
    while let Some(&len) = query.get(at).filter(|&&b| b != 0) {
        let label = query
            .get(at + 1..at + 1 + usize::from(len))
            .unwrap_or_default();
        labels.push(String::from_utf8_lossy(label).into_owned());
        at += 1 + usize::from(len);
    }
    labels.join(".")
}

pub fn serve(addr: IpAddr, address: Ipv4Addr) -> Outcome {
    let udp = match UdpSocket::bind((addr, 53)) {
        Ok(socket) => socket,
        Err(error) => return Outcome::failed(0, error),
    };
    let tcp = match TcpListener::bind((addr, 53)) {
        Ok(listener) => listener,
        Err(error) => return Outcome::failed(0, error),
    };
    std::thread::spawn(move || {
        for stream in tcp.incoming().flatten() {
            let mut stream = stream;
            let mut len = [0u8; 2];
            if stream.read_exact(&mut len).is_err() {
                continue;
            }
            let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
            if stream.read_exact(&mut query).is_err() || query.len() < 12 {
                continue;
            }
            println!("query {}", name_of(&query));
            let reply = answer(&query, address);
            let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&reply);
            let _ = stream.write_all(&framed);
        }
    });
    println!("ready");
    let mut buf = [0u8; 1500];
    let mut served = 0;
    loop {
        let Ok((n, from)) = udp.recv_from(&mut buf) else {
            return Outcome::ok(served);
        };
        if n < 12 {
            continue;
        }
        println!("query {}", name_of(&buf[..n]));
        let _ = udp.send_to(&answer(&buf[..n], address), from);
        served += 1;
    }
}
