//! An IP packet of either family parsed once into what tcpcopy uses: the
//! addresses, the upper-layer protocol and where it starts, the length the
//! header states, and whether the packet is a fragment.

use super::{ipv6::IPV6_HEADER, Ipv4View, Ipv6View, WireError};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Whether the packet is a whole datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fragmentation {
    /// IPv4 with DF and offset 0, or IPv6 without a fragment header.
    Whole,
    /// Whole, but the IPv4 fragment field is not the plain "DF, offset 0"
    /// or IPv6 carries an atomic fragment header (counted, not refused).
    WholeUnusual,
    /// A piece of a larger datagram.
    Piece,
}

/// Either family's header, parsed.
#[derive(Clone, Copy, Debug)]
pub struct IpPacket<'a> {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Upper-layer protocol (past any IPv6 extension headers).
    pub protocol: u8,
    /// IP header bytes, options and extension headers included.
    pub header_len: usize,
    /// The packet cut to the length its header states (link padding
    /// removed); all that was captured when the header states none (a
    /// TSO/GSO super-packet) or more than was captured.
    pub bytes: &'a [u8],
    /// The header states more bytes than were captured (or fewer than
    /// its own header).
    pub truncated: bool,
    /// TTL or hop limit.
    pub ttl: u8,
    /// TOS or traffic class.
    pub tos: u8,
    /// IPv4 identification (IPv6: 0).
    pub ident: u16,
    pub fragmentation: Fragmentation,
}

impl<'a> IpPacket<'a> {
    /// Parse an IPv4 or IPv6 packet (link header removed).
    pub fn parse(packet: &'a [u8]) -> Result<IpPacket<'a>, WireError> {
        match packet.first().map(|b| b >> 4) {
            Some(4) => Self::parse_v4(packet),
            Some(6) => Self::parse_v6(packet),
            Some(_) => Err(WireError::NotIp),
            None => Err(WireError::Truncated),
        }
    }

    fn parse_v4(packet: &'a [u8]) -> Result<IpPacket<'a>, WireError> {
        let ip = Ipv4View::new_checked(packet)?;
        let frag = ip.frag_field();
        let (bytes, truncated) = cut(packet, ip.total_len() as usize, ip.header_len());
        Ok(IpPacket {
            src: Ipv4Addr::from(ip.src()).into(),
            dst: Ipv4Addr::from(ip.dst()).into(),
            protocol: ip.protocol(),
            header_len: ip.header_len(),
            bytes,
            truncated,
            ttl: ip.ttl(),
            tos: ip.tos(),
            ident: ip.ident(),
            fragmentation: if frag & 0x3fff != 0 {
                Fragmentation::Piece
            } else if frag != 0x4000 {
                Fragmentation::WholeUnusual
            } else {
                Fragmentation::Whole
            },
        })
    }

    fn parse_v6(packet: &'a [u8]) -> Result<IpPacket<'a>, WireError> {
        let ip = Ipv6View::new_checked(packet)?;
        let stated = match ip.payload_len() {
            0 => 0,
            n => IPV6_HEADER + n as usize,
        };
        let (bytes, truncated) = cut(packet, stated, IPV6_HEADER);
        let upper = Ipv6View::new_checked(bytes)?.upper_layer()?;
        Ok(IpPacket {
            src: Ipv6Addr::from(ip.src()).into(),
            dst: Ipv6Addr::from(ip.dst()).into(),
            protocol: upper.protocol,
            header_len: upper.offset,
            bytes,
            truncated,
            ttl: ip.hop_limit(),
            tos: ip.traffic_class(),
            ident: 0,
            fragmentation: match upper.fragment {
                None => Fragmentation::Whole,
                Some((0, _)) => Fragmentation::WholeUnusual,
                Some(_) => Fragmentation::Piece,
            },
        })
    }

    /// Everything after the IP header(s).
    pub fn payload(&self) -> &'a [u8] {
        &self.bytes[self.header_len..]
    }
}

/// The packet cut to the `stated` length (0: not stated), and whether the
/// length stated is impossible.
fn cut(packet: &[u8], stated: usize, header_len: usize) -> (&[u8], bool) {
    if stated >= header_len && stated <= packet.len() {
        (&packet[..stated], false)
    } else {
        (packet, stated != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v6(next: u8, ext: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x6a; // version 6, traffic class 0xa_
        p[1] = 0xb0;
        let len = (ext.len() + payload.len()) as u16;
        p[4..6].copy_from_slice(&len.to_be_bytes());
        p[6] = next;
        p[7] = 63;
        p[8..24].copy_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        p[24..40].copy_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(ext);
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn ipv6_extension_headers_are_walked_to_tcp() {
        // Hop-by-hop (8 bytes) → destination options (16 bytes) → TCP.
        let mut ext = vec![60, 0, 1, 4, 0, 0, 0, 0];
        ext.extend_from_slice(&[6, 1, 1, 4, 0, 0, 0, 0, 1, 6, 0, 0, 0, 0, 0, 0]);
        let mut p = v6(0, &ext, &[0xee; 20]);
        p.extend_from_slice(&[0; 6]); // link padding
        let ip = IpPacket::parse(&p).unwrap();
        assert_eq!(ip.protocol, 6);
        assert_eq!(ip.header_len, 64);
        assert_eq!(ip.payload(), &[0xee; 20]);
        assert_eq!((ip.ttl, ip.tos), (63, 0xab));
        assert_eq!(ip.src, "2001:db8::1".parse::<IpAddr>().unwrap());
        assert_eq!(ip.fragmentation, Fragmentation::Whole);
        assert!(!ip.truncated);
    }

    #[test]
    fn ipv6_fragments_and_truncation_are_told() {
        let piece = v6(44, &[6, 0, 0, 8 | 1, 0, 0, 0, 9], &[0; 20]);
        assert_eq!(
            IpPacket::parse(&piece).unwrap().fragmentation,
            Fragmentation::Piece
        );
        let atomic = v6(44, &[6, 0, 0, 0, 0, 0, 0, 9], &[0; 20]);
        assert_eq!(
            IpPacket::parse(&atomic).unwrap().fragmentation,
            Fragmentation::WholeUnusual
        );
        let p = v6(6, &[], &[0; 20]);
        assert!(IpPacket::parse(&p[..50]).unwrap().truncated);
        // An extension header running past the end.
        let cut = v6(0, &[6, 4, 0, 0, 0, 0, 0, 0], &[]);
        assert_eq!(IpPacket::parse(&cut).err(), Some(WireError::Truncated));
        // A loop of hop-by-hop headers.
        let lots = v6(0, &[0; 80], &[]);
        assert_eq!(IpPacket::parse(&lots).err(), Some(WireError::BadIpHeader));
        assert_eq!(IpPacket::parse(&[0x50; 40]).err(), Some(WireError::NotIp));
    }
}
