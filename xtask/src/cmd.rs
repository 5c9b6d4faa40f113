//! Running commands: checked, as root when needed, with a step header.

use std::{ffi::OsStr, process::Command};

use anyhow::{Context as _, Result, bail};

/// Runs `command`; an error names it and its exit status.
pub fn run_checked(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("starting {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}

/// `cargo ARGS`, checked.
pub fn cargo(args: &[&str]) -> Result<()> {
    run_checked(Command::new("cargo").args(args))
}

/// Announces a step of a task.
pub fn step(what: &str) {
    eprintln!("\n==> {what}");
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `program`, through `sudo -E` unless already root.
pub fn privileged(program: impl AsRef<OsStr>) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut command = Command::new("sudo");
        command.arg("-E").arg(program);
        command
    }
}

/// The host's Rust target triple.
pub fn host_triple() -> Result<String> {
    let out = Command::new("rustc").arg("-vV").output()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .context("rustc -vV printed no host")
}

/// A command's standard output as text, or empty if it could not run.
pub fn output_of(command: &mut Command) -> String {
    command
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}
