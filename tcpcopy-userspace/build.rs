//! Builds the two eBPF objects (tcpcopy-ebpf, intercept-ebpf) with aya-build
//! so the binaries can embed them. Stops with one line naming the fix when the
//! eBPF toolchain (nightly rust-src, bpf-linker) is missing.
use std::{path::Path, process::Command};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("AYA_BUILD_SKIP").is_none() {
        if let Some(missing) = missing_toolchain() {
            println!(
                "cargo:warning=eBPF toolchain incomplete ({missing}): run `cargo xtask setup`"
            );
            anyhow::bail!("eBPF toolchain incomplete ({missing}): run `cargo xtask setup`");
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned();
    let tcpcopy_ebpf = root.join("tcpcopy-ebpf");
    let intercept_ebpf = root.join("intercept-ebpf");
    println!(
        "cargo:rerun-if-changed={}",
        root.join("tcpcopy-common/src").display()
    );
    aya_build::build_ebpf(
        [
            aya_build::Package {
                name: "tcpcopy-ebpf",
                root_dir: tcpcopy_ebpf.to_str().unwrap(),
                ..Default::default()
            },
            aya_build::Package {
                name: "intercept-ebpf",
                root_dir: intercept_ebpf.to_str().unwrap(),
                ..Default::default()
            },
        ],
        aya_build::Toolchain::Nightly,
    )
}

fn missing_toolchain() -> Option<&'static str> {
    let sysroot = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output()
        .ok()?;
    if !sysroot.status.success() {
        return Some("no nightly toolchain");
    }
    let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_string();
    if !Path::new(&sysroot)
        .join("lib/rustlib/src/rust/library/core")
        .exists()
    {
        return Some("rust-src missing for nightly");
    }
    let linker_ok = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| o.status.success());
    if !matches!(linker_ok, Ok(true)) {
        return Some("bpf-linker missing or broken");
    }
    None
}
