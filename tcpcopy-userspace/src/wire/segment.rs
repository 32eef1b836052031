//! A captured TCP segment parsed and validated once (smoltcp's "repr"):
//! the IP and TCP fields tcpcopy uses, borrowed options and payload. The
//! engine reads a [`SegmentRepr`] and never an offset. Either family: the
//! addresses are `IpAddr`, TTL and TOS stand for the hop limit and the
//! traffic class.

use super::{Fragmentation, IpPacket, SeqNumber, TcpFlags, TcpOptions, TcpView, WireError};
use std::net::IpAddr;

/// Why a captured packet is not a segment to replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentError {
    /// Not IP, or not TCP.
    NotTcp,
    /// A fragment of a larger datagram (not a whole segment).
    Fragment,
    /// Truncated, or headers that contradict themselves.
    Malformed,
}

/// The parts of a captured client segment the engine uses.
#[derive(Clone, Copy, Debug)]
pub struct SegmentRepr<'a> {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: SeqNumber,
    pub ack: SeqNumber,
    pub flags: TcpFlags,
    pub window: u16,
    /// The TCP options area, as captured.
    pub options: &'a [u8],
    /// Offset of the timestamp option inside `options`, and its value.
    pub ts_offset: Option<usize>,
    pub tsval: Option<u32>,
    pub payload: &'a [u8],
    pub ip_id: u16,
    pub ttl: u8,
    pub tos: u8,
    /// IP (options and extension headers included) and TCP header bytes
    /// together.
    pub header_len: usize,
    /// The IPv4 header was not the plain "don't fragment, offset 0", or
    /// IPv6 carried an atomic fragment header (counted, not refused).
    pub unusual_fragment_field: bool,
}

impl<'a> SegmentRepr<'a> {
    /// Parse an IPv4 or IPv6 packet (link header removed). Link padding
    /// after the stated length is cut off; a stated length of 0 (a TSO/GSO
    /// super-packet) means "what was captured".
    pub fn parse(packet: &'a [u8]) -> Result<SegmentRepr<'a>, SegmentError> {
        let ip = match IpPacket::parse(packet) {
            Ok(ip) => ip,
            Err(WireError::NotIp) => return Err(SegmentError::NotTcp),
            Err(_) => return Err(SegmentError::Malformed),
        };
        if ip.protocol != 6 {
            return Err(SegmentError::NotTcp);
        }
        if ip.fragmentation == Fragmentation::Piece {
            return Err(SegmentError::Fragment);
        }
        if ip.truncated {
            return Err(SegmentError::Malformed); // truncated capture
        }
        let tcp = TcpView::new_checked(ip.payload()).map_err(|_| SegmentError::Malformed)?;
        let opts = TcpOptions::parse(tcp.options_bytes());
        Ok(SegmentRepr {
            src: ip.src,
            dst: ip.dst,
            src_port: tcp.src_port(),
            dst_port: tcp.dst_port(),
            seq: SeqNumber(tcp.seq()),
            ack: SeqNumber(tcp.ack()),
            flags: tcp.flags(),
            window: tcp.window(),
            options: tcp.options_bytes(),
            ts_offset: opts.ts_offset,
            tsval: opts.timestamps.map(|t| t.0),
            payload: tcp.payload(),
            ip_id: ip.ident,
            ttl: ip.ttl,
            tos: ip.tos,
            header_len: ip.header_len + tcp.header_len(),
            unusual_fragment_field: ip.fragmentation == Fragmentation::WholeUnusual,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{SegmentError, SegmentRepr};
    use crate::wire::{
        build::{build, SegmentSpec},
        SeqNumber,
    };
    use std::net::Ipv4Addr;

    fn packet(payload: &[u8]) -> Vec<u8> {
        build(&SegmentSpec {
            src: (Ipv4Addr::new(10, 0, 0, 1).into(), 40000),
            dst: (Ipv4Addr::new(10, 0, 0, 2).into(), 80),
            seq: 7,
            ack: 9,
            flags: 0x18,
            window: 512,
            options: &[1, 1, 8, 10, 0, 0, 0, 5, 0, 0, 0, 6],
            payload,
            ip_id: 3,
            ttl: 64,
            tos: 0,
        })
    }

    #[test]
    fn a_segment_is_read_once_padding_cut() {
        let mut p = packet(b"GET /");
        p.extend_from_slice(&[0; 6]); // Ethernet padding
        let s = SegmentRepr::parse(&p).unwrap();
        assert_eq!((s.src_port, s.dst_port), (40000, 80));
        assert_eq!((s.seq, s.ack), (SeqNumber(7), SeqNumber(9)));
        assert_eq!(s.payload, b"GET /");
        assert_eq!((s.ts_offset, s.tsval), (Some(2), Some(5)));
        assert_eq!(s.header_len, 20 + 32);
        assert!(!s.unusual_fragment_field);
    }

    #[test]
    fn what_is_not_a_whole_tcp_segment_says_why() {
        let p = packet(b"x");
        assert_eq!(
            SegmentRepr::parse(&p[..p.len() - 2]).err(),
            Some(SegmentError::Malformed)
        );
        let mut udp = p.clone();
        udp[9] = 17;
        assert_eq!(SegmentRepr::parse(&udp).err(), Some(SegmentError::NotTcp));
        let mut frag = p.clone();
        frag[6] = 0x20; // more fragments
        assert_eq!(
            SegmentRepr::parse(&frag).err(),
            Some(SegmentError::Fragment)
        );
        let mut no_df = p.clone();
        no_df[6] = 0;
        assert!(SegmentRepr::parse(&no_df).unwrap().unusual_fragment_field);
        assert_eq!(
            SegmentRepr::parse(&[0x60; 40]).err(),
            Some(SegmentError::NotTcp)
        );
    }
}
