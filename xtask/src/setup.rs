//! `cargo xtask setup`: installs what the build, the tests and the lab need,
//! idempotently (a second run changes nothing and takes well under 2 s):
//! Debian packages, rust-src for the nightly that builds the eBPF objects,
//! and bpf-linker built against that nightly's own libLLVM.

use crate::util::{output, sh};
use anyhow::{bail, Context, Result};
use std::{path::PathBuf, process::Command};

/// Debian packages: the xsk-rs C build (libxdp wants libpcap headers), the lab's servers and load tools.
const PACKAGES: &[&str] = &[
    "clang",
    "m4",
    "libelf-dev",
    "libpcap-dev",
    "pkg-config",
    "zlib1g-dev",
    "make",
    "iproute2",
    "iputils-ping",
    "ethtool",
    "tcpdump",
    "nginx-light",
    "redis-server",
    "redis-tools",
    "wrk",
    "iperf3",
    "curl",
    "fonts-dejavu-core",
    // perf: the cost benchmark counts system calls with `perf stat`.
    "linux-perf",
];
/// Packages whose install may start a distro daemon, and its unit.
const DAEMONS: &[(&str, &str)] = &[("nginx-light", "nginx"), ("redis-server", "redis-server")];

/// Is the distro's unit running (its init script's own check)?
fn service_running(unit: &str) -> bool {
    crate::util::sh_ok(&format!("service {unit} status"))
}

const BPF_LINKER_VERSION: &str = "0.13.0";
const EBPF_TOOLCHAIN: &str = "nightly";

/// `verbose`: say what is already in place too (the explicit `setup` task).
pub fn setup(verbose: bool) -> Result<()> {
    let mut did = Vec::new();
    if let Some(d) = debian_packages()? {
        did.push(d);
    }
    if let Some(d) = rust_src()? {
        did.push(d);
    }
    if let Some(d) = bpf_linker()? {
        did.push(d);
    }
    if let Some(d) = cargo_fuzz()? {
        did.push(d);
    }
    if did.is_empty() {
        if verbose {
            println!("setup: everything is in place (Debian packages, rust-src, bpf-linker {BPF_LINKER_VERSION}, cargo-fuzz)");
        }
    } else {
        for d in did {
            println!("setup: {d}");
        }
    }
    Ok(())
}

fn debian_packages() -> Result<Option<String>> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            let out = output(&format!("dpkg-query -W -f='${{Status}}' {p} 2>/dev/null"));
            !matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(None);
    }
    if !crate::util::is_root() {
        bail!(
            "Debian packages missing ({}) and not root: install them or run as root",
            missing.join(" ")
        );
    }
    println!("setup: installing Debian packages: {}", missing.join(" "));
    // Distro daemons the install could start, and whether each ran before.
    let daemons: Vec<(&str, bool)> = DAEMONS
        .iter()
        .filter(|(package, _)| missing.contains(package))
        .map(|&(_, unit)| (unit, service_running(unit)))
        .collect();
    // Keep distro services (nginx, redis) from starting outside the lab.
    let policy = "/usr/sbin/policy-rc.d";
    let had_policy = std::path::Path::new(policy).exists();
    if !had_policy {
        std::fs::write(policy, "#!/bin/sh\nexit 101\n")?;
        sh(&format!("chmod 755 {policy}"))?;
    }
    let result = sh("apt-get update -q >/dev/null").and_then(|_| {
        sh(&format!(
            "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends {} >/dev/null",
            missing.join(" ")
        ))
    });
    if !had_policy {
        let _ = std::fs::remove_file(policy);
    }
    result.context("apt-get install")?;
    // policy-rc.d keeps the daemons from starting; should a postinst start
    // one anyway, stop that unit (by its own pidfile, through its init
    // script), and only if it did not run before: the lab runs its own
    // servers, and a user's own nginx or redis is never touched.
    for (unit, ran_before) in daemons {
        if !ran_before && service_running(unit) {
            println!("setup: the install started {unit}; stopping that unit");
            crate::util::sh_quiet(&format!("service {unit} stop"));
        }
    }
    Ok(Some(format!("installed {}", missing.join(" "))))
}

fn nightly_sysroot() -> Result<PathBuf> {
    let out = Command::new("rustc")
        .args([&format!("+{EBPF_TOOLCHAIN}"), "--print", "sysroot"])
        .output()
        .context("running rustc +nightly (is rustup installed?)")?;
    if !out.status.success() {
        bail!(
            "the {EBPF_TOOLCHAIN} toolchain is not installed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn rust_src() -> Result<Option<String>> {
    let sysroot = nightly_sysroot()?;
    if sysroot.join("lib/rustlib/src/rust/library/core").exists() {
        return Ok(None);
    }
    sh(&format!(
        "rustup component add rust-src --toolchain {EBPF_TOOLCHAIN}"
    ))?;
    Ok(Some(format!("added rust-src to {EBPF_TOOLCHAIN}")))
}

/// cargo-fuzz, for `cargo xtask fuzz` (and the short fuzz in `test`).
fn cargo_fuzz() -> Result<Option<String>> {
    let works = || {
        matches!(Command::new("cargo").args(["fuzz", "--version"]).output(),
            Ok(o) if o.status.success())
    };
    if works() {
        return Ok(None);
    }
    println!("setup: building cargo-fuzz (a minute or two)");
    let status = Command::new("cargo")
        .args(["install", "cargo-fuzz", "--locked"])
        .status()?;
    if !status.success() || !works() {
        bail!("installing cargo-fuzz failed");
    }
    Ok(Some("installed cargo-fuzz".into()))
}

fn bpf_linker_works() -> bool {
    matches!(
        Command::new("bpf-linker").arg("--version").output(),
        Ok(o) if o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)
    )
}

fn bpf_linker() -> Result<Option<String>> {
    if bpf_linker_works() {
        return Ok(None);
    }
    // Build against the nightly's own libLLVM; the prefix must outlive the
    // build (its lib/ is baked into the binary's RUNPATH).
    let lib = nightly_sysroot()?.join("lib");
    let llvm = std::fs::read_dir(&lib)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so.") && n.contains("-rust-"))
        .context("no libLLVM.so.*-rust-* in the nightly toolchain")?;
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let prefix = PathBuf::from(home).join(".local/share/bpf-llvm");
    std::fs::create_dir_all(prefix.join("lib"))?;
    for name in ["libLLVM.so".to_string(), llvm.clone()] {
        let link = prefix.join("lib").join(&name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(lib.join(&llvm), &link)?;
    }
    println!("setup: building bpf-linker {BPF_LINKER_VERSION} against {llvm} (a few minutes)");
    let status = Command::new("cargo")
        .args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--no-default-features",
            "--features",
            "llvm-22",
            "--force",
        ])
        .env("LLVM_PREFIX", &prefix)
        .status()?;
    if !status.success() || !bpf_linker_works() {
        bail!("building bpf-linker failed");
    }
    Ok(Some(format!(
        "built bpf-linker {BPF_LINKER_VERSION} (LLVM at {})",
        prefix.display()
    )))
}
