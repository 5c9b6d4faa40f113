//! `xtask flood`, the paired measure's sender: one process, several connected UDP sockets,
//! each made in the network namespace and the cgroup it is given (a socket keeps both for
//! life), and short batches of 64-byte datagrams sent on each in turn, in an order shuffled
//! every round, timed by the thread's own CPU clock. The sockets' batches are milliseconds
//! apart, so a shared machine's drift is the same for all of them; the time the hypervisor
//! steals is not on the thread's clock where the kernel accounts for it
//! (`CONFIG_PARAVIRT_TIME_ACCOUNTING`, as here).
//!
//! The datagrams go to a socket the same process binds in the receiver's namespace and never
//! reads: once its buffer is full they are dropped where they arrive, and no receiver is
//! woken (a reader that sleeps and is woken per datagram makes a slower sender slower still).

use std::{
    fs::File,
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    path::Path,
};

use anyhow::{Context as _, Result, bail};
use serde_json::json;

/// Datagrams a batch.
const BATCH: usize = 1000;
const PAYLOAD: [u8; 64] = [0; 64];

/// One sender socket: its namespace (a path under `/run/netns`), its cgroup and where it
/// sends.
#[derive(Clone, Debug)]
pub struct Sender {
    pub netns: String,
    pub cgroup: String,
    pub to: SocketAddr,
}

impl std::str::FromStr for Sender {
    type Err = anyhow::Error;

    /// `NETNS,CGROUP,ADDR:PORT`
    fn from_str(text: &str) -> Result<Self> {
        let mut parts = text.splitn(3, ',');
        let (Some(netns), Some(cgroup), Some(to)) = (parts.next(), parts.next(), parts.next())
        else {
            bail!("--socket {text}: expected NETNS,CGROUP,ADDR:PORT");
        };
        Ok(Self {
            netns: netns.into(),
            cgroup: cgroup.into(),
            to: to
                .parse()
                .with_context(|| format!("--socket {text}: {to} is not ADDR:PORT"))?,
        })
    }
}

fn enter_netns(name: &str) -> Result<()> {
    let file = File::open(Path::new("/run/netns").join(name))
        .with_context(|| format!("network namespace {name}"))?;
    // SAFETY: setns on a namespace file this function holds open.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns {name}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn enter_cgroup(cgroup: &str) -> Result<()> {
    std::fs::write(Path::new(cgroup).join("cgroup.procs"), "0")
        .with_context(|| format!("entering cgroup {cgroup}"))
}

/// The calling thread's CPU time, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Binds the sink in `receiver_ns` at `sink`, makes the senders' sockets, then sends `rounds`
/// batches on each in turn; prints each socket's CPU ns a datagram per round as JSON.
pub fn flood(receiver_ns: &str, sink: SocketAddr, senders: &[Sender], rounds: usize) -> Result<()> {
    // The sockets keep the namespaces they were made in: the process need not go back.
    enter_netns(receiver_ns)?;
    let _sink = UdpSocket::bind(sink).with_context(|| format!("binding the sink {sink}"))?;
    let mut sockets = Vec::new();
    for sender in senders {
        enter_netns(&sender.netns)?;
        enter_cgroup(&sender.cgroup)?;
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        socket
            .connect(sender.to)
            .with_context(|| format!("connecting to {}", sender.to))?;
        sockets.push(socket);
    }
    let mut figures = vec![Vec::with_capacity(rounds); sockets.len()];
    let mut refused = vec![0u64; sockets.len()];
    let mut order: Vec<usize> = (0..sockets.len()).collect();
    let mut random = Random(0x9e37_79b9_7f4a_7c15);
    for _ in 0..rounds {
        // No socket always follows the same one (and finds the caches as it left them).
        random.shuffle(&mut order);
        for &at in &order {
            let start = thread_cpu_ns();
            for _ in 0..BATCH {
                if sockets[at].send(&PAYLOAD).is_err() {
                    refused[at] += 1;
                }
            }
            figures[at].push((thread_cpu_ns() - start) as f64 / BATCH as f64);
        }
    }
    println!(
        "{}",
        json!({"batch": BATCH, "refused_sends": refused, "ns_per_datagram": figures})
    );
    Ok(())
}

/// xorshift64: a fixed, repeatable order of rounds.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Fisher–Yates.
    fn shuffle(&mut self, items: &mut [usize]) {
        for i in (1..items.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}
