//! The engine's counters. Two invariants hold at every moment and answer
//! "where did my requests go?":
//!
//! 1. `captured = accepted + not_tcp + malformed + no_transfer + localhost_dropped
//!    + client_filtered + sampled_out + skipped_ramp + skipped_rate_limit
//!    + online_answers`
//! 2. `session_inputs = replayed + pure_acks_absorbed + duplicates + no_session
//!    + only_complete_skipped + port_conflicts + late_for_closed
//!    + session_limit + lost_* + buffered`
//!
//! (`session_limit` and the `lost_*` counters are the losses: [`Counters::lost`])
//!
//! where `session_inputs` = accepted segments × copies (`-n`), and
//! `buffered` = segments still held by live sessions.

use crate::stats::{Figure, Section};

/// What a counter counts: its metric family is `tcpcopy_engine_<unit>`,
/// so summing a family adds like to like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Segments,
    Packets,
    Bytes,
    Requests,
    Sessions,
    Connections,
    Records,
    Events,
}

impl Unit {
    pub fn family(self) -> &'static str {
        match self {
            Unit::Segments => "tcpcopy_engine_segments",
            Unit::Packets => "tcpcopy_engine_packets",
            Unit::Bytes => "tcpcopy_engine_bytes",
            Unit::Requests => "tcpcopy_engine_requests",
            Unit::Sessions => "tcpcopy_engine_sessions",
            Unit::Connections => "tcpcopy_engine_connections",
            Unit::Records => "tcpcopy_engine_records",
            Unit::Events => "tcpcopy_engine_events",
        }
    }
    fn help(self) -> &'static str {
        match self {
            Unit::Segments => {
                "Captured client segments, by what became of them (the exit summary's names)."
            }
            Unit::Packets => {
                "Packets the sessions sent to the target, by kind (first transmissions)."
            }
            Unit::Bytes => "Payload bytes replayed (first transmissions).",
            Unit::Requests => "Requests replayed, and how.",
            Unit::Sessions => "Sessions, by what became of them.",
            Unit::Connections => {
                "Connections with the target: handshakes, reconnects, refused retries."
            }
            Unit::Records => "Response records from intercept.",
            Unit::Events => "Other things the sessions did.",
        }
    }
}

macro_rules! counters {
    ($( $(#[$m:meta])* $name:ident : $unit:ident
        $([line $section:ident $key:literal])?
        $([loss $label:literal $words:literal])? ),* $(,)?) => {
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
            /// Segments lost with their session, every reason: the sum of
            /// the counters declared as losses.
            pub fn lost(&self) -> u64 {
                0 $( $( + { let _ = $label; self.$name } )? )*
            }
            /// Every counter as a figure of the stats room: one series of
            /// its unit's family (labelled `counter`), listed in the
            /// summary under its name, in the statistics line and the
            /// losses where its declaration says.
            pub fn figures(&self) -> Vec<Figure> {
                vec![$(
                    Figure::series(Unit::$unit.family(), "counter", stringify!($name), Unit::$unit.help(), self.$name)
                        .summary(stringify!($name))
                        $(.line(Section::$section, $key))?
                        $(.loss($label, $words))?,
                )*]
            }
        }
    };
}

counters! {
    // --- ingress (invariant 1)
    /// Packets handed to the engine.
    captured: Segments [line Traffic "captured"],
    /// Passed the filter, went on to sessions.
    accepted: Segments,
    /// Not IPv4/TCP.
    not_tcp: Segments,
    /// Truncated or inconsistent headers.
    malformed: Segments,
    /// No `-x` entry matched the destination.
    no_transfer: Segments,
    /// `--verdict`: the online server's segments toward its clients (the
    /// online answers), read by the verdict.
    online_answers: Segments,
    /// Localhost rules of spec §4.2 step 5.
    localhost_dropped: Segments,
    /// Not in the `-r` sample.
    sampled_out: Segments,
    /// Left out by `--only-clients` / `--skip-clients` (packet capture and
    /// offline; tap and xdp capture leave them out in the kernel).
    client_filtered: Segments,
    /// Segments of connections the `-g` ramp skipped.
    skipped_ramp: Segments,
    /// Segments of connections `--max-session-rate` skipped.
    skipped_rate_limit: Segments,
    /// Captured packets that were not plain "DF, offset 0" (counted only).
    fragments: Segments,
    /// Captured segments cut because they exceeded `-M`.
    split_oversize: Segments,
    // --- sessions (invariant 2)
    /// Segments offered to sessions (accepted × copies, after `-M` cuts).
    session_inputs: Segments,
    /// Captured segments sent to the target (first transmission).
    replayed: Segments [line Traffic "replayed"],
    /// Client pure ACKs after the handshake: tcpcopy makes its own.
    pure_acks_absorbed: Segments,
    /// Client retransmissions and duplicate captures, skipped.
    duplicates: Segments,
    /// Bare ACK/FIN/RST of a connection tcpcopy has no session for.
    no_session: Segments,
    /// `-O`: mid-stream sessions not replayed.
    only_complete_skipped: Segments,
    /// No free (client IP, port) toward the target for a copy.
    port_conflicts: Segments,
    /// Lost with new sessions refused at the per-worker session cap.
    session_limit: Segments [loss "session_limit" "session limit (--max-sessions) reached"],
    /// Segments of a finished session that arrived during its linger.
    late_for_closed: Segments,
    /// Lost when the target refused the connection (RST to our SYN).
    lost_target_refused: Segments [loss "target_refused" "target refused the connection"],
    /// Lost when the handshake did not complete in time.
    lost_handshake_timeout: Segments [loss "handshake_timeout" "handshake timed out"],
    /// Lost when the session timed out (`-t`/`-k`) or retransmissions gave up.
    lost_timed_out: Segments [loss "session_timeout" "session timed out"],
    /// Lost behind a gap in the captured stream that never filled.
    lost_capture_gap: Segments [loss "capture_gap" "capture gap never filled"],
    /// Lost because the session's buffer cap was reached.
    lost_buffer_full: Segments [loss "session_buffer_full" "session buffer full"],
    /// Lost because the session's buffer overflowed behind a hole the
    /// capture left (the target had acknowledged everything before it).
    lost_behind_hole: Segments [loss "behind_capture_hole" "buffer full behind a capture hole"],
    /// Lost because the target reset/closed and no reconnect was possible.
    lost_target_closed: Segments [loss "target_closed" "target closed or reset"],
    /// Unsent data after the client's RST was forwarded.
    lost_client_reset: Segments [loss "client_reset" "client reset"],
    /// Still buffered when tcpcopy shut down.
    lost_shutdown: Segments [loss "shutdown" "still buffered at shutdown"],
    /// Lost to the memory limit (`-m`): segments of sessions refused while
    /// memory was short, and of sessions given up when it ran out.
    lost_memory_limit: Segments [loss "memory_limit" "memory limit (-m) reached"],
    /// Lost with sessions given up (buffer full, timed out) while an
    /// intercept was unreachable: an outage longer than the buffers.
    lost_intercept_outage: Segments [loss "intercept_outage" "intercept unreachable"],
    // --- what was sent
    /// Packets sent to the target (forwarded + fabricated, not retransmissions).
    packets_sent: Packets,
    /// Payload bytes replayed (first transmissions).
    bytes_replayed: Bytes [line Traffic "bytes"],
    /// Requests started (first segment of each request).
    requests_replayed: Requests [line Traffic "requests"],
    syns_sent: Packets,
    /// Fabricated SYNs for sessions captured without their SYN.
    syns_fabricated: Packets,
    fins_sent: Packets,
    rsts_sent: Packets,
    acks_fabricated: Packets,
    reconnects: Connections [line Sessions "reconnects"],
    /// Connections the target refused (RST to the SYN) that were asked
    /// again (`--retry-refused`).
    refused_retries: Connections,
    /// Holes in a captured stream skipped: the session went on past them
    /// on a new target connection (`--gap-skip`).
    gaps_skipped: Events,
    /// Held requests released because the target never answered the
    /// previous one within the response wait.
    response_waits_expired: Requests,
    /// Requests a session sent before the previous response came, to catch
    /// up with a client that ran ahead (`--catch-up`).
    requests_pipelined: Requests,
    /// Client RSTs replayed as a FIN because pipelined requests may still
    /// wait in the target's buffer (an RST would discard them).
    resets_as_fin: Events,
    retransmits: Packets [line Sent "retransmits"],
    fast_retransmits: Events,
    route_msgs: Packets,
    // --- sessions
    sessions_created: Sessions [line Sessions "created"],
    /// Captured connections not replayed: their bucket was above the `-g`
    /// ramp's share when they started.
    sessions_skipped_ramp: Sessions,
    /// Captured connections not replayed: `--max-session-rate`'s second
    /// was full when they started.
    sessions_skipped_rate_limit: Sessions [line Sessions "rate_limited"],
    /// Attempts to open a session refused while memory was short (`-m`).
    sessions_refused_memory: Sessions,
    /// Sessions left to finish on their own when a new connection reused
    /// their client port before their replay was done.
    sessions_overlapped: Sessions,
    sessions_destroyed: Sessions,
    /// Handshakes completed with the target (SYN-ACK received).
    connections: Connections [line Sessions "conns"],
    /// Sessions ended by a GC verdict (handshake/idle/gap/buffer).
    obsolete: Sessions,
    // --- from the target (intercept records)
    responses: Records,
    response_payloads: Records,
    response_fins: Records,
    response_rsts: Records,
    /// Records for no live session.
    responses_unmatched: Records,
}

impl Counters {
    /// Sum of what invariant 1 sets aside besides `accepted`: the named
    /// drop reasons, and the online answers the verdict reads.
    pub fn not_accepted(&self) -> u64 {
        self.online_answers
            + self.not_tcp
            + self.malformed
            + self.no_transfer
            + self.localhost_dropped
            + self.client_filtered
            + self.sampled_out
            + self.skipped_ramp
            + self.skipped_rate_limit
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
}
