//! Static configuration: a TOML file and command-line flags. Parsing has no side effects;
//! every value is validated before anything is attached.
//!
//! Precedence: flags add to (lists) or override (scalars) the file; built-in defaults fill
//! the rest. With neither, the agent attaches at the cgroup2 root and protects nothing until
//! told to.

use std::{
    collections::HashSet,
    fmt, fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::IpNet;
use serde::Deserialize;
use thiserror::Error;

use crate::domain::{Endpoint, parse_cidr};

mod defaults;
pub use self::defaults::*;

/// A configuration error: one line naming the value and the fix. The agent exits 64.
#[derive(Debug, Error, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The configuration file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub pin_dir: Option<PathBuf>,
    /// Follow Docker (default true).
    pub docker: Option<bool>,
    /// Docker Engine API socket (default /var/run/docker.sock).
    pub docker_socket: Option<PathBuf>,
    pub attach_cgroups: Option<Vec<PathBuf>>,
    #[serde(default)]
    pub internal_cidrs: Vec<String>,
    #[serde(default)]
    pub gateways: Vec<FileGateway>,
    #[serde(default)]
    pub protect: Vec<FileProtect>,
    /// HTTP address for /metrics and the API (default 127.0.0.1:9477; "off" for none).
    pub listen: Option<String>,
    /// Seconds a destroyed container's series stay in /metrics (default 300).
    pub metrics_grace_secs: Option<u64>,
    /// A file holding the bearer token every HTTP request but `/healthz` must carry; created
    /// with a random token if missing.
    pub api_token_file: Option<PathBuf>,
    /// Live flow streams served at once (default 8).
    pub max_flow_streams: Option<usize>,
    /// Seconds between full reconciles with Docker (default 30).
    pub resync_secs: Option<u64>,
    /// The host's interfaces that carry the backstop when a protected container shares the
    /// host's network namespace (`--network host`); default: every one.
    pub backstop_host_interfaces: Option<Vec<String>>,
    /// Restart containers stranded in a restarted gateway's old network namespace (default
    /// false; `netguard.heal=restart|off` on a container decides for it).
    pub heal_stranded: Option<bool>,
    /// Credentials for gateways' Gluetun control servers.
    #[serde(default)]
    pub gluetun_auth: Vec<gluetun::FileGluetunAuth>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileGateway {
    pub name: String,
    pub tunnel_interface: Option<String>,
    /// Network namespace of `tunnel_interface` (e.g. `/run/netns/vpn`); default: the agent's.
    pub netns: Option<PathBuf>,
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Initial tunnel state. Default false: down until known up.
    #[serde(default)]
    pub tunnel_up: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileProtect {
    /// Absolute, or relative to the cgroup2 mount.
    pub cgroup: PathBuf,
    pub gateway: Option<String>,
    #[serde(default)]
    pub allow: Vec<String>,
    /// The network namespace the cgroup's processes send from (a file such as
    /// `/run/netns/NAME` or `/proc/PID/ns/net`): the backstop goes on its interfaces.
    pub backstop_netns: Option<PathBuf>,
    /// Replaced by `backstop_netns`; named here only to say so.
    pub backstop_interfaces: Option<Vec<String>>,
}

/// Command-line additions to the file.
#[derive(Debug, Default, Clone)]
pub struct FlagConfig {
    pub config_file: Option<PathBuf>,
    pub pin_dir: Option<PathBuf>,
    pub docker_socket: Option<PathBuf>,
    pub no_docker: bool,
    pub attach_cgroups: Vec<PathBuf>,
    pub internal_cidrs: Vec<String>,
    pub protect: Vec<PathBuf>,
    pub listen: Option<String>,
    pub metrics_grace_secs: Option<u64>,
    pub api_token_file: Option<PathBuf>,
    pub max_flow_streams: Option<usize>,
    pub resync_secs: Option<u64>,
    pub heal_stranded: bool,
    /// `--gluetun-api-key-file`: for every gateway without credentials of its own.
    pub gluetun_api_key_file: Option<PathBuf>,
    /// `NETGUARD_GLUETUN_API_KEY`: the same, given as a value.
    pub gluetun_api_key: Option<gluetun::Secret>,
}

/// The validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub pin_dir: PathBuf,
    /// The Docker socket to follow; `None` when Docker is turned off.
    pub docker_socket: Option<PathBuf>,
    /// Empty: the cgroup2 root.
    pub attach_cgroups: Vec<PathBuf>,
    pub internal_cidrs: Vec<IpNet>,
    pub gateways: Vec<Gateway>,
    pub protect: Vec<Protect>,
    /// `None`: no HTTP server.
    pub listen: Option<SocketAddr>,
    pub metrics_grace: Duration,
    /// Where the API token is (or is to be made); `None`: no token asked.
    pub api_token_file: Option<PathBuf>,
    pub max_flow_streams: usize,
    pub resync: Duration,
    /// `None`: every interface of the host's namespace.
    pub backstop_host_interfaces: Option<Vec<String>>,
    pub heal_stranded: bool,
    /// Credentials for Gluetun control servers, the most specific first.
    pub gluetun_auth: Vec<gluetun::GluetunAuth>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gateway {
    pub name: String,
    pub tunnel_interface: Option<String>,
    pub netns: Option<PathBuf>,
    pub endpoints: Vec<Endpoint>,
    pub tunnel_up: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Protect {
    pub cgroup: PathBuf,
    pub gateway: Option<String>,
    pub allow: Vec<IpNet>,
    pub backstop_netns: Option<PathBuf>,
}

impl Config {
    /// Reads the file named by the flags (if any) and merges the flags into it.
    pub fn load(flags: &FlagConfig) -> Result<Self, ConfigError> {
        let file = match &flags.config_file {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        Self::from_parts(file, flags)
    }

    pub fn from_parts(file: FileConfig, flags: &FlagConfig) -> Result<Self, ConfigError> {
        let mut internal_cidrs = parse_cidrs("internal_cidrs", &file.internal_cidrs)?;
        internal_cidrs.extend(parse_cidrs("--internal-cidr", &flags.internal_cidrs)?);

        let mut names = HashSet::new();
        let mut gateways = Vec::new();
        for gateway in file.gateways {
            if !names.insert(gateway.name.clone()) {
                return Err(ConfigError(format!(
                    "gateway {:?} is defined twice: give each [[gateways]] entry its own name",
                    gateway.name
                )));
            }
            let endpoints = gateway
                .endpoints
                .iter()
                .map(|e| {
                    e.parse::<Endpoint>()
                        .map_err(|err| ConfigError(err.to_string()))
                })
                .collect::<Result<_, _>>()?;
            gateways.push(Gateway {
                name: gateway.name,
                tunnel_interface: gateway.tunnel_interface,
                netns: gateway.netns,
                endpoints,
                tunnel_up: gateway.tunnel_up,
            });
        }

        let mut protect = Vec::new();
        for entry in file.protect {
            if let Some(gateway) = &entry.gateway
                && !names.contains(gateway)
            {
                return Err(ConfigError(format!(
                    "cgroup {} names gateway {gateway:?}, which no [[gateways]] entry defines: \
                     define it or fix the name (known: {})",
                    entry.cgroup.display(),
                    known(&names)
                )));
            }
            if entry.backstop_interfaces.is_some() {
                return Err(ConfigError(format!(
                    "cgroup {}: backstop_interfaces is gone: the backstop now sits inside the \
                     cgroup's network namespace and judges each frame by its sender; write \
                     backstop_netns = \"/run/netns/NAME\" (or /proc/PID/ns/net) instead",
                    entry.cgroup.display()
                )));
            }
            protect.push(Protect {
                allow: parse_cidrs(
                    &format!("allow of {}", entry.cgroup.display()),
                    &entry.allow,
                )?,
                cgroup: entry.cgroup,
                gateway: entry.gateway,
                backstop_netns: entry.backstop_netns,
            });
        }
        protect.extend(flags.protect.iter().map(|cgroup| Protect {
            cgroup: cgroup.clone(),
            gateway: None,
            allow: Vec::new(),
            backstop_netns: None,
        }));

        let mut attach_cgroups = file.attach_cgroups.unwrap_or_default();
        attach_cgroups.extend(flags.attach_cgroups.iter().cloned());
        let docker = file.docker.unwrap_or(true) && !flags.no_docker;
        let docker_socket = flags
            .docker_socket
            .clone()
            .or(file.docker_socket)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DOCKER_SOCKET));
        let listen = parse_listen(
            flags
                .listen
                .as_deref()
                .or(file.listen.as_deref())
                .unwrap_or(DEFAULT_LISTEN),
        )?;
        let metrics_grace = flags
            .metrics_grace_secs
            .or(file.metrics_grace_secs)
            .map_or(DEFAULT_METRICS_GRACE, Duration::from_secs);
        let resync = flags
            .resync_secs
            .or(file.resync_secs)
            .map_or(RESYNC_INTERVAL, Duration::from_secs);
        if resync.is_zero() {
            return Err(ConfigError(
                "resync_secs = 0: Docker would be listed without pause; set 1 or more (default \
                 30)"
                .into(),
            ));
        }
        let max_flow_streams = flags
            .max_flow_streams
            .or(file.max_flow_streams)
            .unwrap_or(DEFAULT_MAX_FLOW_STREAMS);
        let gluetun_auth = gluetun::credentials(file.gluetun_auth, flags)?;
        Ok(Self {
            heal_stranded: flags.heal_stranded || file.heal_stranded.unwrap_or(false),
            gluetun_auth,
            listen,
            metrics_grace,
            api_token_file: flags.api_token_file.clone().or(file.api_token_file),
            max_flow_streams,
            resync,
            backstop_host_interfaces: file.backstop_host_interfaces,
            docker_socket: docker.then_some(docker_socket),
            pin_dir: flags
                .pin_dir
                .clone()
                .or(file.pin_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_DIR)),
            attach_cgroups,
            internal_cidrs,
            gateways,
            protect,
        })
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = fs::read_to_string(path).map_err(|error| {
        ConfigError(format!(
            "cannot read config file {}: {error}: fix the path or drop --config",
            path.display()
        ))
    })?;
    toml::from_str(&text).map_err(|error| {
        let message = error.message().replace('\n', " ");
        ConfigError(format!("config file {}: {message}", path.display()))
    })
}

fn parse_cidrs(field: &str, values: &[String]) -> Result<Vec<IpNet>, ConfigError> {
    values
        .iter()
        .map(|value| {
            parse_cidr(value).ok_or_else(|| {
                ConfigError(format!(
                    "invalid CIDR {value:?} in {field}: write an address with an optional \
                         prefix length, e.g. 192.168.1.0/24 or fd00::/8"
                ))
            })
        })
        .collect()
}

/// `ip:port`, or `off`.
pub fn parse_listen(text: &str) -> Result<Option<SocketAddr>, ConfigError> {
    if text == "off" {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        ConfigError(format!(
            "invalid listen address {text:?}: write ip:port, e.g. {DEFAULT_LISTEN} or \
             [::1]:9477, or \"off\" for no HTTP server"
        ))
    })
}

fn known(names: &HashSet<String>) -> String {
    let mut names: Vec<_> = names.iter().map(String::as_str).collect();
    names.sort_unstable();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

pub mod gluetun;
#[cfg(test)]
mod tests;
