//! AF_XDP capture (`--capture xdp`, mirror ports and dedicated NICs): one
//! socket per RX queue (xsk-rs, copy or zero-copy as the driver allows).
//! tcpcopy-ebpf redirects the matched frames of queue N to the socket in
//! slot N of its `XSKS` map and passes everything else, so the host keeps
//! its ARP and its own traffic. libxdp's default program is inhibited: the
//! socket is put into our map instead.
//!
//! The fill ring is kept full: every frame read is handed straight back
//! once its IP packet has been given to the engine (the engine copies what
//! it keeps). A share of the UMEM and the socket's TX ring can be taken by
//! `--send xdp` (`take_tx`), since no second socket may bind the queue.

use std::{
    num::NonZeroU32,
    os::fd::{AsRawFd, RawFd},
};

use anyhow::{anyhow, Result};
use xsk_rs::{
    config::{FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig},
    CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem,
};

use super::{Capture, CaptureStats};

/// Frames kept for `--send xdp` on the same socket (its TX ring).
const TX_FRAMES: u32 = 4096;
const TX_RING: u32 = 4096;
/// Holds a 1500-byte MTU frame after the kernel's 256-byte headroom.
const FRAME_SIZE: u32 = 2048;

/// The size of a socket's RX ring in frames (`--xsk-ring`). The fill ring
/// is as large, and the UMEM holds both, so the kernel never finds the
/// fill ring empty while we keep up: the default 16384 frames are a
/// quarter second at 64 kpps per queue, for a worker that is briefly
/// descheduled (72 MiB of UMEM per queue with the TX share); a box that
/// takes longer bursts (large values at line rate) sets more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxRing {
    pub frames: u32,
}

impl Default for RxRing {
    fn default() -> Self {
        RxRing { frames: 16384 }
    }
}

impl RxRing {
    fn umem_frames(self) -> u32 {
        2 * self.frames + TX_FRAMES
    }
    /// Bytes of one socket's UMEM (mapped outside the heap, filled by the
    /// kernel frame by frame).
    pub fn umem_bytes(self) -> u64 {
        self.umem_frames() as u64 * FRAME_SIZE as u64
    }
}

/// The AF_XDP socket of one RX queue.
pub struct XskSocket {
    queue: u32,
    ring: RxRing,
    umem: Umem,
    rx: RxQueue,
    fill: FillQueue,
    /// The TX side and its frames until `take_tx` hands them out (held so
    /// the socket lives as long as we do).
    tx: Option<(TxQueue, CompQueue, Vec<FrameDesc>)>,
    /// Descriptors of frames owned by userspace, waiting to go back on
    /// the fill ring.
    free: Vec<FrameDesc>,
    /// Scratch for RX descriptors.
    rx_descs: Vec<FrameDesc>,
    stats: CaptureStats,
}

impl XskSocket {
    /// Create and bind the socket of `iface`'s RX queue `queue`. The caller
    /// puts [`XskSocket::fd`] into the XDP program's `XSKS` map at `queue`.
    pub fn open(iface: &str, queue: u32, ring: RxRing) -> Result<Self> {
        let (rx_frames, frames) = (ring.frames, ring.umem_frames());
        let umem_config = UmemConfig::builder()
            .frame_size(FrameSize::new(FRAME_SIZE).map_err(|e| anyhow!("{e}"))?)
            .fill_queue_size(QueueSize::new(rx_frames).map_err(|e| anyhow!("{e}"))?)
            .comp_queue_size(QueueSize::new(rx_frames).map_err(|e| anyhow!("{e}"))?)
            .build()
            .map_err(|e| anyhow!("UMEM config: {e}"))?;
        let (umem, descs) = Umem::new(umem_config, NonZeroU32::new(frames).unwrap(), false)
            .map_err(|e| anyhow!("creating the UMEM for {iface} queue {queue}: {e}"))?;
        let socket_config = SocketConfig::builder()
            .rx_queue_size(QueueSize::new(rx_frames).map_err(|e| anyhow!("{e}"))?)
            .tx_queue_size(QueueSize::new(TX_RING).map_err(|e| anyhow!("{e}"))?)
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .build();
        let name: Interface = iface
            .parse()
            .map_err(|_| anyhow!("-i {iface}: not a valid interface name"))?;
        // SAFETY: the UMEM is not shared; every frame descriptor handed to
        // the rings below comes from this UMEM.
        let (tx, rx, rings) = unsafe { Socket::new(socket_config, &umem, &name, queue) }
            .map_err(|e| anyhow!("AF_XDP socket on {iface} queue {queue}: {e}"))?;
        let (fill, comp) =
            rings.ok_or_else(|| anyhow!("AF_XDP socket on {iface} queue {queue}: no fill ring"))?;
        let mut descs = descs;
        let tx_frames = descs.split_off((frames - TX_FRAMES) as usize);
        let mut socket = XskSocket {
            queue,
            ring,
            umem,
            rx,
            fill,
            tx: Some((tx, comp, tx_frames)),
            free: descs,
            rx_descs: Vec::new(),
            stats: CaptureStats::default(),
        };
        socket.rx_descs = socket.free[..rx_frames as usize].to_vec();
        socket.refill();
        if socket.free.len() as u32 > frames - TX_FRAMES - rx_frames {
            return Err(anyhow!(
                "AF_XDP socket on {iface} queue {queue}: the fill ring took no frames"
            ));
        }
        Ok(socket)
    }

    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// The socket's TX ring and its share of the UMEM, for a sender on the
    /// same interface and queue (once).
    pub fn take_tx(&mut self) -> Option<(Umem, TxQueue, CompQueue, Vec<FrameDesc>)> {
        let (tx, comp, frames) = self.tx.take()?;
        Some((self.umem.clone(), tx, comp, frames))
    }

    pub fn raw_fd(&self) -> RawFd {
        self.rx.fd().as_raw_fd()
    }

    /// Hand every free frame the fill ring has room for back to the kernel.
    /// (The insert is all-or-nothing, so ask for no more than there is room.)
    fn refill(&mut self) {
        let room = self.fill.nb_free(self.free.len() as u32) as usize;
        let n = room.min(self.free.len());
        if n == 0 {
            return;
        }
        let start = self.free.len() - n;
        // SAFETY: these frames belong to our UMEM and are owned by us (they
        // came off the RX ring or were never handed out).
        let done = unsafe { self.fill.produce(&self.free[start..]) };
        if done == n {
            self.free.truncate(start);
        }
    }
}

impl Capture for XskSocket {
    fn fds(&self, out: &mut Vec<RawFd>) {
        out.push(self.raw_fd());
    }

    fn read_batch(&mut self, max: usize, f: &mut dyn FnMut(&[u8])) -> usize {
        let want = max.min(self.rx_descs.len());
        // SAFETY: the RX ring returns frames of our UMEM.
        let got = unsafe { self.rx.consume(&mut self.rx_descs[..want]) };
        let mut n = 0;
        for desc in &self.rx_descs[..got] {
            // SAFETY: the frame came off the RX ring, so the kernel is done
            // with it until we put it back on the fill ring below.
            let data = unsafe { self.umem.data(desc) };
            match crate::wire::ip_in_ethernet(data.contents()) {
                Ok(p) => {
                    f(p);
                    n += 1;
                }
                Err(_) => self.stats.malformed += 1,
            }
        }
        self.free.extend_from_slice(&self.rx_descs[..got]);
        self.refill();
        self.stats.packets += n as u64;
        n
    }

    /// The UMEM, which the kernel fills frame by frame.
    fn reserved_bytes(&self) -> u64 {
        self.ring.umem_bytes()
    }

    fn stats(&self) -> CaptureStats {
        let mut s = self.stats;
        if let Ok(x) = self.rx.fd().xdp_statistics() {
            s.kernel_dropped = x.rx_dropped() + x.rx_ring_full();
            s.fill_ring_empty = x.rx_fill_ring_empty_descs();
        }
        s
    }
}

/// Number of RX queues of `iface`, from sysfs.
pub fn rx_queues(iface: &str) -> Result<u32> {
    let dir = format!("/sys/class/net/{iface}/queues");
    let n = std::fs::read_dir(&dir)
        .map_err(|e| anyhow!("-i {iface}: reading {dir}: {e}"))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
        .count() as u32;
    Ok(n.max(1))
}
