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
    /// Show each cgroup's policy and counters from the pinned maps.
    Status {
        #[arg(long, env = "NETGUARD_PIN_DIR", default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove every pinned program and map: protection stops.
    Unload {
        #[arg(long, env = "NETGUARD_PIN_DIR", default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
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
    #[arg(long = "attach-cgroup")]
    attach_cgroups: Vec<PathBuf>,
    /// Extra internal destination for every protected cgroup (repeatable).
    #[arg(long = "internal-cidr")]
    internal_cidrs: Vec<String>,
    /// Protect this cgroup (repeatable).
    #[arg(long)]
    protect: Vec<PathBuf>,
    /// Docker Engine API socket [default: /var/run/docker.sock].
    #[arg(long, env = "NETGUARD_DOCKER_SOCKET")]
    docker_socket: Option<PathBuf>,
    /// Do not follow Docker (static configuration only).
    #[arg(long)]
    no_docker: bool,
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
        Command::Status { pin_dir, json } => status(&pin_dir, json),
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
    };
    let config = Config::load(&flags)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(agent::run(config))
}

fn status(pin_dir: &std::path::Path, json: bool) -> anyhow::Result<()> {
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
