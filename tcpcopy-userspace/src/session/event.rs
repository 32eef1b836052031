//! What a session reports as it runs. Sessions never touch the counters:
//! they emit events, and [`Counters::record`] folds each into the counters
//! in this one place.

use super::counters::Counters;

/// Why a session's unsent data was given up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    TargetRefused,
    HandshakeTimeout,
    TimedOut,
    CaptureGap,
    BufferFull,
    /// The buffer overflowed while held behind a hole the capture left,
    /// everything before it acknowledged: the capture lost a frame (a
    /// mirror port that overflowed, say), the target kept up.
    BehindHole,
    TargetClosed,
    ClientReset,
    Shutdown,
    MemoryLimit,
    /// Given up (buffer full, timed out) while an intercept was
    /// unreachable: the target's answers could not come back.
    InterceptOutage,
}

impl Loss {
    /// Whether the rest of a flow given up for this reason is dropped too
    /// (counted under it) rather than replayed on a new connection: a
    /// flow too fast or too large to buffer, memory that ran short, a
    /// target that refuses or never answers would only fail again, one
    /// fabricated SYN per later segment.
    pub fn drops_rest_of_flow(self) -> bool {
        matches!(
            self,
            Loss::BufferFull
                | Loss::BehindHole
                | Loss::MemoryLimit
                | Loss::TargetRefused
                | Loss::HandshakeTimeout
                | Loss::InterceptOutage
        )
    }
}

/// A packet's first transmission toward the target, by kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    /// The captured SYN.
    CapturedSyn,
    /// A SYN made up for a session captured mid-stream.
    FabricatedSyn,
    /// A SYN opening a new target connection for a session already
    /// replaying (after a reset, a close or a hole).
    ReconnectSyn,
    /// A captured segment (data, or the handshake's ACK).
    Captured,
    /// A pure ACK tcpcopy made (of response data).
    Ack,
    Rst,
    Fin,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Sent(Sent),
    /// A SYN, data or FIN sent again.
    Retransmitted,
    /// A fast retransmit began (three duplicate ACKs).
    FastRetransmit,
    /// A captured segment was replayed: its disposition, with `bytes` of
    /// payload.
    Replayed {
        bytes: u64,
    },
    /// A replayed segment's disposition taken back: the target connection
    /// it went on closed before acknowledging it, so it is buffered again
    /// for the next one.
    Requeued {
        bytes: u64,
    },
    /// A new request started.
    Request {
        pipelined: bool,
    },
    /// A captured segment that was already sent or buffered.
    Duplicate,
    /// A client pure ACK (tcpcopy acknowledges by itself).
    PureAckAbsorbed,
    /// A captured segment for a session that has finished.
    LateForClosed,
    /// `count` captured segments given up.
    Lost(Loss, u64),
    /// A hole in the captured stream skipped on a new target connection.
    GapSkipped,
    /// A client RST replayed as a FIN (pipelined requests in the target).
    ResetAsFin,
    /// A held request released: the target never answered the previous.
    ResponseWaitExpired,
    /// The session was given up (a GC verdict).
    Obsolete,
    /// A CLIENT_ADD for intercept.
    RouteAnnounced,
    /// The target refused a connection; it is asked again later.
    RefusedRetry,
    /// The target completed the handshake.
    Connected,
    /// The target connection went; a new one carries the rest.
    Reconnected,
    /// A record from the target for this session.
    Response,
    ResponsePayload,
    ResponseFin,
    ResponseRst,
}

impl Counters {
    /// Fold one event into the counters.
    #[inline]
    pub fn record(&mut self, e: Event) {
        match e {
            Event::Sent(kind) => {
                self.packets_sent += 1;
                match kind {
                    Sent::CapturedSyn | Sent::ReconnectSyn => self.syns_sent += 1,
                    Sent::FabricatedSyn => {
                        self.syns_sent += 1;
                        self.syns_fabricated += 1;
                    }
                    Sent::Captured => {}
                    Sent::Ack => self.acks_fabricated += 1,
                    Sent::Rst => self.rsts_sent += 1,
                    Sent::Fin => self.fins_sent += 1,
                }
            }
            Event::Retransmitted => self.retransmits += 1,
            Event::FastRetransmit => self.fast_retransmits += 1,
            Event::Replayed { bytes } => {
                self.replayed += 1;
                self.bytes_replayed += bytes;
            }
            Event::Requeued { bytes } => {
                self.replayed -= 1;
                self.bytes_replayed -= bytes;
            }
            Event::Request { pipelined } => {
                self.requests_replayed += 1;
                self.requests_pipelined += pipelined as u64;
            }
            Event::Duplicate => self.duplicates += 1,
            Event::PureAckAbsorbed => self.pure_acks_absorbed += 1,
            Event::LateForClosed => self.late_for_closed += 1,
            Event::Lost(reason, n) => *self.lost_counter(reason) += n,
            Event::GapSkipped => self.gaps_skipped += 1,
            Event::ResetAsFin => self.resets_as_fin += 1,
            Event::ResponseWaitExpired => self.response_waits_expired += 1,
            Event::Obsolete => self.obsolete += 1,
            Event::RouteAnnounced => self.route_msgs += 1,
            Event::RefusedRetry => self.refused_retries += 1,
            Event::Connected => self.connections += 1,
            Event::Reconnected => self.reconnects += 1,
            Event::Response => self.responses += 1,
            Event::ResponsePayload => self.response_payloads += 1,
            Event::ResponseFin => self.response_fins += 1,
            Event::ResponseRst => self.response_rsts += 1,
        }
    }

    fn lost_counter(&mut self, reason: Loss) -> &mut u64 {
        match reason {
            Loss::TargetRefused => &mut self.lost_target_refused,
            Loss::HandshakeTimeout => &mut self.lost_handshake_timeout,
            Loss::TimedOut => &mut self.lost_timed_out,
            Loss::CaptureGap => &mut self.lost_capture_gap,
            Loss::BehindHole => &mut self.lost_behind_hole,
            Loss::BufferFull => &mut self.lost_buffer_full,
            Loss::TargetClosed => &mut self.lost_target_closed,
            Loss::ClientReset => &mut self.lost_client_reset,
            Loss::Shutdown => &mut self.lost_shutdown,
            Loss::MemoryLimit => &mut self.lost_memory_limit,
            Loss::InterceptOutage => &mut self.lost_intercept_outage,
        }
    }
}
