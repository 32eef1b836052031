//! The `intercept` program: attaches intercept-ebpf to the interfaces the
//! target's responses arrive on (they are dropped there), reads the header
//! records from the ring buffer and serves them to the tcpcopy connections
//! that own the sessions, over the C tools' control channel.

mod options;
mod peer;
mod router;
mod server;

pub use options::{parse_cidr, parse_filter, FilterClause, FilterError, InterceptOptions};
pub use router::{Disposition, PeerId, RouteKey, Router, RouterStats};
pub use server::{ControlServer, RecordSource, ServerConfig, ServerStats};

use std::{
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd, RawFd},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use aya::maps::{MapData, RingBuf};
use tcpcopy_common::{
    intercept_counter, PortKey, PortKey6, RECORD_STAMP_LEN, RESPONSE_RECORD_V6_LEN,
};

use crate::{
    process,
    proto::{Framing, Held, ResponseRecord, RECORD_LEN},
    stats::{Figure, Report, Section},
    xdp::{AttachedXdp, INTERCEPT_EBPF},
};

/// The longest intercept sleeps with nothing to do (records, peers and
/// the stop bell wake it; parked responses expire at 30 s, so this is
/// precise enough). Each wake of an idle intercept costs CPU for nothing.
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// How often `--metrics` is refreshed while something happens; an idle
/// intercept refreshes it once, then every [`HOUSEKEEPING`].
const PUBLISH_METRICS: Duration = Duration::from_millis(250);

/// The XDP program's ring buffer as a record source.
pub struct RingSource {
    rings: Vec<RingBuf<MapData>>,
    /// Payload bytes the program puts after each record (`PREFIX`).
    prefix: aya::maps::Array<MapData, u32>,
    /// Records shorter than 64 bytes (never expected).
    pub malformed: u64,
}

impl RingSource {
    pub fn new(xdp: &mut AttachedXdp) -> Result<Self> {
        let mut rings = Vec::new();
        for i in 0..tcpcopy_common::RECORD_RINGS {
            let map = xdp
                .ebpf_mut()
                .take_map(&format!("RECORDS{i}"))
                .with_context(|| format!("ring buffer RECORDS{i} missing from intercept-ebpf"))?;
            rings.push(RingBuf::try_from(map)?);
        }
        let prefix = xdp
            .ebpf_mut()
            .take_map("PREFIX")
            .context("map PREFIX missing from intercept-ebpf")?;
        Ok(RingSource {
            rings,
            prefix: aya::maps::Array::try_from(prefix)?,
            malformed: 0,
        })
    }
}

impl RecordSource for RingSource {
    fn want_prefixes(&mut self, bytes: u16) {
        if let Err(e) = self.prefix.set(0, bytes as u32, 0) {
            tracing::warn!(error = %e, "cannot ask the XDP program for payload prefixes: records go without");
        }
    }
    fn fds(&self, out: &mut Vec<RawFd>) {
        out.extend(self.rings.iter().map(|r| r.as_raw_fd()));
    }
    /// Up to `max` records, taken from each ring in turn (a connection's
    /// records are all in one ring, in order).
    fn drain(&mut self, out: &mut Vec<ResponseRecord>, max: usize) {
        let mut left = max;
        for ring in &mut self.rings {
            while left > 0 {
                let Some(item) = ring.next() else {
                    break;
                };
                left -= 1;
                // The first byte tells the family: an IPv6 record is wide.
                let head = match item.first().map(|b| b >> 4) {
                    Some(6) => RESPONSE_RECORD_V6_LEN,
                    _ => RECORD_LEN,
                };
                if item.len() < head {
                    self.malformed += 1;
                    continue;
                }
                let mut record = ResponseRecord::from_head(&item[..head]);
                // When a peer asked for them: when the program saw the
                // response, and its payload's first bytes.
                let stamped = head + RECORD_STAMP_LEN;
                if item.len() >= stamped {
                    let mut t = [0u8; RECORD_STAMP_LEN];
                    t.copy_from_slice(&item[head..stamped]);
                    record.held = Held::SeenAt(u64::from_ne_bytes(t));
                    if item.len() > stamped {
                        record.prefix = Some(item[stamped..].into());
                    }
                }
                out.push(record);
            }
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of the XDP program's
/// `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Fill the XDP program's filter maps with the `-F` clauses: IPv4
/// sources (and port-only clauses, which match either family) in
/// `FILTER`, IPv6 sources in `FILTER6`.
pub fn set_filter(xdp: &mut AttachedXdp, clauses: &[FilterClause]) -> Result<()> {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for c in clauses {
        let port = c.src_port.to_be();
        match c.src_host {
            None => v4.push(PortKey::new(0, port)),
            Some(IpAddr::V4(ip)) => v4.push(PortKey::new(u32::from_ne_bytes(ip.octets()), port)),
            Some(IpAddr::V6(ip)) => v6.push(PortKey6::new(ip.octets(), port)),
        }
    }
    xdp.set_keys("FILTER", &v4)?;
    xdp.set_keys("FILTER6", &v6)
}

/// `intercept --check`: the preflight checklist (see
/// [`crate::preflight`]), plus what only the assistant needs: the control
/// port free to bind, and forwarding off (the assistant must take the
/// target's answers, not forward them): IPv4's a failure, IPv6's a
/// warning (it matters only when IPv6 sessions are replayed).
fn check(opts: &InterceptOptions, clauses: &[FilterClause]) -> Result<()> {
    use crate::preflight::{self, Checklist};
    let mut list = Checklist::default();
    preflight::kernel(&mut list);
    preflight::privileges(&mut list, false);
    preflight::interfaces(&mut list, &opts.ifaces, None);
    preflight::program_loads(&mut list, "intercept program", || {
        let mut x = AttachedXdp::load(INTERCEPT_EBPF, "intercept", &[], &[], opts.xdp_mode)?;
        set_filter(&mut x, clauses)
    });
    let listen = SocketAddr::new(opts.bind, opts.port);
    match std::net::TcpListener::bind(listen) {
        Ok(_) => list.ok(format!("control channel: {listen} is free to listen on")),
        Err(e) => list.fail(format!("control channel: cannot listen on {listen}: {e}")),
    }
    if !opts.bind.is_loopback() && opts.allow.is_empty() {
        list.warn(format!(
            "control channel: {} takes any peer that reaches it; name the tcpcopy hosts with --allow CIDR",
            opts.bind
        ));
    }
    match std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").map(|s| s.trim().to_string()) {
        Ok(f) if f == "0" => list.ok("IPv4 forwarding is off: the target's answers stop here"),
        Ok(_) => list.fail(
            "IPv4 forwarding is on: answers XDP does not take would be forwarded to the real clients (sysctl net.ipv4.ip_forward=0)",
        ),
        Err(e) => list.warn(format!("IPv4 forwarding unknown: {e}")),
    }
    match std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/forwarding")
        .map(|s| s.trim().to_string())
    {
        Ok(f) if f == "0" => list.ok("IPv6 forwarding is off: the target's IPv6 answers stop here"),
        Ok(_) => list.warn(
            "IPv6 forwarding is on: IPv6 answers XDP does not take would be forwarded to the real clients (sysctl net.ipv6.conf.all.forwarding=0)",
        ),
        Err(_) => list.ok("IPv6 is off on this host: only IPv4 sessions can be replayed through it"),
    }
    list.finish()
}

/// Run intercept until SIGINT/SIGTERM/SIGHUP.
pub fn run(opts: InterceptOptions) -> Result<()> {
    let Some(filter) = opts.filter.as_deref() else {
        bail!(
            "please set a filter (-F) for the responses to take, e.g. -F 'tcp and src port 8080'"
        );
    };
    let clauses = parse_filter(filter)?;
    if opts.common.check {
        return check(&opts, &clauses);
    }
    if opts.ifaces.is_empty() {
        bail!("-i: name the interfaces the target's responses arrive on");
    }
    for i in &opts.ifaces {
        if !std::path::Path::new(&format!("/sys/class/net/{i}")).exists() {
            bail!("-i {i}: no such network interface on this host");
        }
    }
    let (_pid, stop) = process::start(&opts.common)?;
    tracing::info!(
        "intercept version:{} protocol:{}",
        env!("CARGO_PKG_VERSION"),
        crate::proto::INTERNAL_VERSION
    );

    let mut xdp = AttachedXdp::load(INTERCEPT_EBPF, "intercept", &[], &[], opts.xdp_mode)?;
    set_filter(&mut xdp, &clauses)?;
    let mut source = RingSource::new(&mut xdp)?;
    let mut server = ControlServer::bind(ServerConfig {
        listen: SocketAddr::new(opts.bind, opts.port),
        framing: if opts.bare {
            Framing::Bare
        } else {
            Framing::Combined
        },
        max_routes: opts.max_routes,
        delay_table_size: opts.delay_table_size,
        allow: opts.allow.clone(),
    })?;
    server.register_source(&source)?;
    server.set_wake_pause(opts.common.wake_pause());
    // Attach only once the channel is up: from here on responses are dropped.
    for iface in &opts.ifaces {
        xdp.attach(iface, opts.xdp_mode)?;
    }
    tracing::info!(
        listen = %server.local_addr()?,
        filter,
        ifaces = ?opts.ifaces,
        "intercept ready"
    );
    if !opts.bind.is_loopback() && opts.allow.is_empty() {
        tracing::warn!(
            "the control channel listens on {}, beyond loopback, and takes any peer that reaches it: name the tcpcopy hosts with --allow CIDR (and keep the port firewalled)",
            opts.bind
        );
    }
    process::ready();

    serve(&opts, &stop, &mut server, &mut source, &xdp)?;
    tracing::info!("shutting down");
    log_stats(&server, &source, &xdp, true);
    drop(server);
    drop(xdp);
    Ok(())
}

/// The main loop until asked to stop: serve the peers, publish the
/// metrics, log the statistics line.
fn serve(
    opts: &InterceptOptions,
    stop: &Arc<std::sync::atomic::AtomicBool>,
    server: &mut ControlServer,
    source: &mut RingSource,
    xdp: &AttachedXdp,
) -> Result<()> {
    let published = Arc::new(Mutex::new(String::new()));
    if let Some(addr) = opts.common.metrics {
        let published = Arc::clone(&published);
        crate::metrics::serve(addr, move || {
            published.lock().unwrap_or_else(|e| e.into_inner()).clone()
        })?;
    }
    let mut next_publish = Instant::now();
    // Something happened since the metrics were last refreshed.
    let mut changed = true;
    let interval = Duration::from_secs(opts.common.stats_interval.max(1));
    let mut next_stats = Instant::now() + interval;
    while !process::should_stop(stop) {
        // Sleep until a record, a peer or the next periodic task: the ring
        // wakes us for the first record after we caught up, so an idle
        // intercept costs a wakeup per HOUSEKEEPING, not per millisecond.
        let now = Instant::now();
        let mut next = (now + HOUSEKEEPING).min(next_stats);
        if opts.common.metrics.is_some() && changed {
            next = next.min(next_publish);
        }
        changed |= server.turn(source, next.saturating_duration_since(now))?;
        xdp.flush_log();
        if opts.common.metrics.is_some() && Instant::now() >= next_publish {
            let mut x = report(server, source, xdp).exposition(None);
            x.build_info("intercept");
            let text = x.render();
            *published.lock().unwrap_or_else(|e| e.into_inner()) = text;
            next_publish = Instant::now() + PUBLISH_METRICS;
            changed = false;
        }
        if Instant::now() >= next_stats {
            log_stats(server, source, xdp, false);
            next_stats += interval;
        }
    }
    Ok(())
}

/// Every figure intercept reports, declared once (the stats room): the
/// statistics line and the metrics both come from this.
fn report(server: &ControlServer, source: &RingSource, xdp: &AttachedXdp) -> Report {
    let s = server.stats();
    let r = server.router_stats();
    let mut out = Report::default();
    if let Ok(k) = xdp.read_counters("COUNTERS", intercept_counter::COUNT) {
        const HELP: &str = "intercept-ebpf counters, summed over CPUs.";
        out.extend(intercept_counter::NAMES.iter().zip(k).map(|(name, v)| {
            Figure::series("intercept_kernel_packets", "counter", *name, HELP, v)
                .line(Section::Kernel, name)
        }));
    }
    const RECORDS: &str = "Response header records: read from the ring, sent, and not.";
    let record =
        |event: &'static str, v| Figure::series("intercept_records", "event", event, RECORDS, v);
    out.extend([
        record("in", s.records_in).line(Section::Traffic, "records_in"),
        record("sent", s.records_sent).line(Section::Traffic, "sent"),
        record("routed", r.routed),
        record("unrouted", r.unrouted).line(Section::Traffic, "unrouted"),
        record("parked", r.parked).line(Section::Traffic, "parked"),
        record("parked_sent", r.parked_sent).line(Section::Traffic, "parked_sent"),
        record("parked_expired", r.parked_expired).line(Section::Traffic, "parked_expired"),
        record("delay_table_full", r.delay_table_full).line(Section::Traffic, "delay_full"),
        record("malformed", source.malformed).line(Section::Traffic, "malformed"),
        Figure::counter(
            "intercept_frames_sent",
            "Frames sent to tcpcopy peers.",
            s.frames_sent,
        )
        .line(Section::Traffic, "frames"),
        Figure::counter(
            "intercept_connections",
            "Control connections accepted.",
            s.connections,
        )
        .line(Section::Control, "conns"),
        Figure::gauge(
            "intercept_peers",
            "Connected tcpcopy peers.",
            server.peers() as u64,
        )
        .line(Section::Control, "peers"),
        Figure::counter(
            "intercept_peers_refused",
            "Connections refused by --allow.",
            s.refused,
        )
        .line(Section::Control, "refused"),
        Figure::counter(
            "intercept_peers_dropped",
            "Peers dropped for garbage, a bad version or not reading.",
            s.dropped_peers,
        )
        .line(Section::Control, "dropped"),
        Figure::counter(
            "intercept_route_adds",
            "CLIENT_ADD messages received.",
            r.route_adds,
        )
        .line(Section::Control, "route_adds"),
        Figure::gauge(
            "intercept_routes",
            "Routes in the table.",
            server.routes() as u64,
        )
        .line(Section::Control, "routes"),
        Figure::counter(
            "intercept_routes_evicted",
            "Routes evicted at the --routes bound.",
            r.routes_evicted,
        )
        .line(Section::Control, "evicted"),
    ]);
    out
}

fn log_stats(server: &ControlServer, source: &RingSource, xdp: &AttachedXdp, at_exit: bool) {
    let line = report(server, source, xdp).line();
    tracing::info!("{}{line}", if at_exit { "final: " } else { "" });
}
