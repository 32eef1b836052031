//! intercept's XDP program: runs on the assistant host's interface that the
//! target's responses are routed to. A response that matches the `-F`
//! filter (source address/port in `FILTER`) has its IPv4 header and the first
//! 44 bytes of its TCP header written as one 64-byte record into one of the
//! `RECORDS0..3` ring buffers (by the client's flow hash, so a connection's
//! records stay in order), and is then dropped: the assistant is a black hole, whether
//! the ring had room or not. Everything else (ARP, SSH, the control channel)
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
    flow_hash, intercept_counter as ctr,
    xdp::{self, ptr_at},
    PortKey, ResponseRecord, RECORD_IP_LEN, RECORD_PREFIX_MAX, RECORD_RINGS, RECORD_RING_BYTES,
    RECORD_STAMP_LEN, RESPONSE_RECORD_LEN,
};

/// Payload bytes to put after each record (0: none, and no time stamp),
/// set by intercept when a tcpcopy is granted our extension.
#[map]
static PREFIX: Array<u32> = Array::with_max_entries(1, 0);

/// A record, its time stamp and the payload after them, staged before it
/// goes to a ring with its real length.
#[repr(C)]
pub struct WithPrefix {
    record: [u8; RESPONSE_RECORD_LEN],
    seen_ns: [u8; RECORD_STAMP_LEN],
    prefix: [u8; RECORD_PREFIX_MAX],
}

#[map]
static SCRATCH: PerCpuArray<WithPrefix> = PerCpuArray::with_max_entries(1, 0);

/// (source address, source port) of responses to capture; address 0 = any.
#[map]
static FILTER: HashMap<PortKey, u8> = HashMap::with_max_entries(64, 0);

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
    let frame = xdp::ipv4_tcp(ctx)?;
    let saddr = frame.saddr();
    let tcp_off = frame.tcp_off;
    let tcp = ptr_at::<[u8; 20]>(ctx, tcp_off)?;
    let tcp_bytes = unsafe { *tcp };
    let sport = u16::from_ne_bytes([tcp_bytes[0], tcp_bytes[1]]);
    let doff = ((tcp_bytes[12] >> 4) as usize) * 4;
    if doff < 20 {
        return None;
    }
    let matched = unsafe {
        FILTER.get(PortKey::new(saddr, sport)).is_some()
            || FILTER.get(PortKey::new(0, sport)).is_some()
    };
    if !matched {
        return None;
    }
    bump(ctr::MATCHED);
    export(ctx, &frame.ip, &tcp_bytes, tcp_off, doff);
    Some(true)
}

#[inline(always)]
fn export(ctx: &XdpContext, ip: &[u8; 20], tcp: &[u8; 20], tcp_off: usize, doff: usize) {
    // The client is the response's destination: (address, port) in host
    // order, as tcpcopy hashes them.
    let client = u32::from_be_bytes([ip[16], ip[17], ip[18], ip[19]]);
    let port = u16::from_be_bytes([tcp[2], tcp[3]]);
    let ring = match flow_hash(client, port) % RECORD_RINGS {
        0 => &RECORDS0,
        1 => &RECORDS1,
        2 => &RECORDS2,
        _ => &RECORDS3,
    };
    let mut rec = ResponseRecord { bytes: [0u8; 64] };
    rec.bytes[..RECORD_IP_LEN].copy_from_slice(ip);
    rec.bytes[RECORD_IP_LEN..RECORD_IP_LEN + 20].copy_from_slice(tcp);
    // Options, 4 bytes at a time, at most 24 bytes (spec §3.3).
    let opt_len = doff - 20;
    macro_rules! option_word {
        ($i:expr) => {
            if opt_len > $i * 4 {
                if let Some(p) = ptr_at::<[u8; 4]>(ctx, tcp_off + 20 + $i * 4) {
                    let w = unsafe { *p };
                    rec.bytes[40 + $i * 4..44 + $i * 4].copy_from_slice(&w);
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
    let want = PREFIX.get(0).copied().unwrap_or(0) as usize;
    let sent = if want > 0 {
        let payload = payload_at(ctx, ip, tcp_off, doff);
        extended(ctx, ring, &rec, payload, want)
    } else {
        match ring.reserve::<ResponseRecord>(0) {
            Some(mut entry) => {
                entry.write(rec);
                // Flags 0: the kernel wakes the reader only when it had
                // caught up, so a busy ring costs no wakeup per record and
                // a quiet one no latency.
                entry.submit(0);
                true
            }
            None => false,
        }
    };
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
/// (None: no payload).
#[inline(always)]
fn payload_at(
    ctx: &XdpContext,
    ip: &[u8; 20],
    tcp_off: usize,
    doff: usize,
) -> Option<(usize, usize)> {
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    let payload = total.checked_sub(ihl + doff)?;
    let off = tcp_off + doff;
    let room = (ctx.data_end() - ctx.data()).checked_sub(off)?;
    let n = payload.min(room);
    (n > 0).then_some((off, n))
}

/// Output the record under our extension: its time stamp, then up to
/// `want` payload bytes from `payload` (none if they cannot be read).
#[inline(always)]
fn extended(
    ctx: &XdpContext,
    ring: &RingBuf,
    rec: &ResponseRecord,
    payload: Option<(usize, usize)>,
    want: usize,
) -> bool {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    let head = RESPONSE_RECORD_LEN + RECORD_STAMP_LEN;
    let mut total = head;
    unsafe {
        (*scratch).record = rec.bytes;
        (*scratch).seen_ns = bpf_ktime_get_ns().to_ne_bytes();
    }
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
                    (*scratch).prefix.as_mut_ptr() as *mut _,
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
