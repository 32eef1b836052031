//! `cargo xtask fuzz [--seconds N] [--target NAME]`: every cargo-fuzz
//! target in `fuzz/` (packet parser and session engine, control-channel
//! codecs, capture-file reader, option parsers), each for N seconds, on the
//! nightly toolchain. `cargo xtask test` runs each for a few seconds. A
//! crash stops the run; its input lands in `fuzz/artifacts/TARGET/` and
//! belongs in a regression test.

use anyhow::{bail, Result};

use crate::util;

pub const TARGETS: &[&str] = &["packet", "control", "pcap", "options"];

pub fn fuzz(seconds: u64, only: Option<&str>) -> Result<()> {
    crate::setup::setup(false)?;
    let chosen: Vec<&str> = TARGETS
        .iter()
        .copied()
        .filter(|t| only.is_none_or(|o| *t == o))
        .collect();
    if chosen.is_empty() {
        bail!("--target: no fuzz target named {only:?} (there are {TARGETS:?})");
    }
    let root = util::root();
    for target in chosen {
        println!("fuzz: {target} for {seconds} s");
        std::fs::create_dir_all(root.join("fuzz/corpus").join(target))?;
        let seeds = root.join("fuzz/seeds").join(target);
        let mut args = vec![
            "+nightly".to_string(),
            "fuzz".into(),
            "run".into(),
            target.into(),
            format!("fuzz/corpus/{target}"),
        ];
        if seeds.is_dir() {
            args.push(seeds.display().to_string());
        }
        args.extend([
            "--".into(),
            format!("-max_total_time={seconds}"),
            "-rss_limit_mb=4096".into(),
            "-print_final_stats=1".into(),
        ]);
        let status = std::process::Command::new("cargo")
            .args(&args)
            .current_dir(&root)
            .status()?;
        if !status.success() {
            bail!(
                "fuzz target {target} failed: the input is in fuzz/artifacts/{target}/; \
                 reproduce with `cargo +nightly fuzz run {target} FILE` and add it as a test"
            );
        }
    }
    Ok(())
}
