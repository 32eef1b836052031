//! The verdict (`--verdict`): does the target answer like production?
//! Each replayed request's two answers, the online server's and the
//! target's, are paired and compared by status, with the latency on each
//! side. `status` reads what an answer says, `pairing` is one session's
//! machine, `report` the figures per target and how they are shown.

pub mod pairing;
pub mod report;
pub mod status;
#[cfg(test)]
mod tests;

pub use pairing::Pairing;
pub use report::{Failure, VerdictStats};
pub use status::Protocol;

/// What the verdict is asked to do (`--verdict`, `--verdict-bytes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerdictConfig {
    pub protocol: Protocol,
    /// Payload bytes of each answer read (and asked of intercept).
    pub prefix_bytes: u16,
}

/// The payload bytes read of each answer by default.
pub const DEFAULT_PREFIX_BYTES: u16 = 64;
