//! Builds the two eBPF objects (tcpcopy-ebpf, intercept-ebpf) with aya-build
//! so the binaries can embed them. Stops with one line naming the fix when the
//! eBPF toolchain (nightly rust-src, bpf-linker) is missing.
use std::{path::Path, process::Command};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=build.rs");
    prefer_static_libelf_and_zlib()?;
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

/// xsk-rs's libxdp and libbpf ask the linker for `-lelf` and `-lz`,
/// which it finds as shared libraries. Linked here as static archives
/// (from a directory of our own that holds only them), this crate's
/// copies come first on the link line and define those symbols, so the
/// binaries need nothing but the C library at run time.
fn prefer_static_libelf_and_zlib() -> anyhow::Result<()> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("static-libs");
    std::fs::create_dir_all(&out)?;
    let dirs = [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
    ];
    println!("cargo:rustc-link-search=native={}", out.display());
    for (lib, name) in [("libelf.a", "elf"), ("libz.a", "z")] {
        let Some(found) = dirs
            .iter()
            .map(|d| Path::new(d).join(lib))
            .find(|p| p.exists())
        else {
            println!("cargo:warning={lib} not found: the binaries will need lib{name}.so");
            continue;
        };
        let link = out.join(lib);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(found, &link)?;
        println!("cargo:rustc-link-lib=static={name}");
    }
    Ok(())
}
