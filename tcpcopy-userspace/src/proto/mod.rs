//! The tcpcopy ⇄ intercept control channel (spec §3), wire-compatible with
//! the C tools at protocol version 6: 14-byte route messages from tcpcopy,
//! 64-byte response records from intercept, in combined frames (a u16 count,
//! at most 16 records) or bare. Pure encode/decode; no sockets.
//!
//! Our extension (the verdict's payload prefix, IPv6) is negotiated so
//! that a C peer on either side sees exactly protocol 6: tcpcopy offers it
//! in the version message's target fields, which the C intercept reads and
//! ignores (spec §3.2); only an intercept that understood the offer
//! answers it, with one acknowledgement record before any other, and only
//! then are the records longer (see [`Extension`]) and may route messages
//! name IPv6 addresses (see [`RouteMsg::encode_into`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use thiserror::Error;

pub use tcpcopy_common::CONTROL_PORT;

/// Protocol version carried in the version message's type field.
pub const INTERNAL_VERSION: u16 = 6;
pub const ROUTE_MSG_LEN: usize = 14;
pub const RECORD_LEN: usize = tcpcopy_common::RESPONSE_RECORD_LEN;
/// Most records in one combined frame.
pub const MAX_COMBINED: usize = 16;

pub const MSG_CLIENT_ADD: u16 = 1;
pub const MSG_CLIENT_DEL: u16 = 2;
/// Under the IPv6 extension: set in a route message's type, the message's
/// address fields are zero and the client's and the target's IPv6
/// addresses follow it (32 bytes).
pub const MSG_IPV6: u16 = 0x8000;
/// Bytes of an IPv6 route message (14 + 2 × 16).
pub const ROUTE_MSG_V6_LEN: usize = ROUTE_MSG_LEN + 32;
/// A record's head under the IPv6 extension: room for an IPv6 header
/// (40 bytes) and the first 44 bytes of the TCP header.
pub const WIDE_HEAD_LEN: usize = 40 + 44;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProtoError {
    #[error("combined frame announces {0} records (max {MAX_COMBINED})")]
    BadCount(u16),
    #[error("peer speaks the old 8-byte protocol (non-zero address in the version message)")]
    TooOld,
    #[error("an IPv6 route message without the IPv6 extension")]
    Ipv6NotNegotiated,
}

/// A message from tcpcopy to intercept: 14 bytes for IPv4 (protocol 6),
/// 46 for IPv6 (our extension). Both addresses are of one family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RouteMsg {
    pub client_ip: IpAddr,
    pub client_port: u16,
    /// `MSG_CLIENT_ADD`, `MSG_CLIENT_DEL`, or the version (without
    /// [`MSG_IPV6`]: that is the encoding's).
    pub kind: u16,
    pub target_ip: IpAddr,
    pub target_port: u16,
}

impl RouteMsg {
    /// The first message on every connection.
    pub fn version() -> Self {
        RouteMsg {
            client_ip: Ipv4Addr::UNSPECIFIED.into(),
            client_port: 0,
            kind: INTERNAL_VERSION,
            target_ip: Ipv4Addr::UNSPECIFIED.into(),
            target_port: 0,
        }
    }
    /// The version message offering our extension: the magic in the
    /// target address, the payload prefix asked for in the target port.
    pub fn version_offering(ext: Extension) -> Self {
        RouteMsg {
            target_ip: Ipv4Addr::from(ext.magic()).into(),
            target_port: ext.prefix_bytes,
            ..RouteMsg::version()
        }
    }
    /// The extension a version message offers, if any.
    pub fn offered(&self) -> Option<Extension> {
        match self.target_ip {
            IpAddr::V4(m) => Extension::from_magic(m.octets(), self.target_port),
            IpAddr::V6(_) => None,
        }
    }
    pub fn client_add(client: (IpAddr, u16), target: (IpAddr, u16)) -> Self {
        RouteMsg {
            client_ip: client.0,
            client_port: client.1,
            kind: MSG_CLIENT_ADD,
            target_ip: target.0,
            target_port: target.1,
        }
    }
    pub fn is_ipv6(&self) -> bool {
        self.client_ip.is_ipv6()
    }
    /// Append the message's bytes: 14 for IPv4, exactly protocol 6; for
    /// IPv6 (only once the IPv6 extension is granted) 14 with
    /// [`MSG_IPV6`] in the type and zero addresses, then the client's and
    /// the target's addresses.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let v4 = |ip: IpAddr| match ip {
            IpAddr::V4(a) => a.octets(),
            IpAddr::V6(_) => [0; 4],
        };
        let kind = if self.is_ipv6() {
            self.kind | MSG_IPV6
        } else {
            self.kind
        };
        out.extend_from_slice(&v4(self.client_ip));
        out.extend_from_slice(&self.client_port.to_be_bytes());
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&v4(self.target_ip));
        out.extend_from_slice(&self.target_port.to_be_bytes());
        if let (IpAddr::V6(c), IpAddr::V6(t)) = (self.client_ip, self.target_ip) {
            out.extend_from_slice(&c.octets());
            out.extend_from_slice(&t.octets());
        }
    }
    /// The message's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ROUTE_MSG_V6_LEN);
        self.encode_into(&mut out);
        out
    }
    /// A 14-byte message; with [`MSG_IPV6`] in its type, `v6` holds the
    /// 32 bytes that followed it.
    pub fn decode(b: &[u8; ROUTE_MSG_LEN], v6: Option<&[u8; 32]>) -> Self {
        let kind = u16::from_be_bytes([b[6], b[7]]);
        let (client_ip, target_ip): (IpAddr, IpAddr) = match v6 {
            Some(a) => (
                Ipv6Addr::from(<[u8; 16]>::try_from(&a[..16]).unwrap()).into(),
                Ipv6Addr::from(<[u8; 16]>::try_from(&a[16..]).unwrap()).into(),
            ),
            None => (
                Ipv4Addr::new(b[0], b[1], b[2], b[3]).into(),
                Ipv4Addr::new(b[8], b[9], b[10], b[11]).into(),
            ),
        };
        RouteMsg {
            client_ip,
            client_port: u16::from_be_bytes([b[4], b[5]]),
            kind: kind & !MSG_IPV6,
            target_ip,
            target_port: u16::from_be_bytes([b[12], b[13]]),
        }
    }
    /// Check a version message the way intercept does (spec §3.2): an
    /// address in it is the old 8-byte protocol, refused; the version it
    /// carries is returned (another number than ours is only worth a
    /// warning, as the C intercept gives: the messages are the same).
    pub fn check_version(&self) -> Result<u16, ProtoError> {
        if !self.client_ip.is_unspecified() || self.client_port != 0 {
            return Err(ProtoError::TooOld);
        }
        Ok(self.kind)
    }
}

/// Our extension's magic: in the version message's target address
/// (tcpcopy's offer) and in bytes 1..5 of intercept's acknowledgement.
pub const EXT_MAGIC: [u8; 4] = *b"TCPX";
/// The same, for the extension with IPv6 (wide records, IPv6 route
/// messages); the payload prefix may then be 0.
pub const EXT_MAGIC_V6: [u8; 4] = *b"TCP6";
/// Most payload bytes a record may carry under the extension.
pub const PREFIX_MAX: u16 = tcpcopy_common::RECORD_PREFIX_MAX as u16;

/// A response header record: the target's IPv4 header (20 bytes) and the
/// first 44 bytes of its TCP header, all as on the wire (protocol 6); or,
/// under the IPv6 extension, its IPv6 header (40 bytes) and the same 44.
/// Under our extension, also the first bytes of its payload.
#[derive(Clone, PartialEq, Eq)]
pub struct ResponseRecord {
    /// [`WIDE_HEAD_LEN`] bytes; an IPv4 record's last 20 are zero.
    pub head: [u8; WIDE_HEAD_LEN],
    /// The first bytes of the response's payload (none without the
    /// extension, or when the response carries none).
    pub prefix: Option<Box<[u8]>>,
    /// How long intercept held it (under the extension).
    pub held: Held,
}

/// Our extension, as offered or granted: each record carries the first
/// `prefix_bytes` of its response's TCP payload and how long intercept
/// held it; with `ipv6`, records are wide and route messages may be IPv6.
///
/// On the wire, once intercept granted it, a record is its head (the 64
/// protocol-6 bytes; with `ipv6`, [`WIDE_HEAD_LEN`] bytes: an IPv4
/// record's 64 and 20 zeros, or an IPv6 header and the first 44 bytes of
/// the TCP header), a u16 (network order) of how many payload bytes
/// follow are real, a u32 (network order) of the microseconds intercept
/// held the record (from its XDP program seeing the response to the
/// write; all ones: not known), and `prefix_bytes` of payload,
/// zero-padded: every record of the connection has the same length, and
/// the combined framing is unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extension {
    pub prefix_bytes: u16,
    pub ipv6: bool,
}

impl Extension {
    /// An offer or grant of `prefix_bytes`, held to 1..=[`PREFIX_MAX`].
    pub fn asking(prefix_bytes: u16) -> Extension {
        Extension {
            prefix_bytes: prefix_bytes.clamp(1, PREFIX_MAX),
            ipv6: false,
        }
    }
    /// The same with IPv6; `prefix_bytes` may be 0 (no payload asked).
    pub fn with_ipv6(prefix_bytes: u16) -> Extension {
        Extension {
            prefix_bytes: prefix_bytes.min(PREFIX_MAX),
            ipv6: true,
        }
    }
    fn magic(self) -> [u8; 4] {
        if self.ipv6 {
            EXT_MAGIC_V6
        } else {
            EXT_MAGIC
        }
    }
    fn from_magic(magic: [u8; 4], prefix_bytes: u16) -> Option<Extension> {
        match magic {
            EXT_MAGIC => Some(Extension::asking(prefix_bytes)),
            EXT_MAGIC_V6 => Some(Extension::with_ipv6(prefix_bytes)),
            _ => None,
        }
    }
    /// Bytes of a record's head under this extension.
    pub fn head_len(self) -> usize {
        if self.ipv6 {
            WIDE_HEAD_LEN
        } else {
            RECORD_LEN
        }
    }
    /// Bytes of one record under this extension.
    pub fn record_len(self) -> usize {
        self.head_len() + 2 + 4 + self.prefix_bytes as usize
    }
    /// intercept's acknowledgement, sent as a record of 64 bytes before
    /// any other: byte 0 is 0 (never an IP header's first byte), then the
    /// magic and the prefix granted.
    pub fn acknowledgement(self) -> ResponseRecord {
        let mut head = [0u8; RECORD_LEN];
        head[1..5].copy_from_slice(&self.magic());
        head[5..7].copy_from_slice(&self.prefix_bytes.to_be_bytes());
        ResponseRecord::new(head)
    }
    /// The extension a record acknowledges, if it is the acknowledgement.
    fn acknowledged(head: &[u8]) -> Option<Extension> {
        if head[0] != 0 {
            return None;
        }
        Extension::from_magic(
            [head[1], head[2], head[3], head[4]],
            u16::from_be_bytes([head[5], head[6]]),
        )
    }
}

/// How long intercept held a record, from its XDP program seeing the
/// response to writing the record to tcpcopy: intercept's own share of
/// the target's latency, as the verdict reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Held {
    #[default]
    Unknown,
    /// In intercept: when its XDP program saw the response
    /// (CLOCK_MONOTONIC, ns).
    SeenAt(u64),
    /// In tcpcopy: as intercept told, in microseconds.
    Micros(u32),
}

impl Held {
    /// On the wire: microseconds held by `now_ns` (all ones: not known).
    fn wire(self, now_ns: u64) -> u32 {
        match self {
            Held::Unknown => u32::MAX,
            Held::SeenAt(t) => (now_ns.saturating_sub(t) / 1000).min(u32::MAX as u64 - 1) as u32,
            Held::Micros(us) => us,
        }
    }
    fn from_wire(us: u32) -> Held {
        if us == u32::MAX {
            Held::Unknown
        } else {
            Held::Micros(us)
        }
    }
    /// Microseconds held, when intercept told.
    pub fn micros(self) -> Option<u32> {
        match self {
            Held::Micros(us) => Some(us),
            _ => None,
        }
    }
}

/// What a record tells beside its headers, under our extension: the
/// first bytes of the response's payload and intercept's share of its
/// latency.
#[derive(Clone, Copy, Debug, Default)]
pub struct ResponseExtras<'a> {
    pub prefix: &'a [u8],
    pub held: Held,
}

impl<'a> ResponseExtras<'a> {
    /// Payload bytes only (offline, and tests).
    pub fn prefix(prefix: &'a [u8]) -> Self {
        ResponseExtras {
            prefix,
            held: Held::Unknown,
        }
    }
}

impl std::fmt::Debug for ResponseRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let h = self.header();
        f.debug_struct("ResponseRecord")
            .field("src", &(h.src_ip, h.src_port))
            .field("dst", &(h.dst_ip, h.dst_port))
            .field("seq", &h.seq)
            .field("ack", &h.ack)
            .field("flags", &h.flags)
            .field("payload_len", &h.payload_len)
            .finish()
    }
}

/// The fields of a response record tcpcopy works with, in host order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseHeader {
    pub src_ip: IpAddr,
    pub src_port: u16,
    pub dst_ip: IpAddr,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    /// Length of the original response packet: the IPv4 total length, or
    /// 40 + the IPv6 payload length (extension headers left out).
    pub ip_total_len: u16,
    /// Response payload length, from that length minus the headers.
    pub payload_len: u32,
    pub wscale: Option<u8>,
    pub timestamps: Option<(u32, u32)>,
    pub mss: Option<u16>,
}

impl ResponseRecord {
    /// A record of protocol 6, with no payload bytes.
    pub fn new(head: [u8; RECORD_LEN]) -> Self {
        let mut wide = [0u8; WIDE_HEAD_LEN];
        wide[..RECORD_LEN].copy_from_slice(&head);
        ResponseRecord {
            head: wide,
            prefix: None,
            held: Held::Unknown,
        }
    }
    /// A record from its head bytes: 64 (IPv4) or up to
    /// [`WIDE_HEAD_LEN`] (either family), zero-padded.
    pub fn from_head(head: &[u8]) -> Self {
        let mut wide = [0u8; WIDE_HEAD_LEN];
        let n = head.len().min(WIDE_HEAD_LEN);
        wide[..n].copy_from_slice(&head[..n]);
        ResponseRecord {
            head: wide,
            prefix: None,
            held: Held::Unknown,
        }
    }
    /// The record's head as protocol 6 writes it (the first 64 bytes) or,
    /// under the IPv6 extension, the wide head.
    pub fn head_bytes(&self, wide: bool) -> &[u8] {
        if wide {
            &self.head
        } else {
            &self.head[..RECORD_LEN]
        }
    }
    pub fn is_ipv6(&self) -> bool {
        self.head[0] >> 4 == 6
    }
    /// Where the TCP header starts in the head.
    fn tcp_offset(&self) -> usize {
        if self.is_ipv6() {
            40
        } else {
            20
        }
    }
    /// The payload bytes carried, if any.
    pub fn prefix(&self) -> &[u8] {
        self.prefix.as_deref().unwrap_or(&[])
    }
    /// What the record tells beside its headers.
    pub fn extras(&self) -> ResponseExtras<'_> {
        ResponseExtras {
            prefix: self.prefix(),
            held: self.held,
        }
    }

    /// Build a record from a captured IP packet (either family) the way
    /// intercept does: the IPv4 header (20 bytes, options left out) or the
    /// IPv6 header (extension headers left out: next header TCP, payload
    /// length the TCP segment's), then the first 44 bytes of the TCP
    /// header.
    pub fn from_ip_packet(packet: &[u8]) -> Option<Self> {
        let ip = crate::wire::IpPacket::parse(packet).ok()?;
        let tcp = crate::wire::TcpView::new_checked(ip.payload()).ok()?;
        let mut r = [0u8; WIDE_HEAD_LEN];
        let at = if ip.src.is_ipv4() {
            r[..20].copy_from_slice(&packet[..20]);
            20
        } else {
            r[..40].copy_from_slice(&packet[..40]);
            r[4..6].copy_from_slice(&(ip.payload().len() as u16).to_be_bytes());
            r[6] = 6;
            40
        };
        let n = tcp.header_len().min(44);
        r[at..at + n].copy_from_slice(&ip.payload()[..n]);
        Some(ResponseRecord::from_head(&r))
    }
    /// The same, with up to `prefix` bytes of the payload (the extension).
    pub fn from_ip_packet_with_prefix(packet: &[u8], prefix: usize) -> Option<Self> {
        let mut r = Self::from_ip_packet(packet)?;
        let ip = crate::wire::IpPacket::parse(packet).ok()?;
        let tcp = crate::wire::TcpView::new_checked(ip.payload()).ok()?;
        let payload = tcp.payload();
        if !payload.is_empty() {
            r.prefix = Some(payload[..payload.len().min(prefix)].into());
        }
        Some(r)
    }

    fn addr(&self, at_v4: usize, at_v6: usize) -> IpAddr {
        let b = &self.head;
        if self.is_ipv6() {
            Ipv6Addr::from(<[u8; 16]>::try_from(&b[at_v6..at_v6 + 16]).unwrap()).into()
        } else {
            Ipv4Addr::new(b[at_v4], b[at_v4 + 1], b[at_v4 + 2], b[at_v4 + 3]).into()
        }
    }
    fn port(&self, at: usize) -> u16 {
        let t = self.tcp_offset();
        u16::from_be_bytes([self.head[t + at], self.head[t + at + 1]])
    }
    /// The target's address and port (the response's source).
    pub fn target(&self) -> (IpAddr, u16) {
        (self.addr(12, 8), self.port(0))
    }
    /// The replayed client's address and port (the response's destination).
    pub fn client(&self) -> (IpAddr, u16) {
        (self.addr(16, 24), self.port(2))
    }
    pub fn flags(&self) -> crate::wire::TcpFlags {
        crate::wire::TcpFlags(self.head[self.tcp_offset() + 13])
    }

    /// Decode the record. The TCP header always sits right after the
    /// fixed IP header (IPv4 options and IPv6 extension headers are not
    /// carried; the C tool's ihl-based offset is a quirk we fix).
    pub fn header(&self) -> ResponseHeader {
        let b = &self.head;
        let (ip_hl, tot) = if self.is_ipv6() {
            (40, 40 + u16::from_be_bytes([b[4], b[5]]) as u32)
        } else {
            (
                ((b[0] & 0x0f) as u32 * 4).max(20),
                u16::from_be_bytes([b[2], b[3]]) as u32,
            )
        };
        let t = &b[self.tcp_offset()..];
        let doff = ((t[12] >> 4) as u32) * 4;
        let payload_len = tot.saturating_sub(ip_hl + doff.max(20));
        let opt_end = (doff as usize).clamp(20, 44);
        let opts = crate::wire::TcpOptions::parse(&t[20..opt_end]);
        let ((src_ip, src_port), (dst_ip, dst_port)) = (self.target(), self.client());
        ResponseHeader {
            src_ip,
            dst_ip,
            src_port,
            dst_port,
            seq: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
            ack: u32::from_be_bytes([t[8], t[9], t[10], t[11]]),
            flags: self.flags().0,
            window: u16::from_be_bytes([t[14], t[15]]),
            ip_total_len: tot.min(u16::MAX as u32) as u16,
            payload_len,
            wscale: opts.wscale,
            timestamps: opts.timestamps,
            mss: opts.mss,
        }
    }
}

/// Framing of intercept → tcpcopy records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Framing {
    /// u16 count + records (the C tools' default).
    #[default]
    Combined,
    /// Back-to-back records.
    Bare,
}

/// Encode records as one or more frames and append them to `out`; under
/// `ext`, each with its payload prefix and how long it was held by
/// `now_ns` (CLOCK_MONOTONIC; see [`Extension`]).
pub fn encode_records(
    framing: Framing,
    ext: Option<Extension>,
    records: &[ResponseRecord],
    now_ns: u64,
    out: &mut Vec<u8>,
) {
    let wide = ext.is_some_and(|e| e.ipv6);
    let one = |r: &ResponseRecord, out: &mut Vec<u8>| {
        out.extend_from_slice(r.head_bytes(wide));
        if let Some(e) = ext {
            let room = e.prefix_bytes as usize;
            let p = &r.prefix()[..r.prefix().len().min(room)];
            out.extend_from_slice(&(p.len() as u16).to_be_bytes());
            out.extend_from_slice(&r.held.wire(now_ns).to_be_bytes());
            out.extend_from_slice(p);
            out.resize(out.len() + room - p.len(), 0);
        }
    };
    match framing {
        Framing::Bare => {
            for r in records {
                one(r, out);
            }
        }
        Framing::Combined => {
            for chunk in records.chunks(MAX_COMBINED) {
                out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
                for r in chunk {
                    one(r, out);
                }
            }
        }
    }
}

/// Where our extension stands on a tcpcopy connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Negotiation {
    /// Not offered: protocol 6.
    #[default]
    NotOffered,
    /// Offered; intercept's first record tells.
    Offered,
    /// intercept acknowledged it: records carry payload prefixes.
    Granted(Extension),
    /// intercept's first record was a plain one (a C intercept, or ours
    /// from before the extension): protocol 6.
    Declined,
}

/// Incremental decoder for the intercept → tcpcopy byte stream. Feed it
/// whatever the socket returned; it yields whole records and keeps partial
/// ones for the next read.
#[derive(Debug, Default)]
pub struct RecordDecoder {
    framing: Framing,
    negotiation: Negotiation,
    buf: Vec<u8>,
    /// Records still expected in the current combined frame.
    remaining: usize,
}

impl RecordDecoder {
    pub fn new(framing: Framing) -> Self {
        RecordDecoder {
            framing,
            ..RecordDecoder::default()
        }
    }
    /// A decoder for a connection whose version message offered our
    /// extension.
    pub fn offering(framing: Framing) -> Self {
        RecordDecoder {
            framing,
            negotiation: Negotiation::Offered,
            ..RecordDecoder::default()
        }
    }
    pub fn negotiation(&self) -> Negotiation {
        self.negotiation
    }

    /// Append bytes and decode every complete record into `out`. Returns the
    /// number of frames whose count header was read. A bad count is an error:
    /// the stream cannot be resynchronised and the connection must be dropped.
    pub fn feed(
        &mut self,
        data: &[u8],
        out: &mut Vec<ResponseRecord>,
    ) -> Result<usize, ProtoError> {
        self.buf.extend_from_slice(data);
        let mut pos = 0;
        let mut frames = 0;
        loop {
            if self.framing == Framing::Combined && self.remaining == 0 {
                if self.buf.len() - pos < 2 {
                    break;
                }
                let n = u16::from_be_bytes([self.buf[pos], self.buf[pos + 1]]);
                if n == 0 || n as usize > MAX_COMBINED {
                    self.buf.clear();
                    return Err(ProtoError::BadCount(n));
                }
                self.remaining = n as usize;
                frames += 1;
                pos += 2;
            }
            let granted = match self.negotiation {
                Negotiation::Granted(e) => Some(e),
                _ => None,
            };
            let len = granted.map_or(RECORD_LEN, Extension::record_len);
            if self.buf.len() - pos < len {
                break;
            }
            let bytes = &self.buf[pos..pos + len];
            pos += len;
            if self.framing == Framing::Combined {
                self.remaining -= 1;
            }
            if self.negotiation == Negotiation::Offered {
                if let Some(e) = Extension::acknowledged(bytes) {
                    self.negotiation = Negotiation::Granted(e);
                    continue;
                }
                self.negotiation = Negotiation::Declined;
            }
            let head_len = granted.map_or(RECORD_LEN, Extension::head_len);
            let mut record = ResponseRecord::from_head(&bytes[..head_len]);
            if let Some(e) = granted {
                let tail = &bytes[head_len..];
                let n =
                    (u16::from_be_bytes([tail[0], tail[1]]) as usize).min(e.prefix_bytes as usize);
                record.held =
                    Held::from_wire(u32::from_be_bytes([tail[2], tail[3], tail[4], tail[5]]));
                if n > 0 {
                    record.prefix = Some(tail[6..6 + n].into());
                }
            }
            out.push(record);
        }
        self.buf.drain(..pos);
        Ok(frames)
    }
}

/// Incremental decoder for the tcpcopy → intercept stream of 14-byte
/// messages (46-byte IPv6 ones under the IPv6 extension); the first
/// message must be the version message.
#[derive(Debug, Default)]
pub struct RouteDecoder {
    buf: Vec<u8>,
    /// The peer's protocol version, once its version message came.
    version: Option<u16>,
    /// The extension its version message offered.
    offered: Option<Extension>,
}

impl RouteDecoder {
    /// Bytes of an incomplete message held for the next read.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The version the peer announced, if it came.
    pub fn version(&self) -> Option<u16> {
        self.version
    }
    /// The extension the peer offered in its version message.
    pub fn offered(&self) -> Option<Extension> {
        self.offered
    }

    pub fn feed(&mut self, data: &[u8], out: &mut Vec<RouteMsg>) -> Result<(), ProtoError> {
        self.buf.extend_from_slice(data);
        let mut pos = 0;
        while self.buf.len() - pos >= ROUTE_MSG_LEN {
            let mut m = [0u8; ROUTE_MSG_LEN];
            m.copy_from_slice(&self.buf[pos..pos + ROUTE_MSG_LEN]);
            let v6 = self.version.is_some() && u16::from_be_bytes([m[6], m[7]]) & MSG_IPV6 != 0;
            let msg = if v6 {
                if !self.offered.is_some_and(|e| e.ipv6) {
                    self.buf.clear();
                    return Err(ProtoError::Ipv6NotNegotiated);
                }
                if self.buf.len() - pos < ROUTE_MSG_V6_LEN {
                    break;
                }
                let mut a = [0u8; 32];
                a.copy_from_slice(&self.buf[pos + ROUTE_MSG_LEN..pos + ROUTE_MSG_V6_LEN]);
                pos += ROUTE_MSG_V6_LEN;
                RouteMsg::decode(&m, Some(&a))
            } else {
                pos += ROUTE_MSG_LEN;
                RouteMsg::decode(&m, None)
            };
            if self.version.is_none() {
                self.version = Some(msg.check_version()?);
                self.offered = msg.offered();
                continue;
            }
            out.push(msg);
        }
        self.buf.drain(..pos);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_message_bytes() {
        // Spec §11 scenario 2.
        assert_eq!(
            RouteMsg::version().encode(),
            [0, 0, 0, 0, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn client_add_bytes() {
        // Spec §11 scenario 3: type 00 01, everything in network order.
        let m = RouteMsg::client_add(
            (Ipv4Addr::new(10, 9, 9, 5).into(), 40000),
            (Ipv4Addr::new(10, 0, 2, 2).into(), 8080),
        );
        let b = m.encode();
        assert_eq!(b, [10, 9, 9, 5, 0x9c, 0x40, 0, 1, 10, 0, 2, 2, 0x1f, 0x90]);
        assert_eq!(RouteMsg::decode(&b[..].try_into().unwrap(), None), m);
    }

    #[test]
    fn old_protocol_refused_and_another_version_only_reported() {
        let mut old = RouteMsg::version();
        old.client_port = 5;
        assert_eq!(old.check_version(), Err(ProtoError::TooOld));
        let mut v5 = RouteMsg::version();
        v5.kind = 5;
        assert_eq!(v5.check_version(), Ok(5), "another version: a warning only");
    }

    fn sample_packet(payload: usize) -> Vec<u8> {
        // 20-byte IP + 32-byte TCP (timestamps) + payload, as in scenario 23.
        let tot = 20 + 32 + payload;
        let mut p = vec![0u8; tot];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(tot as u16).to_be_bytes());
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 0, 2, 2]);
        p[16..20].copy_from_slice(&[10, 9, 9, 5]);
        let t = &mut p[20..];
        t[0..2].copy_from_slice(&8080u16.to_be_bytes());
        t[2..4].copy_from_slice(&40000u16.to_be_bytes());
        t[4..8].copy_from_slice(&1000u32.to_be_bytes());
        t[8..12].copy_from_slice(&2000u32.to_be_bytes());
        t[12] = 8 << 4;
        t[13] = 0x18;
        t[14..16].copy_from_slice(&512u16.to_be_bytes());
        t[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 7, 0, 0, 0, 9]);
        p
    }

    #[test]
    fn record_layout_matches_scenario_23() {
        let p = sample_packet(300);
        let r = ResponseRecord::from_ip_packet(&p).unwrap();
        assert_eq!(&r.head[..20], &p[..20]);
        assert_eq!(&r.head[20..52], &p[20..52]);
        assert_eq!(&r.head[52..RECORD_LEN], &[0u8; 12]);
        let h = r.header();
        assert_eq!(h.payload_len, 300);
        assert_eq!((h.seq, h.ack), (1000, 2000));
        assert_eq!(h.timestamps, Some((7, 9)));
        assert_eq!(h.dst_port, 40000);
    }

    #[test]
    fn combined_frames_split_at_16_and_decode_across_reads() {
        let rec = ResponseRecord::from_ip_packet(&sample_packet(0)).unwrap();
        let records = vec![rec; 100];
        let mut wire = Vec::new();
        encode_records(Framing::Combined, None, &records, 0, &mut wire);
        assert_eq!(wire.len(), 100 * 64 + 7 * 2);
        assert_eq!(&wire[..2], &[0, 16]);
        let mut dec = RecordDecoder::new(Framing::Combined);
        let mut out = Vec::new();
        let mut frames = 0;
        for chunk in wire.chunks(37) {
            frames += dec.feed(chunk, &mut out).unwrap();
        }
        assert_eq!(out.len(), 100);
        assert_eq!(frames, 7);
    }

    #[test]
    fn bare_framing_round_trip() {
        let rec = ResponseRecord::from_ip_packet(&sample_packet(1)).unwrap();
        let mut wire = Vec::new();
        encode_records(
            Framing::Bare,
            None,
            &[rec.clone(), rec.clone(), rec.clone()],
            0,
            &mut wire,
        );
        assert_eq!(wire.len(), 192);
        let mut out = Vec::new();
        RecordDecoder::new(Framing::Bare)
            .feed(&wire, &mut out)
            .unwrap();
        assert_eq!(out, vec![rec; 3]);
    }

    #[test]
    fn the_offer_rides_in_bytes_a_c_intercept_ignores() {
        let offer = RouteMsg::version_offering(Extension::asking(64)).encode();
        assert_eq!(
            offer,
            [0, 0, 0, 0, 0, 0, 0, 6, b'T', b'C', b'P', b'X', 0, 64],
            "bytes 0..8 are protocol 6's version message, as a C intercept checks them"
        );
        let m = RouteMsg::decode(&offer[..].try_into().unwrap(), None);
        assert_eq!(m.check_version(), Ok(6));
        assert_eq!(m.offered(), Some(Extension::asking(64)));
        let v6 = RouteMsg::version_offering(Extension::with_ipv6(0)).encode();
        assert_eq!(v6, [0, 0, 0, 0, 0, 0, 0, 6, b'T', b'C', b'P', b'6', 0, 0]);
        assert_eq!(
            RouteMsg::decode(&v6[..].try_into().unwrap(), None).offered(),
            Some(Extension {
                prefix_bytes: 0,
                ipv6: true
            })
        );
        assert_eq!(RouteMsg::version().offered(), None);
        assert_eq!(Extension::asking(4000).prefix_bytes, PREFIX_MAX);
    }

    #[test]
    fn a_protocol_6_intercept_declines_by_its_first_record() {
        // What a C intercept sends: plain combined frames, recorded bytes.
        let rec = ResponseRecord::from_ip_packet(&sample_packet(300)).unwrap();
        let mut wire = Vec::new();
        encode_records(
            Framing::Combined,
            None,
            &vec![rec.clone(); 20],
            0,
            &mut wire,
        );
        assert_eq!(wire.len(), 2 + 16 * 64 + 2 + 4 * 64);
        let mut dec = RecordDecoder::offering(Framing::Combined);
        let mut out = Vec::new();
        for chunk in wire.chunks(50) {
            dec.feed(chunk, &mut out).unwrap();
        }
        assert_eq!(dec.negotiation(), Negotiation::Declined);
        assert_eq!(
            out,
            vec![rec; 20],
            "every record kept, none taken for an answer"
        );
    }

    #[test]
    fn a_granted_extension_carries_payload_prefixes() {
        let ext = Extension::asking(64);
        let long = sample_packet(300);
        let mut short = sample_packet(5);
        short[52..57].copy_from_slice(b"HTTP/");
        let mut records = [
            ResponseRecord::from_ip_packet_with_prefix(&long, 64).unwrap(),
            ResponseRecord::from_ip_packet_with_prefix(&short, 64).unwrap(),
            ResponseRecord::from_ip_packet(&sample_packet(0)).unwrap(),
        ];
        // Seen by the XDP program 250 µs before the write.
        records[0].held = Held::SeenAt(1_000_000);
        for framing in [Framing::Combined, Framing::Bare] {
            let mut wire = Vec::new();
            encode_records(framing, None, &[ext.acknowledgement()], 0, &mut wire);
            let ack_len = wire.len();
            let many: Vec<_> = records.iter().cycle().take(40).cloned().collect();
            encode_records(framing, Some(ext), &many, 1_250_000, &mut wire);
            let frames = if framing == Framing::Combined { 3 } else { 0 };
            assert_eq!(wire.len() - ack_len, 40 * (64 + 2 + 4 + 64) + frames * 2);
            let mut dec = RecordDecoder::offering(framing);
            let mut out = Vec::new();
            for chunk in wire.chunks(33) {
                dec.feed(chunk, &mut out).unwrap();
            }
            assert_eq!(dec.negotiation(), Negotiation::Granted(ext));
            assert_eq!(out.len(), many.len());
            for (o, m) in out.iter().zip(&many) {
                assert_eq!((o.head, &o.prefix), (m.head, &m.prefix));
                assert!(!o.is_ipv6());
            }
            assert_eq!(out[0].held, Held::Micros(250), "held 250 µs by intercept");
            assert_eq!(out[1].held, Held::Unknown, "not stamped: not known");
            assert_eq!(out[0].prefix().len(), 64);
            assert_eq!(out[1].prefix(), b"HTTP/");
            assert_eq!(out[2].prefix, None);
            assert_eq!(out[1].header().payload_len, 5);
        }
    }

    #[test]
    fn oversized_count_is_an_error() {
        let mut dec = RecordDecoder::new(Framing::Combined);
        let mut out = Vec::new();
        assert_eq!(dec.feed(&[0, 17], &mut out), Err(ProtoError::BadCount(17)));
        assert_eq!(dec.feed(&[0, 0], &mut out), Err(ProtoError::BadCount(0)));
    }

    #[test]
    fn route_decoder_requires_version_first() {
        let mut d = RouteDecoder::default();
        let mut out = Vec::new();
        let add = RouteMsg::client_add(
            (Ipv4Addr::new(1, 2, 3, 4).into(), 5),
            (Ipv4Addr::new(6, 7, 8, 9).into(), 10),
        );
        assert!(d.feed(&add.encode(), &mut out).is_err());
        let mut d = RouteDecoder::default();
        let mut bytes = RouteMsg::version().encode().to_vec();
        bytes.extend_from_slice(&add.encode());
        d.feed(&bytes[..20], &mut out).unwrap();
        assert!(out.is_empty());
        d.feed(&bytes[20..], &mut out).unwrap();
        assert_eq!(out, vec![add]);
    }

    fn sample_v6_packet(payload: usize) -> Vec<u8> {
        // The same segment over IPv6, behind an 8-byte hop-by-hop header.
        let v4 = sample_packet(payload);
        let mut p = vec![0u8; 48];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&((8 + v4.len() - 20) as u16).to_be_bytes());
        p[6] = 0; // hop-by-hop
        p[7] = 64;
        p[8..24].copy_from_slice(&"2001:db8:2::2".parse::<Ipv6Addr>().unwrap().octets());
        p[24..40].copy_from_slice(&"2001:db8:ff::5".parse::<Ipv6Addr>().unwrap().octets());
        p[40] = 6; // then TCP
        p.extend_from_slice(&v4[20..]);
        p
    }

    #[test]
    fn an_ipv6_record_is_wide_and_leaves_extension_headers_out() {
        let r = ResponseRecord::from_ip_packet(&sample_v6_packet(300)).unwrap();
        assert!(r.is_ipv6());
        assert_eq!(r.head[6], 6, "next header: TCP");
        assert_eq!(u16::from_be_bytes([r.head[4], r.head[5]]), 32 + 300);
        let h = r.header();
        assert_eq!(h.src_ip, "2001:db8:2::2".parse::<IpAddr>().unwrap());
        assert_eq!(h.dst_ip, "2001:db8:ff::5".parse::<IpAddr>().unwrap());
        assert_eq!((h.src_port, h.dst_port), (8080, 40000));
        assert_eq!((h.seq, h.ack, h.flags), (1000, 2000, 0x18));
        assert_eq!(h.payload_len, 300);
        assert_eq!(h.timestamps, Some((7, 9)));
        assert_eq!(h.ip_total_len, 40 + 32 + 300);
    }

    #[test]
    fn the_ipv6_extension_carries_wide_records_and_ipv6_routes() {
        // tcpcopy → intercept: the offer, an IPv4 route as protocol 6
        // writes it, an IPv6 route of 46 bytes.
        let ext = Extension::with_ipv6(0);
        let v4 = RouteMsg::client_add(
            (Ipv4Addr::new(10, 9, 9, 5).into(), 40000),
            (Ipv4Addr::new(10, 0, 2, 2).into(), 8080),
        );
        let client: IpAddr = "2001:db8:ff::5".parse().unwrap();
        let target: IpAddr = "2001:db8:2::2".parse().unwrap();
        let v6 = RouteMsg::client_add((client, 40000), (target, 8080));
        let mut wire = RouteMsg::version_offering(ext).encode();
        wire.extend_from_slice(&v4.encode());
        let b = v6.encode();
        assert_eq!(b.len(), ROUTE_MSG_V6_LEN);
        assert_eq!(
            &b[..14],
            &[0, 0, 0, 0, 0x9c, 0x40, 0x80, 1, 0, 0, 0, 0, 0x1f, 0x90]
        );
        assert_eq!(
            &b[14..30],
            &"2001:db8:ff::5".parse::<Ipv6Addr>().unwrap().octets()
        );
        wire.extend_from_slice(&b);
        let mut d = RouteDecoder::default();
        let mut out = Vec::new();
        for chunk in wire.chunks(9) {
            d.feed(chunk, &mut out).unwrap();
        }
        assert_eq!(d.offered(), Some(ext));
        assert_eq!(out, vec![v4, v6]);
        // Without the offer, an IPv6 route is refused, not misread.
        let mut plain = RouteMsg::version().encode();
        plain.extend_from_slice(&b);
        assert_eq!(
            RouteDecoder::default().feed(&plain, &mut out),
            Err(ProtoError::Ipv6NotNegotiated)
        );

        // intercept → tcpcopy: the acknowledgement (64 bytes), then wide
        // records of either family.
        let records = [
            ResponseRecord::from_ip_packet(&sample_packet(10)).unwrap(),
            ResponseRecord::from_ip_packet(&sample_v6_packet(10)).unwrap(),
        ];
        let mut wire = Vec::new();
        encode_records(
            Framing::Combined,
            None,
            &[ext.acknowledgement()],
            0,
            &mut wire,
        );
        assert_eq!(&wire[2..8], &[0, b'T', b'C', b'P', b'6', 0]);
        let ack_len = wire.len();
        encode_records(Framing::Combined, Some(ext), &records, 0, &mut wire);
        assert_eq!(wire.len() - ack_len, 2 + 2 * (WIDE_HEAD_LEN + 6));
        let mut dec = RecordDecoder::offering(Framing::Combined);
        let mut got = Vec::new();
        for chunk in wire.chunks(7) {
            dec.feed(chunk, &mut got).unwrap();
        }
        assert_eq!(dec.negotiation(), Negotiation::Granted(ext));
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].header(), records[0].header());
        assert_eq!(got[1].header(), records[1].header());
        assert!(got[1].is_ipv6() && !got[0].is_ipv6());
    }
}
