//! Every default netguard uses, in one place.

use std::time::Duration;

/// bpffs directory holding every pinned map and link.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/netguard";
/// The Docker Engine API socket.
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";
/// Where the HTTP server listens by default: this host only. Metrics name containers; expose
/// them beyond the host on purpose (`--listen 0.0.0.0:9477`).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9477";
/// How long a destroyed container's series stay in `/metrics` by default: long enough for
/// a few scrapes to see its last values.
pub const DEFAULT_METRICS_GRACE: Duration = Duration::from_secs(300);
/// Destinations every protected container may reach: loopback, link-local, local multicast
/// (ARP/NDP/IGMP need them) and limited broadcast.
pub const BUILTIN_INTERNAL_CIDRS: [&str; 7] = [
    "127.0.0.0/8",
    "169.254.0.0/16",
    "224.0.0.0/24",
    "255.255.255.255/32",
    "::1/128",
    "fe80::/10",
    "ff02::/16",
];
/// Tunnel interfaces looked for in a gateway's namespace, in order.
pub const DEFAULT_TUNNELS: [&str; 2] = ["wg0", "tun0"];
/// Gluetun's control server, inside its network namespace.
pub const DEFAULT_GLUETUN: &str = "127.0.0.1:8000";
/// Bound on the age of a WireGuard gateway's latest handshake.
pub const DEFAULT_HANDSHAKE_MAX_AGE: Duration = Duration::from_secs(180);
/// Bad health rounds before a tunnel counts as down (1: at once).
pub const DEFAULT_DOWN_AFTER: u32 = 1;
/// Good health rounds before a tunnel counts as up again.
pub const DEFAULT_UP_AFTER: u32 = 2;
/// How long one health source may take before it counts as unreachable.
pub const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_millis(800);
/// How often each gateway's tunnel health is checked (and its interface looked up again).
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// How often processes stopped by the raw-socket guard are looked at (continued once their
/// namespace's backstop is in place).
pub const STOPPED_POLL: Duration = Duration::from_millis(50);
/// How often everything is reconciled with Docker again, whatever the events said (events
/// can be lost; a write can fail).
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(30);
/// Longest wait between attempts to reach Docker.
pub const DOCKER_MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Instances (cgroups) remembered per container: a crash loop makes one per start.
pub const INSTANCES_KEPT: usize = 16;
/// Directories a full sync looks at when it walks the cgroup tree for unknown containers.
pub const CGROUP_WALK_LIMIT: usize = 20_000;
/// Blocked flows kept for `/api/v1/flows`.
pub const RECENT_FLOWS: usize = 1024;
/// Blocked flows kept per container for `/api/v1/containers`.
pub const RECENT_PER_CONTAINER: usize = 10;
/// Live flow-stream readers that fall this far behind lose the oldest flows (and are told).
pub const LIVE_BACKLOG: usize = 1024;
/// Live flow streams (`/api/v1/flows/stream`) served at once by default.
pub const DEFAULT_MAX_FLOW_STREAMS: usize = 8;
/// Restarts asked for a container stranded by a gateway restart before the agent gives up.
pub const HEAL_ATTEMPTS: u32 = 5;
/// The wait after the first such restart; it doubles after each.
pub const HEAL_FIRST_BACKOFF: Duration = Duration::from_secs(10);
/// How long the CLI waits for the agent's answer (not for the live flow stream).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long netguard's resolver waits for an upstream answer before it answers SERVFAIL
/// (below the 5 s a stub resolver waits, so the container hears of it).
pub const DNS_FORWARD_TIMEOUT: Duration = Duration::from_secs(4);
/// Queries one container may have in flight at netguard's resolver; more are dropped.
pub const DNS_IN_FLIGHT: usize = 64;
/// Queries one container may ask netguard's resolver per second (and at once); more are
/// dropped.
pub const DNS_QUERIES_PER_SECOND: f64 = 200.0;
/// Queries forwarded at once, all containers together (each takes a socket and a thread).
pub const DNS_FORWARDS_AT_ONCE: usize = 128;
/// A TCP connection to netguard's resolver is closed this long after it was accepted.
pub const DNS_TCP_IDLE: Duration = Duration::from_secs(10);
