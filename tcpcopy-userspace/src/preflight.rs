//! `--check`, the part both programs share: a checklist printed line by
//! line (`[ ok ]`, `[warn]`, `[FAIL]`) of what a run needs from the host:
//! the kernel's features, root or the capabilities, the interfaces (up,
//! MTU, RX queues, driver), that the eBPF program loads (the verifier
//! takes it; nothing is attached) and the route to an address. The
//! program-specific checks (tcpcopy's loop probe, intercept's forwarding)
//! add lines to the same list.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    path::Path,
};

/// How one check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

/// The checklist: printed as it is built; failed when a line failed.
#[derive(Debug, Default)]
pub struct Checklist {
    failures: usize,
}

impl Checklist {
    pub fn line(&mut self, v: Verdict, what: impl AsRef<str>) {
        let tag = match v {
            Verdict::Ok => "[ ok ]",
            Verdict::Warn => "[warn]",
            Verdict::Fail => "[FAIL]",
        };
        if v == Verdict::Fail {
            self.failures += 1;
        }
        println!("{tag} {}", what.as_ref());
    }
    pub fn ok(&mut self, what: impl AsRef<str>) {
        self.line(Verdict::Ok, what);
    }
    pub fn warn(&mut self, what: impl AsRef<str>) {
        self.line(Verdict::Warn, what);
    }
    pub fn fail(&mut self, what: impl AsRef<str>) {
        self.line(Verdict::Fail, what);
    }
    /// An indented explanation under the last line.
    pub fn note(&self, text: impl AsRef<str>) {
        for l in text.as_ref().lines() {
            println!("       {l}");
        }
    }
    pub fn failures(&self) -> usize {
        self.failures
    }
    /// The end: an error naming how many checks failed, if any did.
    pub fn finish(self) -> anyhow::Result<()> {
        match self.failures {
            0 => {
                println!("every check passed");
                Ok(())
            }
            n => anyhow::bail!("--check: {n} check(s) failed"),
        }
    }
}

/// The running kernel's version, from uname.
fn kernel_version() -> Option<(String, u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let release = release.trim().to_string();
    let mut parts = release.split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((release, major, minor))
}

/// The kernel has what the programs use: BPF ring buffers (5.8), XDP
/// through bpf_link (5.9), maps charged to the memory cgroup (5.11),
/// AF_XDP (4.18).
pub fn kernel(list: &mut Checklist) {
    match kernel_version() {
        Some((release, major, minor)) if (major, minor) >= (5, 11) => list.ok(format!(
            "kernel {release}: BPF ring buffer, XDP through bpf_link, AF_XDP, maps charged to the memory cgroup"
        )),
        Some((release, major, minor)) if (major, minor) >= (5, 9) => list.warn(format!(
            "kernel {release}: works; maps are charged to RLIMIT_MEMLOCK before 5.11 (raised at start)"
        )),
        Some((release, _, _)) => list.fail(format!(
            "kernel {release}: 5.9 or later is needed (BPF ring buffer 5.8, XDP through bpf_link 5.9)"
        )),
        None => list.warn("kernel version unknown (/proc/sys/kernel/osrelease)"),
    }
}

const CAP_NET_ADMIN: u32 = 12;
const CAP_NET_RAW: u32 = 13;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The effective capability set of this process.
fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Root, or the capabilities loading XDP, AF_XDP and raw sockets take.
pub fn privileges(list: &mut Checklist, raw_sockets: bool) {
    // SAFETY: geteuid has no failure mode.
    let root = unsafe { libc::geteuid() } == 0;
    let Some(caps) = effective_caps() else {
        list.warn("capabilities unknown (/proc/self/status)");
        return;
    };
    let has = |c: u32| caps & (1 << c) != 0;
    let mut needed = vec![("CAP_NET_ADMIN", CAP_NET_ADMIN)];
    if !has(CAP_SYS_ADMIN) {
        needed.extend([("CAP_BPF", CAP_BPF), ("CAP_PERFMON", CAP_PERFMON)]);
    }
    if raw_sockets {
        needed.push(("CAP_NET_RAW", CAP_NET_RAW));
    }
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(_, c)| !has(*c))
        .map(|(n, _)| *n)
        .collect();
    let who = if root { "root" } else { "not root" };
    if missing.is_empty() {
        list.ok(format!(
            "privileges: {who}, with {}",
            needed
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    } else {
        list.fail(format!(
            "privileges: {who}, missing {} (run as root, or grant them: setcap or the systemd unit's AmbientCapabilities)",
            missing.join(", ")
        ));
    }
}

fn sys(iface: &str, file: &str) -> Option<String> {
    std::fs::read_to_string(format!("/sys/class/net/{iface}/{file}"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Each interface exists and is up; its MTU, RX queues and driver (XDP
/// runs in the driver where the driver has it, else generic mode, which
/// costs a copy per frame).
pub fn interfaces(list: &mut Checklist, ifaces: &[String], mtu: Option<u16>) {
    for iface in ifaces {
        if !Path::new(&format!("/sys/class/net/{iface}")).exists() {
            list.fail(format!("interface {iface}: no such interface"));
            continue;
        }
        let state = sys(iface, "operstate").unwrap_or_default();
        let if_mtu: u32 = sys(iface, "mtu").and_then(|m| m.parse().ok()).unwrap_or(0);
        let queues = std::fs::read_dir(format!("/sys/class/net/{iface}/queues"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                    .count()
            })
            .unwrap_or(0);
        let driver = std::fs::read_link(format!("/sys/class/net/{iface}/device/driver"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "virtual".into());
        let text = format!(
            "interface {iface}: {state}, MTU {if_mtu}, {queues} RX queue(s), driver {driver}"
        );
        if state == "down" {
            list.fail(format!("{text}: it is down"));
        } else {
            list.ok(text);
        }
        if let Some(m) = mtu {
            if if_mtu > m as u32 {
                list.warn(format!(
                    "interface {iface}: MTU {if_mtu} is above -M {m}: longer captured segments are cut"
                ));
            }
        }
    }
}

/// The eBPF object's program passes the verifier (loaded, not attached).
pub fn program_loads(list: &mut Checklist, what: &str, load: impl FnOnce() -> anyhow::Result<()>) {
    match load() {
        Ok(()) => list.ok(format!(
            "{what}: loads (the verifier takes it; not attached)"
        )),
        Err(e) => list.fail(format!("{what}: does not load: {e:#}")),
    }
}

/// The source address the kernel would send to `to` from (a UDP
/// connect: nothing is sent), or why there is no route.
pub fn route_to(to: IpAddr) -> Result<IpAddr, String> {
    let any: SocketAddr = match to {
        IpAddr::V4(_) => "0.0.0.0:0".parse().unwrap(),
        IpAddr::V6(_) => "[::]:0".parse().unwrap(),
    };
    let s = UdpSocket::bind(any).map_err(|e| e.to_string())?;
    s.connect(SocketAddr::new(to, 9))
        .map_err(|e| e.to_string())?;
    Ok(s.local_addr().map_err(|e| e.to_string())?.ip())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn the_checklist_counts_failures() {
        let mut l = Checklist::default();
        l.ok("fine");
        l.warn("hm");
        assert!(Checklist::default().finish().is_ok());
        l.fail("broken");
        assert_eq!(l.failures(), 1);
        assert!(l.finish().unwrap_err().to_string().contains("1 check"));
    }

    #[test]
    fn loopback_has_a_route() {
        let lo = IpAddr::from(Ipv4Addr::LOCALHOST);
        assert_eq!(route_to(lo), Ok(lo));
    }
}
