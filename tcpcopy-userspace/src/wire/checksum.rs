//! RFC 1071 internet checksum and the TCP pseudo-header checksum (IPv4 and
//! IPv6).

use std::net::IpAddr;

/// One's-complement sum of `data` folded to 16 bits (not inverted), starting
/// from `initial`. The words are added 8 bytes at a time in the machine's
/// byte order, with end-around carries, and the folded sum is turned to
/// network order once at the end (RFC 1071 §2: the sum does not depend
/// on byte order up to that swap).
fn sum(data: &[u8], initial: u32) -> u32 {
    let add = |acc: u64, w: u64| {
        let (s, carry) = acc.overflowing_add(w);
        s + carry as u64 // cannot overflow: s ≤ 2^64 − 2 when there is a carry
    };
    // `initial` is at most 17 bits in network order: its two 16-bit
    // halves, each turned to the machine's order.
    let mut acc =
        ((initial & 0xffff) as u16).to_be() as u64 + ((initial >> 16) as u16).to_be() as u64;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        acc = add(acc, u64::from_ne_bytes(c.try_into().unwrap()));
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        // Zero-padded at the end: the rest starts at an even offset, so
        // its bytes keep their places in their 16-bit words.
        let mut last = [0u8; 8];
        last[..rest.len()].copy_from_slice(rest);
        acc = add(acc, u64::from_ne_bytes(last));
    }
    let mut folded = (acc >> 32) + (acc & 0xffff_ffff);
    while folded >> 16 != 0 {
        folded = (folded & 0xffff) + (folded >> 16);
    }
    u16::from_be(folded as u16) as u32
}

/// Internet checksum of `data` (ready to store, already inverted).
pub fn internet_checksum(data: &[u8]) -> u16 {
    !(sum(data, 0) as u16)
}

/// TCP checksum over the pseudo-header of either family and `segment`
/// (TCP header with its checksum field zeroed, plus payload).
pub fn tcp_checksum(src: IpAddr, dst: IpAddr, segment: &[u8]) -> u16 {
    let s = tcp_pseudo_header_sum(src, dst, segment.len() as u32);
    !(sum(segment, s as u32) as u16)
}

/// The TCP pseudo-header's sum (addresses, protocol, `tcp_len`) folded to
/// 16 bits and not inverted: what the checksum field holds when the
/// kernel or the NIC completes the checksum (a partial checksum, as for
/// GSO packets). Both addresses are of one family.
pub fn tcp_pseudo_header_sum(src: IpAddr, dst: IpAddr, tcp_len: u32) -> u16 {
    let mut pseudo = [0u8; 40];
    let n = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            pseudo[..4].copy_from_slice(&s.octets());
            pseudo[4..8].copy_from_slice(&d.octets());
            pseudo[9] = 6;
            pseudo[10..12].copy_from_slice(&(tcp_len as u16).to_be_bytes());
            12
        }
        _ => {
            pseudo[..16].copy_from_slice(&ipv6_octets(src));
            pseudo[16..32].copy_from_slice(&ipv6_octets(dst));
            pseudo[32..36].copy_from_slice(&tcp_len.to_be_bytes());
            pseudo[39] = 6;
            40
        }
    };
    sum(&pseudo[..n], 0) as u16
}

/// An address as IPv6 bytes (IPv4-mapped when it is IPv4).
pub(super) fn ipv6_octets(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // Example from RFC 1071 section 3: sum 0xddf2, checksum 0x220d.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(internet_checksum(&data), !0xddf2u16);
    }

    /// RFC 1071 as written: 16-bit big-endian words, one at a time.
    fn reference_sum(data: &[u8], initial: u32) -> u32 {
        let mut acc = initial as u64;
        for w in data.chunks(2) {
            acc += u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]) as u64;
        }
        while acc >> 16 != 0 {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc as u32
    }

    #[test]
    fn the_word_at_a_time_sum_is_rfc_1071s() {
        // Every length up to 3 chunks and then some, with sums that carry
        // (0xff bytes) and starting values of 17 bits.
        let mut x = 0x1234_5678u32;
        let mut data = Vec::new();
        for len in 0..200 {
            data.clear();
            for _ in 0..len {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                data.push(if len % 3 == 0 { 0xff } else { (x >> 16) as u8 });
            }
            for initial in [0, 1, 0xffff, 0x1_fffe, x & 0x1_ffff] {
                assert_eq!(
                    sum(&data, initial),
                    reference_sum(&data, initial),
                    "len {len} initial {initial:#x}"
                );
            }
        }
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(internet_checksum(&[0xab]), internet_checksum(&[0xab, 0x00]));
    }

    #[test]
    fn known_ipv4_header() {
        // A captured header whose checksum is 0xb861.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(internet_checksum(&h), 0xb861);
        h[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(internet_checksum(&h), 0);
    }
}
