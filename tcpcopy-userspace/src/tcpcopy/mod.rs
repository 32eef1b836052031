//! The `tcpcopy` program, live capture: loads tcpcopy-ebpf on `-i` in tap
//! mode (ring buffers) or xdp mode (AF_XDP sockets), or opens an AF_PACKET
//! socket and a dispatcher; connects every worker to every
//! intercept, starts one pinned worker per ring/socket, prints statistics
//! every `--stats-interval` and a summary at exit, and detaches on every
//! exit path (the XDP guard is dropped last).

mod channel;
mod offline_watch;
mod options;
mod summary;
mod worker;

pub use options::{
    parse_servers, CaptureMode, OfflinePlan, SendMode, Settings, Speed, TcpcopyOptions,
};
pub use summary::Totals;
pub use worker::WorkerReport;

use std::{
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context, Result};
use aya::maps::{RingBuf, XskMap};
use tcpcopy_common::{capture_mode, PortKey};

use self::{
    channel::Channel,
    offline_watch::{offline_words, OfflineWatch},
    worker::Worker,
};
use crate::{
    capture::{dispatch, rx_queues, Capture, PacketSocket, TapRing, XskSocket},
    offline::{record, OfflineSource},
    process,
    proto::Framing,
    send::{neighbour, RawSender, Sender, XskSender},
    session::Config,
    xdp::{AttachedXdp, TCPCOPY_EBPF},
};

/// XDP map keys for the `-x` sources.
pub fn source_keys(cfg: &Config) -> Vec<PortKey> {
    cfg.transfers
        .iter()
        .map(|t| {
            let addr = t.src_ip.map_or(0, |ip| u32::from_ne_bytes(ip.octets()));
            PortKey::new(addr, t.src_port.to_be())
        })
        .collect()
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
/// program's `XSKS` map at its queue, dealt out to the workers; segments of
/// a flow another worker owns are steered to it.
fn open_xsk_sockets(
    x: &mut AttachedXdp,
    ifaces: &[String],
    workers: usize,
    share_tx: bool,
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
        let mut socket = XskSocket::open(iface, q)?;
        map.set(q, socket.raw_fd(), 0)
            .with_context(|| format!("entering the AF_XDP socket of queue {q} in XSKS"))?;
        let w = q as usize % workers;
        if share_tx && tx[w].is_none() {
            tx[w] = socket.take_tx();
        }
        per_worker[w].push(Box::new(socket));
    }
    tracing::info!(iface, queues, workers, "AF_XDP sockets bound");
    Ok((dispatch::steer(per_worker)?, tx))
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

/// `--send xdp`: one AF_XDP sender per worker on `-o`, sharing the
/// worker's capture socket where `-o` is the capture interface, else on
/// queue `worker` of `-o`. Also returns the bytes of the UMEMs opened for
/// them (for `-m`).
fn xsk_senders(
    cfg: &Config,
    out: &str,
    workers: usize,
    mut shared: Vec<Option<TxParts>>,
) -> Result<(Vec<Box<dyn Sender>>, u64)> {
    let src_mac = neighbour::iface_mac(out)?;
    let mut next_hop = std::collections::HashMap::new();
    for t in &cfg.transfers {
        let mac = match t.dst_mac {
            Some(m) => m,
            None => neighbour::resolve(out, t.dst_ip)?,
        };
        next_hop.insert(t.dst_ip, mac);
    }
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
                umems += crate::capture::UMEM_BYTES;
                XskSocket::open(out, w as u32)?
                    .take_tx()
                    .ok_or_else(|| anyhow!("--send xdp: no TX ring on {out} queue {w}"))?
            }
        };
        senders.push(Box::new(XskSender::new(parts, src_mac, next_hop.clone())));
    }
    tracing::info!(out, workers, ?next_hop, "AF_XDP senders ready");
    Ok((senders, umems))
}

/// How often the totals behind `--metrics` are refreshed.
const PUBLISH_METRICS: Duration = Duration::from_millis(250);

/// Run tcpcopy until SIGINT/SIGTERM/SIGHUP or a fatal worker error.
pub fn run(opts: TcpcopyOptions) -> Result<()> {
    let settings = opts.settings()?;
    let (_pid, stop) = process::start(
        opts.daemon,
        opts.log_file.as_deref(),
        opts.pid_file.as_deref(),
    )?;
    let cfg = Arc::clone(&settings.config);
    tracing::info!(
        "tcpcopy version:{} protocol:{} target:{} capture:{:?} workers:{} intercept:{:?}",
        env!("CARGO_PKG_VERSION"),
        crate::proto::INTERNAL_VERSION,
        opts.transfer.as_deref().unwrap_or(""),
        settings.capture,
        settings.workers,
        settings.servers
    );

    // Capture sources, one per worker; XDP is attached only once every
    // worker is connected, so nothing is captured that cannot be replayed.
    let mut xdp = None;
    let mut captures: Vec<Box<dyn Capture>> = Vec::new();
    let mut dispatcher = None;
    let mut offline = None;
    // `--send xdp` on the capture interface: each worker's TX ring.
    let mut shared_tx: Vec<Option<TxParts>> = Vec::new();
    match settings.capture {
        _ if settings.offline.is_some() => {
            let plan = settings.offline.clone().unwrap();
            let (source, progress) =
                OfflineSource::open(plan.path.clone(), plan.pace, plan.passes)?;
            tracing::info!(
                file = %plan.path.display(),
                bytes = progress.size,
                accelerate = plan.pace.accel,
                max_speed = plan.pace.max_speed,
                passes = plan.passes,
                "offline replay"
            );
            let (ends, handle) =
                dispatch::start(Box::new(source), settings.workers, Arc::clone(&stop), true)?;
            captures = ends;
            dispatcher = Some(handle);
            offline = Some((plan, progress));
        }
        CaptureMode::Tap => {
            let mut x = AttachedXdp::load(
                TCPCOPY_EBPF,
                "tcpcopy_capture",
                &[
                    ("CAPTURE_MODE", capture_mode::TAP),
                    ("TAP_RINGS", settings.workers as u32),
                ],
                &[],
                opts.xdp_mode,
            )?;
            x.set_port_keys("SOURCES", &source_keys(&cfg))?;
            for i in 0..settings.workers {
                let map = x
                    .ebpf_mut()
                    .take_map(&format!("TAP{i}"))
                    .ok_or_else(|| anyhow!("tap ring TAP{i} missing"))?;
                captures.push(Box::new(TapRing::new(RingBuf::try_from(map)?)));
            }
            xdp = Some(x);
        }
        CaptureMode::Packet => {
            let idx = match opts.ifaces.first() {
                Some(name) => ifindex(name)?,
                None => 0,
            };
            let socket = PacketSocket::open(idx, Arc::clone(&cfg)).context("--capture packet")?;
            let (ends, handle) =
                dispatch::start(Box::new(socket), settings.workers, Arc::clone(&stop), false)?;
            captures = ends;
            dispatcher = Some(handle);
        }
        CaptureMode::Xdp => {
            let mut x = AttachedXdp::load(
                TCPCOPY_EBPF,
                "tcpcopy_capture",
                &[("CAPTURE_MODE", capture_mode::XSK)],
                &[],
                opts.xdp_mode,
            )?;
            x.set_port_keys("SOURCES", &source_keys(&cfg))?;
            let share_tx =
                opts.send == SendMode::Xdp && opts.out_iface == opts.ifaces.first().cloned();
            let (ends, tx) = open_xsk_sockets(&mut x, &opts.ifaces, settings.workers, share_tx)?;
            captures = ends;
            shared_tx = tx;
            xdp = Some(x);
        }
    }

    let recorder = match &opts.record {
        Some(path) => {
            let rotate = opts.record_size.unwrap_or(0) * 1_000_000;
            Some(record::start(path, rotate)?)
        }
        None => None,
    };
    let epoch = Instant::now();
    let mut workers = Vec::new();
    let count = captures.len();
    let mut reserved: u64 = captures.iter().map(|c| c.reserved_bytes()).sum();
    let mut senders = match (&opts.out_iface, opts.send) {
        (Some(out), SendMode::Xdp) => {
            let (senders, umems) = xsk_senders(&cfg, out, count, shared_tx)?;
            reserved += umems;
            senders.into_iter().map(Some).collect()
        }
        _ => Vec::new(),
    };
    for (id, capture) in captures.into_iter().enumerate() {
        let channel = Channel::connect(&settings.servers, settings.connections, Framing::Combined)?;
        let sender: Box<dyn Sender> = match senders.get_mut(id).and_then(Option::take) {
            Some(xsk) => xsk,
            None => Box::new(
                RawSender::new()
                    .map_err(|e| anyhow!("raw send socket (needs CAP_NET_RAW): {e}"))?,
            ),
        };
        let mut w = Worker::new(id, count, capture, channel, sender, Arc::clone(&cfg), epoch)?;
        w.lonely = opts.lonely;
        w.backpressure = offline.is_some();
        w.record = recorder.as_ref().map(|(tap, _)| tap.clone());
        workers.push(w);
    }
    let memory_limit = opts.memory_mb.map(|mb| mb << 20);
    if let Some(limit) = memory_limit {
        let budget = crate::memory::set_limit(limit, reserved)?;
        tracing::info!(
            limit_mib = limit >> 20,
            rings_mib = reserved >> 20,
            session_budget_mib = budget >> 20,
            "-m: memory limit"
        );
    }
    // The workers hold the only taps now: the recorder ends with them.
    let recorder = recorder.map(|(_, r)| r);
    if let Some(x) = xdp.as_mut() {
        for iface in &opts.ifaces {
            x.attach(iface, opts.xdp_mode)?;
        }
    }

    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut reports: Vec<Arc<Mutex<WorkerReport>>> = Vec::new();
    let mut handles: Vec<JoinHandle<Result<()>>> = Vec::new();
    for w in workers {
        reports.push(Arc::clone(&w.report));
        let stop = Arc::clone(&stop);
        let core = (!cores.is_empty()).then(|| cores[w.id % cores.len()]);
        let id = w.id;
        handles.push(
            std::thread::Builder::new()
                .name(format!("tcpcopy-w{id}"))
                .spawn(move || {
                    if let Some(c) = core {
                        core_affinity::set_for_current(c);
                    }
                    w.run(stop)
                })?,
        );
    }
    tracing::info!("tcpcopy ready: replaying to the target");

    let interval = Duration::from_secs(opts.stats_interval.max(1));
    let mut next_stats = Instant::now() + interval;
    let mut failure = None;
    // The metrics endpoint reads the latest totals the loop publishes.
    let published = Arc::new(Mutex::new(Totals::default()));
    if let Some(addr) = opts.metrics {
        let published = Arc::clone(&published);
        let count = reports.len();
        crate::metrics::serve(addr, move || {
            let t = published.lock().unwrap_or_else(|e| e.into_inner()).clone();
            t.exposition(count).render()
        })?;
    }
    let mut next_publish = Instant::now();
    let mut memory_warned = false;
    let mut watch = offline
        .as_ref()
        .map(|(plan, progress)| OfflineWatch::new(plan.clone(), Arc::clone(progress)));
    while !process::should_stop(&stop) {
        std::thread::sleep(Duration::from_millis(50));
        if handles.iter().any(|h| h.is_finished()) {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            break;
        }
        if let Some(w) = watch.as_mut() {
            if w.step(&Totals::collect(&reports, None)) {
                break;
            }
        }
        if opts.metrics.is_some() && Instant::now() >= next_publish {
            let mut t = Totals::collect(&reports, xdp.as_ref());
            t.dispatch_queue_full = dispatcher.as_ref().map_or(0, |d| d.queue_full());
            t.packet_socket_dropped = dispatcher.as_ref().map_or(0, |d| d.source_dropped());
            *published.lock().unwrap_or_else(|e| e.into_inner()) = t;
            next_publish = Instant::now() + PUBLISH_METRICS;
        }
        if Instant::now() >= next_stats {
            if let (Some(limit), false) = (memory_limit, memory_warned) {
                let rss = crate::memory::status_bytes("VmRSS").unwrap_or(0);
                if rss > limit {
                    memory_warned = true;
                    tracing::warn!(
                        "resident memory {} MiB passed -m {} MiB (more outside the heap than reserved)",
                        rss >> 20,
                        limit >> 20
                    );
                }
            }
            let t = Totals::collect(&reports, xdp.as_ref());
            let line = t.stats_line();
            match &watch {
                Some(w) => w.log(&format!("{} | {}", w.position(), line)),
                None => tracing::info!("{line}"),
            }
            next_stats += interval;
        }
    }
    if let Some(w) = watch.take() {
        w.finish();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some(anyhow!("a worker panicked")),
        }
    }
    let mut totals = Totals::collect(&reports, xdp.as_ref());
    if let Some(d) = dispatcher {
        let end = d.join();
        totals.dispatch_queue_full = end.queue_full;
        totals.packet_socket_dropped = end.source.kernel_dropped;
    }
    tracing::info!("{}", totals.stats_line());
    let mut summary = totals.summary();
    if let Some((plan, progress)) = &offline {
        summary.push_str(&offline_words(plan, progress));
    }
    if let Some(limit) = memory_limit {
        let peak = crate::memory::status_bytes("VmHWM").unwrap_or(0);
        summary.push_str(&format!(
            "memory: peak resident {} MiB of -m {} MiB\n",
            peak >> 20,
            limit >> 20
        ));
    }
    if let Some(r) = recorder {
        match r.finish() {
            Ok(rs) => summary.push_str(&format!(
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
            )),
            Err(e) => summary.push_str(&format!("recording failed: {e:#}\n")),
        }
    }
    eprintln!("{summary}");
    drop(xdp);
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
