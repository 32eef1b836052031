//! One tcpcopy peer's side of the control channel, sans-IO: the bytes it
//! sent become route messages (or the reason to drop it), the records
//! routed to it become frames, and what it has not read yet is kept and
//! bounded. The server only moves bytes between this and the socket.

use crate::proto::{
    encode_records, Extension, Framing, ResponseRecord, RouteDecoder, RouteMsg, INTERNAL_VERSION,
    MAX_COMBINED, MSG_CLIENT_ADD, MSG_CLIENT_DEL,
};

/// A peer with this many bytes it has not read is considered stuck.
pub const MAX_UNSENT: usize = 16 << 20;

/// What a peer asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// CLIENT_ADD: its responses for this connection, please.
    AddRoute(RouteMsg),
    /// CLIENT_DEL (counted; routes age out on their own).
    DeleteRoute,
}

/// Why a peer is dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Misbehaved(pub String);

/// What the bytes a peer sent said.
#[derive(Debug, Default)]
pub struct Received {
    pub requests: Vec<Request>,
    /// The peer announced this version, not ours (served anyway, as the C
    /// intercept does).
    pub other_version: Option<u16>,
    /// The peer's version message offered our extension, now granted:
    /// its records carry this much of each response's payload.
    pub granted: Option<Extension>,
}

/// How many records and frames a flush encoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Encoded {
    pub records: u64,
    pub frames: u64,
}

#[derive(Debug)]
pub struct PeerProtocol {
    framing: Framing,
    decoder: RouteDecoder,
    /// Records routed to this peer, not encoded yet.
    pending: Vec<ResponseRecord>,
    /// Encoded frames; `out[out_pos..]` is not written yet.
    out: Vec<u8>,
    out_pos: usize,
    messages: Vec<RouteMsg>,
    /// Our extension, granted to this peer (never to one that did not
    /// offer it: a C tcpcopy sees protocol 6 only).
    granted: Option<Extension>,
}

impl PeerProtocol {
    pub fn new(framing: Framing) -> PeerProtocol {
        PeerProtocol {
            framing,
            decoder: RouteDecoder::default(),
            pending: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            messages: Vec::new(),
            granted: None,
        }
    }

    /// The extension this peer was granted.
    #[cfg(test)]
    pub fn granted(&self) -> Option<Extension> {
        self.granted
    }

    /// Bytes the peer sent.
    pub fn receive(&mut self, bytes: &[u8]) -> Result<Received, Misbehaved> {
        let knew_version = self.decoder.version().is_some();
        self.messages.clear();
        self.decoder
            .feed(bytes, &mut self.messages)
            .map_err(|e| Misbehaved(format!("bad handshake: {e}")))?;
        let mut r = Received::default();
        if let Some(v) = self.decoder.version() {
            if !knew_version && v != INTERNAL_VERSION {
                r.other_version = Some(v);
            }
        }
        if !knew_version {
            if let Some(ext) = self.decoder.offered() {
                // The acknowledgement goes before any record.
                self.granted = Some(ext);
                encode_records(
                    self.framing,
                    None,
                    &[ext.acknowledgement()],
                    0,
                    &mut self.out,
                );
                r.granted = Some(ext);
            }
        }
        for m in &self.messages {
            r.requests.push(match m.kind {
                MSG_CLIENT_ADD => Request::AddRoute(*m),
                MSG_CLIENT_DEL => Request::DeleteRoute,
                // The stream is out of step (the C tcpcopy never sends
                // another type).
                other => return Err(Misbehaved(format!("sent garbage (message type {other})"))),
            });
        }
        Ok(r)
    }

    /// The peer closed its side: cleanly, or in the middle of a message.
    pub fn closed(&self) -> Result<(), Misbehaved> {
        match self.decoder.buffered() {
            0 => Ok(()),
            partial => Err(Misbehaved(format!(
                "closed in the middle of a message ({partial} bytes of it)"
            ))),
        }
    }

    /// A record for this peer.
    pub fn queue(&mut self, records: &[ResponseRecord]) {
        self.pending.extend_from_slice(records);
    }
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Encode the queued records behind what is still unwritten, at
    /// `now_ns` (CLOCK_MONOTONIC: how long each was held is told from it).
    pub fn encode_pending(&mut self, now_ns: u64) -> Encoded {
        if self.pending.is_empty() {
            return Encoded::default();
        }
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
        let records = self.pending.len() as u64;
        encode_records(
            self.framing,
            self.granted,
            &self.pending,
            now_ns,
            &mut self.out,
        );
        self.pending.clear();
        let frames = match self.framing {
            Framing::Combined => records.div_ceil(MAX_COMBINED as u64),
            Framing::Bare => 0,
        };
        Encoded { records, frames }
    }

    /// The bytes to write next.
    pub fn unwritten(&self) -> &[u8] {
        &self.out[self.out_pos..]
    }

    /// `n` bytes of [`PeerProtocol::unwritten`] were written.
    pub fn wrote(&mut self, n: usize) {
        self.out_pos = (self.out_pos + n).min(self.out.len());
    }

    /// After writing what the socket took: a peer holding more than
    /// [`MAX_UNSENT`] unread bytes has stopped reading.
    pub fn check_backlog(&mut self) -> Result<(), Misbehaved> {
        let unsent = self.out.len() - self.out_pos;
        if unsent == 0 {
            self.out.clear();
            self.out_pos = 0;
        } else if unsent > MAX_UNSENT {
            return Err(Misbehaved(format!(
                "stopped reading ({unsent} bytes unsent)"
            )));
        } else if self.out_pos > MAX_UNSENT / 2 {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{Misbehaved, PeerProtocol, Request, MAX_UNSENT};
    use crate::proto::{Framing, ResponseRecord, RouteMsg, RECORD_LEN};
    use std::net::Ipv4Addr;

    fn add(port: u16) -> RouteMsg {
        RouteMsg::client_add(
            (Ipv4Addr::new(10, 9, 9, 5).into(), port),
            (Ipv4Addr::new(10, 0, 2, 2).into(), 8080),
        )
    }

    #[test]
    fn route_messages_split_anywhere_are_read_whole() {
        let mut p = PeerProtocol::new(Framing::Combined);
        let mut bytes = RouteMsg::version().encode().to_vec();
        bytes.extend_from_slice(&add(1).encode());
        bytes.extend_from_slice(&add(2).encode());
        let (a, b) = bytes.split_at(20);
        assert!(p.receive(a).unwrap().requests.is_empty());
        assert!(p.closed().is_err(), "half a message is held");
        let r = p.receive(b).unwrap();
        assert_eq!(
            r.requests,
            vec![Request::AddRoute(add(1)), Request::AddRoute(add(2))]
        );
        assert_eq!(r.other_version, None);
        assert_eq!(p.closed(), Ok(()));
    }

    #[test]
    fn garbage_names_itself() {
        let mut p = PeerProtocol::new(Framing::Combined);
        let e = p.receive(&[0xff; 14]).unwrap_err();
        assert!(e.0.starts_with("bad handshake"), "{e:?}");
        let mut p = PeerProtocol::new(Framing::Combined);
        p.receive(&RouteMsg::version().encode()).unwrap();
        let mut odd = add(1);
        odd.kind = 9;
        assert_eq!(
            p.receive(&odd.encode()).unwrap_err(),
            Misbehaved("sent garbage (message type 9)".into())
        );
    }

    #[test]
    fn records_become_frames_and_a_peer_that_stops_reading_is_named() {
        let mut p = PeerProtocol::new(Framing::Combined);
        let rec = ResponseRecord::new([0u8; RECORD_LEN]);
        p.queue(&vec![rec.clone(); 17]);
        let e = p.encode_pending(0);
        assert_eq!((e.records, e.frames), (17, 2));
        let n = p.unwritten().len();
        assert!(n >= 17 * RECORD_LEN);
        p.wrote(n);
        assert_eq!(p.check_backlog(), Ok(()));
        assert!(p.unwritten().is_empty());
        let many = vec![rec; MAX_UNSENT / RECORD_LEN + 16];
        p.queue(&many);
        p.encode_pending(0);
        assert!(p
            .check_backlog()
            .unwrap_err()
            .0
            .starts_with("stopped reading"));
    }

    #[test]
    fn the_extension_is_granted_only_to_a_peer_that_offered_it() {
        use crate::proto::{Extension, Negotiation, RecordDecoder};
        let rec = super::super::router::test_record(0x18, 40000, 1);
        // A C tcpcopy: plain version message, plain records.
        let mut c = PeerProtocol::new(Framing::Combined);
        let r = c.receive(&RouteMsg::version().encode()).unwrap();
        assert_eq!((r.granted, c.granted()), (None, None));
        c.queue(std::slice::from_ref(&rec));
        c.encode_pending(0);
        assert_eq!(c.unwritten().len(), 2 + RECORD_LEN, "protocol 6 bytes only");
        // Ours: the offer, then the acknowledgement before any record.
        let ext = Extension::asking(128);
        let mut ours = PeerProtocol::new(Framing::Combined);
        let r = ours
            .receive(&RouteMsg::version_offering(ext).encode())
            .unwrap();
        assert_eq!(r.granted, Some(ext));
        let mut with_prefix = rec.clone();
        with_prefix.prefix = Some(b"HTTP/1.1 200 OK".as_slice().into());
        ours.queue(&[with_prefix.clone()]);
        ours.encode_pending(0);
        let mut dec = RecordDecoder::offering(Framing::Combined);
        let mut out = Vec::new();
        dec.feed(ours.unwritten(), &mut out).unwrap();
        assert_eq!(dec.negotiation(), Negotiation::Granted(ext));
        assert_eq!(out, vec![with_prefix]);
    }
}
