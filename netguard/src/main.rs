//! The netguard command line: parses arguments and hands each command to the library.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use netguard::{
    agent, cli,
    client::AgentClient,
    config::{
        Config, ConfigError, DEFAULT_DOCKER_SOCKET, DEFAULT_LISTEN, DEFAULT_PIN_DIR, FlagConfig,
        parse_listen,
    },
    host::PrivilegeError,
};
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
        #[arg(long, env = "NETGUARD_DOCKER_SOCKET", default_value = DEFAULT_DOCKER_SOCKET)]
        docker_socket: PathBuf,
    },
    /// Exit 0 only when the pinned datapath enforces (every cgroup program attached, and the
    /// container classifier): what docker.service waits for at boot (ExecStartPre).
    Enforcing {
        #[arg(long, env = "NETGUARD_PIN_DIR", default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// A static configuration (no Docker): the classifier is not needed.
        #[arg(long)]
        without_classifier: bool,
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
    #[arg(long, env = "NETGUARD_LISTEN", default_value = DEFAULT_LISTEN)]
    agent: String,
    /// The agent's API token file (its --api-token-file), if it asks for one.
    #[arg(long, env = "NETGUARD_API_TOKEN_FILE")]
    api_token_file: Option<PathBuf>,
}

impl AgentArgs {
    /// The agent's client; `None` when its HTTP server is off.
    fn client(&self) -> Result<Option<AgentClient>, ConfigError> {
        let token = self
            .api_token_file
            .as_deref()
            .map(netguard::http::read_token)
            .transpose()?;
        Ok(parse_listen(&self.agent)?.map(|address| AgentClient::new(address, token)))
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
    #[arg(long, env = "NETGUARD_NO_DOCKER", value_parser = clap::builder::BoolishValueParser::new())]
    no_docker: bool,
    /// HTTP address for /metrics and the API, or "off" [default: 127.0.0.1:9477].
    #[arg(long, env = "NETGUARD_LISTEN")]
    listen: Option<String>,
    /// Seconds a destroyed container's series stay in /metrics [default: 300].
    #[arg(long, env = "NETGUARD_METRICS_GRACE_SECS")]
    metrics_grace_secs: Option<u64>,
    /// File with the bearer token the HTTP API asks for (made with a random one if missing).
    #[arg(long, env = "NETGUARD_API_TOKEN_FILE")]
    api_token_file: Option<PathBuf>,
    /// Live flow streams served at once [default: 8].
    #[arg(long, env = "NETGUARD_MAX_FLOW_STREAMS")]
    max_flow_streams: Option<usize>,
    /// Seconds between full reconciles with Docker [default: 30].
    #[arg(long, env = "NETGUARD_RESYNC_SECS")]
    resync_secs: Option<u64>,
    /// Restart containers stranded in a restarted gateway's old network namespace (a
    /// container's netguard.heal label decides for it).
    #[arg(long, env = "NETGUARD_HEAL_STRANDED", value_parser = clap::builder::BoolishValueParser::new())]
    heal_stranded: bool,
    /// File with the API key of netguard's role on Gluetun's control server, for every
    /// gateway without credentials of its own ([[gluetun_auth]]).
    #[arg(long, env = "NETGUARD_GLUETUN_API_KEY_FILE")]
    gluetun_api_key_file: Option<PathBuf>,
    /// The same key as a value (prefer the file: the environment shows in `docker inspect`).
    #[arg(long, env = "NETGUARD_GLUETUN_API_KEY", hide_env_values = true)]
    gluetun_api_key: Option<String>,
}

/// An empty `NETGUARD_*` variable counts as unset: Compose passes optional settings as
/// `${NETGUARD_X:-}`, which sets them empty.
fn drop_empty_settings() {
    for (key, value) in std::env::vars_os() {
        if value.is_empty() && key.to_string_lossy().starts_with("NETGUARD_") {
            // SAFETY: called first thing in main, before any other thread exists.
            unsafe { std::env::remove_var(key) };
        }
    }
}

fn main() -> ExitCode {
    drop_empty_settings();
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
        } => agent
            .client()
            .map_err(Into::into)
            .and_then(|client| cli::status(client, &pin_dir, json)),
        Command::Doctor {
            agent,
            pin_dir,
            docker_socket,
        } => cli::doctor(agent.client().ok().flatten(), &pin_dir, &docker_socket),
        Command::Observe { agent, json } => agent
            .client()
            .map_err(Into::into)
            .and_then(|client| cli::observe(client, json)),
        Command::Enforcing {
            pin_dir,
            without_classifier,
        } => cli::enforcing(&pin_dir, without_classifier),
        Command::Unload { pin_dir } => cli::unload(&pin_dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            if let Some(config_error) = error.downcast_ref::<ConfigError>() {
                eprintln!("netguard: {config_error}");
                return ExitCode::from(EXIT_CONFIG);
            }
            if let Some(denied) = error.downcast_ref::<PrivilegeError>() {
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
        api_token_file: args.api_token_file,
        max_flow_streams: args.max_flow_streams,
        resync_secs: args.resync_secs,
        heal_stranded: args.heal_stranded,
        gluetun_api_key_file: args.gluetun_api_key_file,
        gluetun_api_key: args
            .gluetun_api_key
            .map(netguard::config::gluetun::Secret::Value),
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

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    /// Compose passes `NETGUARD_ATTACH_CGROUPS: ${NETGUARD_ATTACH_CGROUPS:-}`: an empty
    /// value must mean "not set" (the cgroup2 root), not one empty path.
    #[test]
    fn an_empty_environment_value_is_no_value() {
        // SAFETY: this test process's own environment, read by the parse below only.
        unsafe {
            std::env::set_var("NETGUARD_ATTACH_CGROUPS", "");
            std::env::set_var("NETGUARD_GLUETUN_API_KEY", "");
            std::env::set_var("NETGUARD_HEAL_STRANDED", "1");
        }
        drop_empty_settings();
        let cli = Cli::try_parse_from(["netguard", "run"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert!(args.attach_cgroups.is_empty(), "{:?}", args.attach_cgroups);
        assert!(args.gluetun_api_key.is_none());
        assert!(args.heal_stranded, "1 is true, as users write it");
    }
}
