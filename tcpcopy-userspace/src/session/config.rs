//! What the session engine is told by the command line: the `-x` transfer
//! map, the `-c` client pool, replication and port shift, sampling, sizes
//! and timeouts. Parsing of the option strings lives here too, so every
//! parser error names the option and the bad element.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};
use thiserror::Error;

use super::{
    pool::ClientPool,
    shaping::{ClientFilter, Ramp, SessionRate},
};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("-x: bad transfer `{0}`: expected [IP:]PORT-IP:PORT[+IP:PORT...] (an IPv6 address in brackets: [2001:db8::1]:80; one family per rule)")]
    Transfer(String),
    #[error("-c: bad client address `{0}`: expected A.B.C.D, A.B.C.x, an IPv6 address or an IPv6 prefix (2001:db8:ff::/112)")]
    ClientIp(String),
    #[error("-c: more than 4096 client addresses")]
    TooManyClientIps,
    #[error("-c: no usable address (every one is a target address)")]
    EmptyPool,
}

/// One target of a `-x` rule: traffic to `src` (address optional = any
/// address of `dst`'s family) goes to `dst`. A rule naming several targets (`80-A:8080+B:8080`,
/// fan-out) is one `Transfer` per target, side by side, sharing `rule`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transfer {
    pub src_ip: Option<IpAddr>,
    pub src_port: u16,
    pub dst_ip: IpAddr,
    pub dst_port: u16,
    /// `IP:PORT@MAC`: the next hop's MAC for `--send xdp` (otherwise it
    /// comes from the neighbour table).
    pub dst_mac: Option<[u8; 6]>,
    /// Which `-x` rule (0, 1, ...) this target belongs to.
    pub rule: u16,
    /// Which of the run's distinct targets (`Config::targets`) `dst` is.
    pub target: u16,
}

/// `00:13:21:B2:5E:42`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

impl Transfer {
    /// Does a captured packet to (ip, port) match this entry? Only one of
    /// the target's family does: a session is replayed in its own family.
    pub fn matches(&self, ip: IpAddr, port: u16) -> bool {
        self.src_port == port
            && self.dst_ip.is_ipv4() == ip.is_ipv4()
            && self.src_ip.is_none_or(|a| a == ip)
    }
}

/// `IP:PORT`, `[IPV6]:PORT`; with `port_only`, also a bare `PORT`.
fn parse_endpoint(s: &str, port_only: bool) -> Option<(Option<IpAddr>, u16)> {
    let (ip, port) = if let Some(rest) = s.strip_prefix('[') {
        let (ip, port) = rest.split_once("]:")?;
        (Some(IpAddr::V6(ip.parse::<Ipv6Addr>().ok()?)), port)
    } else if let Some((ip, port)) = s.rsplit_once(':') {
        (Some(IpAddr::V4(ip.parse::<Ipv4Addr>().ok()?)), port)
    } else if port_only {
        (None, s)
    } else {
        return None;
    };
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    Some((ip, port))
}

/// Parse a `-x` list: `[IP:]PORT-IP:PORT[+IP:PORT...][,...]`, an IPv6
/// address in brackets. MAC suffixes (`@MAC`) of the C tool's pcap-send
/// build are accepted: the target's is kept for `--send xdp`, the
/// source's is not needed.
pub fn parse_transfers(s: &str) -> Result<Vec<Transfer>, ConfigError> {
    let mut out: Vec<Transfer> = Vec::new();
    let mut targets: Vec<(IpAddr, u16)> = Vec::new();
    for (rule, item) in s.split(',').enumerate() {
        let bad = || ConfigError::Transfer(item.to_string());
        let (src, dsts) = item.split_once('-').ok_or_else(bad)?;
        let src = src.split('@').next().unwrap_or("");
        let (src_ip, src_port) = parse_endpoint(src, true).ok_or_else(bad)?;
        for dst in dsts.split('+') {
            let (dst, dst_mac) = match dst.split_once('@') {
                Some((d, mac)) => (d, Some(parse_mac(mac).ok_or_else(bad)?)),
                None => (dst, None),
            };
            let (Some(dst_ip), dst_port) = parse_endpoint(dst, false).ok_or_else(bad)? else {
                return Err(bad());
            };
            if src_ip.is_some_and(|s| s.is_ipv4() != dst_ip.is_ipv4()) {
                return Err(bad()); // one family per rule
            }
            let target = match targets.iter().position(|&t| t == (dst_ip, dst_port)) {
                Some(i) => i,
                None => {
                    targets.push((dst_ip, dst_port));
                    targets.len() - 1
                }
            };
            if out
                .iter()
                .any(|t| t.rule == rule as u16 && t.target == target as u16)
            {
                return Err(bad()); // the same target twice in one rule
            }
            out.push(Transfer {
                src_ip,
                src_port,
                dst_ip,
                dst_port,
                dst_mac,
                rule: rule as u16,
                target: target as u16,
            });
        }
    }
    Ok(out)
}

/// Everything the engine needs to know.
#[derive(Clone, Debug)]
pub struct Config {
    pub transfers: Vec<Transfer>,
    /// `-c`: rewrite client addresses from this pool.
    pub client_pool: Option<Arc<ClientPool>>,
    /// `-H`: replace a captured loopback source (127.0.0.1, ::1) with the
    /// address of its family given here.
    pub localhost_as: Vec<IpAddr>,
    /// `-n`: each session is replayed this many times (1 = once).
    pub replicas: u16,
    /// `-f`: port shift factor, 0 = off.
    pub port_shift: u8,
    /// The random offset R ∈ [0, 512) drawn at startup (spec §4.4).
    pub random_offset: u16,
    /// `-r`: replay this percentage of sessions; 0 or 100 = all.
    pub sample_percent: u8,
    /// `-g`: the share rises from 1% by one a second (overrides `-r`).
    pub ramp: Option<Arc<Ramp>>,
    /// `--max-session-rate`: new sessions a second, over all workers.
    pub session_rate: Option<Arc<SessionRate>>,
    /// `--only-clients`, `--skip-clients`.
    pub client_filter: ClientFilter,
    /// `-M`: captured segments longer than this are cut.
    pub mtu: u16,
    /// `-D`: MSS in fabricated SYNs (over IPv4; see [`Config::syn_mss`]).
    pub mss: u16,
    /// `-t`, ms.
    pub session_timeout_ms: u64,
    /// `-k`, ms.
    pub keepalive_timeout_ms: u64,
    /// `-O`: only sessions whose SYN was captured.
    pub only_complete: bool,
    /// `-W`: don't wait for the previous response.
    pub no_wait: bool,
    /// A session's handshake must complete within this (first GC check).
    pub handshake_timeout_ms: u64,
    /// Idle checks after the handshake check.
    pub gc_interval_ms: u64,
    /// How long a finished session lingers to absorb late packets.
    pub linger_ms: u64,
    /// A gap in the captured stream older than this ends the session (the C
    /// tool meant 10 s and compared 10000 with seconds: a quirk we fix).
    pub gap_timeout_ms: u64,
    /// First retransmission timeout toward the target (doubles per retry).
    pub rto_ms: u64,
    /// Retransmissions of one segment before the session is given up.
    pub max_retransmits: u32,
    /// What a session's unsent backlog may hold, its payload and each
    /// segment's bookkeeping counted (`stream::SEGMENT_BOOKKEEPING`); more
    /// ends it. 64 MiB, or an eighth of `-m`: about 41,000 MTU frames,
    /// a thousand GRO'd 64 KiB ones, 340,000 of 10 bytes.
    pub max_buffered_bytes: u64,
    /// Sessions a worker may hold; new ones beyond are refused and counted.
    pub max_sessions: usize,
    /// Send route (CLIENT_ADD) messages before each SYN (off: `--single`).
    pub send_routes: bool,
    /// A held request is released when the target has sent no response
    /// data this long after the previous request (no deadlock on a
    /// request the target never answers).
    pub response_wait_ms: u64,
    /// A session holding more than this many captured segments has fallen
    /// behind its client: it sends its backlog pipelined (without waiting
    /// for each response) until it has caught up. 0: never.
    pub catch_up_segments: usize,
    /// A hole in the captured stream that has not filled this long is a
    /// capture loss, not reordering or a retransmission still to come: the
    /// session goes on past it on a new target connection. 0: hold until
    /// `gap_timeout_ms` gives the session up, as the C tool.
    pub gap_skip_ms: u64,
    /// A target that refuses a session's connection (RST to the SYN: it
    /// may be restarting) is asked again, backing off, for this long
    /// before the session is given up; its captured requests wait (within
    /// the session's buffer and `-m`). 0: give up at once, as the C tool.
    pub retry_refused_ms: u64,
    /// `--verdict`: each request's answers, online and target, compared.
    pub verdict: Option<crate::verdict::VerdictConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            transfers: Vec::new(),
            client_pool: None,
            localhost_as: Vec::new(),
            replicas: 1,
            port_shift: 0,
            random_offset: 0,
            sample_percent: 0,
            ramp: None,
            session_rate: None,
            client_filter: ClientFilter::default(),
            mtu: 1500,
            mss: 1460,
            session_timeout_ms: 600_000,
            keepalive_timeout_ms: 720_000,
            only_complete: false,
            no_wait: false,
            handshake_timeout_ms: 3_000,
            gc_interval_ms: 6_000,
            linger_ms: 6_000,
            gap_timeout_ms: 10_000,
            rto_ms: 100,
            max_retransmits: 8,
            max_buffered_bytes: 64 << 20,
            max_sessions: 2_000_000,
            send_routes: true,
            response_wait_ms: 5_000,
            catch_up_segments: 64,
            gap_skip_ms: 1_000,
            retry_refused_ms: 5_000,
            verdict: None,
        }
    }
}

impl Config {
    /// First `-x` entry matching a captured destination.
    pub fn transfer_for(&self, ip: IpAddr, port: u16) -> Option<&Transfer> {
        self.transfers.iter().find(|t| t.matches(ip, port))
    }
    /// Every target of the first `-x` rule matching a captured
    /// destination (one, or several with fan-out).
    pub fn targets_for(&self, ip: IpAddr, port: u16) -> &[Transfer] {
        &self.transfers[self.rule_for(ip, port)]
    }
    /// Where in `transfers` the targets of the first rule matching a
    /// captured destination are (empty if none).
    pub fn rule_for(&self, ip: IpAddr, port: u16) -> std::ops::Range<usize> {
        let Some(first) = self.transfers.iter().position(|t| t.matches(ip, port)) else {
            return 0..0;
        };
        let rule = self.transfers[first].rule;
        let n = self.transfers[first..]
            .iter()
            .take_while(|t| t.rule == rule)
            .count();
        first..first + n
    }
    /// The run's distinct targets, in the order `Transfer::target` counts.
    pub fn targets(&self) -> Vec<(IpAddr, u16)> {
        let mut v: Vec<(IpAddr, u16)> = Vec::new();
        for t in &self.transfers {
            if t.target as usize == v.len() {
                v.push((t.dst_ip, t.dst_port));
            }
        }
        v
    }
    /// Copies of a captured connection, at most: `-n` replicas for each
    /// target of its rule.
    pub fn copies(&self) -> u16 {
        let fan_out = self
            .transfers
            .iter()
            .map(|t| self.transfers.iter().filter(|u| u.rule == t.rule).count())
            .max()
            .unwrap_or(1) as u16;
        self.replicas.max(1) * fan_out
    }
    /// The MSS a fabricated SYN to `target` advertises: `-D` over IPv4,
    /// 20 less over IPv6 (its header is 20 bytes longer: 1460 → 1440).
    pub fn syn_mss(&self, target: IpAddr) -> u16 {
        match target {
            IpAddr::V4(_) => self.mss,
            IpAddr::V6(_) => self.mss.saturating_sub(20),
        }
    }
    /// A target on the loopback: only loopback traffic is replayed
    /// (spec §4.2 step 5).
    pub fn target_is_localhost(&self) -> bool {
        self.transfers.iter().any(|t| is_localhost(t.dst_ip))
    }
    /// The `-H` address a captured loopback source stands for.
    pub fn localhost_replacement(&self, captured: IpAddr) -> Option<IpAddr> {
        if !is_localhost(captured) {
            return None;
        }
        self.localhost_as
            .iter()
            .copied()
            .find(|h| h.is_ipv4() == captured.is_ipv4())
    }
}

/// 127.0.0.1 or ::1: the loopback address the C tool's `-H` rules name.
pub fn is_localhost(ip: IpAddr) -> bool {
    ip == Ipv4Addr::LOCALHOST || ip == Ipv6Addr::LOCALHOST
}

/// The C tool's sampling bucket (spec §4.2 step 8), computed on the client
/// address after `-c` and the port before `-f`, so sessions are sampled
/// whole and the same set is chosen on every run. An IPv6 address is
/// folded (XOR of its four 32-bit words) to the four bytes the formula
/// reads: its first two bytes alone are the same for most clients.
pub fn sample_bucket(client_ip: IpAddr, client_port: u16) -> u8 {
    let [a, b, _, _] = match client_ip {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(v6) => {
            let w = v6.octets();
            let word = |i: usize| u32::from_be_bytes([w[i], w[i + 1], w[i + 2], w[i + 3]]);
            (word(0) ^ word(4) ^ word(8) ^ word(12)).to_be_bytes()
        }
    };
    let [ph, pl] = client_port.to_be_bytes();
    let s = (((pl as u32) << 8) | ph as u32) + (((b as u32) << 8) | a as u32);
    let s = s & 0xffff;
    (((s >> 8) + (s & 0xff)) % 100) as u8
}

/// The port a replayed copy prefers: `-f` shift for the original, then
/// `32·(2i−1) + R` for replica i (spec §4.4; the C tool shifts replicas by
/// `-f` twice, a quirk we fix: replicas are shifted once, from the shifted
/// original).
pub fn preferred_port(cfg: &Config, port: u16, replica: u16) -> u16 {
    let wrap = |p: u32, add: u32| -> u16 {
        if p + add < 65536 {
            (p + add) as u16
        } else {
            (1024 + add) as u16
        }
    };
    let mut p = port as u32;
    if cfg.port_shift != 0 {
        p = wrap(p, 2048 * cfg.port_shift as u32 + cfg.random_offset as u32) as u32;
    }
    if replica > 0 {
        let add = (32 * (2 * replica as u32 - 1) + cfg.random_offset as u32) & 0xffff;
        p = wrap(p, add) as u32;
    }
    p as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn transfers_parse_with_and_without_source_ip() {
        let t = parse_transfers("80-10.0.2.2:8080,10.0.0.1:81-10.0.2.3:9090").unwrap();
        assert_eq!(t[0].src_ip, None);
        assert_eq!(t[0].dst_port, 8080);
        assert_eq!(t[1].src_ip, Some(Ipv4Addr::new(10, 0, 0, 1).into()));
        assert!(t[1].matches(Ipv4Addr::new(10, 0, 0, 1).into(), 81));
        assert!(!t[0].matches(ip("2001:db8::1"), 80));
        assert!(!t[1].matches(Ipv4Addr::new(10, 0, 0, 2).into(), 81));
        let mac = parse_transfers("80@00:13:21:B2:5E:42-1.2.3.4:18080@00:0F:1F:03:F2:E6").unwrap();
        assert_eq!(mac[0].dst_port, 18080);
        assert_eq!(mac[0].dst_mac, Some([0x00, 0x0f, 0x1f, 0x03, 0xf2, 0xe6]));
        assert!(parse_transfers("80-1.2.3.4:80@00:0F:1F").is_err());
    }

    #[test]
    fn ipv6_transfers_match_their_own_family() {
        let t = parse_transfers(
            "80-10.0.2.2:8080,80-[2001:db8:2::2]:8080,[2001:db8:1::1]:81-[2001:db8:2::3]:9090",
        )
        .unwrap();
        assert_eq!(t[1].dst_ip, ip("2001:db8:2::2"));
        assert_eq!(t[2].src_ip, Some(ip("2001:db8:1::1")));
        let cfg = Config {
            transfers: t,
            ..Config::default()
        };
        assert_eq!(
            cfg.targets_for(ip("10.0.1.1"), 80)[0].dst_ip,
            ip("10.0.2.2")
        );
        assert_eq!(
            cfg.targets_for(ip("2001:db8:1::1"), 80)[0].dst_ip,
            ip("2001:db8:2::2")
        );
        assert_eq!(cfg.targets_for(ip("2001:db8:1::1"), 81)[0].dst_port, 9090);
        assert!(cfg.targets_for(ip("2001:db8:1::2"), 81).is_empty());
        for bad in [
            "10.0.0.1:80-[2001:db8::2]:80",
            "80-2001:db8::2:80",
            "80-[2001:db8::2]",
            "[2001:db8::1]-[2001:db8::2]:80",
        ] {
            assert!(parse_transfers(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn localhost_as_stands_for_the_loopback_of_its_family() {
        let cfg = Config {
            localhost_as: vec![ip("10.0.0.5"), ip("2001:db8::5")],
            ..Config::default()
        };
        assert_eq!(
            cfg.localhost_replacement(ip("127.0.0.1")),
            Some(ip("10.0.0.5"))
        );
        assert_eq!(
            cfg.localhost_replacement(ip("::1")),
            Some(ip("2001:db8::5"))
        );
        assert_eq!(cfg.localhost_replacement(ip("10.0.1.1")), None);
    }

    #[test]
    fn fan_out_rules_name_several_targets() {
        let cfg = Config {
            transfers: parse_transfers("80-10.0.2.2:8080+10.0.2.3:8080,81-10.0.2.2:8080").unwrap(),
            replicas: 2,
            ..Config::default()
        };
        let t = cfg.targets_for(Ipv4Addr::new(10, 0, 1, 1).into(), 80);
        assert_eq!(t.len(), 2);
        assert_eq!((t[1].dst_ip, t[1].target), (ip("10.0.2.3"), 1));
        let t = cfg.targets_for(Ipv4Addr::new(10, 0, 1, 1).into(), 81);
        assert_eq!(
            (t.len(), t[0].target),
            (1, 0),
            "a target shared by two rules is one"
        );
        assert_eq!(cfg.targets().len(), 2);
        assert_eq!(cfg.copies(), 4);
        assert!(cfg
            .targets_for(Ipv4Addr::new(10, 0, 1, 1).into(), 82)
            .is_empty());
        for bad in ["80-10.0.2.2:8080+", "80-10.0.2.2:8080+10.0.2.2:8080"] {
            assert!(parse_transfers(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_transfers_name_themselves() {
        for bad in [
            "80",
            "80-10.0.2.2",
            "x-10.0.2.2:80",
            "80-10.0.2.300:80",
            "0-1.2.3.4:5",
        ] {
            let e = parse_transfers(bad).unwrap_err();
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn replica_ports_follow_the_c_formula() {
        let cfg = Config {
            random_offset: 100,
            ..Config::default()
        };
        assert_eq!(preferred_port(&cfg, 40000, 0), 40000);
        assert_eq!(preferred_port(&cfg, 40000, 1), 40000 + 32 + 100);
        assert_eq!(preferred_port(&cfg, 40000, 2), 40000 + 96 + 100);
        assert_eq!(preferred_port(&cfg, 65500, 1), 1024 + 132);
        let f = Config {
            port_shift: 1,
            random_offset: 7,
            ..Config::default()
        };
        assert_eq!(preferred_port(&f, 40000, 0), 40000 + 2048 + 7);
    }

    #[test]
    fn sample_bucket_is_the_c_formula() {
        // ip 10.0.1.10, port 0x1234: S = 0x3412 + 0x000a = 0x341c; (0x34 + 0x1c) % 100 = 80.
        assert_eq!(
            sample_bucket(Ipv4Addr::new(10, 0, 1, 10).into(), 0x1234),
            80
        );
        // IPv6 folds to the same formula: 2001:db8::1:a folds to
        // 0x2001_0db8 ^ 0x0001_000a = 0x2000_0db2.
        assert_eq!(
            sample_bucket(ip("2001:db8::1:a"), 0x1234),
            sample_bucket(ip("32.0.13.178"), 0x1234)
        );
    }
}
