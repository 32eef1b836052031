//! `cargo xtask dist`: what an SRE installs. A tarball and a `.deb`
//! (package `tcpcopy-rs`: Debian's `tcpcopy` is the C tool) with both
//! binaries, man pages and bash, zsh and fish completions generated from
//! the option definitions (the binaries' hidden `--generate`), systemd
//! units that run with the capabilities the programs need instead of full
//! root and with systemd's hardening, and an options file for each.
//!
//! [`installed_package_works`] is the lab test: it installs the `.deb`,
//! runs the installed `intercept -v` and `tcpcopy --check` (which passes
//! in the lab), verifies the units where `systemd-analyze` exists, and
//! removes the package again.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

use crate::{
    lab::ONLINE,
    replay,
    util::{self, sh},
};

const PACKAGE: &str = "tcpcopy-rs";
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `cargo xtask dist`: build, then package into `target/dist/`.
pub fn dist() -> Result<()> {
    crate::setup::setup(false)?;
    util::cargo(&["build", "--release"])?;
    let (deb, tarball) = package()?;
    println!("{}\n{}", deb.display(), tarball.display());
    Ok(())
}

fn dist_dir() -> PathBuf {
    util::root().join("target/dist")
}

/// Package the release binaries: (the .deb, the tarball).
pub fn package() -> Result<(PathBuf, PathBuf)> {
    let release = util::root().join("target/release");
    let stage = dist_dir().join("root");
    let _ = std::fs::remove_dir_all(&stage);
    let put = |rel: &str, bytes: &[u8], mode: u32| -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let p = stage.join(rel);
        std::fs::create_dir_all(p.parent().expect("a file in a directory"))?;
        std::fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    for bin in ["tcpcopy", "intercept"] {
        let exe = release.join(bin);
        put(&format!("usr/bin/{bin}"), &std::fs::read(&exe)?, 0o755)?;
        let generated = |what: &str| -> Result<Vec<u8>> {
            let out = std::process::Command::new(&exe)
                .args(["--generate", what])
                .output()?;
            ensure!(out.status.success(), "{bin} --generate {what} failed");
            Ok(out.stdout)
        };
        put(
            &format!("usr/share/man/man8/{bin}.8"),
            &generated("man")?,
            0o644,
        )?;
        put(
            &format!("usr/share/bash-completion/completions/{bin}"),
            &generated("bash")?,
            0o644,
        )?;
        put(
            &format!("usr/share/zsh/vendor-completions/_{bin}"),
            &generated("zsh")?,
            0o644,
        )?;
        put(
            &format!("usr/share/fish/vendor_completions.d/{bin}.fish"),
            &generated("fish")?,
            0o644,
        )?;
        put(
            &format!("lib/systemd/system/{bin}.service"),
            unit(bin).as_bytes(),
            0o644,
        )?;
        put(
            &format!("etc/default/{bin}"),
            options_file(bin).as_bytes(),
            0o644,
        )?;
    }
    put(
        &format!("usr/share/doc/{PACKAGE}/README.md"),
        &std::fs::read(util::root().join("README.md"))?,
        0o644,
    )?;
    // The tarball: the same tree, without the Debian control files.
    let tarball = dist_dir().join(format!("{PACKAGE}-{VERSION}-x86_64-linux.tar.gz"));
    sh(&format!(
        "tar -czf {} -C {} --owner=0 --group=0 .",
        tarball.display(),
        stage.display()
    ))?;
    let arch = String::from_utf8(util::output("dpkg --print-architecture")?.stdout)?
        .trim()
        .to_string();
    put("DEBIAN/control", control(&arch).as_bytes(), 0o644)?;
    put(
        "DEBIAN/conffiles",
        b"/etc/default/tcpcopy\n/etc/default/intercept\n",
        0o644,
    )?;
    let deb = dist_dir().join(format!("{PACKAGE}_{VERSION}_{arch}.deb"));
    sh(&format!(
        "dpkg-deb --root-owner-group -Zgzip --build {} {} > /dev/null",
        stage.display(),
        deb.display()
    ))?;
    Ok((deb, tarball))
}

fn control(arch: &str) -> String {
    format!(
        "Package: {PACKAGE}\n\
         Version: {VERSION}\n\
         Architecture: {arch}\n\
         Maintainer: tcpcopy (Rust) developers <tcpcopy-rs@localhost>\n\
         Depends: libc6 (>= 2.34)\n\
         Section: net\n\
         Priority: optional\n\
         Description: live TCP traffic replication (tcpcopy and intercept, XDP/AF_XDP)\n \
         tcpcopy captures client traffic on a production host or a mirror port\n \
         with XDP and replays whole sessions to a test server; intercept, on an\n \
         assistant host, drops the test server's answers and returns their\n \
         headers to tcpcopy. Wire-compatible with the C tools (protocol 6).\n"
    )
}

/// The capabilities each program needs (see README: "What the host
/// needs").
fn capabilities(bin: &str) -> &'static str {
    match bin {
        "tcpcopy" => "CAP_BPF CAP_PERFMON CAP_NET_ADMIN CAP_NET_RAW",
        _ => "CAP_BPF CAP_PERFMON CAP_NET_ADMIN",
    }
}

/// A systemd unit: the options from /etc/default, no root but the
/// capabilities, and the hardening that leaves the programs what they
/// use (BPF, XDP and AF_XDP sockets, raw and packet sockets, netlink).
fn unit(bin: &str) -> String {
    let what = match bin {
        "tcpcopy" => "replay live TCP traffic to a test server",
        _ => "take a test server's answers for tcpcopy",
    };
    let env = bin.to_uppercase();
    let caps = capabilities(bin);
    format!(
        "[Unit]\n\
         Description={bin}: {what}\n\
         Documentation=man:{bin}(8)\n\
         After=network-online.target\n\
         Wants=network-online.target\n\
         \n\
         [Service]\n\
         Type=simple\n\
         EnvironmentFile=/etc/default/{bin}\n\
         ExecStart=/usr/bin/{bin} ${env}_OPTS\n\
         ExecStartPre=/usr/bin/{bin} --version\n\
         Restart=on-failure\n\
         RestartSec=5\n\
         DynamicUser=yes\n\
         AmbientCapabilities={caps}\n\
         CapabilityBoundingSet={caps}\n\
         NoNewPrivileges=yes\n\
         LimitMEMLOCK=infinity\n\
         ProtectSystem=strict\n\
         ProtectHome=yes\n\
         PrivateTmp=yes\n\
         PrivateDevices=yes\n\
         ProtectKernelModules=yes\n\
         ProtectKernelLogs=yes\n\
         ProtectControlGroups=yes\n\
         ProtectClock=yes\n\
         ProtectHostname=yes\n\
         RestrictNamespaces=yes\n\
         RestrictRealtime=yes\n\
         RestrictSUIDSGID=yes\n\
         LockPersonality=yes\n\
         MemoryDenyWriteExecute=yes\n\
         SystemCallArchitectures=native\n\
         RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK AF_PACKET AF_XDP\n\
         StateDirectory={bin}\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    )
}

/// /etc/default/BIN: the options the unit starts the program with.
fn options_file(bin: &str) -> String {
    let example = match bin {
        "tcpcopy" => {
            "-x 80-10.0.2.2:8080 -s 10.0.4.3 -c 62.135.200.x -i eth0 --metrics 127.0.0.1:9101"
        }
        _ => "-i eth0 -F 'tcp and src port 8080' -b 10.0.4.3 --allow 10.0.4.0/24",
    };
    format!(
        "# Options of the {bin} service (man {bin}; try them with `{bin} --check OPTIONS` first).\n\
         # The service logs to the journal; -d, -l and -P are not needed here.\n\
         # Example:\n\
         #   {}_OPTS=\"{example}\"\n\
         {}_OPTS=\"\"\n",
        bin.to_uppercase(),
        bin.to_uppercase()
    )
}

/// Every installed file of the package.
const FILES: &[&str] = &[
    "/usr/bin/tcpcopy",
    "/usr/bin/intercept",
    "/usr/share/man/man8/tcpcopy.8",
    "/usr/share/bash-completion/completions/intercept",
    "/usr/share/zsh/vendor-completions/_tcpcopy",
    "/usr/share/fish/vendor_completions.d/intercept.fish",
    "/lib/systemd/system/tcpcopy.service",
    "/etc/default/intercept",
];

/// The lab test: the package installs, what it installed works (the
/// binaries need only the C library, `intercept -v`, `tcpcopy --check`
/// passes in the lab), its units verify, and it is removed again. The
/// package is installed only when the host has neither it nor a
/// `tcpcopy`/`intercept` of its own in /usr/bin (then it is unpacked
/// into a scratch directory instead, and said so).
pub fn installed_package_works() -> Result<()> {
    let (deb, tarball) = package()?;
    ensure!(tarball.exists(), "no tarball");
    let contents =
        String::from_utf8(util::output(&format!("dpkg-deb -c {}", deb.display()))?.stdout)?;
    for f in FILES {
        ensure!(
            contents.contains(&format!(".{f}")),
            "{f} missing from the .deb"
        );
    }
    let ours_installed = util::output(&format!("dpkg -s {PACKAGE}"))?
        .status
        .success();
    let foreign = ["/usr/bin/tcpcopy", "/usr/bin/intercept"]
        .iter()
        .any(|p| Path::new(p).exists());
    if ours_installed || foreign {
        let dir = dist_dir().join("unpacked");
        let _ = std::fs::remove_dir_all(&dir);
        sh(&format!("dpkg -x {} {}", deb.display(), dir.display()))?;
        println!(
            "    this host already has {}: unpacked into {} instead of installing",
            if ours_installed {
                PACKAGE
            } else {
                "a tcpcopy or intercept in /usr/bin"
            },
            dir.display()
        );
        return try_installed(&dir);
    }
    sh(&format!("dpkg -i {} > /dev/null", deb.display())).context("installing the .deb")?;
    let tried = try_installed(Path::new("/"));
    let removed = sh(&format!("dpkg --purge {PACKAGE} > /dev/null"));
    tried?;
    removed.context("removing the package")?;
    for f in FILES {
        ensure!(!Path::new(f).exists(), "{f} left behind after purge");
    }
    println!("    installed, tried and purged {}", deb.display());
    Ok(())
}

/// Run what the package put under `root`.
fn try_installed(root: &Path) -> Result<()> {
    let bin = |b: &str| root.join("usr/bin").join(b);
    let ldd =
        String::from_utf8(util::output(&format!("ldd {}", bin("tcpcopy").display()))?.stdout)?;
    for line in ldd.lines() {
        let lib = line.split_whitespace().next().unwrap_or("");
        let ok = [
            "linux-vdso",
            "libc.so",
            "libm.so",
            "libgcc_s.so",
            "ld-linux",
            "/lib64/ld-linux",
        ]
        .iter()
        .any(|l| lib.contains(l));
        ensure!(ok, "tcpcopy needs {lib} at run time:\n{ldd}");
    }
    let v = util::output(&format!("{} -v", bin("intercept").display()))?;
    let version = String::from_utf8_lossy(&v.stdout);
    ensure!(
        v.status.success() && version.contains(VERSION),
        "intercept -v: {version}"
    );
    println!("    {}", version.trim());
    // The loop probe through the lab's intercept, with the installed tcpcopy.
    let mut intercept = replay::start_intercept("dist")?;
    let check = util::output(&format!(
        "ip netns exec {ONLINE} {} --check -x 80-10.0.2.2:8080 -s 10.0.4.3 -i onl0 -c 10.9.9.x",
        bin("tcpcopy").display()
    ))?;
    intercept.stop()?;
    let text = String::from_utf8_lossy(&check.stdout);
    ensure!(
        check.status.success() && text.contains("the loop works"),
        "the installed tcpcopy --check:\n{text}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    println!("    the installed tcpcopy --check passed: the loop works");
    if root != Path::new("/") {
        println!("    not installed: the units were not verified (their ExecStart is /usr/bin)");
    } else if util::output("command -v systemd-analyze")?.status.success() {
        for unit in ["tcpcopy", "intercept"] {
            let path = root.join(format!("lib/systemd/system/{unit}.service"));
            let out = util::output(&format!("systemd-analyze verify {} 2>&1", path.display()))?;
            let text = String::from_utf8_lossy(&out.stdout);
            if !out.status.success() {
                bail!("systemd-analyze verify {unit}.service:\n{text}");
            }
        }
        println!("    systemd-analyze verify: both units pass");
    } else {
        println!("    no systemd-analyze on this host: the units were not verified");
    }
    Ok(())
}
