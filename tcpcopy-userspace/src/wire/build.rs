//! Building IPv4/TCP and IPv6/TCP packets (what the session engine sends to
//! the target), always with fresh checksums (captured ones are never
//! trusted).

use super::{checksum::ipv6_octets, internet_checksum, tcp_checksum};
use std::net::IpAddr;

/// Everything that goes into one emitted segment.
pub struct SegmentSpec<'a> {
    /// Both addresses are of one family, which the packet takes.
    pub src: (IpAddr, u16),
    pub dst: (IpAddr, u16),
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    /// TCP options, a multiple of 4 bytes long.
    pub options: &'a [u8],
    pub payload: &'a [u8],
    /// IPv4 identification (IPv6 has none).
    pub ip_id: u16,
    /// TTL or hop limit.
    pub ttl: u8,
    /// TOS or traffic class.
    pub tos: u8,
}

/// An IPv4 packet (20-byte header, DF) or an IPv6 packet (40-byte header,
/// no extension headers, flow label 0) carrying the segment.
pub fn build(s: &SegmentSpec) -> Vec<u8> {
    let mut p = Vec::new();
    build_into(s, &mut p);
    p
}

/// The same, written into `p` (its old contents replaced, its memory kept).
pub fn build_into(s: &SegmentSpec, p: &mut Vec<u8>) {
    debug_assert_eq!(s.options.len() % 4, 0);
    debug_assert_eq!(s.src.0.is_ipv4(), s.dst.0.is_ipv4());
    let tcp_len = 20 + s.options.len();
    let ip_len = ip_header_len(s.dst.0);
    let tot = ip_len + tcp_len + s.payload.len();
    // The headers' fixed part zeroed and written in place; options and
    // payload appended (no zeroing of what is then copied over).
    p.clear();
    p.reserve(tot);
    p.resize(ip_len + 20, 0);
    match (s.src.0, s.dst.0) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            p[0] = 0x45;
            p[1] = s.tos;
            p[2..4].copy_from_slice(&(tot as u16).to_be_bytes());
            p[4..6].copy_from_slice(&s.ip_id.to_be_bytes());
            p[6] = 0x40; // DF
            p[8] = s.ttl;
            p[9] = 6;
            p[12..16].copy_from_slice(&src.octets());
            p[16..20].copy_from_slice(&dst.octets());
            let ipc = internet_checksum(&p[..20]);
            p[10..12].copy_from_slice(&ipc.to_be_bytes());
        }
        (src, dst) => {
            p[0] = 0x60 | (s.tos >> 4);
            p[1] = s.tos << 4;
            p[4..6].copy_from_slice(&((tot - ip_len) as u16).to_be_bytes());
            p[6] = 6;
            p[7] = s.ttl;
            p[8..24].copy_from_slice(&ipv6_octets(src));
            p[24..40].copy_from_slice(&ipv6_octets(dst));
        }
    }
    {
        let t = &mut p[ip_len..];
        t[0..2].copy_from_slice(&s.src.1.to_be_bytes());
        t[2..4].copy_from_slice(&s.dst.1.to_be_bytes());
        t[4..8].copy_from_slice(&s.seq.to_be_bytes());
        t[8..12].copy_from_slice(&s.ack.to_be_bytes());
        t[12] = ((tcp_len / 4) as u8) << 4;
        t[13] = s.flags;
        t[14..16].copy_from_slice(&s.window.to_be_bytes());
    }
    p.extend_from_slice(s.options);
    p.extend_from_slice(s.payload);
    let c = tcp_checksum(s.src.0, s.dst.0, &p[ip_len..]);
    p[ip_len + 16..ip_len + 18].copy_from_slice(&c.to_be_bytes());
}

/// Bytes of the IP header [`build`] writes for an address of this family.
pub fn ip_header_len(ip: IpAddr) -> usize {
    if ip.is_ipv4() {
        20
    } else {
        40
    }
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
    use crate::wire::{IpPacket, Ipv4View, TcpView};
    use std::net::Ipv4Addr;

    #[test]
    fn built_packet_parses_and_checksums_verify() {
        let opts = ts_options(5, 6);
        let spec = SegmentSpec {
            src: (Ipv4Addr::new(10, 9, 9, 5).into(), 40000),
            dst: (Ipv4Addr::new(10, 0, 2, 2).into(), 8080),
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
        assert_eq!(
            tcp_checksum(
                Ipv4Addr::from(ip.src()).into(),
                Ipv4Addr::from(ip.dst()).into(),
                ip.payload()
            ),
            0
        );
    }

    #[test]
    fn built_ipv6_packet_parses_and_checksum_verifies() {
        let opts = ts_options(5, 6);
        let src: IpAddr = "2001:db8:ff::5".parse().unwrap();
        let dst: IpAddr = "2001:db8:2::2".parse().unwrap();
        let p = build(&SegmentSpec {
            src: (src, 40000),
            dst: (dst, 8080),
            seq: 1,
            ack: 2,
            flags: 0x18,
            window: 65535,
            options: &opts,
            payload: b"GET /",
            ip_id: 7,
            ttl: 61,
            tos: 0x28,
        });
        assert_eq!(p.len(), 40 + 32 + 5);
        let ip = IpPacket::parse(&p).unwrap();
        assert_eq!((ip.src, ip.dst, ip.ttl, ip.tos), (src, dst, 61, 0x28));
        assert_eq!(ip.bytes.len(), p.len());
        let t = TcpView::new_checked(ip.payload()).unwrap();
        assert_eq!(t.payload(), b"GET /");
        assert_eq!(tcp_checksum(src, dst, ip.payload()), 0);
    }
}
