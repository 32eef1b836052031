//! Sources of captured client segments. Each worker owns one source and
//! reads IP packets (either family) from it:
//! - [`TapRing`]: the tcpcopy-ebpf tap ring buffer of this worker (the XDP
//!   program already chose the worker by flow hash);
//! - [`PacketSocket`]: an AF_PACKET socket of this worker, filtered by `-x`
//!   here (a fanout group's program, `cbpf`, chose the worker by flow);
//! - [`XskSocket`]: the AF_XDP socket of one RX queue (mirror ports), read
//!   by the worker that owns the queue, which owns the flows that arrive
//!   there; [`dispatch::steer`] hands a flow that moved queues to its
//!   owner.
//!
//! [`NicDrops`] reads what the capture interfaces dropped before any of
//! these saw it.

mod cbpf;
pub mod dispatch;
mod nic;
mod packet;
mod tap;
mod xsk;

pub use nic::NicDrops;
pub use packet::PacketSocket;
pub use tap::TapRing;
pub use xsk::{rx_queues, RxRing, XskSocket};

use std::os::fd::RawFd;

use crate::session::SessionKey;

/// Counters of a capture source.
#[derive(Clone, Copy, Debug, Default)]
pub struct CaptureStats {
    /// Packets handed to the engine.
    pub packets: u64,
    /// Frames read that were not a matching IP/TCP segment (packet mode).
    pub skipped: u64,
    /// Records or frames too short to hold what they claim.
    pub malformed: u64,
    /// Frames the kernel dropped at an AF_XDP socket (RX ring full, no
    /// fill frame).
    pub kernel_dropped: u64,
    /// Frames the kernel dropped at an AF_PACKET socket (its receive
    /// buffer was full).
    pub socket_dropped: u64,
    /// Times the kernel found the AF_XDP fill ring empty.
    pub fill_ring_empty: u64,
    /// Segments of another worker's flow that could not be handed to it
    /// (its queue was full).
    pub queue_full: u64,
    /// Segments read by one worker and handed to the worker owning the flow
    /// (AF_XDP: a flow that moved to another RX queue).
    pub steered: u64,
}

impl CaptureStats {
    pub fn add(&mut self, o: &CaptureStats) {
        self.packets += o.packets;
        self.skipped += o.skipped;
        self.malformed += o.malformed;
        self.kernel_dropped += o.kernel_dropped;
        self.socket_dropped += o.socket_dropped;
        self.fill_ring_empty += o.fill_ring_empty;
        self.queue_full += o.queue_full;
        self.steered += o.steered;
    }
}

pub trait Capture: Send {
    /// The fds that become readable when packets wait. The worker sleeps
    /// on them (up to 100 ms otherwise), so a source must make one of them
    /// readable whenever it has packets: a ring's wakeup, a socket, an
    /// eventfd.
    fn fds(&self, out: &mut Vec<RawFd>);
    /// Hand up to `max` waiting IP packets to `f`; returns how many.
    fn read_batch(&mut self, max: usize, f: &mut dyn FnMut(&[u8])) -> usize;
    fn stats(&self) -> CaptureStats;
    /// Memory this source maps that fills as traffic comes (rings, UMEM),
    /// paid for before sessions under `-m`.
    fn reserved_bytes(&self) -> u64 {
        0
    }
    /// Give back the flows this worker claimed that `held` no longer wants
    /// (no session replays them), so another worker's queue may take them.
    /// Only sources that claim flows (AF_XDP, [`dispatch::steer`]) do
    /// anything.
    fn release_flows(&mut self, _held: &dyn Fn(SessionKey) -> bool) {}
    /// Give back one flow at once: its last session is done with it.
    fn release_flow(&mut self, _flow: SessionKey) {}
    /// A source paced by its own clock (an offline file, no fds): how
    /// soon its next packet is due, if it knows.
    fn next_due(&self) -> Option<std::time::Duration> {
        None
    }
}
