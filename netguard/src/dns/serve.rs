//! One container's resolver: UDP and TCP sockets on loopback in its network namespace (on
//! `127.0.0.1`, and `::1` where the namespace has it), one port for both, and the tasks that
//! answer on them. What a container sends here is untrusted: at most [`DNS_IN_FLIGHT`]
//! queries at a time and [`DNS_QUERIES_PER_SECOND`] a second per container (more are
//! dropped), a TCP connection is closed after [`DNS_TCP_IDLE`].

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use netguard_common::DnsSteer;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::Semaphore,
    task::AbortHandle,
};
use tracing::debug;

use super::{Shared, Upstream, forward::forward, wire};
use crate::{
    config::{DNS_IN_FLIGHT, DNS_QUERIES_PER_SECOND, DNS_TCP_IDLE},
    domain::CgroupId,
    kernel::AgentSockets,
    netns,
    report::{DnsOutcome, Report},
};

/// What every query of one container is answered with.
struct Context {
    cgroup: CgroupId,
    shared: Arc<RwLock<Shared>>,
    report: Arc<Report>,
    in_flight: Arc<Semaphore>,
    /// Queries it may still ask this second: a token bucket (tokens, last refill).
    budget: Mutex<(f64, Instant)>,
    sockets: Option<AgentSockets>,
}

/// Binds the container's resolver sockets in its namespace and starts answering on them.
pub(super) fn start(
    cgroup: CgroupId,
    client: &super::Client,
    shared: &Arc<RwLock<Shared>>,
    report: &Arc<Report>,
    sockets: Option<&AgentSockets>,
) -> anyhow::Result<(DnsSteer, Vec<AbortHandle>)> {
    let (v4, v6) = netns::run_in(&client.netns, || {
        let v4 = bind_pair(Ipv4Addr::LOCALHOST.into());
        // Docker may have switched IPv6 off in the namespace: then there is only IPv4.
        let v6 = bind_pair(Ipv6Addr::LOCALHOST.into()).ok();
        (v4, v6)
    })?;
    let v4 = v4?;
    let context = Arc::new(Context {
        cgroup,
        shared: shared.clone(),
        report: report.clone(),
        in_flight: Arc::new(Semaphore::new(DNS_IN_FLIGHT)),
        budget: Mutex::new((DNS_QUERIES_PER_SECOND, Instant::now())),
        sockets: sockets.cloned(),
    });
    let mut steer = DnsSteer {
        netns_cookie: client.netns_cookie,
        port_v4: v4.0.local_addr()?.port(),
        ..DnsSteer::default()
    };
    let mut tasks = Vec::new();
    for (udp, tcp) in std::iter::once(v4).chain(v6) {
        if udp.local_addr()?.is_ipv6() {
            steer.port_v6 = udp.local_addr()?.port();
        }
        udp.set_nonblocking(true)?;
        tcp.set_nonblocking(true)?;
        let udp = Arc::new(UdpSocket::from_std(udp)?);
        let tcp = TcpListener::from_std(tcp)?;
        tasks.push(tokio::spawn(serve_udp(udp, context.clone())).abort_handle());
        tasks.push(tokio::spawn(serve_tcp(tcp, context.clone())).abort_handle());
    }
    Ok((steer, tasks))
}

/// A UDP socket and a TCP listener on the same free port of `ip`.
fn bind_pair(ip: IpAddr) -> io::Result<(std::net::UdpSocket, std::net::TcpListener)> {
    let mut last = None;
    for _ in 0..16 {
        let udp = std::net::UdpSocket::bind(SocketAddr::new(ip, 0))?;
        let port = udp.local_addr()?.port();
        match std::net::TcpListener::bind(SocketAddr::new(ip, port)) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(error) => last = Some(error),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrInUse)))
}

async fn serve_udp(socket: Arc<UdpSocket>, context: Arc<Context>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(error) => {
                debug!(cgroup = context.cgroup, "resolver: receiving: {error}");
                continue;
            }
        };
        if !context.may_ask() {
            continue;
        }
        let Ok(permit) = context.in_flight.clone().try_acquire_owned() else {
            continue;
        };
        let (message, socket, context) = (buf[..n].to_vec(), socket.clone(), context.clone());
        tokio::spawn(async move {
            if let Some(reply) = context.respond(&message, false).await {
                let _ = socket.send_to(&reply, from).await;
            }
            drop(permit);
        });
    }
}

async fn serve_tcp(listener: TcpListener, context: Arc<Context>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // Out of descriptors, say: wait rather than spin.
            Err(error) => {
                debug!(cgroup = context.cgroup, "resolver: accepting: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = context.in_flight.clone().try_acquire_owned() else {
            continue;
        };
        let context = context.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(DNS_TCP_IDLE, serve_connection(stream, &context)).await;
            drop(permit);
        });
    }
}

/// Length-prefixed queries on one connection, answered in turn.
async fn serve_connection(mut stream: TcpStream, context: &Context) -> io::Result<()> {
    loop {
        let len = stream.read_u16().await?;
        let mut message = vec![0u8; usize::from(len)];
        stream.read_exact(&mut message).await?;
        if !context.may_ask() {
            return Ok(());
        }
        let Some(reply) = context.respond(&message, true).await else {
            return Ok(());
        };
        let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&reply);
        stream.write_all(&framed).await?;
    }
}

impl Context {
    /// Takes one query from the container's budget; `false` when it is spent.
    fn may_ask(&self) -> bool {
        let mut budget = self.budget.lock().unwrap();
        let now = Instant::now();
        let refill = now.duration_since(budget.1).as_secs_f64() * DNS_QUERIES_PER_SECOND;
        *budget = ((budget.0 + refill).min(DNS_QUERIES_PER_SECOND), now);
        if budget.0 < 1.0 {
            return false;
        }
        budget.0 -= 1.0;
        true
    }

    /// The reply to `message`: a Docker name's addresses, the upstream answer, or a refusal.
    async fn respond(&self, message: &[u8], tcp: bool) -> Option<Vec<u8>> {
        let Some(query) = wire::Query::parse(message) else {
            return wire::format_error(message);
        };
        let (client, found) = {
            let shared = self.shared.read().unwrap();
            let client = shared.clients.get(&self.cgroup)?.clone();
            let found = shared.directory.lookup(&client.networks, &query.name);
            (client, found)
        };
        if let Some(addresses) = found {
            self.report
                .dns_query(&client.container, DnsOutcome::Answered);
            return Some(query.answer(&addresses));
        }
        let why = match &client.upstream {
            Upstream::Forward {
                netns,
                resolver,
                through,
            } => {
                self.report
                    .dns_query(&client.container, DnsOutcome::Forwarded);
                return Some(
                    match forward(
                        netns,
                        *resolver,
                        *through,
                        message,
                        tcp,
                        self.sockets.as_ref(),
                    )
                    .await
                    {
                        Ok(answer) => answer,
                        Err(error) => {
                            debug!(
                                container = client.name,
                                name = query.name,
                                "resolver: forwarding to {resolver}: {error}"
                            );
                            query.refusal(wire::Rcode::ServFail)
                        }
                    },
                );
            }
            Upstream::TunnelDown { .. } => "tunnel_down",
            Upstream::LocalOnly => "no_gateway",
        };
        self.report.dns_refused(
            &client.container,
            self.cgroup,
            &query.name,
            &query.type_text(),
            why,
        );
        Some(query.refusal(wire::Rcode::Refused))
    }
}
