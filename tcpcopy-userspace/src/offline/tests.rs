//! Capture files of every supported kind, written with pcap-file, read back;
//! bad files refused or cut where they break; the pacer's clock.

use std::{borrow::Cow, path::PathBuf, time::Duration};

use pcap_file::{
    pcap::{PcapHeader, PcapPacket, PcapWriter},
    pcapng::{
        blocks::{
            enhanced_packet::EnhancedPacketBlock,
            interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
        },
        PcapNgWriter,
    },
    DataLink, Endianness, TsResolution,
};

use super::*;
use crate::wire::build::{build, SegmentSpec};

fn ip_packet(sport: u16, payload: &[u8]) -> Vec<u8> {
    segment("10.0.1.10", "10.0.1.1", sport, payload)
}

/// The same segment over IPv6.
fn ipv6_packet(sport: u16, payload: &[u8]) -> Vec<u8> {
    segment("2001:db8:1::10", "2001:db8:1::1", sport, payload)
}

fn segment(src: &str, dst: &str, sport: u16, payload: &[u8]) -> Vec<u8> {
    build(&SegmentSpec {
        src: (src.parse().unwrap(), sport),
        dst: (dst.parse().unwrap(), 80),
        seq: 1000,
        ack: 2000,
        flags: 0x18,
        window: 512,
        options: &[],
        payload,
        ip_id: 1,
        ttl: 64,
        tos: 0,
    })
}

fn frame(link: DataLink, ip: &[u8]) -> Vec<u8> {
    let v6 = ip[0] >> 4 == 6;
    let ethertype: [u8; 2] = if v6 { [0x86, 0xdd] } else { [0x08, 0x00] };
    let mut f = match link {
        DataLink::ETHERNET => {
            let mut h = vec![0u8; 12];
            h.extend_from_slice(&ethertype);
            h
        }
        DataLink::LINUX_SLL => {
            let mut h = vec![0u8; 14];
            h.extend_from_slice(&ethertype);
            h
        }
        DataLink::LINUX_SLL2 => {
            let mut h = ethertype.to_vec();
            h.extend_from_slice(&[0u8; 18]);
            h
        }
        // AF_INET6 of macOS (30), little-endian.
        DataLink::NULL if v6 => vec![30, 0, 0, 0],
        DataLink::NULL => vec![2, 0, 0, 0],
        _ => Vec::new(),
    };
    f.extend_from_slice(ip);
    f
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tcpcopy-offline-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Packets at 0, 1.5 and 3 s; the second one is ARP-like (not IP), the
/// third IPv6.
fn write_pcap(name: &str, link: DataLink, endianness: Endianness, res: TsResolution) -> PathBuf {
    let path = temp(name);
    let header = PcapHeader {
        datalink: link,
        endianness,
        ts_resolution: res,
        ..Default::default()
    };
    let mut w = PcapWriter::with_header(std::fs::File::create(&path).unwrap(), header).unwrap();
    let base = Duration::from_secs(1_700_000_000);
    let p1 = frame(link, &ip_packet(40000, b"GET / HTTP/1.1\r\n\r\n"));
    w.write_packet(&PcapPacket::new(base, p1.len() as u32, &p1))
        .unwrap();
    let junk = vec![0xffu8; 28];
    w.write_packet(&PcapPacket::new(
        base + Duration::from_millis(1500),
        28,
        &junk,
    ))
    .unwrap();
    let p3 = frame(link, &ipv6_packet(40001, b"x"));
    w.write_packet(&PcapPacket::new(
        base + Duration::from_nanos(3_000_000_123),
        p3.len() as u32,
        &p3,
    ))
    .unwrap();
    path
}

/// (timestamp, packet) pairs, skipped records, where reading stopped.
type ReadAll = (Vec<(u64, Vec<u8>)>, u64, Option<(u64, String)>);

fn read_all(path: &std::path::Path) -> ReadAll {
    let mut f = CaptureFile::open(path).unwrap();
    let mut out = Vec::new();
    let mut skipped = 0;
    loop {
        match f.next_record() {
            Next::Packet { ts_ns, ip } => out.push((ts_ns, ip)),
            Next::Skipped => skipped += 1,
            Next::End => return (out, skipped, None),
            Next::Stopped { offset, reason } => return (out, skipped, Some((offset, reason))),
        }
    }
}

#[test]
fn pcap_every_link_type_byte_order_and_resolution() {
    let base = 1_700_000_000u64 * 1_000_000_000;
    for link in [
        DataLink::ETHERNET,
        DataLink::LINUX_SLL,
        DataLink::LINUX_SLL2,
        DataLink::RAW,
        DataLink::NULL,
    ] {
        for endianness in [Endianness::Big, Endianness::Little] {
            for res in [TsResolution::MicroSecond, TsResolution::NanoSecond] {
                let path = write_pcap(
                    &format!("{link:?}-{endianness:?}-{res:?}.pcap"),
                    link,
                    endianness,
                    res,
                );
                let (pkts, skipped, stop) = read_all(&path);
                let what = format!("{link:?} {endianness:?} {res:?}");
                assert_eq!(stop, None, "{what}");
                assert_eq!(pkts.len(), 2, "{what}");
                assert_eq!(skipped, 1, "{what}: the non-IP record is skipped");
                assert_eq!(pkts[1].1, ipv6_packet(40001, b"x"), "{what}: IPv6 read");
                assert_eq!(
                    pkts[0].1,
                    ip_packet(40000, b"GET / HTTP/1.1\r\n\r\n"),
                    "{what}"
                );
                assert_eq!(pkts[0].0, base, "{what}");
                let third = match res {
                    TsResolution::NanoSecond => base + 3_000_000_123,
                    TsResolution::MicroSecond => base + 3_000_000_000,
                };
                assert_eq!(pkts[1].0, third, "{what}");
            }
        }
    }
}

fn write_pcapng(name: &str, tsresol: Option<u8>, units: &[u64]) -> PathBuf {
    let path = temp(name);
    let mut w = PcapNgWriter::new(std::fs::File::create(&path).unwrap()).unwrap();
    w.write_pcapng_block(InterfaceDescriptionBlock {
        linktype: DataLink::ETHERNET,
        snaplen: 0,
        options: tsresol
            .map(|r| vec![InterfaceDescriptionOption::IfTsResol(r)])
            .unwrap_or_default(),
    })
    .unwrap();
    for (i, u) in units.iter().enumerate() {
        let f = frame(DataLink::ETHERNET, &ip_packet(40000 + i as u16, b"abc"));
        w.write_pcapng_block(EnhancedPacketBlock {
            interface_id: 0,
            // pcap-file writes the raw unit count it is given.
            timestamp: Duration::from_nanos(*u),
            original_len: f.len() as u32,
            data: Cow::Owned(f),
            options: vec![],
        })
        .unwrap();
    }
    path
}

#[test]
fn pcapng_timestamps_follow_the_interface_resolution() {
    // Default resolution: microseconds.
    let (p, _, stop) = read_all(&write_pcapng("us.pcapng", None, &[5, 2_000_005]));
    assert_eq!(stop, None);
    assert_eq!(
        p.iter().map(|x| x.0).collect::<Vec<_>>(),
        [5_000, 2_000_005_000]
    );
    let (p, _, _) = read_all(&write_pcapng("ns.pcapng", Some(9), &[7, 1_000_000_007]));
    assert_eq!(
        p.iter().map(|x| x.0).collect::<Vec<_>>(),
        [7, 1_000_000_007]
    );
    // 2^-10 s units.
    let (p, _, _) = read_all(&write_pcapng("bin.pcapng", Some(0x80 | 10), &[1024, 512]));
    assert_eq!(
        p.iter().map(|x| x.0).collect::<Vec<_>>(),
        [1_000_000_000, 500_000_000]
    );
    assert_eq!(p[1].1, ip_packet(40001, b"abc"));
}

#[test]
fn a_truncated_file_gives_what_it_holds_and_where_it_stopped() {
    let full = write_pcapng("cut.pcapng", Some(9), &[1, 2, 3, 4]);
    let bytes = std::fs::read(&full).unwrap();
    let cut = temp("cut-half.pcapng");
    std::fs::write(&cut, &bytes[..bytes.len() - 30]).unwrap();
    let (p, _, stop) = read_all(&cut);
    assert_eq!(p.len(), 3);
    let (offset, reason) = stop.expect("must say it stopped");
    assert!(reason.contains("truncated"), "{reason}");
    // The offset is where the cut record begins: after three whole records.
    let per_record = (bytes.len() - offset as usize) as u64;
    assert!(per_record > 30 && per_record < 200, "offset {offset}");

    let pcap = write_pcap(
        "cut.pcap",
        DataLink::ETHERNET,
        Endianness::Little,
        TsResolution::MicroSecond,
    );
    let bytes = std::fs::read(&pcap).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() - 5]).unwrap();
    let (p, skipped, stop) = read_all(&cut);
    assert_eq!((p.len(), skipped), (1, 1));
    let (offset, _) = stop.unwrap();
    // The cut record: its pcap header, Ethernet, IPv6 and TCP, one byte.
    assert_eq!(offset as usize, bytes.len() - (16 + 14 + 40 + 20 + 1));
}

#[test]
fn snapped_records_are_skipped_and_counted() {
    let path = temp("snapped.pcap");
    let mut w = PcapWriter::new(std::fs::File::create(&path).unwrap()).unwrap();
    let f = frame(DataLink::ETHERNET, &ip_packet(1, b"hello world"));
    w.write_packet(&PcapPacket::new(Duration::ZERO, f.len() as u32 + 100, &f))
        .unwrap();
    w.write_packet(&PcapPacket::new(Duration::ZERO, f.len() as u32, &f))
        .unwrap();
    drop(w);
    let mut r = CaptureFile::open(&path).unwrap();
    assert_eq!(r.next_record(), Next::Skipped);
    assert!(matches!(r.next_record(), Next::Packet { .. }));
    assert_eq!(r.next_record(), Next::End);
    assert_eq!(r.stats.snapped, 1);
    assert_eq!(r.stats.packets, 1);
}

#[test]
fn files_that_cannot_be_replayed_are_refused_up_front() {
    let text = temp("notes.txt");
    std::fs::write(
        &text,
        "GET / HTTP/1.1\r\nthis is not a capture file at all\r\n",
    )
    .unwrap();
    let e = CaptureFile::open(&text).err().unwrap().to_string();
    assert!(e.contains("not a pcap or pcapng"), "{e}");

    let path = temp("hdlc.pcap");
    let header = PcapHeader {
        datalink: DataLink::C_HDLC,
        ..Default::default()
    };
    PcapWriter::with_header(std::fs::File::create(&path).unwrap(), header).unwrap();
    let e = CaptureFile::open(&path).err().unwrap().to_string();
    assert!(
        e.contains("link type") && e.contains("not supported"),
        "{e}"
    );

    let path = temp("usb.pcapng");
    let mut w = PcapNgWriter::new(std::fs::File::create(&path).unwrap()).unwrap();
    w.write_pcapng_block(InterfaceDescriptionBlock {
        linktype: DataLink::USB_LINUX,
        snaplen: 0,
        options: vec![],
    })
    .unwrap();
    drop(w);
    let e = CaptureFile::open(&path).err().unwrap().to_string();
    assert!(e.contains("not supported"), "{e}");

    let missing = temp("missing.pcap");
    let e = format!("{:#}", CaptureFile::open(&missing).err().unwrap());
    assert!(e.contains("--offline") && e.contains("missing.pcap"), "{e}");
}

#[test]
fn recorded_pcapng_reads_back() {
    let path = temp("rec.pcapng");
    let (tap, rec) = record::start(&path, 0).unwrap();
    // Both families, alternating: the raw-IP link type carries either.
    let packet = |i: u16| match i % 2 {
        0 => ip_packet(i, b"payload"),
        _ => ipv6_packet(i, b"payload"),
    };
    for i in 0..100u16 {
        tap.record(&packet(i));
    }
    drop(tap);
    let stats = rec.finish().unwrap();
    assert_eq!(stats.packets, 100);
    let (p, skipped, stop) = read_all(&path);
    assert_eq!((p.len(), skipped, stop), (100, 0, None));
    assert_eq!(p[42].1, packet(42));
    assert_eq!(p[43].1, packet(43), "an IPv6 packet read back");
    // Nanosecond timestamps near now.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    assert!(now - p[0].0 < 60_000_000_000);
}

#[test]
fn recording_rotates_by_size() {
    let path = temp("rot.pcapng");
    let (tap, rec) = record::start(&path, 4096).unwrap();
    let payload = [7u8; 400];
    for i in 0..50u16 {
        tap.record(&ip_packet(i, &payload));
    }
    drop(tap);
    let stats = rec.finish().unwrap();
    assert!(stats.files.len() >= 4, "{:?}", stats.files);
    let total: usize = stats.files.iter().map(|f| read_all(f).0.len()).sum();
    assert_eq!(total, 50);
    for f in &stats.files {
        assert!(std::fs::metadata(f).unwrap().len() <= 4096 + 600);
    }
}

#[test]
fn pacer_waits_for_each_packets_own_time() {
    let s = 1_000_000_000u64;
    let mut p = Pacer::new(Pace {
        accel: 1.0,
        idle_gap_ns: None,
        max_speed: false,
    });
    // Session A at 0..0.1 s, session B's SYN at 10 s: B waits for 10 s
    // (the C tool's look-ahead sent it at 0.1 s).
    assert_eq!(p.due(100 * s), 0);
    assert_eq!(p.due(100 * s + s / 10), s / 10);
    assert_eq!(p.due(110 * s), 10 * s);
    assert_eq!(p.due(110 * s + s / 1000), 10 * s + s / 1000);
    // Time going backwards: due at once (relative to the first packet).
    assert_eq!(p.due(99 * s), 0);

    let mut fast = Pacer::new(Pace {
        accel: 10.0,
        idle_gap_ns: None,
        max_speed: false,
    });
    fast.due(0);
    assert_eq!(fast.due(10 * s), s);

    // -I 1000: the 9.9 s gap is collapsed once, later gaps count normally.
    let mut idle = Pacer::new(Pace {
        accel: 1.0,
        idle_gap_ns: Some(s),
        max_speed: false,
    });
    assert_eq!(idle.due(100 * s), 0);
    assert_eq!(idle.due(100 * s + s / 10), s / 10);
    assert_eq!(idle.due(110 * s), s / 10);
    assert_eq!(idle.due(110 * s + s / 2), s / 10 + s / 2);

    let mut max = Pacer::new(Pace {
        accel: 1.0,
        idle_gap_ns: None,
        max_speed: true,
    });
    assert_eq!(max.due(5 * s), 0);
    assert_eq!(max.due(500 * s), 0);
}

#[test]
fn the_source_releases_packets_on_time_and_counts_passes() {
    let path = write_pcapng("source.pcapng", Some(9), &[0, 1_000_000, 200_000_000]);
    let pace = Pace {
        accel: 1.0,
        idle_gap_ns: None,
        max_speed: false,
    };
    let (mut src, progress) = OfflineSource::open(path, pace, 2).unwrap();
    let mut got = Vec::new();
    let start = std::time::Instant::now();
    while got.len() < 3 {
        src.read_batch(16, &mut |p| got.push((start.elapsed(), p.to_vec())));
        std::thread::sleep(Duration::from_millis(1));
        assert!(start.elapsed() < Duration::from_secs(5));
    }
    assert!(got[2].0 >= Duration::from_millis(200), "{:?}", got[2].0);
    assert!(got[1].0 < Duration::from_millis(150));
    // End of pass 1: waits for the go.
    src.read_batch(16, &mut |_| panic!("nothing before the go"));
    assert!(progress.pass_done.load(Ordering::Acquire));
    assert!(!progress.finished.load(Ordering::Acquire));
    progress.go_pass.store(2, Ordering::Release);
    let mut n = 0;
    let start = std::time::Instant::now();
    while !progress.finished.load(Ordering::Acquire) {
        n += src.read_batch(16, &mut |_| {});
        std::thread::sleep(Duration::from_millis(1));
        assert!(start.elapsed() < Duration::from_secs(5));
    }
    assert_eq!(n, 3);
    assert_eq!(progress.released.load(Ordering::Acquire), 6);
    assert_eq!(progress.pass.load(Ordering::Relaxed), 2);
}
