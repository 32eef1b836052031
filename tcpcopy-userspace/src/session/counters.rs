//! The engine's counters. Two invariants hold at every moment and answer
//! "where did my requests go?":
//!
//! 1. `captured = accepted + not_tcp + malformed + no_transfer + localhost_dropped + sampled_out`
//! 2. `session_inputs = replayed + pure_acks_absorbed + duplicates + no_session
//!    + only_complete_skipped + port_conflicts + late_for_closed
//!    + session_limit + lost_* + buffered`
//!
//! (`session_limit` and the `lost_*` counters are the losses: [`Counters::lost`])
//!
//! where `session_inputs` = accepted segments × copies (`-n`), and
//! `buffered` = segments still held by live sessions.

macro_rules! counters {
    ($( $(#[$m:meta])* $name:ident ),* $(,)?) => {
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct Counters { $( $(#[$m])* pub $name: u64, )* }
        impl Counters {
            /// (name, value) for every counter, in declaration order.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$( (stringify!($name), self.$name), )*]
            }
            /// Add another worker's counters to these.
            pub fn add(&mut self, o: &Counters) {
                $( self.$name += o.$name; )*
            }
        }
    };
}

counters! {
    // --- ingress (invariant 1)
    /// Packets handed to the engine.
    captured,
    /// Passed the filter, went on to sessions.
    accepted,
    /// Not IPv4/TCP.
    not_tcp,
    /// Truncated or inconsistent headers.
    malformed,
    /// No `-x` entry matched the destination.
    no_transfer,
    /// Localhost rules of spec §4.2 step 5.
    localhost_dropped,
    /// Not in the `-r` sample.
    sampled_out,
    /// Captured packets that were not plain "DF, offset 0" (counted only).
    fragments,
    /// Captured segments cut because they exceeded `-M`.
    split_oversize,
    // --- sessions (invariant 2)
    /// Segments offered to sessions (accepted × copies, after `-M` cuts).
    session_inputs,
    /// Captured segments sent to the target (first transmission).
    replayed,
    /// Client pure ACKs after the handshake: tcpcopy makes its own.
    pure_acks_absorbed,
    /// Client retransmissions and duplicate captures, skipped.
    duplicates,
    /// Bare ACK/FIN/RST of a connection tcpcopy has no session for.
    no_session,
    /// `-O`: mid-stream sessions not replayed.
    only_complete_skipped,
    /// No free (client IP, port) toward the target for a copy.
    port_conflicts,
    /// Lost with new sessions refused at the per-worker session cap.
    session_limit,
    /// Segments of a finished session that arrived during its linger.
    late_for_closed,
    /// Lost when the target refused the connection (RST to our SYN).
    lost_target_refused,
    /// Lost when the handshake did not complete in time.
    lost_handshake_timeout,
    /// Lost when the session timed out (`-t`/`-k`) or retransmissions gave up.
    lost_timed_out,
    /// Lost behind a gap in the captured stream that never filled.
    lost_capture_gap,
    /// Lost because the session's buffer cap was reached.
    lost_buffer_full,
    /// Lost because the target reset/closed and no reconnect was possible.
    lost_target_closed,
    /// Unsent data after the client's RST was forwarded.
    lost_client_reset,
    /// Still buffered when tcpcopy shut down.
    lost_shutdown,
    /// Lost to the memory limit (`-m`): segments of sessions refused while
    /// memory was short, and of sessions given up when it ran out.
    lost_memory_limit,
    // --- what was sent
    /// Packets sent to the target (forwarded + fabricated, not retransmissions).
    packets_sent,
    /// Payload bytes replayed (first transmissions).
    bytes_replayed,
    /// Requests started (first segment of each request).
    requests_replayed,
    syns_sent,
    /// Fabricated SYNs for sessions captured without their SYN.
    syns_fabricated,
    fins_sent,
    rsts_sent,
    acks_fabricated,
    reconnects,
    /// Holes in a captured stream skipped: the session went on past them
    /// on a new target connection (`--gap-skip`).
    gaps_skipped,
    /// Held requests released because the target never answered the
    /// previous one within the response wait.
    response_waits_expired,
    /// Requests a session sent before the previous response came, to catch
    /// up with a client that ran ahead (`--catch-up`).
    requests_pipelined,
    /// Client RSTs replayed as a FIN because pipelined requests may still
    /// wait in the target's buffer (an RST would discard them).
    resets_as_fin,
    retransmits,
    fast_retransmits,
    route_msgs,
    // --- sessions
    sessions_created,
    /// Attempts to open a session refused while memory was short (`-m`).
    sessions_refused_memory,
    /// Sessions left to finish on their own when a new connection reused
    /// their client port before their replay was done.
    sessions_overlapped,
    sessions_destroyed,
    /// Handshakes completed with the target (SYN-ACK received).
    connections,
    /// Sessions ended by a GC verdict (handshake/idle/gap/buffer).
    obsolete,
    // --- from the target (intercept records)
    responses,
    response_payloads,
    response_fins,
    response_rsts,
    /// Records for no live session.
    responses_unmatched,
}

impl Counters {
    /// Sum of the named drop reasons of invariant 1.
    pub fn ingress_dropped(&self) -> u64 {
        self.not_tcp + self.malformed + self.no_transfer + self.localhost_dropped + self.sampled_out
    }
    /// Sum of every disposition of invariant 2 except `replayed` and what
    /// is still buffered.
    pub fn session_dropped(&self) -> u64 {
        self.pure_acks_absorbed
            + self.duplicates
            + self.no_session
            + self.only_complete_skipped
            + self.port_conflicts
            + self.late_for_closed
            + self.lost()
    }
    /// Segments lost with their session, every reason.
    pub fn lost(&self) -> u64 {
        self.lost_target_refused
            + self.lost_handshake_timeout
            + self.lost_timed_out
            + self.lost_capture_gap
            + self.lost_buffer_full
            + self.lost_target_closed
            + self.lost_client_reset
            + self.lost_shutdown
            + self.lost_memory_limit
            + self.session_limit
    }
}
