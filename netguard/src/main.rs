//! The netguard command line: a thin layer over the library.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use netguard::{
    DEFAULT_PIN_DIR, agent,
    config::{Config, FlagConfig},
    datapath,
    maps::Maps,
};
use netguard_common::BlockReason;
use tracing_subscriber::EnvFilter;

/// Exit status for a configuration error (EX_USAGE).
const EXIT_CONFIG: u8 = 64;
/// Exit status for missing privileges (EX_NOPERM).
const EXIT_NO_PERMISSION: u8 = 77;

#[derive(Parser)]
#[command(
    version,
    about = "eBPF egress killswitch and traffic monitor for Docker hosts"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: load or adopt the datapath and enforce the policy.
    Run(RunArgs),
    /// Show gateways and containers: policy, tunnel, traffic and blocks, from the running
    /// agent (or, when none answers, from the pinned maps that keep enforcing).
    Status {
        #[command(flatten)]
        agent: AgentArgs,
        #[arg(long, env = "NETGUARD_PIN_DIR", default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print blocked flows as they happen: time, container, destination, reason.
    Observe {
        #[command(flatten)]
        agent: AgentArgs,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Check the host (kernel, BTF, cgroups, bpffs, capabilities, Docker) and the running
    /// netguard; print pass/warn/fail with remedies; exit 1 if anything fails.
    Doctor {
        #[command(flatten)]
        agent: AgentArgs,
        #[arg(long, env = "NETGUARD_PIN_DIR", default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        #[arg(long, env = "NETGUARD_DOCKER_SOCKET", default_value = netguard::docker::DEFAULT_SOCKET)]
        docker_socket: PathBuf,
    },
    /// Remove every pinned program and map: protection stops.
    Unload {
        #[arg(long, env = "NETGUARD_PIN_DIR", default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
}

#[derive(clap::Args)]
struct AgentArgs {
    /// The agent's HTTP address (its --listen).
    #[arg(long, env = "NETGUARD_LISTEN", default_value = netguard::config::DEFAULT_LISTEN)]
    agent: String,
}

impl AgentArgs {
    /// The agent's client; `None` when its HTTP server is off.
    fn client(&self) -> anyhow::Result<Option<netguard::client::AgentClient>> {
        Ok(netguard::config::parse_listen(&self.agent)?.map(netguard::client::AgentClient::new))
    }
}

#[derive(clap::Args)]
struct RunArgs {
    /// TOML configuration file.
    #[arg(long, env = "NETGUARD_CONFIG")]
    config: Option<PathBuf>,
    /// bpffs directory for pinned programs and maps [default: /sys/fs/bpf/netguard].
    #[arg(long, env = "NETGUARD_PIN_DIR")]
    pin_dir: Option<PathBuf>,
    /// Attach the programs at this cgroup (repeatable) [default: the cgroup2 root].
    #[arg(
        long = "attach-cgroup",
        env = "NETGUARD_ATTACH_CGROUPS",
        value_delimiter = ','
    )]
    attach_cgroups: Vec<PathBuf>,
    /// Extra internal destination for every protected cgroup (repeatable).
    #[arg(
        long = "internal-cidr",
        env = "NETGUARD_INTERNAL_CIDRS",
        value_delimiter = ','
    )]
    internal_cidrs: Vec<String>,
    /// Protect this cgroup (repeatable).
    #[arg(long, env = "NETGUARD_PROTECT", value_delimiter = ',')]
    protect: Vec<PathBuf>,
    /// Docker Engine API socket [default: /var/run/docker.sock].
    #[arg(long, env = "NETGUARD_DOCKER_SOCKET")]
    docker_socket: Option<PathBuf>,
    /// Do not follow Docker (static configuration only).
    #[arg(long, env = "NETGUARD_NO_DOCKER")]
    no_docker: bool,
    /// HTTP address for /metrics and the API, or "off" [default: 127.0.0.1:9477].
    #[arg(long, env = "NETGUARD_LISTEN")]
    listen: Option<String>,
    /// Seconds a destroyed container's series stay in /metrics [default: 300].
    #[arg(long, env = "NETGUARD_METRICS_GRACE_SECS")]
    metrics_grace_secs: Option<u64>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("NETGUARD_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Status {
            agent,
            pin_dir,
            json,
        } => status(&agent, &pin_dir, json),
        Command::Doctor {
            agent,
            pin_dir,
            docker_socket,
        } => doctor(&agent, &pin_dir, &docker_socket),
        Command::Observe { agent, json } => match agent.client() {
            Ok(Some(client)) => client_runtime()
                .and_then(|runtime| runtime.block_on(netguard::client::observe(&client, json))),
            Ok(None) => Err(netguard::config::ConfigError(
                "observe needs the agent's HTTP server, which is off (--listen off): run the \
                 agent with --listen"
                    .into(),
            )
            .into()),
            Err(error) => Err(error),
        },
        Command::Unload { pin_dir } => match datapath::unload(&pin_dir) {
            Ok(true) => {
                eprintln!(
                    "netguard unloaded from {}: protection is off",
                    pin_dir.display()
                );
                Ok(())
            }
            Ok(false) => {
                eprintln!("nothing pinned at {}", pin_dir.display());
                Ok(())
            }
            Err(error) => Err(error),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            if let Some(config_error) = error.downcast_ref::<netguard::config::ConfigError>() {
                eprintln!("netguard: {config_error}");
                return ExitCode::from(EXIT_CONFIG);
            }
            if let Some(denied) = error.downcast_ref::<netguard::host::PrivilegeError>() {
                eprintln!("netguard: {denied}");
                return ExitCode::from(EXIT_NO_PERMISSION);
            }
            eprintln!("netguard: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let flags = FlagConfig {
        config_file: args.config,
        pin_dir: args.pin_dir,
        docker_socket: args.docker_socket,
        no_docker: args.no_docker,
        attach_cgroups: args.attach_cgroups,
        internal_cidrs: args.internal_cidrs,
        protect: args.protect,
        listen: args.listen,
        metrics_grace_secs: args.metrics_grace_secs,
    };
    let config = Config::load(&flags)?;
    // Before any thread exists: a container's private cgroup namespace hides the host's.
    match netguard::host::join_host_cgroup_namespace() {
        Ok(true) => tracing::info!("joined the host's cgroup namespace (pid 1's)"),
        Ok(false) => {}
        Err(error) => tracing::warn!(
            "cannot join the host's cgroup namespace ({error}): run the container with \
             --cgroupns host, or container cgroups will not resolve"
        ),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(agent::run(config))
}

fn doctor(
    agent: &AgentArgs,
    pin_dir: &std::path::Path,
    docker_socket: &std::path::Path,
) -> anyhow::Result<()> {
    use netguard::doctor::{DoctorOptions, Outcome, examine, table};
    let checks = client_runtime()?.block_on(examine(DoctorOptions {
        pin_dir,
        docker_socket,
        agent: agent.client().ok().flatten(),
    }));
    print!("{}", table(&checks));
    let failed = checks.iter().filter(|c| c.outcome == Outcome::Fail).count();
    if failed > 0 {
        anyhow::bail!("{failed} checks failed: see the remedies above");
    }
    Ok(())
}

fn client_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn status(agent: &AgentArgs, pin_dir: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let from_agent = match agent.client()? {
        Some(client) => client_runtime()?.block_on(async {
            Ok::<_, anyhow::Error>((client.gateways().await?, client.containers().await?))
        }),
        None => Err(anyhow::anyhow!(
            "the agent's HTTP server is off (--listen off)"
        )),
    };
    match from_agent {
        Ok((gateways, containers)) if json => {
            println!(
                "{}",
                serde_json::json!({ "gateways": gateways, "containers": containers })
            );
            Ok(())
        }
        Ok((gateways, containers)) => {
            print!("{}", netguard::client::status_table(&gateways, &containers));
            Ok(())
        }
        Err(error) if pin_dir.exists() => {
            eprintln!("netguard: {error:#}");
            eprintln!(
                "netguard: showing the pinned maps at {} instead (enforcement continues \
                 without the agent; container names need it)",
                pin_dir.display()
            );
            status_from_pins(pin_dir, json)
        }
        Err(error) => Err(error),
    }
}

/// Each cgroup's policy and counters, straight from the pinned maps.
fn status_from_pins(pin_dir: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let maps = Maps::open_pinned(pin_dir)?;
    let mut rows = Vec::new();
    for (cgroup, policy) in maps.policies()? {
        let counters = maps.counters(cgroup)?.unwrap_or_default();
        rows.push((cgroup, policy, counters));
    }
    let gateways: Vec<String> = maps
        .gateways()?
        .iter()
        .map(|(slot, name, g)| {
            format!(
                "{{\"gateway\":{name:?},\"slot\":{},\"tunnel_up\":{},\"transitions\":{},\"last_change_secs\":{}}}",
                slot.0,
                g.tunnel_up == 1,
                g.transitions,
                g.last_change_secs
            )
        })
        .collect();
    if json {
        println!("{{\"gateways\":[{}],\"cgroups\":", gateways.join(","));
        let items: Vec<String> = rows
            .iter()
            .map(|(cgroup, policy, c)| {
                let blocked: Vec<String> = BlockReason::ALL
                    .iter()
                    .map(|r| format!("\"{}\":{}", r.as_str(), c.blocked_packets[*r as usize]))
                    .collect();
                format!(
                    "{{\"cgroup_id\":{cgroup},\"protected\":{},\"gateway\":{},\"transmit_bytes\":{},\
                     \"transmit_packets\":{},\"receive_bytes\":{},\"receive_packets\":{},\
                     \"blocked_packets\":{{{}}}}}",
                    policy.is_protected(),
                    policy.gateway,
                    c.tx_bytes,
                    c.tx_packets,
                    c.rx_bytes,
                    c.rx_packets,
                    blocked.join(",")
                )
            })
            .collect();
        println!("[{}]}}", items.join(","));
    } else {
        println!(
            "{:>20} {:>5} {:>7} {:>11} {:>14}",
            "GATEWAY", "SLOT", "TUNNEL", "TRANSITIONS", "LAST CHANGE"
        );
        for (slot, name, g) in maps.gateways()? {
            let tunnel = if g.tunnel_up == 1 { "up" } else { "down" };
            println!(
                "{:>20} {:>5} {:>7} {:>11} {:>14}",
                name, slot.0, tunnel, g.transitions, g.last_change_secs
            );
        }
        println!();
        println!(
            "{:>12} {:>9} {:>7} {:>12} {:>12} {:>10}",
            "CGROUP", "PROTECTED", "GATEWAY", "TX BYTES", "RX BYTES", "BLOCKED"
        );
        for (cgroup, policy, c) in rows {
            println!(
                "{:>12} {:>9} {:>7} {:>12} {:>12} {:>10}",
                cgroup,
                if policy.is_protected() { "yes" } else { "no" },
                policy.gateway,
                c.tx_bytes,
                c.rx_bytes,
                c.blocked_packets.iter().sum::<u64>()
            );
        }
    }
    Ok(())
}
