//! `--send packet`: replayed packets leave through an AF_PACKET socket on
//! `-o`, framed with the interface's MAC and the next hop's MAC toward
//! each target (`neighbour`, as `--send xdp`), so they skip the kernel's
//! routing and IP output. A flow's consecutive full-sized segments in one
//! batch (a bulk stream catching up) leave as one GSO packet: a
//! virtio-net header asks the kernel to cut it into the original segments
//! (or hands it whole to a device that cuts it itself, and on veth to the
//! target's stack), so a stream costs one send per up to 64 KiB, not one
//! per segment. Every other packet leaves exactly as built. Either family:
//! IPv6 runs are cut as TCPv6 (the packets the engine builds carry no
//! extension headers).

use std::{
    collections::HashMap,
    io,
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::Arc,
};

use super::{
    batch::{send_all, Batch, BATCH},
    neighbour::NextHops,
    SendCounts, Sender,
};
use crate::wire::{
    ethertype, internet_checksum, ip_destination, ip_source, tcp_pseudo_header_sum, TcpFlags,
};

/// Most segments one GSO packet carries.
const MAX_SEGMENTS: usize = 64;
/// The virtio-net header before each frame (`struct virtio_net_hdr`).
const VNET_HDR: usize = 10;
const ETH_HDR: usize = 14;
/// The largest IP + TCP header (IPv4 with every option, or IPv6, and TCP
/// with every option).
const MAX_IP_TCP: usize = 60 + 60;
const SOL_PACKET: libc::c_int = 263;
const PACKET_VNET_HDR: libc::c_int = 15;
const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;

/// A TCP packet as the engine built it (IPv4 with a 20-byte header, or
/// IPv6 without extension headers): the fields coalescing compares.
/// `None` for anything that must leave as it is.
#[derive(Clone, Copy, Debug)]
struct Segment<'a> {
    packet: &'a [u8],
    /// IP header length: 20 or 40.
    ip: usize,
    /// IP + TCP header length: where the payload starts.
    header: usize,
    seq: u32,
    flags: u8,
}

impl<'a> Segment<'a> {
    fn parse(packet: &'a [u8]) -> Option<Segment<'a>> {
        let (ip, stated) = match packet.first()? >> 4 {
            4 if packet.len() >= 40 && packet[0] == 0x45 && packet[9] == 6 => {
                // No fragment (MF clear, offset 0).
                let frag = u16::from_be_bytes([packet[6], packet[7]]) & 0x3fff;
                if frag != 0 {
                    return None;
                }
                (20, u16::from_be_bytes([packet[2], packet[3]]) as usize)
            }
            6 if packet.len() >= 60 && packet[6] == 6 => {
                (40, 40 + u16::from_be_bytes([packet[4], packet[5]]) as usize)
            }
            _ => return None,
        };
        let header = headers_len(packet);
        let flags = packet[ip + 13];
        let allowed = TcpFlags::ACK | TcpFlags::PSH;
        if stated != packet.len() || header < ip + 20 || header >= stated {
            return None;
        }
        if flags & TcpFlags::ACK == 0 || flags & !allowed != 0 {
            return None;
        }
        let s = &packet[ip + 4..ip + 8];
        Some(Segment {
            packet,
            ip,
            header,
            seq: u32::from_be_bytes([s[0], s[1], s[2], s[3]]),
            flags,
        })
    }

    fn payload(&self) -> &'a [u8] {
        &self.packet[self.header..]
    }

    /// Same addresses, ports, ack, window, options, TOS (traffic class,
    /// flow label), DF and TTL (hop limit): only the sequence number,
    /// payload, IP id, lengths and checksums may differ.
    fn same_flow_and_header(&self, other: &Segment) -> bool {
        let (a, b) = (self.packet, other.packet);
        let same_ip = match self.ip {
            20 => a[1] == b[1] && a[6] == b[6] && a[8] == b[8] && a[12..20] == b[12..20],
            _ => a[0..4] == b[0..4] && a[6..40] == b[6..40],
        };
        let t = self.ip;
        self.ip == other.ip
            && self.header == other.header
            && same_ip
            && a[t..t + 4] == b[t..t + 4]
            && a[t + 8..t + 12] == b[t + 8..t + 12]
            && a[t + 14..t + 16] == b[t + 14..t + 16]
            && a[t + 20..self.header] == b[t + 20..other.header]
    }
}

/// Where the payload of a TCP packet as the engine builds it starts
/// (behind a 20-byte IPv4 or a 40-byte IPv6 header).
fn headers_len(packet: &[u8]) -> usize {
    let ip = if packet[0] >> 4 == 6 { 40 } else { 20 };
    ip + ((packet[ip + 12] >> 4) as usize) * 4
}

/// Packets `first .. first + count` of a batch leave as one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    first: usize,
    count: usize,
}

/// Group a batch into frames: a run of the same flow's segments that
/// follow each other in sequence, every one but the last exactly as long
/// as the first and without PSH, is one GSO frame; everything else is a
/// frame of its own. The order of the batch is kept.
fn plan_runs<'a>(packets: impl Iterator<Item = &'a [u8]>, out: &mut Vec<Run>) {
    out.clear();
    // The open run: its first segment, its last, and its IP length so far.
    let mut open: Option<(Segment, Segment, usize)> = None;
    for (i, p) in packets.enumerate() {
        let seg = Segment::parse(p);
        if let (Some((first, last, len)), Some(s)) = (open.as_mut(), seg) {
            let mss = first.payload().len();
            let joins = last.payload().len() == mss
                && last.flags & TcpFlags::PSH == 0
                && s.payload().len() <= mss
                && s.seq == last.seq.wrapping_add(mss as u32)
                && first.same_flow_and_header(&s)
                && *len + s.payload().len() <= u16::MAX as usize
                && out.last().is_some_and(|r| r.count < MAX_SEGMENTS);
            if joins {
                *last = s;
                *len += s.payload().len();
                if let Some(r) = out.last_mut() {
                    r.count += 1;
                }
                continue;
            }
        }
        out.push(Run { first: i, count: 1 });
        open = seg
            .filter(|s| !s.payload().is_empty())
            .map(|s| (s, s, s.packet.len()));
    }
}

/// The headers in front of a run's payloads: the virtio-net header, the
/// Ethernet header and (for a GSO run) the first segment's IP and TCP
/// headers made to cover the whole run.
#[derive(Clone, Copy)]
struct Head {
    bytes: [u8; VNET_HDR + ETH_HDR + MAX_IP_TCP],
    len: usize,
}

impl Head {
    fn new(dst_mac: [u8; 6], src_mac: [u8; 6], ethertype: u16) -> Head {
        let mut bytes = [0u8; VNET_HDR + ETH_HDR + MAX_IP_TCP];
        let e = &mut bytes[VNET_HDR..VNET_HDR + ETH_HDR];
        e[..6].copy_from_slice(&dst_mac);
        e[6..12].copy_from_slice(&src_mac);
        e[12..14].copy_from_slice(&ethertype.to_be_bytes());
        Head {
            bytes,
            len: VNET_HDR + ETH_HDR,
        }
    }

    /// Make this the head of a GSO frame for a planned run of two or more
    /// segments, from its `first` and `last` packets and the `payload`
    /// bytes they all carry: the payloads follow it back to back.
    fn gso(&mut self, first: &[u8], last: &[u8], payload: usize) {
        let v6 = first[0] >> 4 == 6;
        let ip = if v6 { 40 } else { 20 };
        let header = headers_len(first);
        let mss = first.len() - header;
        let tot = header + payload;
        let at = VNET_HDR + ETH_HDR;
        let h = &mut self.bytes[at..at + header];
        h.copy_from_slice(&first[..header]);
        if v6 {
            h[4..6].copy_from_slice(&((tot - ip) as u16).to_be_bytes());
        } else {
            h[2..4].copy_from_slice(&(tot as u16).to_be_bytes());
            h[10..12].fill(0);
            let ipc = internet_checksum(&h[..20]);
            h[10..12].copy_from_slice(&ipc.to_be_bytes());
        }
        // PSH, if any, was the last segment's: the kernel gives it to the
        // last piece it cuts.
        h[ip + 13] = first[ip + 13] | (last[ip + 13] & TcpFlags::PSH);
        let (src, dst) = (ip_source(h), ip_destination(h));
        let partial = match (src, dst) {
            (Some(s), Some(d)) => tcp_pseudo_header_sum(s, d, (tot - ip) as u32),
            _ => unreachable!("a parsed segment has addresses"),
        };
        h[ip + 16..ip + 18].copy_from_slice(&partial.to_be_bytes());
        let v = &mut self.bytes[..VNET_HDR];
        v[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
        v[1] = if v6 {
            VIRTIO_NET_HDR_GSO_TCPV6
        } else {
            VIRTIO_NET_HDR_GSO_TCPV4
        };
        // Little-endian, as AF_PACKET reads the header on this host.
        v[2..4].copy_from_slice(&((ETH_HDR + header) as u16).to_le_bytes());
        v[4..6].copy_from_slice(&(mss as u16).to_le_bytes());
        v[6..8].copy_from_slice(&((ETH_HDR + ip) as u16).to_le_bytes());
        v[8..10].copy_from_slice(&16u16.to_le_bytes());
        self.len = at + header;
    }
}

pub struct PacketSender {
    socket: OwnedFd,
    /// Where every frame goes (`-o`), with the protocol of IPv4 frames
    /// and of IPv6 ones (the kernel takes the skb's protocol from it).
    address_v4: libc::sockaddr_ll,
    address_v6: libc::sockaddr_ll,
    src_mac: [u8; 6],
    /// Next-hop MAC for each target address: this sender's copy of
    /// `hops`, reloaded when its generation moves.
    next_hop: HashMap<IpAddr, [u8; 6]>,
    hops: Arc<NextHops>,
    generation: u64,
    batch: Batch,
    // Kept to reuse their memory.
    runs: Vec<Run>,
    /// The frames of the batch that have a next hop, with their heads
    /// and whether they are IPv6.
    frames: Vec<(Run, Head, bool)>,
    iovecs: Vec<libc::iovec>,
    /// Each frame's iovecs: (first, how many).
    spans: Vec<(usize, usize)>,
    msgs: Vec<libc::mmsghdr>,
    sent: u64,
    errors: u64,
    gso_frames: u64,
}

// SAFETY: the raw pointers inside `iovecs` and `msgs` are only written and
// read within `send_batch`, pointing into buffers this struct owns;
// between calls they are dead values.
unsafe impl Send for PacketSender {}

impl PacketSender {
    /// An AF_PACKET socket for interface `ifindex` (needs CAP_NET_RAW). It
    /// is bound to no protocol, so it never receives.
    pub fn new(ifindex: u32, src_mac: [u8; 6], hops: Arc<NextHops>) -> io::Result<PacketSender> {
        // SAFETY: plain socket call; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd that nothing else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        set_int(&socket, SOL_PACKET, PACKET_VNET_HDR, 1)?;
        let _ = set_int(&socket, libc::SOL_SOCKET, libc::SO_SNDBUF, 4 << 20);
        // SAFETY: an all-zero sockaddr_ll is valid; the fields are set below.
        let mut address_v4: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address_v4.sll_family = libc::AF_PACKET as u16;
        address_v4.sll_ifindex = ifindex as i32;
        let mut address_v6 = address_v4;
        address_v4.sll_protocol = (libc::ETH_P_IP as u16).to_be();
        address_v6.sll_protocol = (libc::ETH_P_IPV6 as u16).to_be();
        Ok(PacketSender {
            socket,
            address_v4,
            address_v6,
            src_mac,
            next_hop: hops.snapshot(),
            generation: hops.generation(),
            hops,
            batch: Batch::new(),
            runs: Vec::with_capacity(BATCH),
            frames: Vec::with_capacity(BATCH),
            iovecs: Vec::with_capacity(BATCH * 2),
            spans: Vec::with_capacity(BATCH),
            msgs: Vec::with_capacity(BATCH),
            sent: 0,
            errors: 0,
            gso_frames: 0,
        })
    }

    /// Send the batch: frames planned and headed, then `sendmmsg` (a frame
    /// that fails is counted, each of its packets an error, and skipped;
    /// the engine's timers retransmit what was lost).
    fn send_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let generation = self.hops.generation();
        if generation != self.generation {
            self.next_hop = self.hops.snapshot();
            self.generation = generation;
        }
        let batch = &self.batch;
        plan_runs(batch.iter(), &mut self.runs);
        self.frames.clear();
        for &run in &self.runs {
            let first = batch.get(run.first);
            let Some((dst, &mac)) =
                ip_destination(first).and_then(|d| Some((d, self.next_hop.get(&d)?)))
            else {
                self.errors += run.count as u64;
                continue;
            };
            let mut head = Head::new(mac, self.src_mac, ethertype(dst));
            if run.count > 1 {
                // A run's segments share their header length (planned so).
                let header = headers_len(first);
                let members = run.first..run.first + run.count;
                let payload = members.map(|i| batch.get(i).len() - header).sum();
                head.gso(first, batch.get(run.first + run.count - 1), payload);
                self.gso_frames += 1;
            }
            self.frames.push((run, head, dst.is_ipv6()));
        }
        // The heads no longer move: point the iovecs at them and at the
        // packets (whole, or a GSO run's payloads).
        self.iovecs.clear();
        self.spans.clear();
        for (run, head, _) in &self.frames {
            let start = self.iovecs.len();
            self.iovecs.push(iovec(&head.bytes[..head.len]));
            if run.count == 1 {
                self.iovecs.push(iovec(batch.get(run.first)));
            } else {
                let header = headers_len(batch.get(run.first));
                for i in run.first..run.first + run.count {
                    self.iovecs.push(iovec(&batch.get(i)[header..]));
                }
            }
            self.spans.push((start, self.iovecs.len() - start));
        }
        self.msgs.clear();
        for (&(start, len), &(_, _, v6)) in self.spans.iter().zip(&self.frames) {
            let address = if v6 {
                &mut self.address_v6
            } else {
                &mut self.address_v4
            };
            // SAFETY: an all-zero msghdr is valid; the fields set point
            // into the addresses and `iovecs`, which outlive the call below.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_name = address as *mut libc::sockaddr_ll as *mut libc::c_void;
            m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            m.msg_hdr.msg_iov = &mut self.iovecs[start];
            m.msg_hdr.msg_iovlen = len;
            self.msgs.push(m);
        }
        let frames = &self.frames;
        let mut failed = 0;
        // SAFETY: the headers point into `address`, `iovecs`, the heads in
        // `frames` and the batch, none of which changes during the call.
        unsafe {
            send_all(self.socket.as_raw_fd(), &mut self.msgs, |i, _| {
                failed += frames[i].0.count as u64;
            })
        };
        let packets: u64 = frames.iter().map(|(r, _, _)| r.count as u64).sum();
        self.sent += packets - failed;
        self.errors += failed;
        self.batch.clear();
    }
}

fn iovec(b: &[u8]) -> libc::iovec {
    libc::iovec {
        iov_base: b.as_ptr() as *mut libc::c_void,
        iov_len: b.len(),
    }
}

fn set_int(
    socket: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: an int option on a socket we own.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Sender for PacketSender {
    fn send(&mut self, packet: &[u8]) -> io::Result<()> {
        let full = self.batch.push(packet).inspect_err(|_| self.errors += 1)?;
        if full {
            self.send_batch();
        }
        Ok(())
    }

    fn flush(&mut self) {
        self.send_batch();
    }

    fn counts(&self) -> SendCounts {
        SendCounts {
            sent: self.sent,
            errors: self.errors,
            gso_frames: self.gso_frames,
        }
    }
}

#[cfg(test)]
mod tests;
