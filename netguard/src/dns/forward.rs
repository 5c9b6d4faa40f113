//! Sending a query on from inside a gateway's network namespace: a socket made there (the
//! agent's, so no protected policy judges it), bound to the tunnel interface unless the
//! resolver is the gateway's own on loopback. Every query gets a fresh socket (a fresh
//! source port).

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsFd as _,
    path::Path,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpSocket, UdpSocket},
};

use super::wire;
use crate::{
    config::{DNS_FORWARD_TIMEOUT, DNS_FORWARDS_AT_ONCE},
    kernel::{AgentSocket, AgentSockets},
    netns, sys,
};

/// A socket made in the gateway's namespace.
enum Made {
    Udp(std::net::UdpSocket, Option<String>),
    Tcp(TcpSocket),
}

/// The upstream answer to `message` (over TCP if `tcp`), from `resolver` as reached from
/// inside `netns`, through interface `through` only if set; within
/// [`DNS_FORWARD_TIMEOUT`]. The socket is registered in `sockets` while it is used, so that
/// the namespace's backstop lets it out wherever the agent runs.
pub async fn forward(
    netns: &Path,
    resolver: SocketAddr,
    through: Option<u32>,
    message: &[u8],
    tcp: bool,
    sockets: Option<&AgentSockets>,
) -> io::Result<Vec<u8>> {
    // Each forward costs a thread (to enter the namespace) and a socket: a bounded number
    // at once, whatever the containers ask.
    static AT_ONCE: std::sync::LazyLock<tokio::sync::Semaphore> =
        std::sync::LazyLock::new(|| tokio::sync::Semaphore::new(DNS_FORWARDS_AT_ONCE));
    let _turn = AT_ONCE
        .try_acquire()
        .map_err(|_| io::Error::other("too many queries are being forwarded"))?;
    let netns = netns.to_path_buf();
    let made = tokio::task::spawn_blocking(move || {
        netns::run_in(&netns, move || make(resolver, through, tcp))
    })
    .await
    .map_err(io::Error::other)???;
    let _registered: Option<AgentSocket> = match sockets {
        Some(sockets) => {
            let cookie = match &made {
                Made::Udp(socket, _) => sys::socket_cookie(socket.as_fd())?,
                Made::Tcp(socket) => sys::socket_cookie(socket.as_fd())?,
            };
            Some(sockets.register(cookie).map_err(io::Error::other)?)
        }
        None => None,
    };
    let exchange = async {
        match made {
            Made::Udp(socket, device) => {
                let socket = UdpSocket::from_std(socket)?;
                if let Some(device) = device {
                    socket.bind_device(Some(device.as_bytes()))?;
                }
                socket.connect(resolver).await?;
                socket.send(message).await?;
                let mut buf = vec![0u8; 65_535];
                loop {
                    let n = socket.recv(&mut buf).await?;
                    if wire::id_of(&buf[..n]) == wire::id_of(message) {
                        buf.truncate(n);
                        return Ok(buf);
                    }
                }
            }
            Made::Tcp(socket) => {
                let mut stream = socket.connect(resolver).await?;
                let mut framed = (message.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(message);
                stream.write_all(&framed).await?;
                let len = stream.read_u16().await?;
                let mut answer = vec![0u8; usize::from(len)];
                stream.read_exact(&mut answer).await?;
                Ok(answer)
            }
        }
    };
    tokio::time::timeout(DNS_FORWARD_TIMEOUT, exchange)
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{resolver} did not answer within {DNS_FORWARD_TIMEOUT:?}"),
            )
        })?
}

/// Makes the socket (on the calling thread, which is in the gateway's namespace).
fn make(resolver: SocketAddr, through: Option<u32>, tcp: bool) -> io::Result<Made> {
    let device = through.map(netns::interface_name).transpose()?;
    if tcp {
        let socket = if resolver.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(device) = &device {
            socket.bind_device(Some(device.as_bytes()))?;
        }
        // Closed with a reset while still registered: no FIN retransmit or TIME_WAIT ACK
        // leaves once the backstop no longer knows the socket.
        socket.set_zero_linger()?;
        return Ok(Made::Tcp(socket));
    }
    let any: SocketAddr = if resolver.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = std::net::UdpSocket::bind(any)?;
    socket.set_nonblocking(true)?;
    Ok(Made::Udp(socket, device))
}
