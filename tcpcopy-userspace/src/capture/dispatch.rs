//! A dispatcher for sources that cannot split flows themselves: one thread
//! reads the source and hands packets to the worker that owns each client
//! (flow hash of client address and port, the same hash the XDP program
//! uses), in batches over crossbeam channels. Each worker's end is a
//! [`Capture`] whose fd is an eventfd the dispatcher signals after a batch.
//!
//! [`steer`] is the same hand-over without the extra thread, for sources
//! that already belong to workers (one AF_XDP socket per RX queue): each
//! worker reads its own queues and forwards only the segments of flows
//! another worker owns. The owner comes from the flow hash, not from the
//! queue a flow arrives on, so with N workers (N−1)/N of the segments move,
//! also behind a NIC's RSS; in exchange a flow that changes queues (veth
//! follows the sender's txhash, which TCP re-rolls) still has one owner.
//!
//! Why not PACKET_FANOUT_HASH: the kernel's fanout hash is skb->hash, which
//! on veth (and anything forwarding a local socket's packets) is the
//! sender's random txhash, re-rolled by TCP on retransmissions, so one flow
//! could land on two workers and be replayed twice.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::{Capture, CaptureStats};

const BATCH: usize = 64;
/// Batches a worker may have waiting before the dispatcher counts drops.
const QUEUE_BATCHES: usize = 4096;
/// Lossless (offline) dispatch: a short queue, so the workers' back-pressure
/// reaches the file reader instead of the whole file piling up in memory.
const LOSSLESS_QUEUE_BATCHES: usize = 64;

fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain eventfd(2); the fd is owned right away.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is fresh and valid.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn signal(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writing 8 bytes from a valid u64 to an eventfd.
    unsafe { libc::write(fd, &one as *const u64 as *const libc::c_void, 8) };
}

/// A batch of IPv4 packets for one worker.
type Batch = Vec<Vec<u8>>;
/// The dispatcher's side of a worker: its queue and its eventfd.
type Lane = (Sender<Batch>, Arc<OwnedFd>);

/// A worker's end.
pub struct DispatchedCapture {
    rx: Receiver<Batch>,
    event: Arc<OwnedFd>,
    stats: CaptureStats,
    carry: Vec<Vec<u8>>,
}

impl Capture for DispatchedCapture {
    fn fds(&self, out: &mut Vec<RawFd>) {
        out.push(self.event.as_raw_fd());
    }
    fn read_batch(&mut self, max: usize, f: &mut dyn FnMut(&[u8])) -> usize {
        let mut counter = 0u64;
        // SAFETY: reading 8 bytes into a valid u64 from a non-blocking eventfd.
        unsafe {
            libc::read(
                self.event.as_raw_fd(),
                &mut counter as *mut u64 as *mut libc::c_void,
                8,
            )
        };
        let mut n = 0;
        while n < max {
            if self.carry.is_empty() {
                match self.rx.try_recv() {
                    Ok(mut batch) => {
                        batch.reverse();
                        self.carry = batch;
                    }
                    Err(_) => break,
                }
            }
            while n < max {
                let Some(p) = self.carry.pop() else { break };
                f(&p);
                n += 1;
            }
        }
        if !self.carry.is_empty() || !self.rx.is_empty() {
            signal(self.event.as_raw_fd());
        }
        self.stats.packets += n as u64;
        n
    }
    fn stats(&self) -> CaptureStats {
        self.stats
    }
}

/// The workers' ends of a dispatcher.
pub type Ends = Vec<Box<dyn Capture>>;

/// Start a dispatcher over `source` for `workers` workers; it runs until
/// `stop` is raised. Returns the workers' ends and the thread, which yields
/// [`DispatchStats`] when it ends. `lossless` (offline replay): wait for a
/// full worker queue instead of dropping, which holds the source back.
pub fn start(
    source: Box<dyn Capture>,
    workers: usize,
    stop: Arc<AtomicBool>,
    lossless: bool,
) -> io::Result<(Ends, Dispatcher)> {
    let depth = if lossless {
        LOSSLESS_QUEUE_BATCHES
    } else {
        QUEUE_BATCHES
    };
    let (inboxes, lanes) = lanes(workers, depth)?;
    let ends: Ends = inboxes
        .into_iter()
        .map(|i| Box::new(i) as Box<dyn Capture>)
        .collect();
    let queue_full = Arc::new(AtomicU64::new(0));
    let source_dropped = Arc::new(AtomicU64::new(0));
    let mut worker = DispatchLoop {
        pending: vec![Vec::new(); lanes.len()],
        source,
        lanes,
        stop,
        lossless,
        queue_full: Arc::clone(&queue_full),
        source_dropped: Arc::clone(&source_dropped),
    };
    let handle = std::thread::Builder::new()
        .name("tcpcopy-dispatch".into())
        .spawn(move || worker.run())?;
    Ok((
        ends,
        Dispatcher {
            handle,
            queue_full,
            source_dropped,
        },
    ))
}

/// The dispatcher thread: reads the source in batches and hands each
/// packet to the worker its flow hashes to.
struct DispatchLoop {
    source: Box<dyn Capture>,
    lanes: Vec<Lane>,
    /// Packets read for each lane, not handed over yet.
    pending: Vec<Batch>,
    stop: Arc<AtomicBool>,
    lossless: bool,
    queue_full: Arc<AtomicU64>,
    source_dropped: Arc<AtomicU64>,
}

impl DispatchLoop {
    fn run(&mut self) -> DispatchStats {
        let n = self.lanes.len() as u32;
        let mut next_stats = std::time::Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            if std::time::Instant::now() >= next_stats {
                let dropped = self.source.stats().kernel_dropped;
                self.source_dropped.store(dropped, Ordering::Relaxed);
                next_stats += std::time::Duration::from_millis(100);
            }
            let pending = &mut self.pending;
            let got = self.source.read_batch(1024, &mut |p| {
                pending[lane_of(p, n)].push(p.to_vec());
            });
            self.hand_over(got == 1024);
            if got == 0 {
                self.wait_for_source();
            }
        }
        DispatchStats {
            source: self.source.stats(),
            queue_full: self.queue_full.load(Ordering::Relaxed),
        }
    }

    /// Hand each lane's packets to its worker (while the source is busy,
    /// only full batches).
    fn hand_over(&mut self, busy: bool) {
        for (i, (tx, event)) in self.lanes.iter().enumerate() {
            if self.pending[i].is_empty() || (busy && self.pending[i].len() < BATCH) {
                continue;
            }
            let mut batch = std::mem::take(&mut self.pending[i]);
            let len = batch.len() as u64;
            loop {
                match tx.try_send(batch) {
                    Ok(()) => signal(event.as_raw_fd()),
                    Err(TrySendError::Full(b))
                        if self.lossless && !self.stop.load(Ordering::Relaxed) =>
                    {
                        batch = b;
                        signal(event.as_raw_fd());
                        std::thread::sleep(std::time::Duration::from_micros(200));
                        continue;
                    }
                    Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                        self.queue_full.fetch_add(len, Ordering::Relaxed);
                    }
                }
                break;
            }
        }
    }

    /// Nothing was read: sleep until the source has packets. A source with
    /// fds (a socket) wakes us, so the timeout is only for the stop flag;
    /// one without (a file paced by its own clock) is looked at every 5 ms.
    fn wait_for_source(&mut self) {
        let mut fds = Vec::new();
        self.source.fds(&mut fds);
        let mut pfds: Vec<libc::pollfd> = fds
            .iter()
            .map(|&fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let ms = if pfds.is_empty() { 5 } else { 100 };
        // SAFETY: a valid array of pollfd for its length.
        unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    }
}

/// One inbox per worker and the senders that feed them.
fn lanes(workers: usize, depth: usize) -> io::Result<(Vec<DispatchedCapture>, Vec<Lane>)> {
    let mut inboxes = Vec::new();
    let mut lanes = Vec::new();
    for _ in 0..workers {
        let (tx, rx) = crossbeam_channel::bounded(depth);
        let event = Arc::new(eventfd()?);
        lanes.push((tx, Arc::clone(&event)));
        inboxes.push(DispatchedCapture {
            rx,
            event,
            stats: CaptureStats::default(),
            carry: Vec::new(),
        });
    }
    Ok((inboxes, lanes))
}

/// The worker that owns the flow of IPv4/TCP packet `p`, of `n`.
fn lane_of(p: &[u8], n: u32) -> usize {
    match flow_of(p) {
        Some((ip, port)) => (tcpcopy_common::flow_hash(ip, port) % n) as usize,
        None => 0,
    }
}

/// Give each worker its own sources (`sources[i]` for worker `i`, possibly
/// none) plus an inbox for the segments the other workers forward to it.
pub fn steer(sources: Vec<Vec<Box<dyn Capture>>>) -> io::Result<Ends> {
    let (inboxes, lanes) = lanes(sources.len(), QUEUE_BATCHES)?;
    let lanes = Arc::new(lanes);
    let n = sources.len();
    Ok(sources
        .into_iter()
        .zip(inboxes)
        .enumerate()
        .map(|(index, (own, inbox))| {
            Box::new(Steered {
                index,
                own,
                inbox,
                lanes: Arc::clone(&lanes),
                pending: vec![Vec::new(); n],
                queue_full: 0,
                steered: 0,
            }) as Box<dyn Capture>
        })
        .collect())
}

/// A worker's end under [`steer`].
struct Steered {
    index: usize,
    own: Vec<Box<dyn Capture>>,
    inbox: DispatchedCapture,
    lanes: Arc<Vec<Lane>>,
    pending: Vec<Batch>,
    queue_full: u64,
    steered: u64,
}

impl Capture for Steered {
    fn fds(&self, out: &mut Vec<RawFd>) {
        self.inbox.fds(out);
        for s in &self.own {
            s.fds(out);
        }
    }

    fn reserved_bytes(&self) -> u64 {
        self.own.iter().map(|s| s.reserved_bytes()).sum()
    }

    fn read_batch(&mut self, max: usize, f: &mut dyn FnMut(&[u8])) -> usize {
        let mut n = self.inbox.read_batch(max, f);
        let lanes = self.lanes.len() as u32;
        for source in &mut self.own {
            let index = self.index;
            let pending = &mut self.pending;
            n += source.read_batch(max, &mut |p| {
                let lane = lane_of(p, lanes);
                if lane == index {
                    f(p);
                } else {
                    pending[lane].push(p.to_vec());
                }
            });
        }
        for (lane, batch) in self.pending.iter_mut().enumerate() {
            if batch.is_empty() {
                continue;
            }
            let batch = std::mem::take(batch);
            let len = batch.len() as u64;
            let (tx, event) = &self.lanes[lane];
            match tx.try_send(batch) {
                Ok(()) => {
                    self.steered += len;
                    signal(event.as_raw_fd());
                }
                Err(_) => self.queue_full += len,
            }
        }
        n
    }

    /// The sources' counters (each segment counted once, by the worker
    /// that read it off the wire) and the hand-overs that failed.
    fn stats(&self) -> CaptureStats {
        let mut s = CaptureStats::default();
        for source in &self.own {
            s.add(&source.stats());
        }
        s.queue_full += self.queue_full;
        s.steered += self.steered;
        s
    }
}

/// The dispatcher thread.
pub struct Dispatcher {
    handle: JoinHandle<DispatchStats>,
    queue_full: Arc<AtomicU64>,
    source_dropped: Arc<AtomicU64>,
}

impl Dispatcher {
    /// Packets dropped so far because a worker's queue was full.
    pub fn queue_full(&self) -> u64 {
        self.queue_full.load(Ordering::Relaxed)
    }

    /// Packets the kernel dropped at the source so far (an AF_PACKET
    /// socket's full receive buffer), as of the last 100 ms.
    pub fn source_dropped(&self) -> u64 {
        self.source_dropped.load(Ordering::Relaxed)
    }

    /// Wait for the thread (after `stop` was raised).
    pub fn join(self) -> DispatchStats {
        self.handle.join().unwrap_or_default()
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct DispatchStats {
    pub source: CaptureStats,
    /// Packets dropped because a worker's queue was full.
    pub queue_full: u64,
}

/// (client address, client port) in host order, from an IPv4/TCP packet.
fn flow_of(p: &[u8]) -> Option<(u32, u16)> {
    let ihl = ((*p.first()? & 0x0f) as usize) * 4;
    let ip = u32::from_be_bytes(p.get(12..16)?.try_into().ok()?);
    let port = u16::from_be_bytes(p.get(ihl..ihl + 2)?.try_into().ok()?);
    Some((ip, port))
}
