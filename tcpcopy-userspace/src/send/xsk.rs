//! `--send xdp`: replayed packets leave through an AF_XDP socket's TX ring
//! on `-o`, framed with the interface's MAC and the next hop's MAC toward
//! each target (`neighbour`, kept current as routes change), so they skip the kernel's IP output path
//! (no routing, netfilter or qdisc). The socket is the worker's own
//! capture socket when `-o` is the capture interface, else one bound to a
//! queue of `-o` for this worker alone.

use std::{collections::HashMap, io, io::Write, net::IpAddr, sync::Arc};

use xsk_rs::{CompQueue, FrameDesc, TxQueue, Umem};

use super::{neighbour::NextHops, Sender};

/// Frames the completion ring is read in.
const COMP_BATCH: usize = 256;

pub struct XskSender {
    umem: Umem,
    tx: TxQueue,
    comp: CompQueue,
    free: Vec<FrameDesc>,
    comp_descs: Vec<FrameDesc>,
    src_mac: [u8; 6],
    /// Next-hop MAC for each target address: this sender's copy of
    /// `hops`, reloaded when its generation moves (a route or neighbour
    /// changed).
    next_hop: HashMap<IpAddr, [u8; 6]>,
    hops: Arc<NextHops>,
    generation: u64,
    unkicked: usize,
    sent: u64,
    errors: u64,
}

impl XskSender {
    pub fn new(
        (umem, tx, comp, frames): (Umem, TxQueue, CompQueue, Vec<FrameDesc>),
        src_mac: [u8; 6],
        hops: Arc<NextHops>,
    ) -> XskSender {
        let comp_descs = frames[..COMP_BATCH.min(frames.len())].to_vec();
        XskSender {
            umem,
            tx,
            comp,
            free: frames,
            comp_descs,
            src_mac,
            next_hop: hops.snapshot(),
            generation: hops.generation(),
            hops,
            unkicked: 0,
            sent: 0,
            errors: 0,
        }
    }

    /// Take back the frames the kernel has sent.
    fn reclaim(&mut self) {
        loop {
            // SAFETY: the completion ring returns frames of our UMEM.
            let n = unsafe { self.comp.consume(&mut self.comp_descs) };
            self.free.extend_from_slice(&self.comp_descs[..n]);
            if n < self.comp_descs.len() {
                break;
            }
        }
    }

    fn fail(&mut self, what: &str) -> io::Result<()> {
        self.errors += 1;
        Err(io::Error::other(what.to_string()))
    }
}

impl Sender for XskSender {
    fn send(&mut self, packet: &[u8]) -> io::Result<()> {
        let Some(dst) = crate::wire::ip_destination(packet) else {
            return self.fail("short packet");
        };
        let generation = self.hops.generation();
        if generation != self.generation {
            self.next_hop = self.hops.snapshot();
            self.generation = generation;
        }
        let Some(dst_mac) = self.next_hop.get(&dst).copied() else {
            return self.fail("no next-hop MAC for this target");
        };
        if self.free.is_empty() {
            self.flush();
            self.reclaim();
        }
        let Some(mut desc) = self.free.pop() else {
            return self.fail("AF_XDP TX ring full");
        };
        {
            // SAFETY: the frame is ours (free list): not on any ring.
            let mut data = unsafe { self.umem.data_mut(&mut desc) };
            let mut c = data.cursor();
            c.set_pos(0);
            let ok = c.write_all(&dst_mac).is_ok()
                && c.write_all(&self.src_mac).is_ok()
                && c.write_all(&crate::wire::ethertype(dst).to_be_bytes())
                    .is_ok()
                && c.write_all(packet).is_ok();
            if !ok {
                self.free.push(desc);
                return self.fail("packet larger than an AF_XDP frame");
            }
        }
        // SAFETY: the frame belongs to this UMEM and is handed to the
        // kernel until it comes back on the completion ring.
        if unsafe { self.tx.produce_one(&desc) } == 0 {
            self.free.push(desc);
            return self.fail("AF_XDP TX ring full");
        }
        self.unkicked += 1;
        self.sent += 1;
        if self.unkicked >= 64 {
            self.flush();
        }
        Ok(())
    }

    /// Kick the kernel to transmit what was produced (copy mode always
    /// needs the sendto), then reclaim completed frames.
    fn flush(&mut self) {
        if self.unkicked > 0 {
            if self.tx.wakeup().is_err() {
                self.errors += 1;
            }
            self.unkicked = 0;
        }
        self.reclaim();
    }

    fn counts(&self) -> super::SendCounts {
        super::SendCounts {
            sent: self.sent,
            errors: self.errors,
            gso_frames: 0,
        }
    }
}
