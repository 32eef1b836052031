//! A captured client segment as a session holds it: already rewritten to
//! its replayed addresses, its payload owned, its options held inline,
//! its timestamp option found.

use crate::wire::{SeqNumber, TcpFlags};
use std::ops::{Deref, DerefMut};

/// A segment's TCP options, held inline: at most 40 bytes, so neither
/// capturing a segment nor rewriting its timestamps on the way out
/// allocates.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Options {
    len: u8,
    bytes: [u8; 40],
}

impl Options {
    /// The options `bytes` (a TCP header holds at most 40; more is cut).
    pub fn new(bytes: &[u8]) -> Options {
        let mut o = Options::default();
        let n = bytes.len().min(40);
        o.bytes[..n].copy_from_slice(&bytes[..n]);
        o.len = n as u8;
        o
    }
}

impl Default for Options {
    fn default() -> Options {
        Options {
            len: 0,
            bytes: [0; 40],
        }
    }
}

impl Deref for Options {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl DerefMut for Options {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[..self.len as usize]
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// A captured client segment, already rewritten to its replayed addresses.
#[derive(Clone, Debug)]
pub struct ClientSegment {
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub options: Options,
    pub ts_offset: Option<usize>,
    pub tsval: Option<u32>,
    pub payload: Vec<u8>,
    pub ip_id: u16,
    pub ttl: u8,
    pub tos: u8,
}

impl ClientSegment {
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
    pub fn len(&self) -> u64 {
        self.payload.len() as u64
    }
    pub fn is_pure_ack(&self) -> bool {
        self.payload.is_empty() && self.flags & (TcpFlags::SYN | TcpFlags::FIN | TcpFlags::RST) == 0
    }
    pub fn seq(&self) -> SeqNumber {
        SeqNumber(self.seq)
    }
    pub fn ack(&self) -> SeqNumber {
        SeqNumber(self.ack)
    }
    /// The payload from sequence number `seq` on (all of it if `seq` is
    /// not inside it).
    pub fn payload_from(&self, seq: SeqNumber) -> &[u8] {
        let cut = seq.forward_from(self.seq()) as usize;
        &self.payload[cut.min(self.payload.len())..]
    }
    /// Cut the bytes before `seq` off a segment about to be (re)sent.
    pub fn trimmed_to(mut self, seq: SeqNumber) -> ClientSegment {
        let cut = seq.forward_from(self.seq()) as usize;
        if cut > 0 && cut <= self.payload.len() {
            self.payload.drain(..cut);
            self.seq = seq.0;
        }
        self
    }
    /// The options with the 10-byte timestamp option replaced by NOPs.
    pub fn options_without_timestamps(&self) -> Options {
        let mut o = self.options;
        let off = self.ts_offset.unwrap_or(0);
        if off + 10 <= o.len() {
            o[off..off + 10].fill(1);
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::Options;

    #[test]
    fn options_are_held_inline_and_cut_at_forty_bytes() {
        let ts = [1, 1, 8, 10, 0, 0, 0, 7, 0, 0, 0, 9];
        let mut o = Options::new(&ts);
        assert_eq!(&o[..], &ts[..]);
        o[11] = 3;
        assert_eq!(o[11], 3);
        assert!(Options::default().is_empty());
        assert_eq!(Options::new(&[1; 60]).len(), 40);
    }
}
