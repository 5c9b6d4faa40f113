//! A real WireGuard tunnel (userspace wireguard-go) from the client namespace to the VPN
//! provider namespace, which forwards to the internet host.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use crate::{
    TempDir,
    lab::{Lab, TUNNEL_CLIENT_V4, TUNNEL_PROVIDER_V4, VPN_V4, command_in_netns},
    sh, wait_for,
};

/// WireGuard's listen port at the provider: the VPN endpoint.
pub const ENDPOINT_PORT: u16 = 51820;

pub struct Tunnel {
    /// Tunnel interface in the client namespace.
    pub client_if: String,
    pub provider_if: String,
    daemons: Vec<Child>,
    dir: TempDir,
    /// What restarting the provider needs.
    provider: Option<(PathBuf, String, String)>,
}

impl Tunnel {
    /// A tunnel from the lab's client namespace.
    pub fn up(lab: &Lab) -> Self {
        Self::from_netns(&lab.client.path(), None, &format!("wg{}c", lab.tag), lab)
    }

    /// A tunnel from the network namespace at `client_netns` (e.g. a container's
    /// `/proc/<pid>/ns/net`), whose interface is `client_if`, to the lab's VPN provider.
    /// `gateway_cgroup`: the cgroup the client's daemon runs in, as a VPN client runs in its
    /// container's (Gluetun's wireguard-go or OpenVPN); `None`: the test's own.
    pub fn from_netns(
        client_netns: &Path,
        gateway_cgroup: Option<&Path>,
        client_if: &str,
        lab: &Lab,
    ) -> Self {
        let provider_if = format!("wg{}p", lab.tag);
        let mut tunnel = Self {
            client_if: client_if.to_string(),
            provider_if,
            daemons: Vec::new(),
            dir: TempDir::new("wg"),
            provider: None,
        };
        let (client_key, client_pub) = tunnel.keypair("client");
        let (provider_key, provider_pub) = tunnel.keypair("provider");
        tunnel.start_daemon(client_netns, gateway_cgroup, &tunnel.client_if.clone());
        tunnel.start_daemon(&lab.vpn.path(), None, &tunnel.provider_if.clone());
        tunnel.provider = Some((lab.vpn.path(), provider_key.clone(), client_pub.clone()));
        tunnel.configure_provider();
        sh(&[
            "wg",
            "set",
            &tunnel.client_if,
            "private-key",
            &client_key,
            "peer",
            &provider_pub,
            "endpoint",
            &format!("{VPN_V4}:{ENDPOINT_PORT}"),
            "allowed-ips",
            "0.0.0.0/0",
            "persistent-keepalive",
            "1",
        ]);
        ip_in(
            client_netns,
            &[
                "addr",
                "add",
                &format!("{TUNNEL_CLIENT_V4}/24"),
                "dev",
                &tunnel.client_if,
            ],
        );
        ip_in(client_netns, &["link", "set", &tunnel.client_if, "up"]);
        lab.vpn.ip(&[
            "addr",
            "add",
            &format!("{TUNNEL_PROVIDER_V4}/24"),
            "dev",
            &tunnel.provider_if,
        ]);
        lab.vpn.ip(&["link", "set", &tunnel.provider_if, "up"]);
        tunnel
    }

    /// The VPN provider's side only, for a client that configures itself (Gluetun's
    /// stand-in): with the client's private key and the provider's public key, as a VPN
    /// provider hands them out.
    pub fn provider_for_client(lab: &Lab) -> (Self, String, String) {
        let mut tunnel = Self {
            client_if: String::new(),
            provider_if: format!("wg{}p", lab.tag),
            daemons: Vec::new(),
            dir: TempDir::new("wg"),
            provider: None,
        };
        let (client_key, client_pub) = tunnel.keypair("client");
        let (provider_key, provider_pub) = tunnel.keypair("provider");
        tunnel.start_daemon(&lab.vpn.path(), None, &tunnel.provider_if.clone());
        tunnel.provider = Some((lab.vpn.path(), provider_key, client_pub));
        tunnel.configure_provider();
        let provider_if = tunnel.provider_if.clone();
        lab.vpn.ip(&[
            "addr",
            "add",
            &format!("{TUNNEL_PROVIDER_V4}/24"),
            "dev",
            &provider_if,
        ]);
        lab.vpn.ip(&["link", "set", &provider_if, "up"]);
        let client_private = std::fs::read_to_string(client_key)
            .unwrap()
            .trim()
            .to_string();
        (tunnel, client_private, provider_pub)
    }

    fn keypair(&self, who: &str) -> (String, String) {
        let private = sh(&["wg", "genkey"]).trim().to_string();
        let path = self.dir.path.join(format!("{who}.key"));
        std::fs::write(&path, &private).unwrap();
        let mut pubkey = Command::new("wg")
            .arg("pubkey")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("wg pubkey");
        use std::io::Write as _;
        pubkey
            .stdin
            .take()
            .unwrap()
            .write_all(private.as_bytes())
            .unwrap();
        let public = String::from_utf8(pubkey.wait_with_output().unwrap().stdout).unwrap();
        (
            path.to_string_lossy().into_owned(),
            public.trim().to_string(),
        )
    }

    fn start_daemon(&mut self, netns: &Path, cgroup: Option<&Path>, interface: &str) {
        let mut command = command_in_netns("wireguard-go", netns);
        if let Some(cgroup) = cgroup {
            let procs = std::fs::OpenOptions::new()
                .write(true)
                .open(cgroup.join("cgroup.procs"))
                .expect("the gateway's cgroup.procs");
            // SAFETY: only an async-signal-safe write between fork and exec.
            unsafe {
                use std::os::{fd::AsRawFd as _, unix::process::CommandExt as _};
                command.pre_exec(move || {
                    if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = command
            .args(["-f", interface])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting wireguard-go (apt-get install wireguard-go)");
        self.daemons.push(child);
        let socket = PathBuf::from(format!("/var/run/wireguard/{interface}.sock"));
        wait_for(&format!("wireguard-go {interface}"), || socket.exists());
    }

    /// Kills the VPN provider's side: the client's handshakes go stale.
    pub fn stop_provider(&mut self) {
        let mut provider = self.daemons.pop().expect("the provider's daemon");
        let _ = provider.kill();
        let _ = provider.wait();
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.provider_if));
    }

    /// Starts the provider's side again, with the same key and peer.
    pub fn start_provider(&mut self) {
        let (vpn, _, _) = self.provider.clone().expect("a provider");
        let provider_if = self.provider_if.clone();
        self.start_daemon(&vpn, None, &provider_if);
        self.configure_provider();
        ip_in(
            &vpn,
            &[
                "addr",
                "add",
                &format!("{TUNNEL_PROVIDER_V4}/24"),
                "dev",
                &provider_if,
            ],
        );
        ip_in(&vpn, &["link", "set", &provider_if, "up"]);
    }

    /// The provider's key, listen port and its one peer (the client).
    fn configure_provider(&self) {
        let (_, key, client_pub) = self.provider.as_ref().expect("a provider");
        let port = ENDPOINT_PORT.to_string();
        let allowed = format!("{TUNNEL_CLIENT_V4}/32");
        let args = [
            "wg",
            "set",
            &self.provider_if,
            "private-key",
            key,
            "listen-port",
            &port,
            "peer",
            client_pub,
            "allowed-ips",
            &allowed,
        ];
        sh(&args);
    }

    /// Whether a handshake has completed (the tunnel carries traffic).
    pub fn handshake_done(&self) -> bool {
        let out = sh(&["wg", "show", &self.client_if, "latest-handshakes"]);
        out.split_whitespace().nth(1).is_some_and(|t| t != "0")
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        for daemon in &mut self.daemons {
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
        for interface in [&self.client_if, &self.provider_if]
            .into_iter()
            .filter(|i| !i.is_empty())
        {
            let _ = std::fs::remove_file(format!("/var/run/wireguard/{interface}.sock"));
        }
    }
}

/// `ip ARGS` inside the network namespace at `netns`.
pub fn ip_in(netns: &Path, args: &[&str]) {
    let output = command_in_netns("ip", netns)
        .args(args)
        .output()
        .expect("running ip");
    assert!(
        output.status.success(),
        "ip {args:?} in {}: {}",
        netns.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}
