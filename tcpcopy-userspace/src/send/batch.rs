//! What the socket senders share: a batch of packets kept back to back
//! until it goes, and `sendmmsg` until every message went or failed.

use std::{io, os::fd::RawFd};

/// Packets gathered before a batch goes out by itself.
pub(super) const BATCH: usize = 64;

/// The packets of one batch, back to back in one buffer.
pub(super) struct Batch {
    bytes: Vec<u8>,
    /// Where each packet ends in `bytes`.
    ends: Vec<usize>,
}

impl Batch {
    pub fn new() -> Batch {
        Batch {
            bytes: Vec::with_capacity(BATCH * 1500),
            ends: Vec::with_capacity(BATCH),
        }
    }

    /// Queue an IP packet; `Ok(true)` when the batch is full. A packet
    /// shorter than an IPv4 header is refused.
    pub fn push(&mut self, packet: &[u8]) -> io::Result<bool> {
        if packet.len() < 20 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "short packet"));
        }
        self.bytes.extend_from_slice(packet);
        self.ends.push(self.bytes.len());
        Ok(self.ends.len() == BATCH)
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Packet `i` of the batch.
    pub fn get(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.bytes[start..self.ends[i]]
    }

    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.len()).map(|i| self.get(i))
    }

    /// Empty it, keeping its memory.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }
}

/// `sendmmsg` on `fd` until each of `msgs` went or failed: `failed(i, e)`
/// for each that failed (it is skipped; the engine's timers retransmit
/// what was lost). Interrupted calls are made again.
///
/// # Safety
/// Every pointer inside `msgs` (names, iovecs and what they point at) must
/// be valid for the whole call.
pub(super) unsafe fn send_all(
    fd: RawFd,
    msgs: &mut [libc::mmsghdr],
    mut failed: impl FnMut(usize, &io::Error),
) {
    let mut at = 0;
    while at < msgs.len() {
        let left = msgs.len() - at;
        // SAFETY: `msgs[at..]` is a valid array of `left` headers whose
        // pointers are live (the caller's promise).
        let r = unsafe { libc::sendmmsg(fd, msgs[at..].as_mut_ptr(), left as u32, 0) };
        if r > 0 {
            at += r as usize;
            continue;
        }
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            continue;
        }
        tracing::debug!(error = %e, "send to target failed");
        failed(at, &e);
        at += 1;
    }
}
