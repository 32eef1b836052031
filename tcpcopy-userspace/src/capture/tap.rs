//! A worker's tap ring buffer (`TAPn` of tcpcopy-ebpf): records of a
//! [`TapHeader`] followed by the IP packet.

use std::os::fd::{AsRawFd, RawFd};

use aya::maps::{MapData, RingBuf};
use tcpcopy_common::TapHeader;

use super::{Capture, CaptureStats};

pub struct TapRing {
    ring: RingBuf<MapData>,
    /// The ring's data bytes (`--tap-ring-mb`).
    bytes: u64,
    stats: CaptureStats,
}

impl TapRing {
    pub fn new(ring: RingBuf<MapData>, bytes: u64) -> Self {
        TapRing {
            ring,
            bytes,
            stats: CaptureStats::default(),
        }
    }
}

const HDR: usize = std::mem::size_of::<TapHeader>();

impl Capture for TapRing {
    fn fds(&self, out: &mut Vec<RawFd>) {
        out.push(self.ring.as_raw_fd());
    }

    /// The ring's data pages are mapped twice (so a record never wraps),
    /// and each mapping counts in the resident size.
    fn reserved_bytes(&self) -> u64 {
        2 * self.bytes
    }

    fn read_batch(&mut self, max: usize, f: &mut dyn FnMut(&[u8])) -> usize {
        let mut n = 0;
        while n < max {
            let Some(item) = self.ring.next() else {
                break;
            };
            if item.len() < HDR {
                self.stats.malformed += 1;
                continue;
            }
            let len = u32::from_ne_bytes([item[0], item[1], item[2], item[3]]) as usize;
            match item.get(HDR..HDR + len) {
                Some(packet) => {
                    f(packet);
                    n += 1;
                }
                None => self.stats.malformed += 1,
            }
        }
        self.stats.packets += n as u64;
        n
    }

    fn stats(&self) -> CaptureStats {
        self.stats
    }
}
