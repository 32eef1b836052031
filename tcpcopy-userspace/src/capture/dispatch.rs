//! A dispatcher for sources that cannot split flows themselves (an offline
//! file): one thread reads the source and hands packets to the worker that owns each client
//! (flow hash of client address and port, the same hash the XDP program
//! uses), in batches over crossbeam channels. Each worker's end is a
//! [`Capture`] whose fd is an eventfd the dispatcher signals after a batch.
//!
//! [`steer`] is for sources that already belong to workers (one AF_XDP
//! socket per RX queue): the NIC's RSS has sharded the flows, so a flow is
//! owned by the worker whose queue it first arrives on (claimed in the
//! run's shared [`Claims`] table) and its segments are handed to no one.
//! A flow that moves to another queue (an RSS rehash, a queue count
//! change, veth following a sender's re-rolled txhash) is found in the
//! table by the worker that now reads it and handed to its owner: never
//! replayed twice, never split, and counted as `steered`. A worker gives
//! its flows back once no session of its holds them
//! ([`Capture::release_flows`]).

use std::{
    io,
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use hashbrown::HashSet;

use super::{Capture, CaptureStats};
use crate::session::{
    claims::{flow_hash, Claims, WorkerIndex},
    Config, SessionKey,
};

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

/// A batch of IP packets for one worker.
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
/// `answers` (`--verdict`): the online server's answers (from a `-x`
/// source) go to the worker of the client they travel to.
pub fn start(
    source: Box<dyn Capture>,
    workers: usize,
    stop: Arc<AtomicBool>,
    lossless: bool,
    answers: Option<Arc<Config>>,
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
    let mut worker = DispatchLoop {
        pending: vec![Vec::new(); lanes.len()],
        source,
        lanes,
        stop,
        lossless,
        answers,
        queue_full: Arc::clone(&queue_full),
    };
    let handle = std::thread::Builder::new()
        .name("tcpcopy-dispatch".into())
        .spawn(move || worker.run())?;
    Ok((ends, Dispatcher { handle, queue_full }))
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
    /// `--verdict`: which packets are the online server's answers.
    answers: Option<Arc<Config>>,
    queue_full: Arc<AtomicU64>,
}

impl DispatchLoop {
    fn run(&mut self) -> DispatchStats {
        let n = self.lanes.len() as u32;
        while !self.stop.load(Ordering::Relaxed) {
            let pending = &mut self.pending;
            let answers = self.answers.as_deref();
            let got = self.source.read_batch(1024, &mut |p| {
                pending[lane_of(p, n, answers)].push(p.to_vec());
            });
            self.hand_over(got == 1024);
            if got == 0 {
                self.wait_for_source();
            }
        }
        DispatchStats {
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
    /// fds (a socket) wakes us, and so does the stop bell, so the timeout
    /// is only a safety net;
    /// one without (a file paced by its own clock) is looked at when its
    /// next packet is due, at most 5 ms on. (Looked at only every 5 ms, a
    /// file's handshake measured a LAN client's RTT as 5–10 ms, and the
    /// replay paced its requests by that.)
    fn wait_for_source(&mut self) {
        let mut fds = Vec::new();
        self.source.fds(&mut fds);
        if fds.is_empty() {
            let most = std::time::Duration::from_millis(5);
            let due = self.source.next_due().unwrap_or(most).min(most);
            std::thread::sleep(due);
            return;
        }
        fds.extend(crate::process::stop_bell());
        let mut pfds: Vec<libc::pollfd> = fds
            .iter()
            .map(|&fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let ms = 1000;
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

/// The worker that owns the flow of IP/TCP packet `p`, of `n`: its
/// client's (the source; the destination of an online answer).
fn lane_of(p: &[u8], n: u32, answers: Option<&Config>) -> usize {
    let flow = match answers {
        Some(cfg) if is_answer(p, cfg) => answer_flow_of(p),
        _ => flow_of(p),
    };
    match flow {
        Some((ip, port)) => (flow_hash(ip, port) % n) as usize,
        None => 0,
    }
}

/// Does `p` come from a `-x` source (an online server's answer)?
fn is_answer(p: &[u8], cfg: &Config) -> bool {
    let Some((ip, port)) = flow_of(p) else {
        return false;
    };
    !cfg.rule_for(ip, port).is_empty()
}

/// The destination (address, port) of IP/TCP packet `p`.
fn answer_flow_of(p: &[u8]) -> Option<(IpAddr, u16)> {
    flow_ends(p).map(|(_, dst)| dst)
}

/// Give each worker its own sources (`sources[i]` for worker `i`, possibly
/// none) plus an inbox for the segments of its flows that other workers
/// read; `flows` is the run's table of who owns which captured flow.
/// `answers` (`--verdict`): the online server's answers belong to the flow
/// of the client they travel to.
pub fn steer(
    sources: Vec<Vec<Box<dyn Capture>>>,
    flows: Arc<Claims>,
    answers: Option<Arc<Config>>,
) -> io::Result<Ends> {
    let (inboxes, lanes) = lanes(sources.len(), QUEUE_BATCHES)?;
    let lanes = Arc::new(lanes);
    let n = sources.len();
    Ok(sources
        .into_iter()
        .zip(inboxes)
        .enumerate()
        .map(|(index, (own, inbox))| {
            Box::new(Steered {
                own,
                inbox,
                lanes: Arc::clone(&lanes),
                pending: vec![Vec::new(); n],
                owned: OwnedFlows {
                    worker: index as WorkerIndex,
                    table: Arc::clone(&flows),
                    mine: HashSet::new(),
                    answers: answers.clone(),
                },
                queue_full: 0,
                steered: 0,
            }) as Box<dyn Capture>
        })
        .collect())
}

/// A worker's view of the flow table: the flows it holds, kept locally so
/// that a segment of a known flow costs one lookup and no lock.
struct OwnedFlows {
    worker: WorkerIndex,
    table: Arc<Claims>,
    mine: HashSet<SessionKey>,
    /// `--verdict`: which packets are online answers.
    answers: Option<Arc<Config>>,
}

impl OwnedFlows {
    /// The worker that must replay packet `p`: None for this one (also
    /// for what is not an IP/TCP packet: the engine counts it).
    fn owner_of(&mut self, p: &[u8]) -> Option<usize> {
        let (ip, port) = match self.answers.as_deref() {
            Some(cfg) if is_answer(p, cfg) => answer_flow_of(p)?,
            _ => flow_of(p)?,
        };
        let key = SessionKey { client: ip, port };
        if self.mine.contains(&key) {
            return None;
        }
        match self.table.claim(key, self.worker) {
            Ok(()) => {
                self.mine.insert(key);
                None
            }
            Err(owner) => Some(owner as usize),
        }
    }
}

/// A worker's end under [`steer`].
struct Steered {
    own: Vec<Box<dyn Capture>>,
    inbox: DispatchedCapture,
    lanes: Arc<Vec<Lane>>,
    /// Segments read here for each other worker, not handed over yet.
    pending: Vec<Batch>,
    owned: OwnedFlows,
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
        let Steered {
            own,
            inbox,
            pending,
            owned,
            ..
        } = self;
        // What others handed over is checked again: the flow may have been
        // given back and claimed by a third worker since.
        let mut route = |p: &[u8]| match owned.owner_of(p) {
            None => f(p),
            Some(w) => pending[w].push(p.to_vec()),
        };
        let mut n = inbox.read_batch(max, &mut route);
        for source in own.iter_mut() {
            n += source.read_batch(max, &mut route);
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

    fn release_flow(&mut self, flow: SessionKey) {
        if self.owned.mine.remove(&flow) {
            self.owned.table.release(flow, self.owned.worker);
        }
    }

    fn release_flows(&mut self, held: &dyn Fn(SessionKey) -> bool) {
        let OwnedFlows {
            worker,
            table,
            mine,
            ..
        } = &mut self.owned;
        mine.retain(|&k| {
            let keep = held(k);
            if !keep {
                table.release(k, *worker);
            }
            keep
        });
        if mine.capacity() > 4 * mine.len() + 1024 {
            mine.shrink_to(2 * mine.len());
        }
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
}

impl Dispatcher {
    /// Packets dropped so far because a worker's queue was full.
    pub fn queue_full(&self) -> u64 {
        self.queue_full.load(Ordering::Relaxed)
    }

    /// Wait for the thread (after `stop` was raised).
    pub fn join(self) -> DispatchStats {
        self.handle.join().unwrap_or_default()
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct DispatchStats {
    /// Packets dropped because a worker's queue was full.
    pub queue_full: u64,
}

/// (client address, client port): the source of IP/TCP packet `p`.
fn flow_of(p: &[u8]) -> Option<(IpAddr, u16)> {
    flow_ends(p).map(|(src, _)| src)
}

/// Source and destination of IP/TCP packet `p`: IPv4 read in place (the
/// common case, on every packet), IPv6 past its extension headers.
fn flow_ends(p: &[u8]) -> Option<((IpAddr, u16), (IpAddr, u16))> {
    let (src, dst, tcp) = if *p.first()? >> 4 == 4 {
        let ihl = ((p[0] & 0x0f) as usize) * 4;
        let src: [u8; 4] = p.get(12..16)?.try_into().ok()?;
        let dst: [u8; 4] = p.get(16..20)?.try_into().ok()?;
        (IpAddr::from(src), IpAddr::from(dst), p.get(ihl..)?)
    } else {
        let ip = crate::wire::IpPacket::parse(p).ok()?;
        (ip.src, ip.dst, ip.payload())
    };
    let port = |i: usize| tcp.get(i..i + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    Some(((src, port(0)?), (dst, port(2)?)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::build::{build, SegmentSpec};
    use std::{
        net::Ipv4Addr,
        sync::{Arc, Mutex},
    };

    /// An RX queue the test fills by hand.
    #[derive(Clone, Default)]
    struct Queue(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Queue {
        fn push(&self, port: u16) {
            self.0.lock().unwrap().push(build(&SegmentSpec {
                src: (Ipv4Addr::new(10, 0, 0, 1).into(), port),
                dst: (Ipv4Addr::new(10, 0, 0, 2).into(), 80),
                seq: 1,
                ack: 1,
                flags: 0x10,
                window: 512,
                options: &[],
                payload: b"x",
                ip_id: 0,
                ttl: 64,
                tos: 0,
            }));
        }
    }

    impl Capture for Queue {
        fn fds(&self, _: &mut Vec<RawFd>) {}
        fn read_batch(&mut self, max: usize, f: &mut dyn FnMut(&[u8])) -> usize {
            let mut q = self.0.lock().unwrap();
            let n = q.len().min(max);
            for p in q.drain(..n) {
                f(&p);
            }
            n
        }
        fn stats(&self) -> CaptureStats {
            CaptureStats::default()
        }
    }

    /// The client ports a worker's end hands to its engine.
    fn read(end: &mut Box<dyn Capture>) -> Vec<u16> {
        let mut ports = Vec::new();
        end.read_batch(64, &mut |p| ports.push(flow_of(p).unwrap().1));
        ports
    }

    /// Two workers, one RX queue each: a flow stays with the worker whose
    /// queue brought it first, also when it shows up on the other queue
    /// later (handed over and counted); once given back, the next queue
    /// to bring it takes it.
    #[test]
    fn the_queue_a_flow_arrives_on_decides_its_worker() {
        let queues = [Queue::default(), Queue::default()];
        let flows = Arc::new(Claims::default());
        let sources = queues
            .iter()
            .map(|q| vec![Box::new(q.clone()) as Box<dyn Capture>])
            .collect();
        let mut ends = steer(sources, Arc::clone(&flows), None).unwrap();
        queues[0].push(1000);
        queues[1].push(2000);
        assert_eq!(read(&mut ends[0]), [1000]);
        assert_eq!(read(&mut ends[1]), [2000]);
        assert_eq!(ends[0].stats().steered + ends[1].stats().steered, 0);

        // Flow 1000 moves to queue 1: worker 1 hands it to worker 0.
        queues[1].push(1000);
        queues[1].push(2000);
        assert_eq!(read(&mut ends[1]), [2000]);
        assert_eq!(ends[1].stats().steered, 1);
        assert_eq!(read(&mut ends[0]), [1000]);

        // Worker 0's sessions let go of it: queue 1 now owns it.
        ends[0].release_flows(&|_| false);
        assert_eq!(
            flows.owner(SessionKey {
                client: Ipv4Addr::new(10, 0, 0, 1).into(),
                port: 1000
            }),
            None
        );
        queues[1].push(1000);
        assert_eq!(read(&mut ends[1]), [1000]);
        assert_eq!(ends[1].stats().steered, 1);
        // A flow still held is kept.
        ends[1].release_flows(&|k| k.port == 2000);
        assert_eq!(
            flows.owner(SessionKey {
                client: Ipv4Addr::new(10, 0, 0, 1).into(),
                port: 2000
            }),
            Some(1)
        );
        assert_eq!(flows.len(), 1);
    }
}
