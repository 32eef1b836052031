//! Building IPv4/TCP packets (what the session engine sends to the target),
//! always with fresh checksums (captured ones are never trusted).

use super::{internet_checksum, tcp_checksum};
use std::net::Ipv4Addr;

/// Everything that goes into one emitted segment.
pub struct SegmentSpec<'a> {
    pub src: (Ipv4Addr, u16),
    pub dst: (Ipv4Addr, u16),
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    /// TCP options, a multiple of 4 bytes long.
    pub options: &'a [u8],
    pub payload: &'a [u8],
    pub ip_id: u16,
    pub ttl: u8,
    pub tos: u8,
}

/// An IPv4 packet (20-byte header, DF) carrying the segment.
pub fn build(s: &SegmentSpec) -> Vec<u8> {
    let mut p = Vec::new();
    build_into(s, &mut p);
    p
}

/// The same, written into `p` (its old contents replaced, its memory kept).
pub fn build_into(s: &SegmentSpec, p: &mut Vec<u8>) {
    debug_assert_eq!(s.options.len() % 4, 0);
    let tcp_len = 20 + s.options.len();
    let tot = 20 + tcp_len + s.payload.len();
    p.clear();
    p.resize(tot, 0);
    p[0] = 0x45;
    p[1] = s.tos;
    p[2..4].copy_from_slice(&(tot as u16).to_be_bytes());
    p[4..6].copy_from_slice(&s.ip_id.to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = s.ttl;
    p[9] = 6;
    p[12..16].copy_from_slice(&s.src.0.octets());
    p[16..20].copy_from_slice(&s.dst.0.octets());
    let ipc = internet_checksum(&p[..20]);
    p[10..12].copy_from_slice(&ipc.to_be_bytes());
    {
        let t = &mut p[20..];
        t[0..2].copy_from_slice(&s.src.1.to_be_bytes());
        t[2..4].copy_from_slice(&s.dst.1.to_be_bytes());
        t[4..8].copy_from_slice(&s.seq.to_be_bytes());
        t[8..12].copy_from_slice(&s.ack.to_be_bytes());
        t[12] = ((tcp_len / 4) as u8) << 4;
        t[13] = s.flags;
        t[14..16].copy_from_slice(&s.window.to_be_bytes());
        t[20..tcp_len].copy_from_slice(s.options);
        t[tcp_len..].copy_from_slice(s.payload);
    }
    let c = tcp_checksum(s.src.0.octets(), s.dst.0.octets(), &p[20..]);
    p[36..38].copy_from_slice(&c.to_be_bytes());
}

/// Options of a fabricated SYN: a single MSS option (spec §4.10.2).
pub fn syn_options(mss: u16) -> [u8; 4] {
    let m = mss.to_be_bytes();
    [2, 4, m[0], m[1]]
}

/// NOP, NOP, timestamps: the options of fabricated ACKs when the target
/// uses timestamps.
pub fn ts_options(tsval: u32, tsecr: u32) -> [u8; 12] {
    let mut o = [1, 1, 8, 10, 0, 0, 0, 0, 0, 0, 0, 0];
    o[4..8].copy_from_slice(&tsval.to_be_bytes());
    o[8..12].copy_from_slice(&tsecr.to_be_bytes());
    o
}

/// Rewrite the timestamp option found at `ts_offset` in captured options.
pub fn rewrite_ts(options: &mut [u8], ts_offset: usize, tsval: u32, tsecr: u32) {
    if ts_offset + 10 <= options.len() {
        options[ts_offset + 2..ts_offset + 6].copy_from_slice(&tsval.to_be_bytes());
        options[ts_offset + 6..ts_offset + 10].copy_from_slice(&tsecr.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Ipv4View, TcpView};

    #[test]
    fn built_packet_parses_and_checksums_verify() {
        let opts = ts_options(5, 6);
        let spec = SegmentSpec {
            src: (Ipv4Addr::new(10, 9, 9, 5), 40000),
            dst: (Ipv4Addr::new(10, 0, 2, 2), 8080),
            seq: 1,
            ack: 2,
            flags: 0x18,
            window: 65535,
            options: &opts,
            payload: b"GET /",
            ip_id: 7,
            ttl: 64,
            tos: 0,
        };
        let p = build(&spec);
        assert_eq!(internet_checksum(&p[..20]), 0);
        let ip = Ipv4View::new_checked(&p).unwrap();
        assert_eq!(ip.total_len() as usize, p.len());
        let t = TcpView::new_checked(ip.payload()).unwrap();
        assert_eq!(t.payload(), b"GET /");
        assert_eq!(t.options().timestamps, Some((5, 6)));
        // A correct checksum sums to zero over pseudo-header + segment.
        assert_eq!(tcp_checksum(ip.src(), ip.dst(), ip.payload()), 0);
    }
}
