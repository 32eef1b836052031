//! intercept's XDP program: runs on the assistant host's interface that the
//! target's responses are routed to. A response that matches the `-F`
//! filter (source address/port in `FILTER`, or `FILTER6` for an IPv6
//! address) has its IP header and the first 44 bytes of its TCP header
//! written as one record (64 bytes for IPv4; 84 for IPv6, its extension
//! headers left out) into one of the `RECORDS0..3` ring buffers (by the
//! client's flow hash, so a connection's records stay in order), and is
//! then dropped: the assistant is a black hole, whether the ring had room
//! or not. Everything else (ARP, SSH, the control channel)
//! passes. Once a tcpcopy asked for them (`PREFIX`, set by intercept), the
//! moment the program saw the response and the first bytes of its payload
//! follow its record in the ring.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_ktime_get_ns, bpf_xdp_load_bytes},
    macros::{map, xdp},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::XdpContext,
};
use tcpcopy_common::{
    flow_hash, fold_ipv6, intercept_counter as ctr,
    xdp::{self, ptr_at},
    PortKey, PortKey6, ResponseRecord, ResponseRecordV6, RECORD_IP_LEN, RECORD_PREFIX_MAX,
    RECORD_RINGS, RECORD_RING_BYTES, RECORD_STAMP_LEN, RESPONSE_RECORD_V6_LEN,
};

/// Payload bytes to put after each record (0: none, and no time stamp),
/// set by intercept when a tcpcopy is granted our extension.
#[map]
static PREFIX: Array<u32> = Array::with_max_entries(1, 0);

/// A record (either family), its time stamp and the payload after them,
/// staged back to back before they go to a ring with their real length.
#[repr(C)]
pub struct WithPrefix {
    bytes: [u8; RESPONSE_RECORD_V6_LEN + RECORD_STAMP_LEN + RECORD_PREFIX_MAX],
}

#[map]
static SCRATCH: PerCpuArray<WithPrefix> = PerCpuArray::with_max_entries(1, 0);

/// (source address, source port) of responses to capture; address 0 = any
/// (of either family).
#[map]
static FILTER: HashMap<PortKey, u8> = HashMap::with_max_entries(64, 0);
/// The same for clauses naming an IPv6 source address.
#[map]
static FILTER6: HashMap<PortKey6, u8> = HashMap::with_max_entries(64, 0);

#[map]
static RECORDS0: RingBuf = RingBuf::with_byte_size(RECORD_RING_BYTES, 0);
#[map]
static RECORDS1: RingBuf = RingBuf::with_byte_size(RECORD_RING_BYTES, 0);
#[map]
static RECORDS2: RingBuf = RingBuf::with_byte_size(RECORD_RING_BYTES, 0);
#[map]
static RECORDS3: RingBuf = RingBuf::with_byte_size(RECORD_RING_BYTES, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(ctr::COUNT, 0);

/// Rare events already logged (aya-log): one line the first time.
#[map]
static LOGGED: Array<u32> = Array::with_max_entries(1, 0);
const LOG_RING_FULL: u32 = 0;

#[inline(always)]
fn bump(index: u32) {
    xdp::bump(&COUNTERS, index);
}

#[xdp]
pub fn intercept(ctx: XdpContext) -> u32 {
    bump(ctr::SEEN);
    match classify(&ctx) {
        Some(true) => xdp_action::XDP_DROP,
        _ => xdp_action::XDP_PASS,
    }
}

/// Returns Some(true) when the frame is a matched response (to be dropped).
#[inline(always)]
fn classify(ctx: &XdpContext) -> Option<bool> {
    if let Some(frame) = xdp::ipv4_tcp(ctx) {
        return classify_v4(ctx, &frame);
    }
    classify_v6(ctx, &xdp::ipv6_tcp(ctx)?)
}

/// The TCP header's fixed 20 bytes and its length, if sane.
#[inline(always)]
fn tcp_at(ctx: &XdpContext, tcp_off: usize) -> Option<([u8; 20], usize)> {
    let tcp = unsafe { *ptr_at::<[u8; 20]>(ctx, tcp_off)? };
    let doff = ((tcp[12] >> 4) as usize) * 4;
    (doff >= 20).then_some((tcp, doff))
}

#[inline(always)]
fn classify_v4(ctx: &XdpContext, frame: &xdp::Ipv4Tcp) -> Option<bool> {
    let (tcp, doff) = tcp_at(ctx, frame.tcp_off)?;
    let sport = u16::from_ne_bytes([tcp[0], tcp[1]]);
    let matched = unsafe {
        FILTER.get(PortKey::new(frame.saddr(), sport)).is_some()
            || FILTER.get(PortKey::new(0, sport)).is_some()
    };
    if !matched {
        return None;
    }
    bump(ctr::MATCHED);
    let ip = &frame.ip;
    // The client is the response's destination: (address, port) in host
    // order, as tcpcopy hashes them.
    let client = u32::from_be_bytes([ip[16], ip[17], ip[18], ip[19]]);
    let mut rec = ResponseRecord { bytes: [0u8; 64] };
    rec.bytes[..RECORD_IP_LEN].copy_from_slice(ip);
    rec.bytes[RECORD_IP_LEN..RECORD_IP_LEN + 20].copy_from_slice(&tcp);
    copy_options(ctx, &mut rec.bytes, RECORD_IP_LEN, frame.tcp_off, doff);
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    let tcp_len = frame.total_len().saturating_sub(ihl);
    let sent = send(ctx, ring_of(client, &tcp), &rec.bytes, || {
        payload_at(ctx, tcp_len, frame.tcp_off, doff)
    });
    count_sent(ctx, sent);
    Some(true)
}

#[inline(always)]
fn classify_v6(ctx: &XdpContext, frame: &xdp::Ipv6Tcp) -> Option<bool> {
    let (tcp, doff) = tcp_at(ctx, frame.tcp_off)?;
    let sport = u16::from_ne_bytes([tcp[0], tcp[1]]);
    let mut saddr = [0u8; 16];
    saddr.copy_from_slice(&frame.ip[8..24]);
    let matched = unsafe {
        FILTER6.get(PortKey6::new(saddr, sport)).is_some()
            || FILTER.get(PortKey::new(0, sport)).is_some()
    };
    if !matched {
        return None;
    }
    bump(ctr::MATCHED);
    let ip = &frame.ip;
    let word = |i: usize| u32::from_be_bytes([ip[i], ip[i + 1], ip[i + 2], ip[i + 3]]);
    let client = fold_ipv6([word(24), word(28), word(32), word(36)]);
    let mut rec = ResponseRecordV6 {
        bytes: [0u8; RESPONSE_RECORD_V6_LEN],
    };
    rec.bytes[..40].copy_from_slice(&frame.header_without_extensions());
    rec.bytes[40..60].copy_from_slice(&tcp);
    copy_options(ctx, &mut rec.bytes, 40, frame.tcp_off, doff);
    let sent = send(ctx, ring_of(client, &tcp), &rec.bytes, || {
        payload_at(ctx, frame.tcp_len, frame.tcp_off, doff)
    });
    count_sent(ctx, sent);
    Some(true)
}

/// The ring of a client (its address folded to 32 bits, host order, and
/// the response's destination port).
#[inline(always)]
fn ring_of(client: u32, tcp: &[u8; 20]) -> &'static RingBuf {
    let port = u16::from_be_bytes([tcp[2], tcp[3]]);
    match flow_hash(client, port) % RECORD_RINGS {
        0 => &RECORDS0,
        1 => &RECORDS1,
        2 => &RECORDS2,
        _ => &RECORDS3,
    }
}

/// The TCP options after the fixed header, 4 bytes at a time, at most 24
/// (spec §3.3), into the record after its IP header (`at`).
#[inline(always)]
fn copy_options<const N: usize>(
    ctx: &XdpContext,
    rec: &mut [u8; N],
    at: usize,
    tcp_off: usize,
    doff: usize,
) {
    let opt_len = doff - 20;
    macro_rules! option_word {
        ($i:expr) => {
            if opt_len > $i * 4 {
                if let Some(p) = ptr_at::<[u8; 4]>(ctx, tcp_off + 20 + $i * 4) {
                    let w = unsafe { *p };
                    rec[at + 20 + $i * 4..at + 24 + $i * 4].copy_from_slice(&w);
                }
            }
        };
    }
    option_word!(0);
    option_word!(1);
    option_word!(2);
    option_word!(3);
    option_word!(4);
    option_word!(5);
}

/// Put a record in its ring: alone, or under our extension (`PREFIX` set)
/// with its time stamp and payload bytes.
#[inline(always)]
fn send<const N: usize>(
    ctx: &XdpContext,
    ring: &RingBuf,
    rec: &[u8; N],
    payload: impl FnOnce() -> Option<(usize, usize)>,
) -> bool {
    let want = PREFIX.get(0).copied().unwrap_or(0) as usize;
    if want > 0 {
        return extended(ctx, ring, rec, payload(), want);
    }
    match ring.reserve::<[u8; N]>(0) {
        Some(mut entry) => {
            entry.write(*rec);
            // Flags 0: the kernel wakes the reader only when it had
            // caught up, so a busy ring costs no wakeup per record and
            // a quiet one no latency.
            entry.submit(0);
            true
        }
        None => false,
    }
}

#[inline(always)]
fn count_sent(ctx: &XdpContext, sent: bool) {
    if !sent {
        bump(ctr::RING_FULL);
        if xdp::first_time(&LOGGED, LOG_RING_FULL) {
            aya_log_ebpf::warn!(
                ctx,
                "a record ring is full: intercept falls behind; records are lost from here on (the responses are still dropped), counted as ring_full"
            );
        }
        return;
    }
    bump(ctr::EXPORTED);
}

/// Where the payload starts and how many of its bytes the frame holds
/// (None: no payload), from the TCP segment's length (0: not stated).
#[inline(always)]
fn payload_at(
    ctx: &XdpContext,
    tcp_len: usize,
    tcp_off: usize,
    doff: usize,
) -> Option<(usize, usize)> {
    let off = tcp_off + doff;
    let room = (ctx.data_end() - ctx.data()).checked_sub(off)?;
    let payload = match tcp_len {
        0 => room,
        n => n.checked_sub(doff)?,
    };
    let n = payload.min(room);
    (n > 0).then_some((off, n))
}

/// Output the record under our extension: its time stamp, then up to
/// `want` payload bytes from `payload` (none if they cannot be read).
#[inline(always)]
fn extended<const N: usize>(
    ctx: &XdpContext,
    ring: &RingBuf,
    rec: &[u8; N],
    payload: Option<(usize, usize)>,
    want: usize,
) -> bool {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    let head = N + RECORD_STAMP_LEN;
    let mut total = head;
    // SAFETY: this CPU's scratch slot; nothing else uses it meanwhile.
    let staged = unsafe { &mut (*scratch).bytes };
    staged[..N].copy_from_slice(rec);
    staged[N..head].copy_from_slice(&unsafe { bpf_ktime_get_ns() }.to_ne_bytes());
    if let Some((off, n)) = payload {
        let n = n.min(want).min(RECORD_PREFIX_MAX);
        // Bound the length in a form the verifier can follow.
        let n = unsafe { core::ptr::read_volatile(&(n as u32)) };
        if n > 0 {
            let bounded = ((n - 1) & (RECORD_PREFIX_MAX as u32 - 1)) + 1;
            let ret = unsafe {
                bpf_xdp_load_bytes(
                    ctx.ctx,
                    off as u32,
                    staged.as_mut_ptr().add(head) as *mut _,
                    bounded,
                )
            };
            if ret == 0 {
                total = head + bounded as usize;
            }
        }
    }
    let bytes = unsafe { core::slice::from_raw_parts(scratch as *const u8, total) };
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
