//! tcpcopy's XDP capture program. Parses Ethernet (one 802.1Q tag), IPv4 or
//! IPv6 (hop-by-hop, routing and destination options skipped) and TCP, and
//! matches the destination against the `-x` sources in `SOURCES` (IPv4)
//! or `SOURCES6` (IPv6); address 0 = any local address of that family. What happens to a matched segment
//! depends on the global `CAPTURE_MODE` (see `tcpcopy_common::capture_mode`):
//! - count only: count it and pass;
//! - tap (on the online server itself): copy the IPv4 packet into the ring
//!   buffer of the worker that owns the flow and always pass — production
//!   traffic is never dropped or delayed, a full ring is only counted;
//! - xsk (mirror ports, dedicated NICs): redirect the frame to the AF_XDP
//!   socket of its RX queue.
//! Unmatched frames always pass (ARP and the host's own traffic keep working).
//! `--only-clients` / `--skip-clients` are LPM tries on the source address
//! (`ONLY_CLIENTS`, `SKIP_CLIENTS` and their IPv6 twins `ONLY_CLIENTS6`,
//! `SKIP_CLIENTS6`, in use per the global `CLIENT_FILTER`):
//! a segment they leave out is counted and passed, never copied.
//!
//! On a mirror (xsk mode) with `--verdict`, the online server's answers
//! (segments from a `-x` source) are redirected to the AF_XDP sockets too.
//!
//! `tcpcopy_answers` (TC egress, tap mode with `--verdict`): the online
//! server's answers, segments from a `-x` source, have their headers and
//! first `ANSWER_BYTES` of payload copied into the tap ring of the worker
//! that owns their client's flow (the copy's IPv4 total length or IPv6
//! payload length says what was copied; IPv6 answers with extension
//! headers are not copied). The packet itself always goes on, untouched.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_UNSPEC},
    helpers::generated::{bpf_skb_load_bytes, bpf_xdp_load_bytes},
    macros::{classifier, map, xdp},
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, PerCpuArray, RingBuf, XskMap},
    programs::{TcContext, XdpContext},
};
use tcpcopy_common::{
    capture_mode, client_filter, flow_hash, fold_ipv6, tcpcopy_counter as ctr,
    xdp::{self, ptr_at},
    PortKey, PortKey6, TapHeader, TAP_RING_BYTES,
};

/// Largest IPv4 packet copied into a tap record (power of two, for the
/// verifier-friendly length mask below).
const TAP_COPY_MAX: usize = 16384;

/// Set by userspace before load (`EbpfLoader::override_global`).
#[unsafe(no_mangle)]
static CAPTURE_MODE: u32 = capture_mode::COUNT_ONLY;
/// Number of tap rings in use (one per worker), 1..=MAX_TAP_RINGS (16).
#[unsafe(no_mangle)]
static TAP_RINGS: u32 = 1;

/// `--verdict` in tap mode: payload bytes copied of each online answer.
#[unsafe(no_mangle)]
static ANSWER_BYTES: u32 = 0;

/// Which client filter maps are in use (`client_filter` bits).
#[unsafe(no_mangle)]
static CLIENT_FILTER: u32 = 0;

/// `--only-clients`: source networks (address bytes as on the wire).
#[map]
static ONLY_CLIENTS: LpmTrie<[u8; 4], u8> =
    LpmTrie::with_max_entries(client_filter::MAX_ENTRIES, 0);
/// `--skip-clients`.
#[map]
static SKIP_CLIENTS: LpmTrie<[u8; 4], u8> =
    LpmTrie::with_max_entries(client_filter::MAX_ENTRIES, 0);
/// The same for IPv6 sources.
#[map]
static ONLY_CLIENTS6: LpmTrie<[u8; 16], u8> =
    LpmTrie::with_max_entries(client_filter::MAX_ENTRIES, 0);
#[map]
static SKIP_CLIENTS6: LpmTrie<[u8; 16], u8> =
    LpmTrie::with_max_entries(client_filter::MAX_ENTRIES, 0);

/// `-x` sources: (destination address, destination port); address 0 = any.
#[map]
static SOURCES: HashMap<PortKey, u8> = HashMap::with_max_entries(256, 0);
/// The IPv6 ones (address all zeros = any).
#[map]
static SOURCES6: HashMap<PortKey6, u8> = HashMap::with_max_entries(256, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(ctr::COUNT, 0);

/// Rare events already logged (aya-log; user space routes the lines into
/// its log): one line the first time, the counters after.
#[map]
static LOGGED: Array<u32> = Array::with_max_entries(2, 0);
const LOG_RING_FULL: u32 = 0;
const LOG_TOO_BIG: u32 = 1;

#[map]
static XSKS: XskMap = XskMap::with_max_entries(64, 0);

/// One tap ring per worker. Userspace shrinks the ones a run does not use
/// to a page before load (`map_max_entries`), so they cost no memory.
#[map]
static TAP0: RingBuf = RingBuf::with_byte_size(TAP_RING_BYTES, 0);
#[map]
static TAP1: RingBuf = RingBuf::with_byte_size(TAP_RING_BYTES, 0);
#[map]
static TAP2: RingBuf = RingBuf::with_byte_size(TAP_RING_BYTES, 0);
#[map]
static TAP3: RingBuf = RingBuf::with_byte_size(TAP_RING_BYTES, 0);
#[map]
static TAP4: RingBuf = RingBuf::with_byte_size(TAP_RING_BYTES, 0);
#[map]
static TAP5: RingBuf = RingBuf::with_byte_size(TAP_RING_BYTES, 0);
#[map]
static TAP6: RingBuf = RingBuf::with_byte_size(TAP_RING_BYTES, 0);
#[map]
static TAP7: RingBuf = RingBuf::with_byte_size(TAP_RING_BYTES, 0);
#[map]
static TAP8: RingBuf = RingBuf::with_byte_size(TAP_RING_BYTES, 0);
#[map]
static TAP9: RingBuf = RingBuf::with_byte_size(TAP_RING_BYTES, 0);
#[map]
static TAP10: RingBuf = RingBuf::with_byte_size(TAP_RING_BYTES, 0);
#[map]
static TAP11: RingBuf = RingBuf::with_byte_size(TAP_RING_BYTES, 0);
#[map]
static TAP12: RingBuf = RingBuf::with_byte_size(TAP_RING_BYTES, 0);
#[map]
static TAP13: RingBuf = RingBuf::with_byte_size(TAP_RING_BYTES, 0);
#[map]
static TAP14: RingBuf = RingBuf::with_byte_size(TAP_RING_BYTES, 0);
#[map]
static TAP15: RingBuf = RingBuf::with_byte_size(TAP_RING_BYTES, 0);

#[repr(C)]
pub struct Scratch {
    hdr: TapHeader,
    data: [u8; TAP_COPY_MAX],
}

/// Per-CPU staging area: the packet is copied here, then output to a ring
/// with its real length.
#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn bump(index: u32) {
    xdp::bump(&COUNTERS, index);
}

#[xdp]
pub fn tcpcopy_capture(ctx: XdpContext) -> u32 {
    bump(ctr::SEEN);
    let Some(m) = matched(&ctx) else {
        // A mirror carries both directions: with `--verdict` the online
        // server's answers go to user space too.
        let mode = unsafe { core::ptr::read_volatile(&CAPTURE_MODE) };
        let answers = unsafe { core::ptr::read_volatile(&ANSWER_BYTES) };
        if mode == capture_mode::XSK && answers != 0 && is_answer(&ctx) {
            bump(ctr::ANSWERS_SEEN);
            return redirect(&ctx, ctr::ANSWERS_TAPPED);
        }
        return xdp_action::XDP_PASS;
    };
    bump(ctr::MATCHED);
    let mode = unsafe { core::ptr::read_volatile(&CAPTURE_MODE) };
    if mode == capture_mode::XSK {
        return redirect(&ctx, ctr::REDIRECTED);
    }
    if mode == capture_mode::TAP {
        tap(&ctx, &m);
    }
    xdp_action::XDP_PASS
}

/// A mirror port (xsk mode): the frame goes to the AF_XDP socket of its
/// RX queue (counted under `done`).
#[inline(always)]
fn redirect(ctx: &XdpContext, done: u32) -> u32 {
    let queue = unsafe { (*ctx.ctx).rx_queue_index };
    match XSKS.redirect(queue, 0) {
        Ok(action) => {
            bump(done);
            action
        }
        Err(_) => {
            bump(ctr::REDIRECT_FAILED);
            xdp_action::XDP_PASS
        }
    }
}

struct Matched {
    ip_off: usize,
    ip_len: usize,
    flow_hash: u32,
}

#[inline(always)]
fn matched(ctx: &XdpContext) -> Option<Matched> {
    match xdp::ipv4_tcp(ctx) {
        Some(frame) => matched_v4(ctx, &frame),
        None => matched_v6(ctx, &xdp::ipv6_tcp(ctx)?),
    }
}

#[inline(always)]
fn matched_v4(ctx: &XdpContext, frame: &xdp::Ipv4Tcp) -> Option<Matched> {
    let ip = frame.ip;
    let tcp = unsafe { *ptr_at::<[u8; 4]>(ctx, frame.tcp_off)? };
    let daddr = frame.daddr();
    let dport = u16::from_ne_bytes([tcp[2], tcp[3]]);
    let hit = unsafe {
        SOURCES.get(PortKey::new(daddr, dport)).is_some()
            || SOURCES.get(PortKey::new(0, dport)).is_some()
    };
    if !hit {
        return None;
    }
    let filter = unsafe { core::ptr::read_volatile(&CLIENT_FILTER) };
    if filter != 0 && !client_admitted(filter, [ip[12], ip[13], ip[14], ip[15]]) {
        bump(ctr::CLIENT_SKIPPED);
        return None;
    }
    // Flow hash of (client IP, client port), shared with userspace.
    let saddr = u32::from_be_bytes([ip[12], ip[13], ip[14], ip[15]]);
    let sport = u16::from_be_bytes([tcp[0], tcp[1]]);
    let h = flow_hash(saddr, sport);
    Some(Matched {
        ip_off: frame.ip_off,
        ip_len: frame.total_len(),
        flow_hash: h,
    })
}

#[inline(always)]
fn matched_v6(ctx: &XdpContext, frame: &xdp::Ipv6Tcp) -> Option<Matched> {
    let ip = &frame.ip;
    let tcp = unsafe { *ptr_at::<[u8; 4]>(ctx, frame.tcp_off)? };
    let mut daddr = [0u8; 16];
    daddr.copy_from_slice(&ip[24..40]);
    let dport = u16::from_ne_bytes([tcp[2], tcp[3]]);
    let hit = unsafe {
        SOURCES6.get(PortKey6::new(daddr, dport)).is_some()
            || SOURCES6.get(PortKey6::new([0; 16], dport)).is_some()
    };
    if !hit {
        return None;
    }
    let mut saddr = [0u8; 16];
    saddr.copy_from_slice(&ip[8..24]);
    let filter = unsafe { core::ptr::read_volatile(&CLIENT_FILTER) };
    if filter != 0 && !client_admitted6(filter, saddr) {
        bump(ctr::CLIENT_SKIPPED);
        return None;
    }
    let word = |i: usize| u32::from_be_bytes([ip[i], ip[i + 1], ip[i + 2], ip[i + 3]]);
    let sport = u16::from_be_bytes([tcp[0], tcp[1]]);
    let h = flow_hash(fold_ipv6([word(8), word(12), word(16), word(20)]), sport);
    let payload = u16::from_be_bytes([ip[4], ip[5]]) as usize;
    Some(Matched {
        ip_off: frame.ip_off,
        // 0 (not stated: a GSO super-packet) means the frame's length.
        ip_len: if payload == 0 { 0 } else { 40 + payload },
        flow_hash: h,
    })
}

/// Is the frame a segment from a `-x` source (an online answer)?
#[inline(always)]
fn is_answer(ctx: &XdpContext) -> bool {
    if let Some(frame) = xdp::ipv4_tcp(ctx) {
        let Some(tcp) = ptr_at::<[u8; 4]>(ctx, frame.tcp_off) else {
            return false;
        };
        let tcp = unsafe { *tcp };
        let sport = u16::from_ne_bytes([tcp[0], tcp[1]]);
        let saddr = frame.saddr();
        return unsafe {
            SOURCES.get(PortKey::new(saddr, sport)).is_some()
                || SOURCES.get(PortKey::new(0, sport)).is_some()
        };
    }
    let Some(frame) = xdp::ipv6_tcp(ctx) else {
        return false;
    };
    let Some(tcp) = ptr_at::<[u8; 4]>(ctx, frame.tcp_off) else {
        return false;
    };
    let tcp = unsafe { *tcp };
    let sport = u16::from_ne_bytes([tcp[0], tcp[1]]);
    let mut saddr = [0u8; 16];
    saddr.copy_from_slice(&frame.ip[8..24]);
    unsafe {
        SOURCES6.get(PortKey6::new(saddr, sport)).is_some()
            || SOURCES6.get(PortKey6::new([0; 16], sport)).is_some()
    }
}

/// Is a segment from `saddr` captured under `--only-clients` /
/// `--skip-clients`?
#[inline(always)]
fn client_admitted(filter: u32, saddr: [u8; 4]) -> bool {
    let key = Key::new(32, saddr);
    if filter & client_filter::ONLY != 0 && ONLY_CLIENTS.get(&key).is_none() {
        return false;
    }
    !(filter & client_filter::SKIP != 0 && SKIP_CLIENTS.get(&key).is_some())
}

/// The same for an IPv6 source.
#[inline(always)]
fn client_admitted6(filter: u32, saddr: [u8; 16]) -> bool {
    let key = Key::new(128, saddr);
    if filter & client_filter::ONLY != 0 && ONLY_CLIENTS6.get(&key).is_none() {
        return false;
    }
    !(filter & client_filter::SKIP != 0 && SKIP_CLIENTS6.get(&key).is_some())
}

#[inline(always)]
fn tap(ctx: &XdpContext, m: &Matched) {
    // Never trust tot_len past what the frame holds.
    let frame_room = ctx.data_end() - ctx.data() - m.ip_off;
    let len = if m.ip_len == 0 || m.ip_len > frame_room {
        frame_room
    } else {
        m.ip_len
    };
    if len == 0 || len > TAP_COPY_MAX {
        bump(ctr::TOO_BIG);
        if xdp::first_time(&LOGGED, LOG_TOO_BIG) {
            aya_log_ebpf::warn!(
                ctx,
                "a matched frame of {} bytes is larger than a tap record ({} bytes): not copied, counted as too_big (GSO/GRO super-packets on generic XDP?)",
                len,
                TAP_COPY_MAX
            );
        }
        return;
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // Bound the length in a form the verifier can follow.
    let len = unsafe { core::ptr::read_volatile(&(len as u32)) };
    let bounded = ((len - 1) & (TAP_COPY_MAX as u32 - 1)) + 1;
    let ret = unsafe {
        (*scratch).hdr.len = bounded;
        (*scratch).hdr.ifindex = (*ctx.ctx).ingress_ifindex;
        bpf_xdp_load_bytes(
            ctx.ctx,
            m.ip_off as u32,
            (*scratch).data.as_mut_ptr() as *mut _,
            bounded,
        )
    };
    if ret != 0 {
        bump(ctr::TOO_BIG);
        return;
    }
    let total = core::mem::size_of::<TapHeader>() + bounded as usize;
    let bytes = unsafe { core::slice::from_raw_parts(scratch as *const u8, total as usize) };
    let ring = ring_of(m.flow_hash);
    if to_ring(ring, bytes) {
        bump(ctr::TAPPED);
    } else {
        bump(ctr::RING_FULL);
        if xdp::first_time(&LOGGED, LOG_RING_FULL) {
            aya_log_ebpf::warn!(
                ctx,
                "tap ring {} is full: its worker falls behind; segments are lost from here on, counted as kernel ring_full (a larger --tap-ring-mb absorbs longer bursts)",
                ring
            );
        }
    }
}

/// The tap ring of the worker that owns flow hash `h`.
#[inline(always)]
fn ring_of(h: u32) -> u32 {
    // Constant divisors only: a variable one brings in a panic path that
    // the verifier rejects.
    match unsafe { core::ptr::read_volatile(&TAP_RINGS) } {
        2 => h % 2,
        3 => h % 3,
        4 => h % 4,
        5 => h % 5,
        6 => h % 6,
        7 => h % 7,
        8 => h % 8,
        9 => h % 9,
        10 => h % 10,
        11 => h % 11,
        12 => h % 12,
        13 => h % 13,
        14 => h % 14,
        15 => h % 15,
        16 => h % 16,
        _ => 0,
    }
}

/// Put `bytes` into tap ring `ring`; false if it is full.
#[inline(always)]
fn to_ring(ring: u32, bytes: &[u8]) -> bool {
    match ring {
        0 => output(&TAP0, bytes),
        1 => output(&TAP1, bytes),
        2 => output(&TAP2, bytes),
        3 => output(&TAP3, bytes),
        4 => output(&TAP4, bytes),
        5 => output(&TAP5, bytes),
        6 => output(&TAP6, bytes),
        7 => output(&TAP7, bytes),
        8 => output(&TAP8, bytes),
        9 => output(&TAP9, bytes),
        10 => output(&TAP10, bytes),
        11 => output(&TAP11, bytes),
        12 => output(&TAP12, bytes),
        13 => output(&TAP13, bytes),
        14 => output(&TAP14, bytes),
        _ => output(&TAP15, bytes),
    }
}

/// Most bytes of an answer copied: IPv4 and TCP headers with options (at
/// most 60 + 60) and the payload asked for (at most 256), in a power of
/// two.
const ANSWER_COPY_MAX: usize = 512;

#[repr(C)]
pub struct AnswerScratch {
    hdr: TapHeader,
    data: [u8; ANSWER_COPY_MAX],
}

#[map]
static ANSWER_SCRATCH: PerCpuArray<AnswerScratch> = PerCpuArray::with_max_entries(1, 0);

#[classifier]
pub fn tcpcopy_answers(ctx: TcContext) -> i32 {
    copy_answer(&ctx);
    // Whatever happened, the packet goes on (and the next program runs).
    TC_ACT_UNSPEC
}

/// An answer's IP header as the TC program reads it: where TCP starts,
/// its source (for the `-x` match), its client (for the ring), and the
/// packet length the header states.
struct AnswerIp {
    ihl: usize,
    source_is_x: bool,
    client: u32,
    /// Total length (IPv4) or 40 + payload length (IPv6); 0: not stated.
    total: usize,
    ipv6: bool,
}

#[inline(always)]
fn answer_ip(
    ctx: &TcContext,
    ip_off: usize,
    proto: u16,
    sport: impl Fn(usize) -> Option<u16>,
) -> Option<AnswerIp> {
    if proto == 0x0800 {
        let ip = ctx.load::<[u8; 20]>(ip_off).ok()?;
        if ip[0] >> 4 != 4 || ip[9] != 6 {
            return None;
        }
        let ihl = ((ip[0] & 0x0f) as usize) * 4;
        let port = sport(ip_off + ihl)?;
        let saddr = u32::from_ne_bytes([ip[12], ip[13], ip[14], ip[15]]);
        let source_is_x = unsafe {
            SOURCES.get(PortKey::new(saddr, port)).is_some()
                || SOURCES.get(PortKey::new(0, port)).is_some()
        };
        return Some(AnswerIp {
            ihl,
            source_is_x,
            client: u32::from_be_bytes([ip[16], ip[17], ip[18], ip[19]]),
            total: u16::from_be_bytes([ip[2], ip[3]]) as usize,
            ipv6: false,
        });
    }
    if proto != 0x86dd {
        return None;
    }
    // IPv6 without extension headers (the online server's own answers
    // carry none).
    let ip = ctx.load::<[u8; 40]>(ip_off).ok()?;
    if ip[0] >> 4 != 6 || ip[6] != 6 {
        return None;
    }
    let port = sport(ip_off + 40)?;
    let mut saddr = [0u8; 16];
    saddr.copy_from_slice(&ip[8..24]);
    let source_is_x = unsafe {
        SOURCES6.get(PortKey6::new(saddr, port)).is_some()
            || SOURCES6.get(PortKey6::new([0; 16], port)).is_some()
    };
    let word = |i: usize| u32::from_be_bytes([ip[i], ip[i + 1], ip[i + 2], ip[i + 3]]);
    let payload = u16::from_be_bytes([ip[4], ip[5]]) as usize;
    Some(AnswerIp {
        ihl: 40,
        source_is_x,
        client: fold_ipv6([word(24), word(28), word(32), word(36)]),
        total: if payload == 0 { 0 } else { 40 + payload },
        ipv6: true,
    })
}

#[inline(always)]
fn copy_answer(ctx: &TcContext) -> Option<()> {
    let mut ip_off = 14usize;
    let mut proto = u16::from_be(ctx.load::<u16>(12).ok()?);
    if proto == 0x8100 || proto == 0x88a8 {
        proto = u16::from_be(ctx.load::<u16>(16).ok()?);
        ip_off += 4;
    }
    let sport = |at: usize| {
        ctx.load::<[u8; 2]>(at)
            .ok()
            .map(|p| u16::from_ne_bytes([p[0], p[1]]))
    };
    let a = answer_ip(ctx, ip_off, proto, sport)?;
    if !a.source_is_x {
        return None;
    }
    let ihl = a.ihl;
    let tcp = ctx.load::<[u8; 20]>(ip_off + ihl).ok()?;
    bump(ctr::ANSWERS_SEEN);
    let doff = ((tcp[12] >> 4) as usize) * 4;
    let headers = ihl + doff;
    let total = a.total;
    // A GSO packet's total length may be 0 or its first segment's: the
    // skb's length bounds what there is.
    let room = (ctx.len() as usize).checked_sub(ip_off)?;
    let payload = if total >= headers {
        total - headers
    } else {
        room - headers.min(room)
    };
    let want = unsafe { core::ptr::read_volatile(&ANSWER_BYTES) } as usize;
    let len = (headers + payload.min(want)).min(room);
    if len < 40 || len > ANSWER_COPY_MAX {
        bump(ctr::ANSWERS_UNREADABLE);
        return None;
    }
    let scratch = ANSWER_SCRATCH.get_ptr_mut(0)?;
    let len = unsafe { core::ptr::read_volatile(&(len as u32)) };
    let bounded = ((len - 1) & (ANSWER_COPY_MAX as u32 - 1)) + 1;
    let ret = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            ip_off as u32,
            (*scratch).data.as_mut_ptr() as *mut _,
            bounded,
        )
    };
    if ret != 0 {
        bump(ctr::ANSWERS_UNREADABLE);
        return None;
    }
    unsafe {
        (*scratch).hdr.len = bounded;
        (*scratch).hdr.ifindex = (*ctx.skb.skb).ifindex;
        // The copy's stated length: what was copied.
        if a.ipv6 {
            let payload = bounded.saturating_sub(40);
            (*scratch).data[4] = (payload >> 8) as u8;
            (*scratch).data[5] = payload as u8;
        } else {
            (*scratch).data[2] = (bounded >> 8) as u8;
            (*scratch).data[3] = bounded as u8;
        }
    }
    let bytes_total = core::mem::size_of::<TapHeader>() + bounded as usize;
    let bytes = unsafe { core::slice::from_raw_parts(scratch as *const u8, bytes_total) };
    // The client is the answer's destination.
    let dport = u16::from_be_bytes([tcp[2], tcp[3]]);
    if to_ring(ring_of(flow_hash(a.client, dport)), bytes) {
        bump(ctr::ANSWERS_TAPPED);
    } else {
        bump(ctr::RING_FULL);
    }
    Some(())
}

#[inline(always)]
fn output(ring: &RingBuf, bytes: &[u8]) -> bool {
    // Flags 0: the kernel wakes the reader only when it had caught up, so
    // a busy ring costs no wakeup per record and a quiet one no latency.
    ring.output::<[u8]>(bytes, 0).is_ok()
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
