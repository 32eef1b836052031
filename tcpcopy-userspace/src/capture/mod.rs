//! Sources of captured client segments. Each worker owns one source and
//! reads IPv4 packets from it:
//! - [`TapRing`]: the tcpcopy-ebpf tap ring buffer of this worker (the XDP
//!   program already chose the worker by flow hash);
//! - [`PacketSocket`]: an AF_PACKET socket, filtered by `-x` here, whose
//!   packets a [`dispatch`] thread hands to the workers by flow hash.

pub mod dispatch;
mod packet;
mod tap;

pub use packet::PacketSocket;
pub use tap::TapRing;

use std::os::fd::RawFd;

/// Counters of a capture source.
#[derive(Clone, Copy, Debug, Default)]
pub struct CaptureStats {
    /// Packets handed to the engine.
    pub packets: u64,
    /// Frames read that were not a matching IPv4/TCP segment (packet mode).
    pub skipped: u64,
    /// Records or frames too short to hold what they claim.
    pub malformed: u64,
}

pub trait Capture: Send {
    /// Becomes readable when packets wait (wakeups may be batched: poll
    /// with a short timeout too).
    fn fd(&self) -> RawFd;
    /// Hand up to `max` waiting IPv4 packets to `f`; returns how many.
    fn read_batch(&mut self, max: usize, f: &mut dyn FnMut(&[u8])) -> usize;
    fn stats(&self) -> CaptureStats;
}
