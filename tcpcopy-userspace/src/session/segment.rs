//! A captured client segment as a session holds it: already rewritten to
//! its replayed addresses, its payload owned, its timestamp option found.

use crate::wire::{SeqNumber, TcpFlags};

/// A captured client segment, already rewritten to its replayed addresses.
#[derive(Clone, Debug)]
pub struct ClientSegment {
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub options: Vec<u8>,
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
    pub fn options_without_timestamps(&self) -> Vec<u8> {
        let mut o = self.options.clone();
        let off = self.ts_offset.unwrap_or(0);
        if off + 10 <= o.len() {
            o[off..off + 10].fill(1);
        }
        o
    }
}
