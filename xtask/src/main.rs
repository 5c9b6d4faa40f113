//! netguard's tasks: `cargo xtask test` (the one command that sets up a fresh machine and
//! runs every check), `cargo xtask run` (the agent with its built-in defaults), and the
//! tasks around them.

mod bench;
mod cmd;
mod dist;
mod fuzz;
mod layers;
mod setup;
mod sweep;
mod test;

use std::{
    env,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

use crate::cmd::{cargo, privileged, step};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing, check formatting and lints, run unit and privileged tests.
    Test {
        /// Only these privileged test targets (e.g. `killswitch`); default: all.
        #[arg(long = "lab")]
        lab: Vec<String>,
    },
    /// Formatting, lints (user space and eBPF) and the agent's module graph, without tests.
    Check,
    /// Install what is missing, build, and run the agent (`netguard run ARGS...`).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Static (musl) release binaries for x86_64 and aarch64 in target/dist/.
    Dist,
    /// The container image (`netguard:latest`, FROM scratch) from the Dockerfile.
    Image,
    /// Fuzz the packet parser the kernel programs run (cargo fuzz, nightly).
    Fuzz {
        /// How long, in seconds.
        #[arg(long, default_value_t = 600)]
        seconds: u64,
    },
    /// The benchmark: netguard beside no filter and iptables + ipset, in one run (as root).
    Bench {
        /// A netguard binary to measure instead of this tree's release build (e.g. an older
        /// version's, for a before/after comparison).
        #[arg(long)]
        netguard: Option<PathBuf>,
        /// Interleaved rounds (every case once per round).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Rounds of the paired measure (batches of datagrams from sockets without a filter,
        /// protected by netguard and filtered by iptables + ipset, in turn); 0 leaves it out.
        #[arg(long, default_value_t = 3000)]
        paired: usize,
    },
    /// The paired measure's sender (run by `bench`).
    #[command(hide = true)]
    Flood {
        /// The receiver's network namespace (under /run/netns).
        #[arg(long)]
        receiver_ns: String,
        /// Where the sink is bound in it.
        #[arg(long)]
        sink: std::net::SocketAddr,
        /// NETNS,CGROUP,ADDR:PORT of each sender socket.
        #[arg(long = "socket", required = true)]
        sockets: Vec<bench::flood::Sender>,
        #[arg(long)]
        rounds: usize,
    },
    /// Remove what an interrupted test run left (as root; `cargo xtask test` does it first).
    Sweep {
        /// The netguard binary that unloads leftover pins.
        netguard: PathBuf,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let root = workspace_root();
    env::set_current_dir(&root)?;
    match cli.command {
        Task::Test { lab } => test::test(&root, &lab),
        Task::Check => test::check(&root),
        Task::Run { args } => run_agent(&root, &args),
        Task::Dist => dist::dist(&root).map(drop),
        Task::Bench {
            netguard,
            rounds,
            paired,
        } => bench::bench(&root, netguard, rounds, paired),
        Task::Flood {
            receiver_ns,
            sink,
            sockets,
            rounds,
        } => bench::flood::flood(&receiver_ns, sink, &sockets, rounds),
        Task::Image => dist::image(&root),
        Task::Fuzz { seconds } => fuzz::fuzz(&root, seconds),
        Task::Sweep { netguard } => {
            sweep::sweep(&netguard);
            Ok(())
        }
    }
}

fn run_agent(root: &Path, args: &[String]) -> Result<()> {
    setup::install_missing()?;
    step("building netguard (release)");
    cargo(&["build", "--release", "-p", "netguard"])?;
    let binary = root.join("target/release/netguard");
    let status = privileged(&binary)
        .arg("run")
        .args(args)
        .status()
        .context("starting netguard")?;
    if !status.success() {
        bail!("netguard run exited with {status}");
    }
    Ok(())
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}
