//! Adding up the workers' reports: the periodic statistics line and the
//! exit summary, which says in words where every captured segment went.

use std::sync::{Arc, Mutex};

use tcpcopy_common::tcpcopy_counter as kc;

use super::worker::WorkerReport;
use crate::{capture::CaptureStats, metrics::Exposition, session::Counters, xdp::AttachedXdp};

#[derive(Clone, Debug, Default)]
pub struct Totals {
    pub engine: Counters,
    pub capture: CaptureStats,
    pub records: u64,
    pub routes_sent: u64,
    pub routes_unsent: u64,
    pub conns_lost: u64,
    pub sent: u64,
    pub send_errors: u64,
    pub active_sessions: usize,
    /// Captured segments held by sessions, not yet sent.
    pub buffered: u64,
    /// Sessions whose pipelined requests the target may still be answering.
    pub awaiting_target: u64,
    /// Packets the dispatcher dropped because a worker's queue was full.
    pub dispatch_queue_full: u64,
    /// Dropped by the kernel at the dispatcher's AF_PACKET socket.
    pub packet_socket_dropped: u64,
    /// Kernel counters of tcpcopy-ebpf (tap mode), by `tcpcopy_counter`.
    pub kernel: Option<Vec<u64>>,
}

impl Totals {
    pub fn collect(reports: &[Arc<Mutex<WorkerReport>>], xdp: Option<&AttachedXdp>) -> Totals {
        let mut t = Totals::default();
        for r in reports {
            let r = r.lock().unwrap_or_else(|e| e.into_inner());
            t.engine.add(&r.engine);
            t.capture.add(&r.capture);
            t.records += r.channel.records;
            t.routes_sent += r.channel.routes_sent;
            t.routes_unsent += r.channel.routes_unsent;
            t.conns_lost += r.channel.conns_lost;
            t.sent += r.sent;
            t.send_errors += r.send_errors;
            t.active_sessions += r.active_sessions;
            t.buffered += r.buffered;
            t.awaiting_target += r.awaiting_target;
        }
        t.kernel = xdp.and_then(|x| x.read_counters("COUNTERS", kc::COUNT).ok());
        t
    }

    pub fn stats_line(&self) -> String {
        let e = &self.engine;
        let kernel = match &self.kernel {
            Some(k) => format!(
                "kernel matched:{} to_user:{} ring_full:{} too_big:{} | ",
                k[kc::MATCHED as usize],
                k[kc::TAPPED as usize] + k[kc::REDIRECTED as usize],
                k[kc::RING_FULL as usize],
                k[kc::TOO_BIG as usize]
            ),
            None => String::new(),
        };
        format!(
            "{kernel}captured:{} replayed:{} requests:{} bytes:{} lost:{} | sessions active:{} created:{} conns:{} reconnects:{} | sent:{} send_errors:{} retransmits:{} | responses:{} routes:{}",
            e.captured,
            e.replayed,
            e.requests_replayed,
            e.bytes_replayed,
            e.lost(),
            self.active_sessions,
            e.sessions_created,
            e.connections,
            e.reconnects,
            self.sent,
            self.send_errors,
            e.retransmits,
            self.records,
            self.routes_sent,
        )
    }

    /// The exit summary: every counter that is not zero, then the answer
    /// in words.
    pub fn summary(&self) -> String {
        let mut out = String::from("tcpcopy summary\n");
        if let Some(k) = &self.kernel {
            for (i, name) in kc::NAMES.iter().enumerate() {
                if k[i] != 0 {
                    out.push_str(&format!("  kernel {name:<24} {:>12}\n", k[i]));
                }
            }
        }
        for (name, v) in self.engine.fields() {
            if v != 0 {
                out.push_str(&format!("  {name:<31} {v:>12}\n"));
            }
        }
        for (name, v) in [
            ("packets_sent_ok", self.sent),
            ("send_errors", self.send_errors),
            ("response_records", self.records),
            ("intercept_conns_lost", self.conns_lost),
            ("routes_unsent", self.routes_unsent),
            ("dispatch_queue_full", self.dispatch_queue_full),
            ("packet_socket_dropped", self.packet_socket_dropped),
            ("steered_to_owner", self.capture.steered),
            ("steer_queue_full", self.capture.queue_full),
            ("xsk_kernel_dropped", self.capture.kernel_dropped),
            ("xsk_fill_ring_empty", self.capture.fill_ring_empty),
            ("capture_malformed", self.capture.malformed),
        ] {
            if v != 0 {
                out.push_str(&format!("  {name:<31} {v:>12}\n"));
            }
        }
        out.push_str(&self.in_words());
        out
    }

    /// Every way a captured segment can be lost: (metric label, words, count).
    pub fn losses(&self) -> [(&'static str, &'static str, u64); 14] {
        let e = &self.engine;
        let ring_full = self
            .kernel
            .as_ref()
            .map_or(0, |k| k[kc::RING_FULL as usize]);
        [
            ("kernel_ring_full", "kernel ring full", ring_full),
            (
                "xsk_socket_full",
                "AF_XDP socket full",
                self.capture.kernel_dropped,
            ),
            (
                "packet_socket_full",
                "AF_PACKET socket full",
                self.packet_socket_dropped,
            ),
            (
                "worker_queue_full",
                "worker queue full",
                self.dispatch_queue_full + self.capture.queue_full,
            ),
            (
                "target_refused",
                "target refused the connection",
                e.lost_target_refused,
            ),
            (
                "handshake_timeout",
                "handshake timed out",
                e.lost_handshake_timeout,
            ),
            ("session_timeout", "session timed out", e.lost_timed_out),
            (
                "capture_gap",
                "capture gap never filled",
                e.lost_capture_gap,
            ),
            (
                "session_buffer_full",
                "session buffer full",
                e.lost_buffer_full,
            ),
            (
                "target_closed",
                "target closed or reset",
                e.lost_target_closed,
            ),
            ("client_reset", "client reset", e.lost_client_reset),
            ("shutdown", "still buffered at shutdown", e.lost_shutdown),
            (
                "memory_limit",
                "memory limit (-m) reached",
                e.lost_memory_limit,
            ),
            (
                "session_limit",
                "session limit (--max-sessions) reached",
                e.session_limit,
            ),
        ]
    }

    /// The Prometheus exposition of these totals (names in the README).
    pub fn exposition(&self, workers: usize) -> Exposition {
        let mut x = Exposition::default();
        if let Some(k) = &self.kernel {
            x.counters(
                "tcpcopy_kernel_packets",
                "tcpcopy-ebpf counters, summed over CPUs.",
                "counter",
                kc::NAMES.iter().copied().zip(k.iter().copied()),
            );
        }
        let c = &self.capture;
        x.counters(
            "tcpcopy_capture_packets",
            "Capture sources: packets handed to the engines and what was not.",
            "event",
            [
                ("read", c.packets),
                ("skipped", c.skipped),
                ("malformed", c.malformed),
                ("xsk_dropped", c.kernel_dropped),
                ("xsk_fill_ring_empty", c.fill_ring_empty),
                ("steered", c.steered),
                ("queue_full", c.queue_full + self.dispatch_queue_full),
            ],
        );
        x.counters(
            "tcpcopy_engine_events",
            "Session engine counters (the names of the exit summary).",
            "counter",
            self.engine.fields(),
        );
        x.counters(
            "tcpcopy_lost_segments",
            "Captured client segments that were not replayed, by reason.",
            "reason",
            self.losses().iter().map(|(label, _, n)| (*label, *n)),
        );
        x.counter(
            "tcpcopy_sent_packets",
            "Packets sent to the target.",
            self.sent,
        );
        x.counter(
            "tcpcopy_send_errors",
            "Sends to the target that failed.",
            self.send_errors,
        );
        x.counter(
            "tcpcopy_response_records",
            "Response header records received from intercept.",
            self.records,
        );
        x.counter(
            "tcpcopy_routes_sent",
            "CLIENT_ADD messages sent to intercept.",
            self.routes_sent,
        );
        x.counter(
            "tcpcopy_routes_unsent",
            "CLIENT_ADD messages no intercept connection could take.",
            self.routes_unsent,
        );
        x.counter(
            "tcpcopy_intercept_connections_lost",
            "Control connections to intercept that were lost.",
            self.conns_lost,
        );
        x.gauge(
            "tcpcopy_active_sessions",
            "Live sessions.",
            self.active_sessions as i64,
        );
        x.gauge(
            "tcpcopy_buffered_segments",
            "Captured segments held by sessions, not yet sent.",
            self.buffered as i64,
        );
        x.gauge(
            "tcpcopy_sessions_awaiting_target",
            "Sessions whose pipelined requests the target may still be answering.",
            self.awaiting_target as i64,
        );
        x.gauge("tcpcopy_workers", "Replay workers.", workers as i64);
        x.gauge(
            "tcpcopy_heap_bytes",
            "Heap bytes tcpcopy holds (what -m budgets)",
            crate::memory::heap_bytes() as i64,
        );
        x.gauge(
            "tcpcopy_memory_budget_bytes",
            "Heap budget for sessions under -m (0: no limit)",
            crate::memory::budget_bytes() as i64,
        );
        x.gauge(
            "tcpcopy_memory_refuse_at_bytes",
            "Heap at which -m refuses new sessions (0: no limit)",
            crate::memory::refuse_at_bytes() as i64,
        );
        x.gauge(
            "tcpcopy_memory_pressure",
            "Under -m: 0 none, 1 new sessions refused, 2 growing sessions given up",
            crate::memory::pressure() as i64,
        );
        x.gauge(
            "tcpcopy_resident_bytes",
            "Resident memory (VmRSS)",
            crate::memory::status_bytes("VmRSS").unwrap_or(0) as i64,
        );
        x
    }

    pub fn in_words(&self) -> String {
        let e = &self.engine;
        let mut lost: Vec<(String, u64)> = self
            .losses()
            .into_iter()
            .filter(|(_, _, n)| *n > 0)
            .map(|(_, s, n)| (s.to_string(), n))
            .collect();
        lost.sort_by_key(|l| std::cmp::Reverse(l.1));
        let total: u64 = lost.iter().map(|(_, n)| n).sum();
        let mut s = format!(
            "{} segments captured, {} replayed ({} requests, {} bytes) to the target",
            e.captured, e.replayed, e.requests_replayed, e.bytes_replayed
        );
        if total == 0 {
            s.push_str("; none lost.\n");
        } else {
            let why: Vec<String> = lost.iter().map(|(w, n)| format!("{n} {w}")).collect();
            s.push_str(&format!("; {total} lost: {}.\n", why.join(", ")));
        }
        s
    }
}
