//! One protected client in the lab, enforced by the real agent.
#![allow(
    dead_code,
    reason = "shared by several test binaries, each using a part"
)]

use std::{net::IpAddr, path::PathBuf};

use netguard_common::{BlockReason, Counters};
use netguard_tests::{
    agent::{Agent, PinDir, pinned_maps},
    cgroups::TestCgroup,
    lab::{CLIENT_HOST_SIDE, CLIENT_V4, INTERNET_V4, LAN_CIDRS, Lab, SIBLING_V4, addr},
    probe::{ProbeResult, probe},
    sniffer::Sniffer,
    wait_for,
};

/// The client's own subnet stands for its Docker network: internal, as DESIGN.md says.
const CLIENT_SUBNETS: [&str; 2] = ["198.18.1.0/24", "fd0e:1::/64"];
/// Port the barrier marker goes to.
const BARRIER_PORT: u16 = 9;

#[derive(Default)]
pub struct Gateway {
    pub tunnel_interface: Option<String>,
    pub endpoints: Vec<String>,
    pub tunnel_up: bool,
}

#[derive(Default)]
pub struct Options {
    pub gateway: Option<Gateway>,
    pub backstop: bool,
}

/// Fields drop in order: agent, pins, cgroups, then the namespaces.
pub struct Setup {
    #[allow(
        dead_code,
        reason = "held so the agent runs (and is killed) with the setup"
    )]
    pub agent: Agent,
    pub pin: PinDir,
    pub cgroups: TestCgroup,
    /// Protected cgroup; its processes run in the client namespace.
    pub protected: PathBuf,
    /// Unprotected sibling cgroup (same attach parent); runs in the sibling namespace.
    pub sibling: PathBuf,
    pub lab: Lab,
}

impl Setup {
    pub fn new(options: Options) -> Self {
        Self::start(Lab::new(), options)
    }

    /// Starts the agent on an existing lab (e.g. one with a tunnel already up).
    pub fn start(lab: Lab, options: Options) -> Self {
        let mut cgroups = TestCgroup::new_parent();
        let protected = cgroups.child("protected");
        let sibling = cgroups.child("sibling");
        let pin = PinDir::new();
        let config = config(&lab, &cgroups, &protected, &pin, &options);
        let config_path = std::env::temp_dir().join(format!("ngt{}-netguard.toml", lab.tag));
        // The agent runs in the router namespace, where the client's host-side veth is.
        let agent = Agent::start(&lab.router, &config, config_path);
        Self {
            agent,
            pin,
            cgroups,
            protected,
            sibling,
            lab,
        }
    }

    /// Waits until the protected cgroup's counters satisfy `condition`.
    pub fn wait_counters(&self, what: &str, condition: impl Fn(&Counters) -> bool) {
        wait_for(what, || condition(&self.counters()));
    }

    pub fn protected_id(&self) -> u64 {
        TestCgroup::id(&self.protected)
    }

    /// The protected cgroup's counters, read from the pinned maps.
    pub fn counters(&self) -> Counters {
        pinned_maps(&self.pin)
            .counters(self.protected_id())
            .unwrap()
            .unwrap_or_default()
    }

    pub fn blocked(&self, reason: BlockReason) -> u64 {
        self.counters().blocked_packets[reason as usize]
    }

    pub fn refused(&self, reason: BlockReason) -> u64 {
        self.counters().refused_calls[reason as usize]
    }

    /// Sends a hand-built IPv4/UDP frame to the internet host through AF_PACKET from the
    /// protected client (`from_sibling` false) or the unprotected sibling; returns the probe's
    /// report (AF_PACKET's sendto succeeds either way: the verdict is on the wire).
    pub fn raw_frame_to_internet(&self, from_sibling: bool) -> ProbeResult {
        self.raw_frame(from_sibling, 7777, &[])
    }

    /// The same to `port`, with the probe's `modes` (`dgram`, `bypass`, `ring`).
    pub fn raw_frame(&self, from_sibling: bool, port: u16, modes: &[&str]) -> ProbeResult {
        let (netns, cgroup, router_side, src) = if from_sibling {
            (&self.lab.sibling, &self.sibling, "to-sib", addr(SIBLING_V4))
        } else {
            (
                &self.lab.client,
                &self.protected,
                CLIENT_HOST_SIDE,
                addr(CLIENT_V4),
            )
        };
        let mac = self.lab.router.mac(router_side);
        let (internet, port) = (addr(INTERNET_V4), port.to_string());
        let mut args = vec!["raw-frame", "eth0", &mac, &src, &internet, &port];
        args.extend(modes);
        probe(netns, Some(cgroup), &args)
    }

    /// Sends a marker from the unprotected sibling to `dst` and waits until `sniffer` has
    /// it: whatever the protected client sent before it, on the same router, has arrived
    /// by then if it was ever going to.
    pub fn barrier(&self, sniffer: &Sniffer, dst: impl Into<IpAddr>) {
        let dst = dst.into();
        let sibling_src: IpAddr = if dst.is_ipv4() {
            SIBLING_V4.into()
        } else {
            "fd0e:5::2".parse().unwrap()
        };
        let before = sniffer.count(|a| a.src == sibling_src && a.dst_port == BARRIER_PORT);
        let result = probe(
            &self.lab.sibling,
            Some(&self.sibling),
            &["udp", &addr(dst), &BARRIER_PORT.to_string(), "1", "8"],
        );
        assert!(
            result.ok,
            "barrier from the unprotected sibling: {result:?}"
        );
        wait_for("the barrier marker", || {
            sniffer.count(|a| a.src == sibling_src && a.dst_port == BARRIER_PORT) > before
        });
    }
}

fn config(
    lab: &Lab,
    cgroups: &TestCgroup,
    protected: &std::path::Path,
    pin: &PinDir,
    options: &Options,
) -> String {
    let quoted = |items: &[&str]| {
        items
            .iter()
            .map(|i| format!("{i:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut internal: Vec<&str> = LAN_CIDRS.to_vec();
    internal.extend(CLIENT_SUBNETS);
    let mut text = format!(
        "pin_dir = {:?}\ndocker = false\nattach_cgroups = [{:?}]\ninternal_cidrs = [{}]\n",
        pin.path.display().to_string(),
        cgroups.path.display().to_string(),
        quoted(&internal),
    );
    if let Some(gateway) = &options.gateway {
        text += "\n[[gateways]]\nname = \"vpn\"\n";
        if let Some(interface) = &gateway.tunnel_interface {
            text += &format!(
                "tunnel_interface = {interface:?}\nnetns = {:?}\n",
                lab.client.path().display().to_string()
            );
        }
        let endpoints: Vec<&str> = gateway.endpoints.iter().map(String::as_str).collect();
        text += &format!(
            "endpoints = [{}]\ntunnel_up = {}\n",
            quoted(&endpoints),
            gateway.tunnel_up
        );
    }
    text += &format!(
        "\n[[protect]]\ncgroup = {:?}\n",
        protected.display().to_string()
    );
    if options.gateway.is_some() {
        text += "gateway = \"vpn\"\n";
    }
    if options.backstop {
        text += &format!(
            "backstop_netns = {:?}\n",
            lab.client.path().display().to_string()
        );
    }
    text
}
