use super::*;
use crate::wire::{build::build, build::SegmentSpec, tcp_checksum};
use std::net::{IpAddr, Ipv4Addr};

const CLIENT: (IpAddr, u16) = (IpAddr::V4(Ipv4Addr::new(10, 0, 1, 10)), 40000);
const TARGET: (IpAddr, u16) = (IpAddr::V4(Ipv4Addr::new(10, 0, 2, 2)), 8080);

/// A segment of the test flow: `len` bytes of payload at `seq`.
fn seg(seq: u32, len: usize, flags: u8, id: u16) -> Vec<u8> {
    seg_with(CLIENT, seq, len, flags, id, &[])
}

fn seg_with(
    src: (IpAddr, u16),
    seq: u32,
    len: usize,
    flags: u8,
    id: u16,
    options: &[u8],
) -> Vec<u8> {
    seg_to(src, TARGET, seq, len, flags, id, options)
}

fn seg_to(
    src: (IpAddr, u16),
    dst: (IpAddr, u16),
    seq: u32,
    len: usize,
    flags: u8,
    id: u16,
    options: &[u8],
) -> Vec<u8> {
    let payload: Vec<u8> = (0..len).map(|i| (seq as usize + i) as u8).collect();
    build(&SegmentSpec {
        src,
        dst,
        seq,
        ack: 7777,
        flags,
        window: 512,
        options,
        payload: &payload,
        ip_id: id,
        ttl: 64,
        tos: 0,
    })
}

fn runs(packets: &[Vec<u8>]) -> Vec<Run> {
    let mut out = Vec::new();
    plan_runs(packets.iter().map(|p| &p[..]), &mut out);
    out
}

const ACK: u8 = TcpFlags::ACK;
const PSH_ACK: u8 = TcpFlags::ACK | TcpFlags::PSH;

#[test]
fn a_streams_consecutive_full_segments_leave_as_one_run() {
    let packets = vec![
        seg(1000, 1448, ACK, 1),
        seg(2448, 1448, ACK, 2),
        seg(3896, 1448, ACK, 3),
        seg(5344, 500, PSH_ACK, 4),
        // A pure ACK, then another flow: each alone.
        seg(5844, 0, ACK, 5),
        seg_with((CLIENT.0, 40001), 1, 1448, ACK, 6, &[]),
    ];
    assert_eq!(
        runs(&packets),
        vec![
            Run { first: 0, count: 4 },
            Run { first: 4, count: 1 },
            Run { first: 5, count: 1 }
        ]
    );
}

#[test]
fn a_run_ends_at_a_gap_a_push_a_short_segment_or_other_options() {
    let ts = |v: u32| crate::wire::build::ts_options(v, 9);
    let packets = vec![
        seg(0, 100, ACK, 0),
        seg(200, 100, ACK, 0), // a gap
        seg(300, 100, PSH_ACK, 0),
        seg(400, 100, ACK, 0), // after a push
        seg(500, 60, ACK, 0),  // shorter: joins as the last
        seg(560, 60, ACK, 0),  // after a short one
        seg_with(CLIENT, 620, 60, ACK, 0, &ts(1)),
        seg_with(CLIENT, 680, 60, ACK, 0, &ts(2)), // another time stamp
        seg_with(CLIENT, 740, 60, ACK, 0, &ts(2)),
        seg(800, 100, TcpFlags::ACK | TcpFlags::FIN, 0), // a FIN is never joined
    ];
    let counts: Vec<usize> = runs(&packets).iter().map(|r| r.count).collect();
    assert_eq!(counts, vec![1, 2, 2, 1, 1, 2, 1]);
}

#[test]
fn a_run_holds_at_most_64_segments_and_64_kib() {
    let small: Vec<Vec<u8>> = (0..70).map(|i| seg(i * 100, 100, ACK, 0)).collect();
    let counts: Vec<usize> = runs(&small).iter().map(|r| r.count).collect();
    assert_eq!(counts, vec![64, 6]);
    let full: Vec<Vec<u8>> = (0..50).map(|i| seg(i * 1448, 1448, ACK, 0)).collect();
    let counts: Vec<usize> = runs(&full).iter().map(|r| r.count).collect();
    // 40 bytes of headers + 45 × 1448 = 65,200; one more would pass 65,535.
    assert_eq!(counts, vec![45, 5]);
}

/// Cut a GSO frame's IP packet as the kernel does (tcp_gso_segment):
/// each piece gets the next sequence number (and, over IPv4, IP id), PSH
/// only on the last, full checksums.
fn cut(packet: &[u8], mss: usize) -> Vec<Vec<u8>> {
    let v6 = packet[0] >> 4 == 6;
    let ip = if v6 { 40 } else { 20 };
    let header = ip + ((packet[ip + 12] >> 4) as usize) * 4;
    let (src, dst) = (ip_source(packet).unwrap(), ip_destination(packet).unwrap());
    let payload = &packet[header..];
    let s = &packet[ip + 4..ip + 8];
    let seq = u32::from_be_bytes([s[0], s[1], s[2], s[3]]);
    let id = u16::from_be_bytes([packet[4], packet[5]]);
    let chunks: Vec<&[u8]> = payload.chunks(mss).collect();
    let n = chunks.len();
    chunks
        .into_iter()
        .enumerate()
        .map(|(k, chunk)| {
            let mut p = packet[..header].to_vec();
            p.extend_from_slice(chunk);
            if v6 {
                let len = (p.len() - 40) as u16;
                p[4..6].copy_from_slice(&len.to_be_bytes());
            } else {
                let tot = p.len() as u16;
                p[2..4].copy_from_slice(&tot.to_be_bytes());
                p[4..6].copy_from_slice(&id.wrapping_add(k as u16).to_be_bytes());
                p[10..12].fill(0);
                let ipc = internet_checksum(&p[..20]);
                p[10..12].copy_from_slice(&ipc.to_be_bytes());
            }
            p[ip + 4..ip + 8].copy_from_slice(&seq.wrapping_add((k * mss) as u32).to_be_bytes());
            if k + 1 < n {
                p[ip + 13] &= !TcpFlags::PSH;
            }
            p[ip + 16..ip + 18].fill(0);
            let c = tcp_checksum(src, dst, &p[ip..]);
            p[ip + 16..ip + 18].copy_from_slice(&c.to_be_bytes());
            p
        })
        .collect()
}

#[test]
fn a_gso_frame_cut_by_the_kernel_gives_back_the_segments() {
    let v6_client: IpAddr = "fd00:1::10".parse().unwrap();
    let v6_target: IpAddr = "fd00:2::2".parse().unwrap();
    for ((client, target), ip, gso_type, eth_type) in [
        (
            (CLIENT.0, TARGET.0),
            20,
            VIRTIO_NET_HDR_GSO_TCPV4,
            [0x08, 0x00],
        ),
        (
            (v6_client, v6_target),
            40,
            VIRTIO_NET_HDR_GSO_TCPV6,
            [0x86, 0xdd],
        ),
    ] {
        let ts = crate::wire::build::ts_options(123, 456);
        // Over IPv6 the v6 ids stay 0 (there is none): every segment alike.
        let originals: Vec<Vec<u8>> = (0..4u32)
            .map(|k| {
                let (len, flags) = if k == 3 { (700, PSH_ACK) } else { (1436, ACK) };
                let id = if ip == 20 { 40 + k as u16 } else { 0 };
                seg_to(
                    (client, 40000),
                    (target, 8080),
                    5000 + k * 1436,
                    len,
                    flags,
                    id,
                    &ts,
                )
            })
            .collect();
        assert_eq!(runs(&originals), vec![Run { first: 0, count: 4 }]);
        let segments: Vec<Segment> = originals
            .iter()
            .map(|p| Segment::parse(p).unwrap())
            .collect();
        let payload = segments.iter().map(|s| s.payload().len()).sum();
        let mut head = Head::new([2; 6], [4; 6], ethertype(target));
        head.gso(&originals[0], &originals[3], payload);

        let v = &head.bytes[..VNET_HDR];
        assert_eq!(v[0], VIRTIO_NET_HDR_F_NEEDS_CSUM);
        assert_eq!(v[1], gso_type);
        let le = |i: usize| u16::from_le_bytes([v[i], v[i + 1]]);
        assert_eq!(
            le(2) as usize,
            ETH_HDR + ip + 32,
            "hdr_len: Ethernet, IP, TCP with options"
        );
        assert_eq!(le(4), 1436, "gso_size: the first segment's payload");
        assert_eq!(le(6) as usize, ETH_HDR + ip, "csum_start: the TCP header");
        assert_eq!(le(8), 16, "csum_offset: TCP's checksum field");
        let eth = &head.bytes[VNET_HDR..VNET_HDR + ETH_HDR];
        let mut want = vec![2, 2, 2, 2, 2, 2, 4, 4, 4, 4, 4, 4];
        want.extend_from_slice(&eth_type);
        assert_eq!(eth, want);

        // The frame's IP packet: the head's headers and the payloads.
        let mut packet = head.bytes[VNET_HDR + ETH_HDR..head.len].to_vec();
        for s in &segments {
            packet.extend_from_slice(s.payload());
        }
        let parsed = crate::wire::IpPacket::parse(&packet).unwrap();
        assert_eq!(parsed.bytes.len(), packet.len(), "the stated length");
        assert!(!parsed.truncated);
        if ip == 20 {
            assert_eq!(
                internet_checksum(&packet[..20]),
                0,
                "a valid IP header checksum"
            );
        }
        let partial = u16::from_be_bytes([packet[ip + 16], packet[ip + 17]]);
        assert_eq!(
            partial,
            tcp_pseudo_header_sum(client, target, (packet.len() - ip) as u32)
        );
        assert_eq!(cut(&packet, 1436), originals);
    }
}
