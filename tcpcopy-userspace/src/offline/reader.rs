//! Reading a capture file as a stream of timestamped IP packets (IPv4 and
//! IPv6): pcap
//! (either byte order, micro- or nanosecond timestamps) and pcapng, link
//! types Ethernet (with one VLAN tag), Linux cooked (SLL and SLL2), raw IP
//! and BSD loopback. Parsing is pcap-file's; this module only streams the
//! file through a buffer, converts timestamps and strips link headers.
//!
//! Bad input never aborts a replay half-way: a record cut short by the end
//! of the file or a corrupt record ends the stream with
//! [`Next::Stopped`], which names the byte offset; records snapped short by
//! the capture's snaplen and frames that are not IP are skipped and
//! counted. A file that is not a capture, or whose first link type cannot
//! carry IP, is refused by [`CaptureFile::open`] before anything is sent.

use std::{
    fs::File,
    io::Read,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context, Result};
use pcap_file::{
    pcap::PcapParser,
    pcapng::{blocks::interface_description::InterfaceDescriptionOption, Block, PcapNgParser},
    DataLink, PcapError,
};

const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];
const CHUNK: usize = 1 << 20;

/// How a link layer carries the IP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    Ethernet,
    LinuxSll,
    LinuxSll2,
    RawIp,
    Loopback,
}

impl Link {
    pub fn of(dl: DataLink) -> Option<Link> {
        Some(match dl {
            DataLink::ETHERNET => Link::Ethernet,
            DataLink::LINUX_SLL => Link::LinuxSll,
            DataLink::LINUX_SLL2 => Link::LinuxSll2,
            DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => Link::RawIp,
            DataLink::NULL | DataLink::LOOP => Link::Loopback,
            DataLink::Unknown(12) | DataLink::Unknown(14) => Link::RawIp,
            _ => return None,
        })
    }

    /// The IP packet (either family) inside a frame of this link type.
    pub fn ip(self, frame: &[u8]) -> Option<&[u8]> {
        const IP: [u8; 2] = [0x08, 0x00];
        const IPV6: [u8; 2] = [0x86, 0xdd];
        let is_ip = |t: Option<&[u8]>| t == Some(&IP) || t == Some(&IPV6);
        let (proto_ok, ip) = match self {
            Link::Ethernet => return crate::wire::ip_in_ethernet(frame).ok(),
            Link::LinuxSll => (is_ip(frame.get(14..16)), frame.get(16..)?),
            Link::LinuxSll2 => (is_ip(frame.get(0..2)), frame.get(20..)?),
            Link::RawIp => (true, frame),
            // The address family in host order of the capturing machine:
            // AF_INET is 2 everywhere, AF_INET6 24, 28 or 30 (BSDs, macOS).
            Link::Loopback => {
                let fam = frame.get(0..4)?;
                let v = if fam[0] != 0 { fam[0] } else { fam[3] };
                (matches!(v, 2 | 24 | 28 | 30), frame.get(4..)?)
            }
        };
        if !proto_ok || !matches!(ip.first()? >> 4, 4 | 6) {
            return None;
        }
        crate::wire::trim_to_ip_len(ip).ok()
    }
}

/// What the next read gives.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// An IP packet and its capture time in nanoseconds.
    Packet { ts_ns: u64, ip: Vec<u8> },
    /// A record that is not an IP packet or was snapped short (counted).
    Skipped,
    /// The end of the file.
    End,
    /// The file could not be read further: what remains is cut or corrupt.
    Stopped { offset: u64, reason: String },
}

/// Counters of a file read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadStats {
    pub packets: u64,
    /// Records shorter than the packet on the wire (snaplen).
    pub snapped: u64,
    /// Records that hold no IP packet (other protocols, other links).
    pub not_ip: u64,
}

impl ReadStats {
    pub fn add(&mut self, o: &ReadStats) {
        self.packets += o.packets;
        self.snapped += o.snapped;
        self.not_ip += o.not_ip;
    }
}

/// One record of a capture file, read.
enum Record {
    /// An IP packet, at `ts_ns` on the file's clock.
    Packet { ts_ns: u64, ip: Vec<u8> },
    /// Cut short by the capture's snap length.
    Snapped,
    /// A link type or frame without an IP packet.
    NotIp,
    /// Not a packet (pcapng section headers, interfaces, statistics, ...).
    Other,
}

impl Record {
    fn of(data: &[u8], orig_len: u32, link: Option<Link>, ts_ns: u64) -> Record {
        if (data.len() as u32) < orig_len {
            return Record::Snapped;
        }
        match link.and_then(|l| l.ip(data)) {
            Some(ip) => Record::Packet {
                ts_ns,
                ip: ip.to_vec(),
            },
            None => Record::NotIp,
        }
    }
}

/// The next pcap record in `slice`, and the bytes it took.
fn parse_pcap(
    parser: &mut PcapParser,
    link: Link,
    slice: &[u8],
) -> Result<(usize, Record), PcapError> {
    let (rest, p) = parser.next_packet(slice)?;
    let ts = p.timestamp.as_nanos() as u64;
    Ok((
        slice.len() - rest.len(),
        Record::of(&p.data, p.orig_len, Some(link), ts),
    ))
}

/// The next pcapng block in `slice`, and the bytes it took; `last_ts` is
/// the time of the last enhanced packet (simple packets have none).
fn parse_pcapng(
    parser: &mut PcapNgParser,
    last_ts: &mut u64,
    slice: &[u8],
) -> Result<(usize, Record), PcapError> {
    let (rest, block) = parser.next_block(slice)?;
    let n = slice.len() - rest.len();
    let record = match block {
        Block::EnhancedPacket(p) => {
            let iface = parser.interfaces().get(p.interface_id as usize);
            let link = iface.and_then(|i| Link::of(i.linktype));
            let ts = to_ns(
                p.timestamp.as_nanos() as u64,
                iface.map(tsresol).unwrap_or(6),
            );
            *last_ts = ts;
            Record::of(&p.data, p.original_len, link, ts)
        }
        Block::SimplePacket(p) => {
            let link = parser
                .interfaces()
                .first()
                .and_then(|i| Link::of(i.linktype));
            // A simple packet carries no original length: never snapped.
            Record::of(&p.data, 0, link, *last_ts)
        }
        _ => Record::Other,
    };
    Ok((n, record))
}

enum Format {
    Pcap { parser: PcapParser, link: Link },
    PcapNg { parser: PcapNgParser, last_ts: u64 },
}

pub struct CaptureFile {
    path: PathBuf,
    file: Box<dyn Read + Send>,
    size: u64,
    buf: Vec<u8>,
    /// Bytes of `buf` already parsed.
    pos: usize,
    /// File offset of `buf[0]`.
    base: u64,
    eof: bool,
    format: Format,
    pub stats: ReadStats,
}

impl CaptureFile {
    /// Open `path` and check that it is a capture this reader can replay.
    pub fn open(path: &Path) -> Result<CaptureFile> {
        let file = File::open(path).with_context(|| format!("--offline {}", path.display()))?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        CaptureFile::from_reader(path, size, Box::new(file))
    }

    /// The same from any reader (`name` for messages, `size` for progress).
    pub fn from_reader(
        name: impl AsRef<Path>,
        size: u64,
        mut file: Box<dyn Read + Send>,
    ) -> Result<CaptureFile> {
        let path = name.as_ref();
        let mut buf = Vec::with_capacity(CHUNK);
        let eof = fill(&mut file, &mut buf, CHUNK)?;
        let name = path.display();
        let (rest, format) = if buf.starts_with(&PCAPNG_MAGIC) {
            let (rest, parser) = PcapNgParser::new(&buf)
                .map_err(|e| anyhow!("--offline {name}: not a valid pcapng file ({e})"))?;
            (rest.len(), Format::PcapNg { parser, last_ts: 0 })
        } else {
            let (rest, parser) = PcapParser::new(&buf)
                .map_err(|_| anyhow!("--offline {name}: not a pcap or pcapng capture file"))?;
            let dl = parser.header().datalink;
            let link = Link::of(dl).ok_or_else(|| {
                anyhow!("--offline {name}: link type {dl:?} is not supported (Ethernet, Linux cooked SLL/SLL2, raw IP and loopback are)")
            })?;
            (rest.len(), Format::Pcap { parser, link })
        };
        let pos = buf.len() - rest;
        let mut f = CaptureFile {
            path: path.to_path_buf(),
            file,
            size,
            buf,
            pos,
            base: 0,
            eof,
            format,
            stats: ReadStats::default(),
        };
        f.check_first_link()?;
        Ok(f)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes parsed so far.
    pub fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    /// pcapng: the first interface must have a usable link type.
    fn check_first_link(&mut self) -> Result<()> {
        let Format::PcapNg { parser, .. } = &mut self.format else {
            return Ok(());
        };
        let mut at = self.pos;
        while at < self.buf.len() {
            let Ok((rest, block)) = parser.next_block(&self.buf[at..]) else {
                break;
            };
            let consumed = self.buf.len() - at - rest.len();
            if let Block::InterfaceDescription(idb) = block {
                if Link::of(idb.linktype).is_none() {
                    bail!(
                        "--offline {}: link type {:?} is not supported (Ethernet, Linux cooked SLL/SLL2, raw IP and loopback are)",
                        self.path.display(),
                        idb.linktype
                    );
                }
                break;
            }
            at += consumed;
        }
        // Parse again from the start for real (the parser keeps state).
        let (_, parser) = PcapNgParser::new(&self.buf).map_err(|e| anyhow!("{e}"))?;
        self.format = Format::PcapNg { parser, last_ts: 0 };
        Ok(())
    }

    /// Read the next record.
    pub fn next_record(&mut self) -> Next {
        loop {
            let slice = &self.buf[self.pos..];
            if slice.is_empty() && self.eof {
                return Next::End;
            }
            let parsed = match &mut self.format {
                Format::Pcap { parser, link } => parse_pcap(parser, *link, slice),
                Format::PcapNg { parser, last_ts } => parse_pcapng(parser, last_ts, slice),
            };
            match parsed {
                Ok((n, record)) => {
                    self.pos += n;
                    match record {
                        Record::Other => continue,
                        Record::Packet { ts_ns, ip } => {
                            self.stats.packets += 1;
                            return Next::Packet { ts_ns, ip };
                        }
                        Record::Snapped => {
                            self.stats.snapped += 1;
                            return Next::Skipped;
                        }
                        Record::NotIp => {
                            self.stats.not_ip += 1;
                            return Next::Skipped;
                        }
                    }
                }
                Err(PcapError::IncompleteBuffer) if !self.eof => {
                    if let Err(e) = self.read_more() {
                        return self.stopped(format!("read error: {e}"));
                    }
                }
                Err(PcapError::IncompleteBuffer) => {
                    return self.stopped("the file ends inside a record (truncated)".into());
                }
                Err(e) => return self.stopped(format!("corrupt record: {e}")),
            }
        }
    }

    fn stopped(&mut self, reason: String) -> Next {
        let offset = self.offset();
        // Nothing more will be read from this file.
        self.pos = self.buf.len();
        self.eof = true;
        Next::Stopped { offset, reason }
    }

    /// Drop what was parsed and read another chunk (at least doubling the
    /// window, for records larger than a chunk).
    fn read_more(&mut self) -> std::io::Result<()> {
        self.base += self.pos as u64;
        self.buf.drain(..self.pos);
        self.pos = 0;
        let want = CHUNK.max(self.buf.len());
        self.eof = fill(self.file.as_mut(), &mut self.buf, want)?;
        Ok(())
    }
}

/// Append up to `want` bytes; returns true at the end of the file.
fn fill(file: &mut dyn Read, buf: &mut Vec<u8>, want: usize) -> std::io::Result<bool> {
    let start = buf.len();
    buf.resize(start + want, 0);
    let mut got = 0;
    while got < want {
        match file.read(&mut buf[start + got..])? {
            0 => break,
            n => got += n,
        }
    }
    buf.truncate(start + got);
    Ok(got < want)
}

/// The interface's timestamp resolution option (pcapng default: 10^-6 s).
fn tsresol(
    idb: &pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionBlock,
) -> u8 {
    idb.options
        .iter()
        .find_map(|o| match o {
            InterfaceDescriptionOption::IfTsResol(r) => Some(*r),
            _ => None,
        })
        .unwrap_or(6)
}

/// pcapng timestamp units to nanoseconds. pcap-file hands the raw unit
/// count as if it were nanoseconds.
fn to_ns(units: u64, resol: u8) -> u64 {
    if resol & 0x80 != 0 {
        let shift = (resol & 0x7f) as u32;
        return ((units as u128 * 1_000_000_000) >> shift.min(127)) as u64;
    }
    let exp = resol as u32;
    if exp <= 9 {
        units.saturating_mul(10u64.pow(9 - exp))
    } else {
        units / 10u64.pow((exp - 9).min(19))
    }
}
