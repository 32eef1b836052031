//! What both XDP programs do first, written once: bounds-checked reads of
//! the frame, the Ethernet (one 802.1Q/802.1ad tag) + IPv4 or IPv6 + TCP
//! parse, and bumping a per-CPU counter. Everything is `#[inline(always)]`: the
//! verifier sees the same straight-line code as if each program had its
//! own copy.

use aya_ebpf::{
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;

/// A pointer to a `T` at `offset` in the frame, if the frame holds it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// Add one to slot `index` of a per-CPU counter array.
#[inline(always)]
pub fn bump(counters: &PerCpuArray<u64>, index: u32) {
    if let Some(slot) = counters.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot; nothing else on this CPU runs meanwhile.
        unsafe { *slot += 1 };
    }
}

/// Whether event `which` happens for the first time (then marked): a
/// rare event gets one log line, the counters count the rest. Two CPUs
/// may both see a first time: a second line, no harm.
#[inline(always)]
pub fn first_time(logged: &Array<u32>, which: u32) -> bool {
    match logged.get_ptr_mut(which) {
        // SAFETY: a slot of an array map, written only here.
        Some(slot) => unsafe {
            if core::ptr::read_volatile(slot) == 0 {
                core::ptr::write_volatile(slot, 1);
                true
            } else {
                false
            }
        },
        None => false,
    }
}

/// An IPv4/TCP frame: where its IPv4 header starts, that header's fixed
/// 20 bytes, and where the TCP header starts.
pub struct Ipv4Tcp {
    pub ip_off: usize,
    pub ip: [u8; 20],
    pub tcp_off: usize,
}

impl Ipv4Tcp {
    /// Source and destination address, in network order as on the wire.
    #[inline(always)]
    pub fn saddr(&self) -> u32 {
        let ip = &self.ip;
        u32::from_ne_bytes([ip[12], ip[13], ip[14], ip[15]])
    }
    #[inline(always)]
    pub fn daddr(&self) -> u32 {
        let ip = &self.ip;
        u32::from_ne_bytes([ip[16], ip[17], ip[18], ip[19]])
    }
    /// The IPv4 total length field.
    #[inline(always)]
    pub fn total_len(&self) -> usize {
        u16::from_be_bytes([self.ip[2], self.ip[3]]) as usize
    }
}

/// Where the network header starts, and its Ethernet type.
#[inline(always)]
fn network(ctx: &XdpContext) -> Option<(usize, u16)> {
    let mut off = ETH_HLEN;
    // SAFETY: `ptr_at` checked the frame holds the bytes read.
    let mut proto = u16::from_be(unsafe { *ptr_at::<u16>(ctx, 12)? });
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        proto = u16::from_be(unsafe { *ptr_at::<u16>(ctx, 16)? });
        off += 4;
    }
    Some((off, proto))
}

/// Parse Ethernet, IPv4 and the IPv4 header length; None if the frame is
/// not IPv4/TCP or too short for the IPv4 header.
#[inline(always)]
pub fn ipv4_tcp(ctx: &XdpContext) -> Option<Ipv4Tcp> {
    let (off, proto) = network(ctx)?;
    if proto != ETH_P_IP {
        return None;
    }
    let ip = unsafe { *ptr_at::<[u8; 20]>(ctx, off)? };
    if ip[0] >> 4 != 4 || ip[9] != IPPROTO_TCP {
        return None;
    }
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    if ihl < 20 {
        return None;
    }
    Some(Ipv4Tcp {
        ip_off: off,
        ip,
        // Masked so the verifier sees the bound.
        tcp_off: off + (ihl & 0x3c),
    })
}

/// An IPv6/TCP frame: its fixed header, where the TCP header starts (past
/// the extension headers) and how long the TCP segment is.
pub struct Ipv6Tcp {
    pub ip_off: usize,
    pub ip: [u8; 40],
    pub tcp_off: usize,
    /// The payload length minus the extension headers; 0 when the header
    /// states none (a GSO super-packet: the frame's length tells).
    pub tcp_len: usize,
}

impl Ipv6Tcp {
    /// The fixed header with the extension headers left out: next header
    /// TCP, payload length the TCP segment's (what a record carries).
    #[inline(always)]
    pub fn header_without_extensions(&self) -> [u8; 40] {
        let mut h = self.ip;
        h[4..6].copy_from_slice(&(self.tcp_len as u16).to_be_bytes());
        h[6] = IPPROTO_TCP;
        h
    }
}

/// Extension headers walked at most before TCP.
const MAX_EXTENSIONS: usize = 3;
/// Bytes of extension headers taken at most (more: not parsed).
const MAX_EXTENSION_BYTES: usize = 256;

/// Parse Ethernet and IPv6, skipping hop-by-hop, routing, fragment and
/// destination options headers to TCP; None if the frame is not IPv6/TCP.
/// A fragment goes on as IPv4 ones do: user space counts it and never
/// replays it.
#[inline(always)]
pub fn ipv6_tcp(ctx: &XdpContext) -> Option<Ipv6Tcp> {
    let (off, proto) = network(ctx)?;
    if proto != ETH_P_IPV6 {
        return None;
    }
    // SAFETY: `ptr_at` checked the frame holds the bytes read.
    let ip = unsafe { *ptr_at::<[u8; 40]>(ctx, off)? };
    if ip[0] >> 4 != 6 {
        return None;
    }
    let mut next = ip[6];
    let mut ext = 0usize;
    for _ in 0..MAX_EXTENSIONS {
        // A fragment header's second byte is reserved (0): 8 bytes too.
        if next != 0 && next != 43 && next != 44 && next != 60 {
            break;
        }
        let h = unsafe { *ptr_at::<[u8; 2]>(ctx, off + 40 + ext)? };
        next = h[0];
        ext += (h[1] as usize + 1) * 8;
        if ext > MAX_EXTENSION_BYTES {
            return None;
        }
    }
    if next != IPPROTO_TCP {
        return None;
    }
    let payload = u16::from_be_bytes([ip[4], ip[5]]) as usize;
    Some(Ipv6Tcp {
        ip_off: off,
        ip,
        tcp_off: off + 40 + ext,
        tcp_len: payload.saturating_sub(ext),
    })
}
