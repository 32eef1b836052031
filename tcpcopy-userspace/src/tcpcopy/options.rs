//! tcpcopy's command line: the C tool's letters of spec §2.1 for live and
//! offline replay, with long names, plus the capture/worker/send/record
//! options of this port. C options this port does not offer are accepted by the parser
//! only to be refused with a message that says why.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};

use crate::{
    capture::RxRing,
    offline::Pace,
    session::{parse_transfers, ClientFilter, ClientPool, Config, Ramp, SessionRate, Transfer},
    tcpcopy::channel::Greeting,
    verdict::{Protocol, VerdictConfig},
    wire::Cidr,
    xdp::AttachMode,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Speed {
    /// The file's own timing (divided by -a).
    File,
    /// No clock: only the target's responses pace the replay.
    Max,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CaptureMode {
    /// XDP copies matched segments into per-worker ring buffers and passes
    /// every frame (the online server itself).
    Tap,
    /// XDP redirects matched frames to AF_XDP sockets (mirror ports).
    Xdp,
    /// One AF_PACKET socket per worker, a fanout group split by flow (no
    /// eBPF).
    Packet,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SendMode {
    /// Raw IP sockets: the kernel routes and resolves the next hop.
    Raw,
    /// AF_XDP TX on `-o`.
    Xdp,
    /// AF_PACKET on `-o`; a bulk stream's segments leave together as GSO
    /// packets.
    Packet,
}

const EXAMPLES: &str = "\
Examples:
  On the online server (tap capture), replaying port 80 to a test server's
  8080, intercept on 10.0.3.3, replayed clients from 62.135.200.x:
    tcpcopy -x 80-10.0.2.2:8080 -s 10.0.3.3 -c 62.135.200.x -i eth0

  On a switch-mirror box (AF_XDP, one worker per RX queue):
    tcpcopy --capture xdp -i ens5 -x 10.0.1.1:80-10.0.2.2:8080 -s 10.0.3.3

  Two candidate versions at once, a tenth of the sessions, health checks left out:
    tcpcopy -x 80-10.0.2.2:8080+10.0.2.3:8080 -r 10 --skip-clients 10.0.9.0/24 -s 10.0.3.3 -i eth0

  Record live traffic, replay it later as fast as the target answers:
    tcpcopy ... --record /var/tmp/prod.pcapng --record-size 1000
    tcpcopy --offline /var/tmp/prod.pcapng --speed max -x 80-10.0.2.2:8080 -s 10.0.3.3

  As a daemon: the shell gets exit 0 only once capture runs and intercept is reached:
    tcpcopy -d -l /var/log/tcpcopy.log -P /run/tcpcopy.pid ...

Exit status: 0 after a clean stop (SIGINT, SIGTERM, SIGHUP) or the end of an
offline file; 1 on a start-up error or a fatal error while running (said on
stderr and in the -l log).";

#[derive(Parser, Debug, Clone)]
#[command(
    name = "tcpcopy",
    disable_version_flag = true,
    about = "Captures live client traffic and replays whole sessions to a test server",
    after_help = EXAMPLES
)]
pub struct TcpcopyOptions {
    // --- Target and intercept
    /// What to replay and where: [IP:]PORT-IP:PORT[,...]; several targets
    /// of one source joined by `+` (fan-out)
    #[arg(
        short = 'x',
        long = "transfer",
        value_name = "RULES",
        required_unless_present_any = ["version", "generate"],
        help_heading = "Target and intercept"
    )]
    pub transfer: Option<String>,
    /// intercept servers: IP[:PORT][,...]
    #[arg(
        short = 's',
        long = "server",
        value_name = "SERVERS",
        required_unless_present_any = ["version", "generate"],
        help_heading = "Target and intercept"
    )]
    pub servers: Option<String>,
    /// Port for `-s` entries that name none
    #[arg(short = 'p', long = "port", value_name = "PORT", default_value_t = crate::proto::CONTROL_PORT, help_heading = "Target and intercept")]
    pub port: u16,
    /// Control connections per intercept server, per worker (1 to 11)
    #[arg(
        short = 'C',
        long = "connections",
        value_name = "N",
        default_value_t = 2,
        help_heading = "Target and intercept"
    )]
    pub connections: u8,
    /// How replayed packets leave: raw (raw IP sockets, the kernel
    /// routes), xdp (AF_XDP TX on -o) or packet (AF_PACKET on -o, a bulk
    /// stream's segments sent together as GSO packets)
    #[arg(long = "send", value_enum, value_name = "HOW", default_value_t = SendMode::Raw, help_heading = "Target and intercept")]
    pub send: SendMode,
    /// Output interface for `--send xdp` and `--send packet`
    #[arg(
        short = 'o',
        long = "out-iface",
        value_name = "IFACE",
        help_heading = "Target and intercept"
    )]
    pub out_iface: Option<String>,

    // --- Capture
    /// Interfaces to capture on (comma separated or repeated)
    #[arg(
        short = 'i',
        long = "iface",
        value_name = "IFACE",
        value_delimiter = ',',
        help_heading = "Capture"
    )]
    pub ifaces: Vec<String>,
    /// Capture mode [default: tap with -i, packet without]
    #[arg(
        long = "capture",
        value_enum,
        value_name = "MODE",
        help_heading = "Capture"
    )]
    pub capture: Option<CaptureMode>,
    /// Worker threads, each pinned to a core (tap: at most 16) [default:
    /// one per RX queue for xdp, else one per core up to 4]
    #[arg(long = "workers", value_name = "N", help_heading = "Capture")]
    pub workers: Option<usize>,
    /// Tap capture: MiB of each worker's ring buffer (a power of two,
    /// 1 to 1024; locked kernel memory, counted against -m)
    #[arg(long = "tap-ring-mb", value_name = "MB", default_value_t = tcpcopy_common::TAP_RING_DEFAULT_MB, help_heading = "Capture")]
    pub tap_ring_mb: u32,
    /// AF_XDP capture: frames of each RX queue's socket ring (a power of
    /// two, 2048 to 262144; 2 KiB of UMEM per frame, twice, counted
    /// against -m)
    #[arg(long = "xsk-ring", value_name = "FRAMES", default_value_t = RxRing::default().frames, help_heading = "Capture")]
    pub xsk_ring: u32,
    /// XDP attach mode
    #[arg(long = "xdp-mode", value_enum, value_name = "MODE", default_value_t = AttachMode::Auto, help_heading = "Capture")]
    pub xdp_mode: AttachMode,
    /// Replay only clients in these networks: A.B.C.D[/LEN][,...] (left
    /// out in the XDP program in tap and xdp capture)
    #[arg(long = "only-clients", value_name = "CIDRS", help_heading = "Capture")]
    pub only_clients: Option<String>,
    /// Never replay clients in these networks: A.B.C.D[/LEN][,...]
    /// (health checks, probes)
    #[arg(long = "skip-clients", value_name = "CIDRS", help_heading = "Capture")]
    pub skip_clients: Option<String>,

    // --- Replay
    /// Rewrite client addresses from this pool: A.B.C.D or A.B.C.x, comma
    /// separated
    #[arg(
        short = 'c',
        long = "client-ips",
        value_name = "ADDRS",
        help_heading = "Replay"
    )]
    pub client_ips: Option<String>,
    /// Replace a captured 127.0.0.1 (or ::1) source with this address of
    /// its family (one per family, comma-separated)
    #[arg(
        short = 'H',
        long = "localhost-as",
        value_name = "IP[,IP]",
        value_delimiter = ',',
        help_heading = "Replay"
    )]
    pub localhost_as: Vec<std::net::IpAddr>,
    /// Replay every session N times
    #[arg(
        short = 'n',
        long = "replicas",
        value_name = "N",
        default_value_t = 1,
        help_heading = "Replay"
    )]
    pub replicas: u16,
    /// Port shift factor, to run several tcpcopy instances side by side
    /// (0 to 255)
    #[arg(
        short = 'f',
        long = "port-shift",
        value_name = "N",
        default_value_t = 0,
        help_heading = "Replay"
    )]
    pub port_shift: u8,
    /// Replay only this percentage of the sessions, 1 to 99 (whole
    /// sessions, the same ones every run) [default: every session]
    #[arg(
        short = 'r',
        long = "percent",
        value_name = "PERCENT",
        default_value_t = 0,
        hide_default_value = true,
        help_heading = "Replay"
    )]
    pub percent: u8,
    /// Gradual ramp-up: replay 1% of the sessions in the first second,
    /// one more percent each second after, all of them from the 100th
    /// (overrides -r; whole sessions)
    #[arg(short = 'g', long = "ramp", help_heading = "Replay")]
    pub ramp: bool,
    /// Replay at most N new sessions in any one second, over all workers;
    /// the others are skipped whole [default: no cap]
    #[arg(long = "max-session-rate", value_name = "N", help_heading = "Replay")]
    pub max_session_rate: Option<u32>,
    /// Compare each replayed request's answers, online and target: status
    /// (http: the status code; resp: the reply type and error word;
    /// bytes: the first bytes; auto: picked per flow) and latency
    #[arg(long = "verdict", value_name = "PROTOCOL", num_args = 0..=1, default_missing_value = "auto", require_equals = false, help_heading = "Verdict")]
    pub verdict: Option<String>,
    /// Payload bytes of each answer the verdict reads (and asks of
    /// intercept), 16 to 256
    #[arg(long = "verdict-bytes", value_name = "N", default_value_t = crate::verdict::DEFAULT_PREFIX_BYTES, help_heading = "Verdict")]
    pub verdict_bytes: u16,
    /// Write the verdict as JSON to FILE every stats interval and at exit
    #[arg(long = "verdict-json", value_name = "FILE", help_heading = "Verdict")]
    pub verdict_json: Option<PathBuf>,
    /// MTU: captured segments longer than this are cut
    #[arg(
        short = 'M',
        long = "mtu",
        value_name = "BYTES",
        default_value_t = 1500,
        help_heading = "Replay"
    )]
    pub mtu: u16,
    /// MSS advertised in fabricated SYNs (over IPv6, 20 less)
    #[arg(
        short = 'D',
        long = "mss",
        value_name = "BYTES",
        default_value_t = 1460,
        help_heading = "Replay"
    )]
    pub mss: u16,
    /// Only replay sessions whose SYN was captured
    #[arg(short = 'O', long = "only-complete", help_heading = "Replay")]
    pub only_complete: bool,
    /// Do not wait for the previous response before sending the next
    /// request
    #[arg(short = 'W', long = "no-wait", help_heading = "Replay")]
    pub no_wait: bool,
    /// A session holding more than this many captured segments (its client
    /// ran ahead of the replay) sends them pipelined until it has caught
    /// up; 0: always wait, as the C tool
    #[arg(
        long = "catch-up",
        value_name = "SEGMENTS",
        default_value_t = 64,
        help_heading = "Replay"
    )]
    pub catch_up: usize,
    /// A hole in a session's captured stream that has not filled after
    /// this long: the session goes on past it on a new target connection;
    /// 0 holds the session until the gap gives it up (10 s), as the C tool
    #[arg(
        long = "gap-skip",
        value_name = "MS",
        default_value_t = 1000,
        help_heading = "Replay"
    )]
    pub gap_skip: u64,
    /// A target that refuses a connection (its server restarting) is asked
    /// again, backing off from 100 ms, for this long; 0 gives up at once,
    /// as the C tool
    #[arg(
        long = "retry-refused",
        value_name = "SECONDS",
        default_value_t = 5,
        help_heading = "Replay"
    )]
    pub retry_refused: u64,

    // --- Limits
    /// Session timeout: no response from the target for this long
    #[arg(
        short = 't',
        long = "session-timeout",
        value_name = "SECONDS",
        default_value_t = 600,
        help_heading = "Limits"
    )]
    pub session_timeout: u64,
    /// Keepalive timeout of idle sessions [default: -t + 120]
    #[arg(
        short = 'k',
        long = "keepalive-timeout",
        value_name = "SECONDS",
        help_heading = "Limits"
    )]
    pub keepalive_timeout: Option<u64>,
    /// Resident memory limit: new sessions are refused (and counted)
    /// before it is reached, and sessions that keep buffering are given up
    /// at it; the capture rings are paid for first [default: none]
    #[arg(
        short = 'm',
        long = "memory",
        value_name = "MB",
        help_heading = "Limits"
    )]
    pub memory_mb: Option<u64>,
    /// Most sessions per worker
    #[arg(
        long = "max-sessions",
        value_name = "N",
        default_value_t = 2_000_000,
        help_heading = "Limits"
    )]
    pub max_sessions: usize,

    // --- Offline
    /// Replay a capture file (pcap or pcapng) instead of capturing live
    #[arg(long = "offline", value_name = "FILE", conflicts_with_all = ["capture", "record"], help_heading = "Offline")]
    pub offline: Option<PathBuf>,
    /// Offline: the file's clock runs this many times faster
    #[arg(
        short = 'a',
        long = "accelerate",
        default_value_t = 1.0,
        value_name = "FACTOR",
        help_heading = "Offline"
    )]
    pub accelerate: f64,
    /// Offline: collapse gaps between packets longer than this
    #[arg(
        short = 'I',
        long = "idle-gap",
        value_name = "MS",
        help_heading = "Offline"
    )]
    pub idle_gap: Option<u64>,
    /// Offline: replay the file this many times
    #[arg(
        short = 'T',
        long = "times",
        value_name = "N",
        default_value_t = 1,
        help_heading = "Offline"
    )]
    pub times: u32,
    /// Offline: `file` keeps the file's timing; `max` sends as fast as the
    /// target answers
    #[arg(long = "speed", value_enum, value_name = "PACE", default_value_t = Speed::File, help_heading = "Offline")]
    pub speed: Speed,
    /// Offline: at the end of the file (and of each -T pass), wait for
    /// open sessions to finish, giving up once nothing was sent or
    /// answered for this long
    #[arg(
        long = "drain-timeout",
        default_value_t = 5,
        value_name = "SECONDS",
        help_heading = "Offline"
    )]
    pub drain_timeout: u64,
    /// Live: also write the captured client segments to this pcapng file
    #[arg(long = "record", value_name = "FILE", help_heading = "Offline")]
    pub record: Option<PathBuf>,
    /// With --record: start a new file (FILE.1, FILE.2, ...) every this
    /// many MB
    #[arg(
        long = "record-size",
        value_name = "MB",
        requires = "record",
        help_heading = "Offline"
    )]
    pub record_size: Option<u64>,

    // --- Output and metrics, process (shared with intercept)
    #[command(flatten)]
    pub common: crate::process::CommonOptions,
    /// Keep running when every intercept connection is lost (each intercept
    /// is tried again on a backoff from 100 ms to 500 ms)
    #[arg(short = 'L', long = "lonely", help_heading = "Process")]
    pub lonely: bool,
    /// --check: the client address the loop probe comes from (one the
    /// target routes to the assistant) [default: the first -c address]
    #[arg(
        long = "check-from",
        value_name = "IP[,IP]",
        value_delimiter = ',',
        requires = "check",
        help_heading = "Process"
    )]
    pub check_from: Vec<std::net::IpAddr>,

    // C options this port does not offer: refused with a reason.
    #[arg(short = 'R', hide = true)]
    pub c_rtt: Option<String>,
    #[arg(short = 'U', hide = true)]
    pub c_pool: Option<String>,
    #[arg(short = 'F', hide = true)]
    pub c_filter: Option<String>,
    #[arg(short = 'B', hide = true)]
    pub c_buffer: Option<String>,
    #[arg(short = 'S', hide = true)]
    pub c_snaplen: Option<String>,
}

/// Everything `run` needs, every option resolved and checked once: `run`
/// reads this, never the options.
#[derive(Debug)]
pub struct Settings {
    pub config: Arc<Config>,
    pub servers: Vec<SocketAddr>,
    pub connections: usize,
    pub source: Source,
    pub workers: usize,
    /// Tap capture: bytes of each worker's ring.
    pub tap_ring_bytes: u32,
    /// AF_XDP capture: each RX queue socket's ring.
    pub xsk_ring: RxRing,
    /// `-i`: the interfaces to capture on (live sources).
    pub ifaces: Vec<String>,
    pub xdp_mode: AttachMode,
    pub send: SendPlan,
    pub record: Option<RecordPlan>,
    /// `-m`, in bytes.
    pub memory_limit: Option<u64>,
    /// `-L`: keep running with every intercept connection lost.
    pub lonely: bool,
    pub stats_interval: std::time::Duration,
    pub metrics: Option<std::net::SocketAddr>,
    /// `--wake-pause`.
    pub wake_pause: std::time::Duration,
    /// `--verdict-json`.
    pub verdict_json: Option<PathBuf>,
}

impl Settings {
    /// How the workers greet intercept: our extension is offered only
    /// with `--verdict` (the target's payload prefixes) or IPv6 targets;
    /// otherwise the greeting is protocol 6's.
    pub fn greeting(&self) -> Greeting {
        use crate::proto::Extension;
        let prefix = self.config.verdict.map(|v| v.prefix_bytes);
        let ipv6 = self.config.transfers.iter().any(|t| t.dst_ip.is_ipv6());
        Greeting {
            framing: crate::proto::Framing::Combined,
            offer: match (prefix, ipv6) {
                (p, true) => Some(Extension::with_ipv6(p.unwrap_or(0))),
                (Some(p), false) => Some(Extension::asking(p)),
                (None, false) => None,
            },
        }
    }

    /// A live capture's `-i` interfaces must exist: said before anything
    /// starts (before intercept is reached, before `-d` lets the shell go).
    pub fn check_interfaces(&self) -> Result<()> {
        if let Source::Live(_) = self.source {
            for i in &self.ifaces {
                if !Path::new(&format!("/sys/class/net/{i}")).exists() {
                    bail!("-i {i}: no such network interface on this host");
                }
            }
        }
        Ok(())
    }
}

/// Where captured segments come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// Live capture on the `-i` interfaces.
    Live(CaptureMode),
    /// `--offline` (or the C tool's `-i FILE`): a capture file, read
    /// through the dispatcher, which hands each flow to one worker.
    Offline(OfflinePlan),
}

/// How replayed packets leave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendPlan {
    /// Raw IP sockets (the kernel routes).
    Raw,
    /// AF_XDP on `out`; `share_capture`: `out` is the capture interface,
    /// so each worker sends on its capture socket's TX ring.
    Xdp { out: String, share_capture: bool },
    /// AF_PACKET on `out`, with GSO for a flow's consecutive segments.
    Packet { out: String },
}

impl SendPlan {
    /// The interface the packets are framed for (`-o`), where they are.
    pub fn out_iface(&self) -> Option<&str> {
        match self {
            SendPlan::Raw => None,
            SendPlan::Xdp { out, .. } | SendPlan::Packet { out } => Some(out),
        }
    }
}

/// `--record`: where, and how large each file may grow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordPlan {
    pub path: PathBuf,
    /// Start a new file after this many bytes (0: never).
    pub rotate_bytes: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OfflinePlan {
    pub path: PathBuf,
    pub pace: Pace,
    pub passes: u32,
    pub drain_timeout: std::time::Duration,
}

impl TcpcopyOptions {
    /// Check the options and build the engine configuration.
    pub fn settings(&self) -> Result<Settings> {
        self.refuse_unsupported()?;
        let transfers = parse_transfers(self.transfer.as_deref().unwrap_or(""))?;
        let servers = parse_servers(self.servers.as_deref().unwrap_or(""), self.port)?;
        let config = self.engine_config(transfers)?;
        let source = self.source()?;
        let send = self.send_plan()?;
        let workers = self.workers_for(&source)?;
        let mb = self.tap_ring_mb;
        if !(1..=1024).contains(&mb) || !mb.is_power_of_two() {
            bail!("--tap-ring-mb {mb}: a power of two from 1 to 1024");
        }
        if !(1..=11).contains(&self.connections) {
            bail!(
                "-C {}: 1 to 11 control connections per intercept",
                self.connections
            );
        }
        if self.percent > 100 {
            bail!(
                "-r {}: a percentage, 1 to 99 (0 or 100: every session)",
                self.percent
            );
        }
        if self.replicas == 0 {
            bail!("-n 0: every session is replayed at least once (-n 1)");
        }
        let frames = self.xsk_ring;
        if !(2048..=262_144).contains(&frames) || !frames.is_power_of_two() {
            bail!("--xsk-ring {frames}: a power of two from 2048 to 262144");
        }
        let v4 = self.localhost_as.iter().filter(|a| a.is_ipv4()).count();
        if v4 > 1 || self.localhost_as.len() - v4 > 1 {
            bail!("-H: one address per family (an IPv4 one for 127.0.0.1, an IPv6 one for ::1)");
        }
        Ok(Settings {
            config: Arc::new(config),
            servers,
            connections: self.connections as usize,
            source,
            workers,
            tap_ring_bytes: mb << 20,
            xsk_ring: RxRing { frames },
            ifaces: self.ifaces.clone(),
            xdp_mode: self.xdp_mode,
            send,
            record: self.record.as_ref().map(|path| RecordPlan {
                path: path.clone(),
                rotate_bytes: self.record_size.unwrap_or(0) * 1_000_000,
            }),
            memory_limit: self.memory_mb.map(|mb| mb << 20),
            lonely: self.lonely,
            stats_interval: std::time::Duration::from_secs(self.common.stats_interval.max(1)),
            metrics: self.common.metrics,
            wake_pause: self.common.wake_pause(),
            verdict_json: self.verdict_json.clone(),
        })
    }

    /// `--verdict`, `--verdict-bytes`, `--verdict-json`.
    fn verdict(&self) -> Result<Option<VerdictConfig>> {
        let Some(p) = &self.verdict else {
            if self.verdict_json.is_some() {
                bail!("--verdict-json needs --verdict");
            }
            return Ok(None);
        };
        let protocol = Protocol::parse(p)
            .with_context(|| format!("--verdict {p}: one of auto, http, resp, bytes"))?;
        let n = self.verdict_bytes;
        if !(16..=crate::proto::PREFIX_MAX).contains(&n) {
            bail!("--verdict-bytes {n}: 16 to {}", crate::proto::PREFIX_MAX);
        }
        Ok(Some(VerdictConfig {
            protocol,
            prefix_bytes: n,
        }))
    }

    /// The session engine's configuration.
    fn engine_config(&self, transfers: Vec<Transfer>) -> Result<Config> {
        let client_pool = match &self.client_ips {
            Some(s) => Some(ClientPool::parse(s, &transfers)?),
            None => None,
        };
        let session_timeout_ms = self.session_timeout.max(1) * 1000;
        let keepalive_timeout_ms = self
            .keepalive_timeout
            .filter(|k| *k > 0)
            .map_or(session_timeout_ms + 120_000, |k| k * 1000);
        Ok(Config {
            transfers,
            client_pool,
            localhost_as: self.localhost_as.clone(),
            replicas: self.replicas.max(1),
            port_shift: self.port_shift,
            sample_percent: if self.percent >= 100 { 0 } else { self.percent },
            ramp: self.ramp.then(|| Arc::new(Ramp::default())),
            session_rate: match self.max_session_rate {
                Some(0) => bail!("--max-session-rate 0: at least one session a second"),
                Some(n) => Some(Arc::new(SessionRate::new(n))),
                None => None,
            },
            client_filter: ClientFilter {
                only: Cidr::parse_list(
                    "--only-clients",
                    self.only_clients.as_deref().unwrap_or(""),
                )?,
                skip: Cidr::parse_list(
                    "--skip-clients",
                    self.skip_clients.as_deref().unwrap_or(""),
                )?,
            },
            mtu: self.mtu,
            mss: self.mss,
            session_timeout_ms,
            keepalive_timeout_ms,
            only_complete: self.only_complete,
            no_wait: self.no_wait,
            catch_up_segments: self.catch_up,
            gap_skip_ms: self.gap_skip,
            retry_refused_ms: self.retry_refused * 1000,
            max_sessions: self.max_sessions,
            // A session's backlog may take an eighth of `-m` at most.
            max_buffered_bytes: self
                .memory_mb
                .map_or(64 << 20, |mb| (mb << 20).div_ceil(8).min(64 << 20)),
            verdict: self.verdict()?,
            ..Config::default()
        })
    }

    /// Where segments come from: a file, or live capture in a mode that
    /// has the interfaces it needs.
    fn source(&self) -> Result<Source> {
        if let Some(plan) = self.offline_plan()? {
            return Ok(Source::Offline(plan));
        }
        let capture = match self.capture {
            Some(c) => c,
            None if self.ifaces.is_empty() => CaptureMode::Packet,
            None => CaptureMode::Tap,
        };
        match capture {
            CaptureMode::Xdp if self.ifaces.is_empty() => {
                bail!("--capture xdp needs -i IFACE: the mirror port or NIC to read")
            }
            CaptureMode::Tap if self.ifaces.is_empty() => {
                bail!("--capture tap needs -i IFACE: the interfaces client traffic arrives on")
            }
            CaptureMode::Packet if self.ifaces.len() > 1 => {
                bail!("--capture packet takes one -i interface (or none: every interface)")
            }
            _ => Ok(Source::Live(capture)),
        }
    }

    fn send_plan(&self) -> Result<SendPlan> {
        Ok(match (self.send, &self.out_iface) {
            (SendMode::Raw, _) => SendPlan::Raw,
            (SendMode::Xdp, None) => {
                bail!("--send xdp needs -o IFACE: the interface toward the target")
            }
            (SendMode::Xdp, Some(out)) => SendPlan::Xdp {
                out: out.clone(),
                share_capture: self.ifaces.first() == Some(out),
            },
            (SendMode::Packet, None) => {
                bail!("--send packet needs -o IFACE: the interface toward the target")
            }
            (SendMode::Packet, Some(out)) => SendPlan::Packet { out: out.clone() },
        })
    }

    /// `--workers`, or one per RX queue (xdp), or one per core up to 4.
    fn workers_for(&self, source: &Source) -> Result<usize> {
        let cpus = core_affinity::get_core_ids().map_or(1, |c| c.len()).max(1);
        let workers = match (self.workers, source) {
            (Some(w), _) => w,
            (None, Source::Live(CaptureMode::Xdp)) => {
                let mut queues = 0;
                for iface in &self.ifaces {
                    queues += crate::capture::rx_queues(iface)? as usize;
                }
                queues
            }
            (None, _) => cpus.min(4),
        };
        if workers == 0 {
            bail!("--workers must be at least 1");
        }
        if *source == Source::Live(CaptureMode::Tap)
            && workers > tcpcopy_common::MAX_TAP_RINGS as usize
        {
            bail!(
                "--workers {workers}: tap capture has at most {} rings",
                tcpcopy_common::MAX_TAP_RINGS
            );
        }
        Ok(workers)
    }

    /// `--offline FILE`, or `-i FILE` naming a file, not an interface (how
    /// the C tool's offline build is started).
    fn offline_plan(&self) -> Result<Option<OfflinePlan>> {
        let path = match (&self.offline, self.ifaces.as_slice()) {
            (Some(p), _) => p.clone(),
            (None, [one])
                if Path::new(one).is_file()
                    && !Path::new(&format!("/sys/class/net/{one}")).exists() =>
            {
                PathBuf::from(one)
            }
            _ => return Ok(None),
        };
        if path.is_dir() {
            bail!(
                "--offline {}: a directory, not a capture file",
                path.display()
            );
        }
        if !path.exists() {
            bail!("--offline {}: no such file", path.display());
        }
        if !(self.accelerate > 0.0 && self.accelerate.is_finite()) {
            bail!(
                "-a/--accelerate {}: must be a positive factor",
                self.accelerate
            );
        }
        if self.times == 0 {
            bail!("-T/--times 0: replay the file at least once");
        }
        Ok(Some(OfflinePlan {
            path,
            pace: Pace {
                accel: self.accelerate,
                idle_gap_ns: self.idle_gap.filter(|g| *g > 0).map(|g| g * 1_000_000),
                max_speed: self.speed == Speed::Max,
            },
            passes: self.times,
            drain_timeout: std::time::Duration::from_secs(self.drain_timeout),
        }))
    }

    fn refuse_unsupported(&self) -> Result<()> {
        let refuse =
            |flag: &str, why: &str| -> Result<()> { bail!("{flag} is not supported: {why}") };
        if self.c_rtt.is_some() {
            refuse(
                "-R",
                "the C tool ignored its value; the RTT is always measured",
            )?;
        }
        if self.c_pool.is_some() {
            refuse("-U", "per-session memory pools are a C allocator detail")?;
        }
        if self.c_filter.is_some() || self.c_buffer.is_some() || self.c_snaplen.is_some() {
            refuse(
                "-F/-B/-S (pcap capture)",
                "capture is filtered by -x in XDP or AF_PACKET",
            )?;
        }
        Ok(())
    }
}

/// `-s ip[:port][,...]`, at most 32.
pub fn parse_servers(s: &str, default_port: u16) -> Result<Vec<SocketAddr>> {
    let mut out = Vec::new();
    for item in s.split(',').filter(|i| !i.is_empty()) {
        let addr: SocketAddr = if let Ok(a) = item.parse::<SocketAddr>() {
            a // A.B.C.D:PORT, [IPV6]:PORT
        } else {
            // A.B.C.D, IPV6, [IPV6]: the default port.
            let ip: IpAddr = item
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .with_context(|| {
                    format!("-s {item}: bad address (A.B.C.D[:PORT], IPV6 or [IPV6]:PORT)")
                })?;
            SocketAddr::new(ip, default_port)
        };
        out.push(addr);
    }
    if out.is_empty() {
        bail!("-s: tcpcopy needs the intercept addresses, e.g. -s 10.0.4.3");
    }
    if out.len() > 32 {
        bail!("-s: at most 32 intercept servers");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(args: &[&str]) -> TcpcopyOptions {
        let mut v = vec!["tcpcopy"];
        v.extend_from_slice(args);
        TcpcopyOptions::try_parse_from(v).unwrap()
    }

    #[test]
    fn intercept_servers_of_either_family() {
        let s = parse_servers(
            "10.0.4.3,10.0.4.4:4000,[fd00:4::3]:4001,fd00:4::5,[fd00:4::6]",
            36524,
        )
        .unwrap();
        let want: Vec<SocketAddr> = [
            "10.0.4.3:36524",
            "10.0.4.4:4000",
            "[fd00:4::3]:4001",
            "[fd00:4::5]:36524",
            "[fd00:4::6]:36524",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        assert_eq!(s, want);
        for bad in ["", "host", "10.0.4.3:x", "10.0.4.300"] {
            assert!(parse_servers(bad, 1).is_err(), "{bad}");
        }
    }

    #[test]
    fn live_defaults_and_letters() {
        let o = opts(&[
            "-x",
            "80-10.0.2.2:8080",
            "-s",
            "10.0.4.3",
            "-i",
            "onl0",
            "-n",
            "2",
            "-t",
            "60",
        ]);
        let s = o.settings().unwrap();
        assert_eq!(s.source, Source::Live(CaptureMode::Tap));
        assert_eq!(s.servers, vec!["10.0.4.3:36524".parse().unwrap()]);
        assert_eq!(s.connections, 2);
        assert_eq!(s.config.replicas, 2);
        assert_eq!(s.config.session_timeout_ms, 60_000);
        assert_eq!(s.config.keepalive_timeout_ms, 180_000);
    }

    #[test]
    fn unsupported_c_options_name_themselves() {
        for (flag, arg) in [("-R", Some("5")), ("-U", Some("4")), ("-F", Some("tcp"))] {
            let mut a = vec!["-x", "80-10.0.2.2:8080", "-s", "10.0.4.3", flag];
            a.extend(arg);
            let e = opts(&a).settings().unwrap_err().to_string();
            assert!(e.contains(&flag[..2]) && e.contains("not supported"), "{e}");
        }
    }

    #[test]
    fn bad_values_name_the_option() {
        let e = opts(&["-x", "80", "-s", "10.0.4.3"])
            .settings()
            .unwrap_err()
            .to_string();
        assert!(e.contains("-x"), "{e}");
        let e = opts(&["-x", "80-10.0.2.2:8080", "-s", "nowhere"])
            .settings()
            .unwrap_err()
            .to_string();
        assert!(e.contains("-s"), "{e}");
        let e = opts(&[
            "-x",
            "80-10.0.2.2:8080",
            "-s",
            "1.2.3.4",
            "--capture",
            "tap",
        ])
        .settings()
        .unwrap_err()
        .to_string();
        assert!(e.contains("-i"), "{e}");
        assert!(TcpcopyOptions::try_parse_from(["tcpcopy", "--bogus"]).is_err());
        for (flag, bad) in [
            ("--skip-clients", "10.0.1"),
            ("--only-clients", "10.0.1.0/40"),
            ("--max-session-rate", "0"),
            ("-C", "50"),
            ("-r", "150"),
            ("-n", "0"),
        ] {
            let e = opts(&["-x", "80-10.0.2.2:8080", "-s", "10.0.4.3", flag, bad])
                .settings()
                .unwrap_err()
                .to_string();
            assert!(e.contains(flag), "{e}");
        }
    }

    #[test]
    fn shaping_options_resolve() {
        let s = opts(&[
            "-x",
            "80-10.0.2.2:8080",
            "-s",
            "10.0.4.3",
            "-g",
            "--max-session-rate",
            "50",
            "--skip-clients",
            "10.0.1.11,10.0.9.0/24",
        ])
        .settings()
        .unwrap();
        assert!(s.config.ramp.is_some());
        assert_eq!(s.config.session_rate.as_ref().unwrap().per_second(), 50);
        assert_eq!(s.config.client_filter.skip.len(), 2);
        assert!(!s.config.client_filter.admits("10.0.9.7".parse().unwrap()));
    }
}
