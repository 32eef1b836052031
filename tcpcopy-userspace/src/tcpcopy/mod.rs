//! The `tcpcopy` program, live capture: loads tcpcopy-ebpf on `-i` in tap
//! mode (ring buffers) or xdp mode (AF_XDP sockets), or opens one AF_PACKET
//! socket per worker (a fanout group); connects every worker to every
//! intercept, starts one pinned worker per ring/socket, prints statistics
//! every `--stats-interval` and a summary at exit, and detaches on every
//! exit path (the XDP guard is dropped last).

mod channel;
mod check;
mod offline_watch;
mod options;
mod summary;
mod worker;

pub use options::{
    parse_servers, CaptureMode, OfflinePlan, RecordPlan, SendMode, SendPlan, Settings, Source,
    Speed, TcpcopyOptions,
};
pub use summary::Totals;
pub use worker::WorkerReport;

use std::{
    sync::{atomic::AtomicBool, Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use aya::maps::{RingBuf, XskMap};
use tcpcopy_common::{capture_mode, PortKey, PortKey6};

use self::{
    channel::Channel,
    offline_watch::{offline_words, OfflineWatch},
    worker::{Worker, WorkerParts},
};
use crate::{
    capture::{dispatch, rx_queues, Capture, NicDrops, PacketSocket, RxRing, TapRing, XskSocket},
    offline::{record, OfflineSource},
    process,
    send::{neighbour, PacketSender, RawSender, Sender, XskSender},
    session::{claims::Claims, Config},
    wire::Cidr,
    xdp::{AttachedXdp, TCPCOPY_EBPF},
};

/// XDP map keys for the `-x` sources: IPv4 rules' (`SOURCES`) and IPv6
/// rules' (`SOURCES6`); a rule without a source address has the family's
/// all-zeros key, "any address".
pub fn source_keys(cfg: &Config) -> (Vec<PortKey>, Vec<PortKey6>) {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for t in &cfg.transfers {
        let port = t.src_port.to_be();
        match (t.dst_ip, t.src_ip) {
            (std::net::IpAddr::V4(_), Some(std::net::IpAddr::V4(ip))) => {
                v4.push(PortKey::new(u32::from_ne_bytes(ip.octets()), port))
            }
            (std::net::IpAddr::V4(_), _) => v4.push(PortKey::new(0, port)),
            (_, Some(std::net::IpAddr::V6(ip))) => v6.push(PortKey6::new(ip.octets(), port)),
            _ => v6.push(PortKey6::new([0; 16], port)),
        }
    }
    (v4, v6)
}

fn ifindex(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name)?;
    // SAFETY: valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        return Err(anyhow!("-i {name}: no such interface"));
    }
    Ok(i)
}

/// One AF_XDP socket per RX queue of every interface, each entered in the
/// program's `XSKS` map at its queue, dealt out to the workers: a worker
/// owns the flows its queues bring (segments of a flow that moved to
/// another worker's queue are handed back to its owner).
fn open_xsk_sockets(
    x: &mut AttachedXdp,
    ifaces: &[String],
    workers: usize,
    share_tx: bool,
    ring: RxRing,
    answers: Option<Arc<crate::session::Config>>,
) -> Result<(Ends, Vec<Option<TxParts>>)> {
    if ifaces.len() > 1 {
        // XSKS is keyed by queue index only.
        anyhow::bail!("--capture xdp takes one -i interface");
    }
    let iface = &ifaces[0];
    let queues = rx_queues(iface)?;
    let mut map = XskMap::try_from(
        x.ebpf_mut()
            .map_mut("XSKS")
            .ok_or_else(|| anyhow!("map XSKS missing"))?,
    )?;
    let mut per_worker: Vec<Vec<Box<dyn Capture>>> = (0..workers).map(|_| Vec::new()).collect();
    let mut tx: Vec<Option<TxParts>> = (0..workers).map(|_| None).collect();
    for q in 0..queues {
        let mut socket = XskSocket::open(iface, q, ring)?;
        map.set(q, socket.raw_fd(), 0)
            .with_context(|| format!("entering the AF_XDP socket of queue {q} in XSKS"))?;
        let w = q as usize % workers;
        if share_tx && tx[w].is_none() {
            tx[w] = socket.take_tx();
        }
        per_worker[w].push(Box::new(socket));
    }
    tracing::info!(iface, queues, workers, "AF_XDP sockets bound");
    let flows = Arc::new(Claims::default());
    Ok((dispatch::steer(per_worker, flows, answers)?, tx))
}

/// One capture end per worker.
type Ends = Vec<Box<dyn Capture>>;

/// The socket parts `--send xdp` sends with.
type TxParts = (
    xsk_rs::Umem,
    xsk_rs::TxQueue,
    xsk_rs::CompQueue,
    Vec<xsk_rs::FrameDesc>,
);

/// The next-hop MAC toward every target out of `out` (a target's own
/// `@MAC`, else resolved), kept current by a watcher thread.
fn next_hops(cfg: &Config, out: &str, stop: &Arc<AtomicBool>) -> Result<Arc<neighbour::NextHops>> {
    let mut table = std::collections::HashMap::new();
    let mut watched = Vec::new();
    for t in &cfg.transfers {
        let dst = t.dst_ip;
        let mac = match t.dst_mac {
            Some(m) => m,
            None => {
                watched.push(dst);
                neighbour::resolve(out, dst)?
            }
        };
        table.insert(dst, mac);
    }
    let next_hop = neighbour::NextHops::new(table);
    if !watched.is_empty() {
        // Detached: it ends within 200 ms of `stop`.
        neighbour::watch(
            out.to_string(),
            watched,
            Arc::clone(&next_hop),
            Arc::clone(stop),
        )?;
    }
    Ok(next_hop)
}

/// `--send packet`: one AF_PACKET sender per worker on `-o`.
fn packet_senders(
    cfg: &Config,
    out: &str,
    workers: usize,
    stop: &Arc<AtomicBool>,
) -> Result<Vec<Box<dyn Sender>>> {
    let src_mac = neighbour::iface_mac(out)?;
    let ifindex = neighbour::ifindex(out)?;
    let next_hop = next_hops(cfg, out, stop)?;
    let mut senders: Vec<Box<dyn Sender>> = Vec::new();
    for _ in 0..workers {
        let sender = PacketSender::new(ifindex, src_mac, Arc::clone(&next_hop))
            .map_err(|e| anyhow!("--send packet: AF_PACKET socket (needs CAP_NET_RAW): {e}"))?;
        senders.push(Box::new(sender));
    }
    tracing::info!(out, workers, next_hop = ?next_hop.snapshot(), "AF_PACKET senders ready");
    Ok(senders)
}

/// `--send xdp`: one AF_XDP sender per worker on `-o`, sharing the
/// worker's capture socket where `-o` is the capture interface, else on
/// queue `worker` of `-o`. Also returns the bytes of the UMEMs opened for
/// them (for `-m`).
fn xsk_senders(
    cfg: &Config,
    out: &str,
    workers: usize,
    mut shared: Vec<Option<TxParts>>,
    stop: &Arc<AtomicBool>,
) -> Result<(Vec<Box<dyn Sender>>, u64)> {
    let src_mac = neighbour::iface_mac(out)?;
    let next_hop = next_hops(cfg, out, stop)?;
    let queues = rx_queues(out)? as usize;
    let mut senders: Vec<Box<dyn Sender>> = Vec::new();
    let mut umems = 0;
    for w in 0..workers {
        let parts = match shared.get_mut(w).and_then(Option::take) {
            Some(p) => p,
            None => {
                if w >= queues {
                    anyhow::bail!(
                        "--send xdp: -o {out} has {queues} queue(s) for {workers} workers; use --workers {queues}"
                    );
                }
                let ring = RxRing::default();
                umems += ring.umem_bytes();
                XskSocket::open(out, w as u32, ring)?
                    .take_tx()
                    .ok_or_else(|| anyhow!("--send xdp: no TX ring on {out} queue {w}"))?
            }
        };
        senders.push(Box::new(XskSender::new(
            parts,
            src_mac,
            Arc::clone(&next_hop),
        )));
    }
    tracing::info!(out, workers, next_hop = ?next_hop.snapshot(), "AF_XDP senders ready");
    Ok((senders, umems))
}

/// How often the supervising thread wakes (live capture): it refreshes the
/// totals behind `--metrics`, flushes the XDP program's log, notices a
/// worker that ended and writes the statistics line when due. (It woke
/// every 50 ms, a fifth of an idle tcpcopy's CPU.)
const SUPERVISE_TICK: Duration = Duration::from_millis(200);

/// The capture side, opened: one end per worker, and what must live as
/// long as they do.
struct Sources {
    ends: Ends,
    /// The attached program (tap and xdp), detached when dropped.
    xdp: Option<AttachedXdp>,
    /// The dispatcher thread (packet and offline).
    dispatcher: Option<dispatch::Dispatcher>,
    /// Offline: the plan and how far the file has been read.
    offline: Option<(OfflinePlan, Arc<crate::offline::Progress>)>,
    /// `--send xdp` on the capture interface: each worker's TX ring.
    shared_tx: Vec<Option<TxParts>>,
    /// The capture interfaces' drop counters at start (live capture on
    /// `-i` interfaces).
    nic: NicDrops,
}

/// Run tcpcopy until SIGINT/SIGTERM/SIGHUP or a fatal worker error.
pub fn run(opts: TcpcopyOptions) -> Result<()> {
    let plan = opts.settings()?;
    if opts.common.check {
        return check::run(&plan, &opts.check_from);
    }
    plan.check_interfaces()?;
    let (_pid, stop) = process::start(&opts.common)?;
    tracing::info!(
        "tcpcopy version:{} protocol:{} target:{} source:{:?} workers:{} intercept:{:?}",
        env!("CARGO_PKG_VERSION"),
        crate::proto::INTERNAL_VERSION,
        opts.transfer.as_deref().unwrap_or(""),
        plan.source,
        plan.workers,
        plan.servers
    );
    // XDP is attached only once every worker is connected, so nothing is
    // captured that cannot be replayed.
    let mut sources = open_sources(&plan, &stop)?;
    let recorder = match &plan.record {
        Some(r) => Some(record::start(&r.path, r.rotate_bytes)?),
        None => None,
    };
    let workers = build_workers(
        &plan,
        &mut sources,
        recorder.as_ref().map(|(tap, _)| tap),
        &stop,
    )?;
    // The workers hold the only taps now: the recorder ends with them.
    let recorder = recorder.map(|(_, r)| r);
    if let Some(x) = sources.xdp.as_mut() {
        for iface in &plan.ifaces {
            x.attach(iface, plan.xdp_mode)?;
        }
        // `--verdict` in tap mode: the online server's answers leave
        // through the same interfaces.
        if plan.config.verdict.is_some() && plan.source == Source::Live(CaptureMode::Tap) {
            for iface in &plan.ifaces {
                x.attach_egress("tcpcopy_answers", iface)?;
            }
        }
    }
    let mut running = Running::spawn(workers, &stop)?;
    tracing::info!("tcpcopy ready: replaying to the target");
    process::ready();
    supervise(&plan, &stop, &running, &sources)?;
    process::raise_stop(&stop);
    let failure = running.join();
    let mut totals = Totals::collect(&running.reports, sources.xdp.as_ref());
    totals.nic_dropped = sources.nic.read_now();
    if let Some(d) = sources.dispatcher.take() {
        let end = d.join();
        totals.dispatch_queue_full = end.queue_full;
    }
    tracing::info!("{}", totals.stats_line());
    write_verdict_json(&plan, &totals);
    process::tell(&exit_summary(&plan, &totals, &sources, recorder), false);
    drop(sources); // detaches XDP
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// `--verdict`: the configuration that tells the dispatcher which packets
/// are online answers.
fn answers(plan: &Settings) -> Option<Arc<crate::session::Config>> {
    plan.config
        .verdict
        .is_some()
        .then(|| Arc::clone(&plan.config))
}

/// Open the capture source the plan names, one end per worker.
fn open_sources(plan: &Settings, stop: &Arc<std::sync::atomic::AtomicBool>) -> Result<Sources> {
    let mut s = Sources {
        ends: Vec::new(),
        xdp: None,
        dispatcher: None,
        offline: None,
        shared_tx: Vec::new(),
        nic: NicDrops::default(),
    };
    let workers = plan.workers;
    match &plan.source {
        Source::Offline(offline) => {
            let (source, progress) =
                OfflineSource::open(offline.path.clone(), offline.pace, offline.passes)?;
            tracing::info!(
                file = %offline.path.display(),
                bytes = progress.size,
                accelerate = offline.pace.accel,
                max_speed = offline.pace.max_speed,
                passes = offline.passes,
                "offline replay"
            );
            let (ends, handle) = dispatch::start(
                Box::new(source),
                workers,
                Arc::clone(stop),
                true,
                answers(plan),
            )?;
            s.ends = ends;
            s.dispatcher = Some(handle);
            s.offline = Some((offline.clone(), progress));
        }
        Source::Live(CaptureMode::Packet) => {
            let idx = match plan.ifaces.first() {
                Some(name) => ifindex(name)?,
                None => 0,
            };
            let sockets = PacketSocket::open_group(idx, Arc::clone(&plan.config), workers)
                .context("--capture packet")?;
            s.ends = sockets
                .into_iter()
                .map(|s| Box::new(s) as Box<dyn Capture>)
                .collect();
        }
        Source::Live(CaptureMode::Tap) => {
            let mut x = load_capture_program(plan, capture_mode::TAP)?;
            for i in 0..workers {
                let map = x
                    .ebpf_mut()
                    .take_map(&format!("TAP{i}"))
                    .ok_or_else(|| anyhow!("tap ring TAP{i} missing"))?;
                s.ends.push(Box::new(TapRing::new(
                    RingBuf::try_from(map)?,
                    plan.tap_ring_bytes as u64,
                )));
            }
            s.xdp = Some(x);
        }
        Source::Live(CaptureMode::Xdp) => {
            let mut x = load_capture_program(plan, capture_mode::XSK)?;
            let share_tx = matches!(
                plan.send,
                SendPlan::Xdp {
                    share_capture: true,
                    ..
                }
            );
            let (ends, tx) = open_xsk_sockets(
                &mut x,
                &plan.ifaces,
                workers,
                share_tx,
                plan.xsk_ring,
                answers(plan),
            )?;
            s.ends = ends;
            s.shared_tx = tx;
            s.xdp = Some(x);
        }
    }
    if matches!(plan.source, Source::Live(_)) {
        s.nic = NicDrops::start(&plan.ifaces);
    }
    Ok(s)
}

/// tcpcopy-ebpf, loaded (not attached) in `mode`, with the `-x` sources.
/// The tap rings the workers read get `--tap-ring-mb`; the others are
/// shrunk to a page.
fn load_capture_program(plan: &Settings, mode: u32) -> Result<AttachedXdp> {
    let filter = &plan.config.client_filter;
    let too_many = |c: &[Cidr]| c.len() > tcpcopy_common::client_filter::MAX_ENTRIES as usize;
    if too_many(&filter.only) || too_many(&filter.skip) {
        bail!(
            "--only-clients/--skip-clients: at most {} networks each",
            tcpcopy_common::client_filter::MAX_ENTRIES
        );
    }
    let filter_bits = (!filter.only.is_empty() as u32 * tcpcopy_common::client_filter::ONLY)
        | (!filter.skip.is_empty() as u32 * tcpcopy_common::client_filter::SKIP);
    // `--verdict`: in tap mode the TC program copies this much of each
    // online answer; in xsk mode (a mirror) the XDP program redirects the
    // answers it sees (any non-zero value).
    let answer_bytes = plan.config.verdict.map_or(0, |v| v.prefix_bytes as u32);
    let mut globals = vec![
        ("CAPTURE_MODE", mode),
        ("CLIENT_FILTER", filter_bits),
        ("ANSWER_BYTES", answer_bytes),
    ];
    let rings = if mode == capture_mode::TAP {
        globals.push(("TAP_RINGS", plan.workers as u32));
        plan.workers as u32
    } else {
        0
    };
    let names: Vec<String> = (0..tcpcopy_common::MAX_TAP_RINGS)
        .map(|i| format!("TAP{i}"))
        .collect();
    let page = page_size();
    let sizes: Vec<(&str, u32)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let bytes = if (i as u32) < rings {
                plan.tap_ring_bytes
            } else {
                page
            };
            (n.as_str(), bytes)
        })
        .collect();
    let mut x = AttachedXdp::load_sized(
        TCPCOPY_EBPF,
        "tcpcopy_capture",
        &globals,
        &sizes,
        &[],
        plan.xdp_mode,
    )?;
    let (v4, v6) = source_keys(&plan.config);
    x.set_keys("SOURCES", &v4)?;
    x.set_keys("SOURCES6", &v6)?;
    // Each family's networks in its own tries: an `--only-clients` of one
    // family leaves the other's tries empty, so none of its clients.
    x.set_networks("ONLY_CLIENTS", "ONLY_CLIENTS6", &filter.only)?;
    x.set_networks("SKIP_CLIENTS", "SKIP_CLIENTS6", &filter.skip)?;
    Ok(x)
}

/// The smallest ring buffer the kernel takes: one page.
fn page_size() -> u32 {
    // SAFETY: sysconf has no memory effects.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u32
    } else {
        4096
    }
}

/// One worker per capture end, each with its intercept connections and
/// its sender; `-m` is set once the rings and UMEMs are paid for.
fn build_workers(
    plan: &Settings,
    sources: &mut Sources,
    record: Option<&record::RecordTap>,
    stop: &Arc<AtomicBool>,
) -> Result<Vec<Worker>> {
    let epoch = Instant::now();
    let count = sources.ends.len();
    let mut reserved: u64 = sources.ends.iter().map(|c| c.reserved_bytes()).sum();
    let mut xsk = match &plan.send {
        SendPlan::Xdp { out, .. } => {
            let shared = std::mem::take(&mut sources.shared_tx);
            let (senders, umems) = xsk_senders(&plan.config, out, count, shared, stop)?;
            reserved += umems;
            senders.into_iter().map(Some).collect()
        }
        SendPlan::Packet { out } => packet_senders(&plan.config, out, count, stop)?
            .into_iter()
            .map(Some)
            .collect(),
        SendPlan::Raw => Vec::new(),
    };
    let mut workers = Vec::new();
    let ports = (count > 1).then(|| Arc::new(Claims::default()));
    for (id, capture) in std::mem::take(&mut sources.ends).into_iter().enumerate() {
        let channel = Channel::connect(&plan.servers, plan.connections, plan.greeting())?;
        let sender: Box<dyn Sender> = match xsk.get_mut(id).and_then(Option::take) {
            Some(s) => s,
            None => Box::new(
                RawSender::new()
                    .map_err(|e| anyhow!("raw send socket (needs CAP_NET_RAW): {e}"))?,
            ),
        };
        workers.push(Worker::new(WorkerParts {
            id,
            ports: ports.clone(),
            capture,
            channel,
            sender,
            config: Arc::clone(&plan.config),
            epoch,
            lonely: plan.lonely,
            backpressure: sources.offline.is_some(),
            record: record.cloned(),
            wake_pause: plan.wake_pause,
        }));
    }
    if let Some(limit) = plan.memory_limit {
        let budget = crate::memory::set_limit(limit, reserved)?;
        tracing::info!(
            limit_mib = limit >> 20,
            rings_mib = reserved >> 20,
            session_budget_mib = budget >> 20,
            "-m: memory limit"
        );
    }
    Ok(workers)
}

/// The worker threads, each pinned to a core.
struct Running {
    reports: Vec<Arc<Mutex<WorkerReport>>>,
    handles: Vec<JoinHandle<Result<()>>>,
}

impl Running {
    fn spawn(workers: Vec<Worker>, stop: &Arc<AtomicBool>) -> Result<Running> {
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let mut r = Running {
            reports: Vec::new(),
            handles: Vec::new(),
        };
        for w in workers {
            r.reports.push(Arc::clone(&w.report));
            let core = (!cores.is_empty()).then(|| cores[w.id % cores.len()]);
            let stop = Arc::clone(stop);
            r.handles.push(
                std::thread::Builder::new()
                    .name(format!("tcpcopy-w{}", w.id))
                    .spawn(move || {
                        if let Some(c) = core {
                            core_affinity::set_for_current(c);
                        }
                        w.run(stop)
                    })?,
            );
        }
        Ok(r)
    }

    fn any_finished(&self) -> bool {
        self.handles.iter().any(|h| h.is_finished())
    }

    /// Wait for every worker; the last failure, if any.
    fn join(&mut self) -> Option<anyhow::Error> {
        let mut failure = None;
        for h in self.handles.drain(..) {
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failure = Some(e),
                Err(_) => failure = Some(anyhow!("a worker panicked")),
            }
        }
        failure
    }
}

/// Until asked to stop, a worker ends, or an offline replay is done:
/// statistics lines, the metrics the endpoint serves, the `-m` warning.
fn supervise(
    plan: &Settings,
    stop: &Arc<AtomicBool>,
    running: &Running,
    sources: &Sources,
) -> Result<()> {
    let metrics = match plan.metrics {
        Some(addr) => Some(serve_metrics(addr)?),
        None => None,
    };
    let mut watch = sources
        .offline
        .as_ref()
        .map(|(offline, progress)| OfflineWatch::new(offline.clone(), Arc::clone(progress)));
    let mut next_stats = Instant::now() + plan.stats_interval;
    let mut memory_warned = false;
    // Offline, the file's progress is looked at often (its end stops the
    // run); live, a few times a second is enough for the metrics, and a
    // signal wakes the sleep at once.
    let tick = if watch.is_some() {
        Duration::from_millis(50)
    } else {
        SUPERVISE_TICK
    };
    while !process::should_stop(stop) {
        process::sleep_unless_stopped(tick);
        if let Some(x) = &sources.xdp {
            x.flush_log();
        }
        if running.any_finished() {
            break;
        }
        if let Some(w) = watch.as_mut() {
            if w.step(&Totals::collect(&running.reports, None)) {
                break;
            }
        }
        if let Some(published) = &metrics {
            *published.lock().unwrap_or_else(|e| e.into_inner()) = live_totals(running, sources);
        }
        if Instant::now() >= next_stats {
            if let (Some(limit), false) = (plan.memory_limit, memory_warned) {
                memory_warned = warn_over_memory_limit(limit);
            }
            let totals = live_totals(running, sources);
            let line = totals.stats_line();
            match &watch {
                Some(w) => w.log(&format!("{} | {}", w.position(), line)),
                None => tracing::info!("{line}"),
            }
            if let Some(tables) = totals.verdict_tables() {
                tracing::info!("{tables}");
            }
            write_verdict_json(plan, &totals);
            next_stats += plan.stats_interval;
        }
    }
    if let Some(w) = watch.take() {
        w.finish();
    }
    Ok(())
}

/// `--verdict-json FILE`: the verdict as JSON, replaced whole (written
/// beside it, then renamed: a reader never sees half a file).
fn write_verdict_json(plan: &Settings, totals: &Totals) {
    let Some(path) = &plan.verdict_json else {
        return;
    };
    let tmp = path.with_extension("json.tmp");
    let r = std::fs::write(&tmp, totals.verdict_json()).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = r {
        tracing::warn!(path = %path.display(), error = %e, "--verdict-json: cannot write");
    }
}

/// The totals while running, with the dispatcher's drops and the capture
/// interfaces'.
fn live_totals(running: &Running, sources: &Sources) -> Totals {
    let mut t = Totals::collect(&running.reports, sources.xdp.as_ref());
    let d = sources.dispatcher.as_ref();
    t.dispatch_queue_full = d.map_or(0, |d| d.queue_full());
    t.nic_dropped = sources.nic.since_start();
    t
}

/// Serve `--metrics`: the endpoint renders the latest totals published.
fn serve_metrics(addr: std::net::SocketAddr) -> Result<Arc<Mutex<Totals>>> {
    let published = Arc::new(Mutex::new(Totals::default()));
    let latest = Arc::clone(&published);
    crate::metrics::serve(addr, move || {
        let t = latest.lock().unwrap_or_else(|e| e.into_inner()).clone();
        t.exposition().render()
    })?;
    Ok(published)
}

/// Warn once resident memory passes `-m`; true if it did.
fn warn_over_memory_limit(limit: u64) -> bool {
    let rss = crate::memory::status_bytes("VmRSS").unwrap_or(0);
    if rss <= limit {
        return false;
    }
    tracing::warn!(
        "resident memory {} MiB passed -m {} MiB (more outside the heap than reserved)",
        rss >> 20,
        limit >> 20
    );
    true
}

/// The exit summary: the totals in words, the offline replay, memory and
/// the recording.
fn exit_summary(
    plan: &Settings,
    totals: &Totals,
    sources: &Sources,
    recorder: Option<record::Recorder>,
) -> String {
    let mut summary = totals.summary();
    if let Some(tables) = totals.verdict_tables() {
        summary.push_str(&tables);
        summary.push('\n');
    }
    if let Some((offline, progress)) = &sources.offline {
        summary.push_str(&offline_words(offline, progress));
    }
    if let Some(limit) = plan.memory_limit {
        let peak = crate::memory::status_bytes("VmHWM").unwrap_or(0);
        summary.push_str(&format!(
            "memory: peak resident {} MiB of -m {} MiB\n",
            peak >> 20,
            limit >> 20
        ));
    }
    if let Some(r) = recorder {
        summary.push_str(&match r.finish() {
            Ok(rs) => format!(
                "recorded {} segments ({} bytes) to {}{}\n",
                rs.packets,
                rs.bytes,
                rs.files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                if rs.dropped > 0 {
                    format!("; {} not recorded: the writer fell behind", rs.dropped)
                } else {
                    String::new()
                }
            ),
            Err(e) => format!("recording failed: {e:#}\n"),
        });
    }
    summary
}
