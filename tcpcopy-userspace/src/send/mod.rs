//! Sending replayed segments to the target: a raw IPv4 socket (the kernel
//! routes and resolves the next hop; the default), or AF_XDP TX on `-o`
//! with Ethernet framing from the neighbour table (`--send xdp`).

pub mod neighbour;
mod raw;
mod xsk;

pub use raw::RawSender;
pub use xsk::XskSender;

/// Where a worker's replayed IPv4 packets go.
pub trait Sender: Send {
    /// Send one IPv4 packet; errors are counted (the engine's timers
    /// retransmit what was lost).
    fn send(&mut self, packet: &[u8]) -> std::io::Result<()>;
    /// Push out anything batched (called after each round of sends).
    fn flush(&mut self) {}
    /// (packets sent, send errors).
    fn counts(&self) -> (u64, u64);
}
