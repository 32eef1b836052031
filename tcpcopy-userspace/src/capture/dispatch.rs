//! A dispatcher for sources that cannot split flows themselves: one thread
//! reads the source and hands packets to the worker that owns each client
//! (flow hash of client address and port, the same hash the XDP program
//! uses), in batches over crossbeam channels. Each worker's end is a
//! [`Capture`] whose fd is an eventfd the dispatcher signals after a batch.
//!
//! Why not PACKET_FANOUT_HASH: the kernel's fanout hash is skb->hash, which
//! on veth (and anything forwarding a local socket's packets) is the
//! sender's random txhash, re-rolled by TCP on retransmissions, so one flow
//! could land on two workers and be replayed twice.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::{Capture, CaptureStats};

const BATCH: usize = 64;
/// Batches a worker may have waiting before the dispatcher counts drops.
const QUEUE_BATCHES: usize = 4096;

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
    fn fd(&self) -> RawFd {
        self.event.as_raw_fd()
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
/// [`DispatchStats`] when it ends.
pub fn start(
    mut source: Box<dyn Capture>,
    workers: usize,
    stop: Arc<AtomicBool>,
) -> io::Result<(Ends, JoinHandle<DispatchStats>)> {
    let mut ends: Vec<Box<dyn Capture>> = Vec::new();
    let mut lanes: Vec<Lane> = Vec::new();
    for _ in 0..workers {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE_BATCHES);
        let event = Arc::new(eventfd()?);
        lanes.push((tx, Arc::clone(&event)));
        ends.push(Box::new(DispatchedCapture {
            rx,
            event,
            stats: CaptureStats::default(),
            carry: Vec::new(),
        }));
    }
    let handle = std::thread::Builder::new()
        .name("tcpcopy-dispatch".into())
        .spawn(move || {
            let mut stats = DispatchStats::default();
            let mut pending: Vec<Batch> = vec![Vec::new(); lanes.len()];
            let n = lanes.len() as u32;
            while !stop.load(Ordering::Relaxed) {
                let got = source.read_batch(1024, &mut |p| {
                    let lane = match flow_of(p) {
                        Some((ip, port)) => tcpcopy_common::flow_hash(ip, port) % n,
                        None => 0,
                    };
                    pending[lane as usize].push(p.to_vec());
                });
                for (i, (tx, event)) in lanes.iter().enumerate() {
                    if pending[i].is_empty() || (got == 1024 && pending[i].len() < BATCH) {
                        continue;
                    }
                    let batch = std::mem::take(&mut pending[i]);
                    let len = batch.len() as u64;
                    match tx.try_send(batch) {
                        Ok(()) => signal(event.as_raw_fd()),
                        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                            stats.queue_full += len;
                        }
                    }
                }
                if got == 0 {
                    let mut pfd = libc::pollfd {
                        fd: source.fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd.
                    unsafe { libc::poll(&mut pfd, 1, 5) };
                }
            }
            stats.source = source.stats();
            stats
        })?;
    Ok((ends, handle))
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
