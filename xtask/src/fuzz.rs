//! `cargo xtask fuzz`: the packet parser under libFuzzer (cargo fuzz, nightly), for as long
//! as asked. Not part of `cargo xtask test` (it takes minutes); run it after changing
//! `netguard-common/src/parse.rs`.

use std::{path::Path, process::Command};

use anyhow::Result;

use crate::{
    cmd::{run_checked, step},
    setup::ensure_cargo_fuzz,
};

pub fn fuzz(root: &Path, seconds: u64) -> Result<()> {
    ensure_cargo_fuzz()?;
    step(&format!("fuzzing the packet parser for {seconds} s"));
    run_checked(
        Command::new("cargo")
            .args([
                "+nightly",
                "fuzz",
                "run",
                "--fuzz-dir",
                "fuzz",
                "parse",
                "--",
            ])
            .arg(format!("-max_total_time={seconds}"))
            .current_dir(root),
    )
}
