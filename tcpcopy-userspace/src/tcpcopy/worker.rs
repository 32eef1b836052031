//! One replay worker, pinned to a core: it owns a capture source, a session
//! engine, a raw send socket and its own control channel, so intercept
//! routes each response straight back to the worker that owns the session.
//! Nothing is shared on the hot path; a snapshot of the counters is
//! published for the stats thread a few times a second.

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Result};

use super::channel::{Backoff, Channel, ChannelStats};
use crate::{
    capture::{Capture, CaptureStats},
    offline::record::RecordTap,
    proto::ResponseRecord,
    send::{SendCounts, Sender},
    session::{
        claims::{Claims, WorkerIndex},
        Config, Counters, Engine,
    },
    verdict::VerdictStats,
    wake::Coalesce,
};

/// A target's address and port.
pub type Endpoint = (std::net::IpAddr, u16);

/// What a worker reports to the stats thread.
#[derive(Clone, Debug, Default)]
pub struct WorkerReport {
    pub engine: Counters,
    /// With several targets (fan-out): each one's counters.
    pub targets: Vec<(Endpoint, Counters)>,
    pub capture: CaptureStats,
    pub channel: ChannelStats,
    pub send: SendCounts,
    pub active_sessions: usize,
    /// Captured segments the sessions hold, not yet sent.
    pub buffered: u64,
    /// Sessions whose pipelined requests the target may still be answering.
    pub awaiting_target: u64,
    /// `--verdict`: each target's figures.
    pub verdicts: Vec<(Endpoint, VerdictStats)>,
    /// Whether its intercepts send the target's payload prefixes.
    pub target_prefixes: Option<bool>,
    pub finished: bool,
}

pub struct Worker {
    pub id: usize,
    pub capture: Box<dyn Capture>,
    pub channel: Channel,
    pub sender: Box<dyn Sender>,
    pub engine: Engine,
    lonely: bool,
    pub report: Arc<Mutex<WorkerReport>>,
    /// Process start: the engine's clock is milliseconds since then.
    pub epoch: Instant,
    /// Offline replay: stop reading while the sessions hold many unsent
    /// segments, so a fast file waits for the target instead of losing data
    /// (or ending long before the target has seen it).
    backpressure: bool,
    /// `--record`: a copy of every captured segment goes here.
    record: Option<RecordTap>,
    /// When a woken worker takes its work.
    coalesce: Coalesce,
}

/// What a worker is made of: worker `id`, its capture end, its intercept
/// connections and its sender.
pub struct WorkerParts {
    pub id: usize,
    /// The run's table of the connections its workers opened to the
    /// target (None with one worker).
    pub ports: Option<Arc<Claims>>,
    pub capture: Box<dyn Capture>,
    pub channel: Channel,
    pub sender: Box<dyn Sender>,
    pub config: Arc<Config>,
    /// Process start: the engine's clock is milliseconds since then.
    pub epoch: Instant,
    /// `-L`: keep running with every intercept connection lost.
    pub lonely: bool,
    /// Offline replay: stop reading while the sessions hold many unsent
    /// segments.
    pub backpressure: bool,
    /// `--record`: a copy of every captured segment goes here.
    pub record: Option<RecordTap>,
    /// `--wake-pause`.
    pub wake_pause: Duration,
}

const BATCH: usize = 256;
/// The longest a worker with sessions, or with an intercept to reconnect,
/// sleeps: it then publishes its counters and reconnects. Traffic, the
/// control channel, the engine's timers and the stop bell wake it sooner.
const HOUSEKEEPING: Duration = Duration::from_millis(100);
/// The longest a worker with nothing at all (no session, every intercept
/// connected) sleeps: each wake of an idle process costs CPU on the
/// production host for nothing. It publishes its counters before.
const IDLE_HOUSEKEEPING: Duration = Duration::from_secs(1);
const PUBLISH_EVERY: Duration = Duration::from_millis(200);
/// How often a worker gives back the captured flows none of its sessions
/// holds any more (AF_XDP capture).
const RELEASE_FLOWS_EVERY: Duration = Duration::from_secs(1);
/// Offline: captured segments a worker may hold unsent, over all its
/// sessions, before it stops reading the file. Below half of what a
/// session holds of full frames (`max_buffered_bytes`, 64 MiB: about
/// 41,000), so no session overflows while it waits.
const BACKLOG_LIMIT: u64 = 16_384;

impl Worker {
    /// A worker, complete.
    pub fn new(parts: WorkerParts) -> Self {
        let WorkerParts {
            id,
            ports,
            capture,
            channel,
            sender,
            config,
            epoch,
            lonely,
            backpressure,
            record,
            wake_pause,
        } = parts;
        let mut engine = Engine::new(config);
        if let Some(ports) = ports {
            engine.share_ports(id as WorkerIndex, ports);
        }
        Worker {
            id,
            capture,
            channel,
            sender,
            engine,
            lonely,
            report: Arc::new(Mutex::new(WorkerReport::default())),
            epoch,
            backpressure,
            record,
            coalesce: Coalesce::new(wake_pause),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The engine's millisecond clock, with the verdict's microseconds
    /// told to the engine at the same moment.
    fn tick(&mut self) -> u64 {
        let elapsed = self.epoch.elapsed();
        self.engine.set_clock_us(elapsed.as_micros() as u64);
        elapsed.as_millis() as u64
    }

    /// Run until `stop` is raised (or every intercept is gone without `-L`).
    pub fn run(mut self, stop: Arc<AtomicBool>) -> Result<()> {
        let result = self.run_loop(&stop);
        // Close what is open toward the target: RST every live session.
        self.engine.shutdown();
        self.flush_outputs();
        self.publish(true);
        result
    }

    fn run_loop(&mut self, stop: &AtomicBool) -> Result<()> {
        let mut waiter = Waiter::new()?;
        let mut records: Vec<ResponseRecord> = Vec::new();
        let mut last_publish = Instant::now();
        let mut last_release = Instant::now();
        // Armed while an intercept is down.
        let mut backoff: Option<Backoff> = None;
        // Read the control channel on the first turn, then only when the
        // last wait found it readable (a read that would block is a wasted
        // system call on every turn).
        let mut channel_ready = true;
        while !stop.load(Ordering::Relaxed) {
            let congested = self.backpressure && self.engine.backlog() >= BACKLOG_LIMIT;
            // Responses first: they release held requests.
            let now = self.tick();
            records.clear();
            if channel_ready {
                self.channel.poll_records(&mut records);
                for r in &records {
                    self.engine.handle_response(now, &r.header(), r.extras());
                }
            }
            self.engine.set_memory_pressure(crate::memory::pressure());
            self.engine.set_intercept_down(self.channel.inactive() > 0);
            let now = self.tick();
            let engine = &mut self.engine;
            let record = self.record.as_ref();
            let got = if congested {
                0
            } else {
                self.capture.read_batch(BATCH, &mut |p| {
                    if let Some(r) = record {
                        r.record(p);
                    }
                    engine.handle_client_packet(now, p)
                })
            };
            let now = self.tick();
            self.engine.handle_timeout(now);
            self.flush_outputs();
            while let Some(flow) = self.engine.poll_released_flow() {
                self.capture.release_flow(flow);
            }

            if self.channel.inactive() > 0 {
                if self.channel.active() == 0 && !self.lonely {
                    bail!("worker {}: every intercept connection is lost (active num is zero); use -L to keep running", self.id);
                }
                let b = backoff.get_or_insert_with(|| Backoff::new(Instant::now()));
                self.reconnect(b);
            } else {
                backoff = None;
                if self.channel.reconnecting() {
                    // The rest of a server's connections, still connecting.
                    self.channel.reconnect();
                }
            }
            if last_release.elapsed() >= RELEASE_FLOWS_EVERY {
                let engine = &self.engine;
                self.capture
                    .release_flows(&|k| engine.holds_flow(k.client, k.port));
                last_release = Instant::now();
            }
            if last_publish.elapsed() >= PUBLISH_EVERY {
                self.publish(false);
                last_publish = Instant::now();
            }
            // A full batch: more is waiting, so only look (timeout 0) at
            // what the channel has; otherwise sleep until something comes.
            let timeout = if got == BATCH {
                Duration::ZERO
            } else {
                let idle = self.engine.active_sessions() == 0
                    && self.channel.inactive() == 0
                    && !self.channel.reconnecting();
                let longest = if idle {
                    IDLE_HOUSEKEEPING
                } else {
                    HOUSEKEEPING
                };
                let next_timer = self
                    .engine
                    .poll_timeout()
                    .map(|t| Duration::from_millis(t.saturating_sub(self.now())));
                next_timer.map_or(longest, |t| t.min(longest))
            };
            if timeout > PUBLISH_EVERY {
                // What is read while it sleeps is up to date.
                self.publish(false);
                last_publish = Instant::now();
            }
            self.coalesce.took(got + records.len());
            let capture = (!congested).then_some(&*self.capture);
            channel_ready = waiter.wait(capture, &self.channel, timeout, &self.coalesce);
        }
        Ok(())
    }

    /// Look after the intercepts that are down: connects in progress are
    /// checked on every turn (never waited for), new ones started when the
    /// backoff says. One that is back learns every live session's route
    /// again, and requests in flight go again so the target's answers come
    /// through it.
    fn reconnect(&mut self, backoff: &mut Backoff) {
        let back = self.channel.reconnect();
        if backoff.due(Instant::now()) {
            if back.is_empty() && backoff.is_first() {
                // Once per outage: the retries that follow log at debug level.
                tracing::warn!(
                    worker = self.id,
                    "intercept unreachable: trying again every {} ms or sooner",
                    Backoff::MAX.as_millis()
                );
            }
            self.channel.start_reconnects();
            backoff.failed(Instant::now());
        }
        if !back.is_empty() {
            let now = self.now();
            let routes = self.engine.reannounce(now);
            let mut msgs = Vec::new();
            while let Some(m) = self.engine.poll_route() {
                msgs.push(m);
            }
            for &i in &back {
                for m in &msgs {
                    self.channel.queue_route_to(i, m);
                }
            }
            tracing::info!(
                worker = self.id,
                routes,
                "routes announced again to the intercept that came back"
            );
            self.flush_outputs();
        }
    }

    /// Route messages before the packets they announce (spec §3.2): all
    /// of this turn's are written (one write per connection) before its
    /// packets go out.
    fn flush_outputs(&mut self) {
        while let Some(m) = self.engine.poll_route() {
            self.channel.queue_route(&m);
        }
        self.channel.flush();
        while let Some(p) = self.engine.poll_transmit() {
            if let Err(e) = self.sender.send(&p) {
                tracing::debug!(worker = self.id, error = %e, "send to target failed");
            }
            self.engine.recycle(p);
        }
        self.sender.flush();
    }

    fn publish(&self, finished: bool) {
        let mut r = self.report.lock().unwrap_or_else(|e| e.into_inner());
        r.engine = self.engine.counters().clone();
        let per_target = self.engine.target_counters();
        if !per_target.is_empty() {
            r.targets = self
                .engine
                .config()
                .targets()
                .into_iter()
                .zip(per_target.iter().cloned())
                .collect();
        }
        r.capture = self.capture.stats();
        r.channel = self.channel.stats;
        r.send = self.sender.counts();
        r.active_sessions = self.engine.active_sessions();
        r.buffered = self.engine.backlog();
        r.awaiting_target = self.engine.awaiting_target(self.now());
        r.verdicts = self
            .engine
            .config()
            .targets()
            .into_iter()
            .zip(self.engine.verdicts().iter().cloned())
            .collect();
        r.target_prefixes = self.channel.prefixes_granted();
        r.finished = finished;
    }
}

/// The worker's sleep: an epoll set (level-triggered) over the capture's
/// and the control channel's fds and the stop bell. The set is changed
/// only when the fds change (a reconnect, or an offline capture held
/// back), so a wait costs one system call and no per-call registration.
struct Waiter {
    epoll: OwnedFd,
    /// What the set holds now: (fd, is a channel connection), and the
    /// channel's generation it was built for.
    registered: Vec<(RawFd, bool)>,
    generation: u64,
    want: Vec<(RawFd, bool)>,
    raw: Vec<RawFd>,
    events: Vec<libc::epoll_event>,
}

impl Waiter {
    fn new() -> Result<Self> {
        // SAFETY: no pointers; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            bail!("epoll_create1: {}", std::io::Error::last_os_error());
        }
        Ok(Waiter {
            // SAFETY: a fresh fd that nothing else owns.
            epoll: unsafe { OwnedFd::from_raw_fd(fd) },
            registered: Vec::new(),
            generation: u64::MAX,
            want: Vec::new(),
            raw: Vec::new(),
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 16],
        })
    }

    /// Make the set hold exactly `want` (rebuilt whenever the channel's
    /// connections changed: a closed fd leaves the set by itself, and its
    /// number may come back as a new connection's).
    fn sync(&mut self, generation: u64) {
        if self.want == self.registered && generation == self.generation {
            return;
        }
        self.generation = generation;
        let ep = self.epoll.as_raw_fd();
        for &(fd, _) in &self.registered {
            // SAFETY: plain fds; a null event is allowed for DEL.
            unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) };
        }
        for &(fd, channel) in &self.want {
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: channel as u64,
            };
            // SAFETY: `ev` is a valid event for the call.
            unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) };
        }
        self.registered.clone_from(&self.want);
    }

    /// Wait up to `timeout` for the capture (when given) or the channel;
    /// returns whether a channel connection is readable (or failed).
    fn wait(
        &mut self,
        capture: Option<&dyn Capture>,
        channel: &Channel,
        timeout: Duration,
        coalesce: &Coalesce,
    ) -> bool {
        self.want.clear();
        self.raw.clear();
        if let Some(c) = capture {
            c.fds(&mut self.raw);
        }
        self.want.extend(self.raw.iter().map(|&fd| (fd, false)));
        self.want
            .extend(crate::process::stop_bell().map(|fd| (fd, false)));
        self.raw.clear();
        channel.fds(&mut self.raw);
        self.want.extend(self.raw.iter().map(|&fd| (fd, true)));
        self.sync(channel.generation());
        // Round up: a timer due in 0.4 ms must not turn into a busy loop.
        let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        // SAFETY: `events` is a valid array of its length.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as i32,
                ms,
            )
        };
        if n < 0 {
            // EINTR: look at everything once more.
            return true;
        }
        if n > 0 && !timeout.is_zero() {
            coalesce.after_wake();
        }
        self.events[..n as usize].iter().any(|e| e.u64 == 1)
    }
}
