//! Small process helpers shared by the tasks.

use anyhow::{bail, Context, Result};
use std::{
    path::PathBuf,
    process::{Command, Output, Stdio},
};

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn cargo(args: &[&str]) -> Result<()> {
    cargo_env(args, &[])
}

pub fn cargo_env(args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(args).current_dir(root());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let status = cmd
        .status()
        .with_context(|| format!("running cargo {args:?}"))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Run a command, fail with its stderr if it fails.
pub fn sh(cmd: &str) -> Result<()> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        bail!(
            "`{cmd}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Run a command, ignore failure (cleanup paths).
/// Run quietly; true if it succeeded.
pub fn sh_ok(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn sh_quiet(cmd: &str) {
    let _ = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

pub fn output(cmd: &str) -> Result<Output> {
    Ok(Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .output()?)
}

pub fn stdout(cmd: &str) -> String {
    output(cmd)
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

pub fn is_root() -> bool {
    // SAFETY: no arguments, no side effects.
    unsafe { libc_geteuid() == 0 }
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

pub fn require_root(what: &str) -> Result<()> {
    if !is_root() {
        bail!("{what} need root (network namespaces, XDP): run as root");
    }
    Ok(())
}

/// Replace this process with `path args` (so signals reach it directly).
pub fn exec_replace(path: &std::path::Path, args: &[String]) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let err = Command::new(path).args(args).exec();
    Err(err).with_context(|| format!("executing {}", path.display()))
}

/// Build package `package` of commit `rev` in release, in
/// `target/tcl-baseline/` (a baseline for the benchmarks), with the
/// folders `overlay` taken from this tree instead of the commit's (the
/// benchmark's own code, so both builds run the same workloads); returns
/// the folder that holds its binaries, each of `bins` checked there.
pub fn build_commit(rev: &str, package: &str, bins: &[&str], overlay: &[&str]) -> Result<PathBuf> {
    let root = root();
    let src = root.join("target/tcl-baseline/src");
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(&src)?;
    let ok = sh_ok(&format!(
        "cd {} && git archive {rev} | tar -x -C {}",
        root.display(),
        src.display()
    ));
    if !ok {
        bail!("--baseline {rev}: git archive failed (is it a commit of this repository?)");
    }
    for dir in overlay {
        let (from, to) = (root.join(dir), src.join(dir));
        let _ = std::fs::remove_dir_all(&to);
        sh(&format!("cp -r {} {}", from.display(), to.display()))?;
    }
    println!("bench: building the baseline {rev} (a few minutes)");
    let target = root.join("target/tcl-baseline/target");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--package", package])
        .current_dir(&src)
        .env("CARGO_TARGET_DIR", &target)
        .status()?;
    if !status.success() {
        bail!("--baseline {rev}: the build failed");
    }
    let dir = target.join("release");
    for b in bins {
        if !dir.join(b).exists() {
            bail!("--baseline {rev}: no {b} built");
        }
    }
    Ok(dir)
}
