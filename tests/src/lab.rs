//! Network namespaces for the hosts, veth between them, and running processes inside.
//!
//! ```text
//!   client 198.18.1.2 ─┐                      ┌─ internet 198.18.2.2  (not directly connected
//!   fd0e:1::2   [eth0] │                      │  fd0e:2::2             to the client)
//!                      ├── router ────────────┼─ lan      198.18.3.2  (internal host)
//!   sibling 198.18.5.2 ┘  (to-cli is the      │  fd0e:3::2
//!   fd0e:5::2              client's host side)└─ vpn      198.18.4.2  (VPN provider; routes
//!                                                           198.18.9.0/24 tunnel traffic on)
//! ```

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::Command,
};

use crate::{require_root, sh, sh_quiet, unique_tag};

pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd0e, 1, 0, 0, 0, 0, 0, 2);
pub const INTERNET_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);
/// [`INTERNET_V4`] as text, for command lines.
pub const INTERNET_V4_TEXT: &str = "198.18.2.2";
pub const INTERNET_V6: Ipv6Addr = Ipv6Addr::new(0xfd0e, 2, 0, 0, 0, 0, 0, 2);
pub const LAN_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 3, 2);
pub const LAN_V6: Ipv6Addr = Ipv6Addr::new(0xfd0e, 3, 0, 0, 0, 0, 0, 2);
pub const VPN_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 4, 2);
pub const SIBLING_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 5, 2);
pub const TUNNEL_CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 9, 1);
pub const TUNNEL_PROVIDER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 9, 2);
/// The LAN: what a protected client may reach as "internal".
pub const LAN_CIDRS: [&str; 2] = ["198.18.3.0/24", "fd0e:3::/64"];
/// Name of the client's host-side veth, in the router namespace.
pub const CLIENT_HOST_SIDE: &str = "to-cli";

/// Everything the lab may address; unreachable from the root namespace while a lab lives.
const TEST_RANGES: [(&str, &str); 2] = [("-4", "198.18.0.0/15"), ("-6", "fd0e::/16")];

/// A named network namespace (`/run/netns/<name>`), deleted on drop with what runs in it.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: String) -> Self {
        sh(&["ip", "netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n <ns> ...`
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    pub fn sysctl(&self, setting: &str) {
        sh(&["ip", "netns", "exec", &self.name, "sysctl", "-qw", setting]);
    }

    /// The MAC address of `interface` in this namespace.
    pub fn mac(&self, interface: &str) -> String {
        let out = self.ip(&["-br", "link", "show", "dev", interface]);
        out.split_whitespace()
            .nth(2)
            .expect("a MAC in ip -br link")
            .to_string()
    }

    /// Runs `work` on a thread inside this namespace (sockets it creates stay in it).
    pub fn run<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        netguard::netns::run_in(&self.path(), work).expect("entering the test namespace")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                sh_quiet(&["kill", "-9", pid]);
            }
        }
        sh_quiet(&["ip", "netns", "del", &self.name]);
    }
}

/// Makes the test ranges unreachable from the root namespace for its lifetime, so a bug
/// that sends from the wrong namespace fails locally instead of leaving the machine.
struct RootBackstopRoutes;

impl RootBackstopRoutes {
    fn install() -> Self {
        for (family, range) in TEST_RANGES {
            sh(&["ip", family, "route", "replace", "unreachable", range]);
        }
        Self
    }
}

impl Drop for RootBackstopRoutes {
    fn drop(&mut self) {
        for (family, range) in TEST_RANGES {
            sh_quiet(&["ip", family, "route", "del", "unreachable", range]);
        }
    }
}

/// The lab's hosts.
pub struct Lab {
    pub tag: String,
    pub client: Netns,
    pub sibling: Netns,
    pub internet: Netns,
    pub lan: Netns,
    pub vpn: Netns,
    pub router: Netns,
    _routes: RootBackstopRoutes,
}

impl Lab {
    pub fn new() -> Self {
        require_root();
        let routes = RootBackstopRoutes::install();
        let tag = unique_tag();
        let ns = |role: &str| Netns::new(format!("ngt{tag}-{role}"));
        let lab = Self {
            router: ns("rtr"),
            client: ns("cli"),
            sibling: ns("sib"),
            internet: ns("inet"),
            lan: ns("lan"),
            vpn: ns("vpn"),
            tag,
            _routes: routes,
        };
        lab.router.sysctl("net.ipv4.ip_forward=1");
        lab.router.sysctl("net.ipv6.conf.all.forwarding=1");
        lab.vpn.sysctl("net.ipv4.ip_forward=1");
        lab.connect(&lab.client, CLIENT_HOST_SIDE, 1);
        lab.connect(&lab.internet, "to-inet", 2);
        lab.connect(&lab.lan, "to-lan", 3);
        lab.connect(&lab.vpn, "to-vpn", 4);
        lab.connect(&lab.sibling, "to-sib", 5);
        // Tunnel traffic (198.18.9.0/24) comes back through the VPN provider.
        lab.router
            .ip(&["route", "add", "198.18.9.0/24", "via", &VPN_V4.to_string()]);
        lab
    }

    /// A veth from the router (`router_side`) to `host`'s eth0, on subnet `n`:
    /// 198.18.n.0/24 and fd0e:n::/64, the router at .1, the host at .2 with a default route.
    fn connect(&self, host: &Netns, router_side: &str, n: u8) {
        self.router.ip(&[
            "link",
            "add",
            router_side,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &host.name,
        ]);
        for (ns, dev, last) in [(&self.router, router_side, 1), (host, "eth0", 2)] {
            ns.ip(&["addr", "add", &format!("198.18.{n}.{last}/24"), "dev", dev]);
            ns.ip(&[
                "addr",
                "add",
                &format!("fd0e:{n}::{last}/64"),
                "dev",
                dev,
                "nodad",
            ]);
            ns.ip(&["link", "set", dev, "up"]);
        }
        host.ip(&["route", "add", "default", "via", &format!("198.18.{n}.1")]);
        host.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &format!("fd0e:{n}::1"),
        ]);
    }
}

impl Default for Lab {
    fn default() -> Self {
        Self::new()
    }
}

/// A command that starts inside the network namespace at `netns` (a path).
pub fn command_in_netns(program: impl AsRef<std::ffi::OsStr>, netns: &Path) -> Command {
    let ns_file = File::open(netns).expect("open netns");
    let mut command = Command::new(program);
    // SAFETY: only an async-signal-safe syscall between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
}

/// A command that starts inside `netns` and, if given, inside `cgroup` (both joined between
/// fork and exec, so the program's first packet is already subject to them).
pub fn command_in(
    program: impl AsRef<std::ffi::OsStr>,
    netns: &Netns,
    cgroup: Option<&Path>,
) -> Command {
    let ns_file = File::open(netns.path()).expect("open netns");
    let procs = cgroup.map(|c| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(c.join("cgroup.procs"))
            .expect("open cgroup.procs")
    });
    let mut command = Command::new(program);
    // SAFETY: only async-signal-safe syscalls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if let Some(procs) = &procs
                && libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
}

/// The address of a lab host as a string for commands.
pub fn addr(ip: impl Into<IpAddr>) -> String {
    ip.into().to_string()
}
