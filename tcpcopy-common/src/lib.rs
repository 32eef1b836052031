//! Types shared by the eBPF programs and userspace: `#[repr(C)]` map keys,
//! records and counter indices. `no_std`; the `user` feature adds `aya::Pod`
//! impls so userspace can read and write the maps, the `ebpf` feature the
//! parse and counter helpers both XDP programs use ([`xdp`]).
#![no_std]

#[cfg(feature = "ebpf")]
pub mod xdp;

/// Default TCP port of the tcpcopy ⇄ intercept control channel.
pub const CONTROL_PORT: u16 = 36524;

/// Key of the IPv4 port-match maps of both programs: an IPv4 address and a TCP
/// port, both in network byte order as they appear on the wire. An address of
/// 0 means "any address" (a `-x 80-...` entry without an IP, or a `-F` clause
/// without `src host`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortKey {
    pub addr: u32,
    pub port: u16,
    pub _pad: u16,
}

impl PortKey {
    pub const fn new(addr_be: u32, port_be: u16) -> Self {
        PortKey {
            addr: addr_be,
            port: port_be,
            _pad: 0,
        }
    }
}

/// Counters of the tcpcopy capture program (one slot each in a per-CPU array).
pub mod tcpcopy_counter {
    /// Frames the program ran on.
    pub const SEEN: u32 = 0;
    /// IP/TCP segments (either family) that matched a `-x` source.
    pub const MATCHED: u32 = 1;
    /// Matched segments copied into a tap ring buffer.
    pub const TAPPED: u32 = 2;
    /// Matched segments lost because the tap ring buffer was full.
    pub const RING_FULL: u32 = 3;
    /// Matched segments redirected to an AF_XDP socket.
    pub const REDIRECTED: u32 = 4;
    /// Matched segments that could not be redirected (no socket on the queue).
    pub const REDIRECT_FAILED: u32 = 5;
    /// Matched segments longer than a tap record holds.
    pub const TOO_BIG: u32 = 6;
    /// Segments to a `-x` source from a client that `--only-clients` /
    /// `--skip-clients` leave out: passed, not copied (not in `matched`).
    pub const CLIENT_SKIPPED: u32 = 7;
    /// `--verdict`: the online server's answers seen (tap mode: by the TC
    /// egress program; xsk mode: on the mirror, by the XDP program).
    pub const ANSWERS_SEEN: u32 = 8;
    /// Those handed to user space: copied into a tap ring (the rest:
    /// `ring_full`, or `answers_unreadable`), or redirected to an AF_XDP
    /// socket (the rest: `redirect_failed`).
    pub const ANSWERS_TAPPED: u32 = 9;
    /// Answers the TC program could not copy: shorter than their headers
    /// say, or the skb would not give its bytes.
    pub const ANSWERS_UNREADABLE: u32 = 10;
    pub const COUNT: u32 = 11;
    pub const NAMES: [&str; COUNT as usize] = [
        "seen",
        "matched",
        "tapped",
        "ring_full",
        "redirected",
        "redirect_failed",
        "too_big",
        "client_skipped",
        "answers_seen",
        "answers_tapped",
        "answers_unreadable",
    ];
}

/// Counters of the intercept program (one slot each in a per-CPU array).
pub mod intercept_counter {
    /// Frames the program ran on.
    pub const SEEN: u32 = 0;
    /// IP/TCP responses (either family) that matched the `-F` filter (all
    /// of them dropped).
    pub const MATCHED: u32 = 1;
    /// Matched responses whose header record went into the ring buffer.
    pub const EXPORTED: u32 = 2;
    /// Matched responses whose record was lost because the ring was full
    /// (still dropped: the assistant is a black hole).
    pub const RING_FULL: u32 = 3;
    pub const COUNT: u32 = 4;
    pub const NAMES: [&str; COUNT as usize] = ["seen", "matched", "exported", "ring_full"];
}

/// Bits of the tcpcopy program's global `CLIENT_FILTER`: which of the
/// client filter maps (LPM tries keyed by the source address) are in use.
pub mod client_filter {
    /// Only sources in `ONLY_CLIENTS` are captured.
    pub const ONLY: u32 = 1;
    /// Sources in `SKIP_CLIENTS` are not captured.
    pub const SKIP: u32 = 2;
    /// Networks each map holds at most.
    pub const MAX_ENTRIES: u32 = 1024;
}

/// Capture modes of the tcpcopy program (global `CAPTURE_MODE`).
pub mod capture_mode {
    /// Count matched segments and pass everything (no copy).
    pub const COUNT_ONLY: u32 = 0;
    /// Copy matched segments into the tap ring buffer, pass everything.
    pub const TAP: u32 = 1;
    /// Redirect matched frames to the AF_XDP socket of their RX queue.
    pub const XSK: u32 = 2;
}

/// Size of one response record as carried on the control channel: the
/// 20-byte IPv4 header followed by the first 44 bytes of the TCP header
/// (spec §3.3). The intercept program writes exactly this into its ring.
pub const RESPONSE_RECORD_LEN: usize = 64;
/// IPv4 header bytes kept in a response record.
pub const RECORD_IP_LEN: usize = 20;
/// TCP header bytes (with options) kept at most in a response record.
pub const RECORD_TCP_MAX: usize = 44;

/// Size of an IPv6 response record (our extension; never sent to a C
/// peer): the 40-byte IPv6 header (extension headers left out: next header
/// TCP, payload length the TCP segment's) followed by the first 44 bytes of
/// the TCP header. In the ring, a record's first byte tells its family.
pub const RESPONSE_RECORD_V6_LEN: usize = 84;

/// Key of intercept's IPv6 filter map: an IPv6 address and a TCP port (network
/// byte order, as on the wire). Port-only clauses stay in the IPv4 map's
/// "any address" keys, which both families match.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortKey6 {
    pub addr: [u8; 16],
    pub port: u16,
    pub _pad: u16,
}

impl PortKey6 {
    pub const fn new(addr: [u8; 16], port_be: u16) -> Self {
        PortKey6 {
            addr,
            port: port_be,
            _pad: 0,
        }
    }
}

/// An IPv6 response record as the intercept program writes it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ResponseRecordV6 {
    pub bytes: [u8; RESPONSE_RECORD_V6_LEN],
}

/// Most payload bytes the intercept program puts after a record (our
/// extension, for tcpcopy's `--verdict`); a power of two.
pub const RECORD_PREFIX_MAX: usize = 256;
/// Under our extension, a ring item is the record, then when the program
/// saw the response (`bpf_ktime_get_ns`, CLOCK_MONOTONIC, native order:
/// intercept tells its tcpcopy how long it held the record), then the
/// payload's first bytes.
pub const RECORD_STAMP_LEN: usize = 8;

/// A response record as the intercept program writes it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ResponseRecord {
    pub bytes: [u8; RESPONSE_RECORD_LEN],
}

/// Largest IP packet a tap record carries; longer segments are counted as
/// `too_big` (GSO super-packets seen by generic XDP can exceed it).
pub const TAP_MAX_PACKET: usize = 65535;

/// Most tap ring buffers (`TAP0`..`TAP15`), so most workers in tap mode.
pub const MAX_TAP_RINGS: u32 = 16;
/// Bytes of data each tap ring buffer is declared with; userspace sizes
/// the rings it reads with `--tap-ring-mb` before load.
pub const TAP_RING_BYTES: u32 = 16 * 1024 * 1024;
/// `--tap-ring-mb`'s default: 64 MiB per worker holds about 40,000 MTU
/// frames, enough for the bursts of 64 KiB values from 10 clients (16 MiB
/// lost a third of them at 1 Gbit/s while the worker was sending).
pub const TAP_RING_DEFAULT_MB: u32 = 64;

/// intercept's record ring buffers (`RECORDS0`..`RECORDS3`): a response
/// goes to the one its client's flow hash picks, so one connection's
/// records stay in order while the CPUs receiving many connections rarely
/// contend for one ring's producer lock.
pub const RECORD_RINGS: u32 = 4;
/// Bytes of each of intercept's record rings.
pub const RECORD_RING_BYTES: u32 = 8 * 1024 * 1024;

/// The flow hash both sides use to choose a worker for a client: client
/// address and port in host order. The eBPF program and userspace share it.
#[inline(always)]
pub fn flow_hash(saddr: u32, sport: u16) -> u32 {
    let mut h = saddr ^ (sport as u32).wrapping_mul(0x9e37_79b1);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h
}

/// An IPv6 address (four 32-bit words, host order) folded to the 32 bits
/// [`flow_hash`] takes: XOR of its words. The eBPF programs and userspace
/// share it.
#[inline(always)]
pub fn fold_ipv6(words: [u32; 4]) -> u32 {
    words[0] ^ words[1] ^ words[2] ^ words[3]
}

/// Header in front of every tap record: the IP packet's length, then the
/// packet bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TapHeader {
    pub len: u32,
    pub ifindex: u32,
}

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::PortKey {}
    unsafe impl aya::Pod for super::ResponseRecord {}
    unsafe impl aya::Pod for super::PortKey6 {}
    unsafe impl aya::Pod for super::TapHeader {}
}
