//! Sending replayed segments to the target: a raw IPv4 socket (the kernel
//! routes and resolves the next hop; the default), or, framed for `-o`
//! from the neighbour table, AF_XDP TX (`--send xdp`) or an AF_PACKET
//! socket that sends a bulk stream's segments together as GSO packets
//! (`--send packet`).

mod batch;
pub mod neighbour;
mod packet;
mod raw;
mod xsk;

pub use packet::PacketSender;
pub use raw::RawSender;
pub use xsk::XskSender;

/// Where a worker's replayed IPv4 packets go.
pub trait Sender: Send {
    /// Send one IPv4 packet; errors are counted (the engine's timers
    /// retransmit what was lost).
    fn send(&mut self, packet: &[u8]) -> std::io::Result<()>;
    /// Push out anything batched (called after each round of sends).
    fn flush(&mut self) {}
    fn counts(&self) -> SendCounts;
}

/// What a sender has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SendCounts {
    /// Packets the kernel took.
    pub sent: u64,
    /// Packets that failed (counted and skipped).
    pub errors: u64,
    /// GSO packets that carried several of the packets sent
    /// (`--send packet`).
    pub gso_frames: u64,
}
