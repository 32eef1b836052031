//! The engine's queue of IPv4 packets for the target, built into buffers
//! that come back after they are sent ([`Outbox::recycle`]), so a steady
//! replay allocates nothing per packet.

use std::collections::VecDeque;

use crate::wire::build::{build_into, SegmentSpec};

/// Buffers kept for reuse, at most (a burst's extra ones are freed).
const SPARE_MAX: usize = 1024;

#[derive(Default)]
pub struct Outbox {
    queue: VecDeque<Vec<u8>>,
    spare: Vec<Vec<u8>>,
}

impl Outbox {
    /// Build the segment into a spare buffer and queue it; returns it.
    pub fn emit(&mut self, spec: &SegmentSpec) -> &[u8] {
        let mut buf = self.spare.pop().unwrap_or_default();
        build_into(spec, &mut buf);
        self.queue.push_back(buf);
        self.queue.back().map_or(&[], |b| &b[..])
    }

    /// Queue a packet built earlier (a retransmitted SYN).
    pub fn push(&mut self, packet: &[u8]) {
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(packet);
        self.queue.push_back(buf);
    }

    pub fn pop(&mut self) -> Option<Vec<u8>> {
        self.queue.pop_front()
    }

    /// A sent packet's buffer, for the next one.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        if self.spare.len() < SPARE_MAX {
            self.spare.push(buf);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.queue.capacity()
    }

    /// Give a burst's memory back.
    pub fn shrink_to(&mut self, n: usize) {
        self.queue.shrink_to(n);
        self.spare.truncate(n);
        self.spare.shrink_to(n);
    }
}
