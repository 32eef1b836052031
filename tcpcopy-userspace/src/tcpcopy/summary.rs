//! Adding up the workers' reports, and tcpcopy's figures for the stats
//! room: the periodic statistics line, the metrics, and the exit summary,
//! which says in words where every captured segment went.

use std::sync::{Arc, Mutex};

use tcpcopy_common::tcpcopy_counter as kc;

use super::worker::WorkerReport;
use crate::{
    capture::CaptureStats,
    metrics::Exposition,
    session::Counters,
    stats::{Figure, Report, Section},
    verdict::VerdictStats,
    xdp::AttachedXdp,
};

#[derive(Clone, Debug, Default)]
pub struct Totals {
    pub engine: Counters,
    /// With several targets (fan-out): each one's counters, named
    /// `IP:PORT`.
    pub targets: Vec<(String, Counters)>,
    pub capture: CaptureStats,
    pub records: u64,
    pub routes_sent: u64,
    pub routes_unsent: u64,
    pub routes_ipv6_refused: u64,
    pub conns_lost: u64,
    pub sent: u64,
    pub send_errors: u64,
    pub gso_frames: u64,
    pub active_sessions: usize,
    /// Captured segments held by sessions, not yet sent.
    pub buffered: u64,
    /// Sessions whose pipelined requests the target may still be answering.
    pub awaiting_target: u64,
    /// Packets the dispatcher dropped because a worker's queue was full.
    pub dispatch_queue_full: u64,
    /// Frames the capture interfaces dropped before capture (their RX
    /// ring or FIFO overflowed) since tcpcopy started.
    pub nic_dropped: u64,
    /// Kernel counters of tcpcopy-ebpf (tap mode), by `tcpcopy_counter`.
    pub kernel: Option<Vec<u64>>,
    /// Replay workers.
    pub workers: usize,
    /// `--verdict`: each target's figures, named `IP:PORT`.
    pub verdicts: Vec<(String, VerdictStats)>,
    /// Whether the intercepts send the target's payload prefixes (None:
    /// not told yet).
    pub target_prefixes: Option<bool>,
}

impl Totals {
    pub fn collect(reports: &[Arc<Mutex<WorkerReport>>], xdp: Option<&AttachedXdp>) -> Totals {
        let mut t = Totals::default();
        for r in reports {
            let r = r.lock().unwrap_or_else(|e| e.into_inner());
            t.engine.add(&r.engine);
            if t.targets.len() < r.targets.len() {
                t.targets = r
                    .targets
                    .iter()
                    .map(|((ip, port), _)| {
                        (
                            std::net::SocketAddr::new(*ip, *port).to_string(),
                            Counters::default(),
                        )
                    })
                    .collect();
            }
            for (sum, (_, c)) in t.targets.iter_mut().zip(&r.targets) {
                sum.1.add(c);
            }
            t.capture.add(&r.capture);
            t.records += r.channel.records;
            t.routes_sent += r.channel.routes_sent;
            t.routes_unsent += r.channel.routes_unsent;
            t.routes_ipv6_refused += r.channel.routes_ipv6_refused;
            t.conns_lost += r.channel.conns_lost;
            t.sent += r.send.sent;
            t.send_errors += r.send.errors;
            t.gso_frames += r.send.gso_frames;
            t.active_sessions += r.active_sessions;
            t.buffered += r.buffered;
            t.awaiting_target += r.awaiting_target;
            if t.verdicts.len() < r.verdicts.len() {
                t.verdicts = r
                    .verdicts
                    .iter()
                    .map(|((ip, port), _)| {
                        (
                            std::net::SocketAddr::new(*ip, *port).to_string(),
                            VerdictStats::default(),
                        )
                    })
                    .collect();
            }
            for (sum, (_, v)) in t.verdicts.iter_mut().zip(&r.verdicts) {
                sum.1.add(v);
            }
            t.target_prefixes = match (t.target_prefixes, r.target_prefixes) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), _) | (_, Some(true)) => Some(true),
                (None, None) => None,
            };
        }
        t.kernel = xdp.and_then(|x| x.read_counters("COUNTERS", kc::COUNT).ok());
        t.workers = reports.len();
        t
    }

    /// Each target's figures (fan-out): one series per target in a family
    /// per unit.
    fn target_figures(&self) -> Vec<Figure> {
        type Pick = fn(&Counters) -> u64;
        const FAMILIES: [(&str, &str, &str, Pick); 6] = [
            (
                "tcpcopy_target_sessions",
                "sessions",
                "Sessions replayed to each target (fan-out).",
                |c| c.sessions_created,
            ),
            (
                "tcpcopy_target_connections",
                "conns",
                "Handshakes each target completed.",
                |c| c.connections,
            ),
            (
                "tcpcopy_target_requests",
                "requests",
                "Requests replayed to each target.",
                |c| c.requests_replayed,
            ),
            (
                "tcpcopy_target_replayed_segments",
                "replayed",
                "Captured segments replayed to each target.",
                |c| c.replayed,
            ),
            (
                "tcpcopy_target_bytes",
                "bytes",
                "Payload bytes replayed to each target.",
                |c| c.bytes_replayed,
            ),
            (
                "tcpcopy_target_lost_segments",
                "lost",
                "Captured segments each target's sessions lost, every reason.",
                |c| c.lost(),
            ),
        ];
        let mut v = Vec::new();
        for (family, word, help, pick) in FAMILIES {
            for (name, c) in &self.targets {
                v.push(
                    Figure::series(family, "target", name.clone(), help, pick(c))
                        .summary(format!("target {name} {word}")),
                );
            }
        }
        v
    }

    /// Every figure tcpcopy reports, declared once (the stats room):
    /// the statistics line, the exit summary, the losses and the metrics
    /// all come from this.
    pub fn report(&self) -> Report {
        let mut r = Report::default();
        if let Some(k) = &self.kernel {
            r.extend(kernel_figures(k));
        }
        r.extend(self.capture_figures());
        r.extend(self.engine.figures());
        r.push(Figure::derived(self.engine.lost()).line(Section::Traffic, "lost"));
        r.extend(self.target_figures());
        r.extend(self.output_figures());
        r.extend(memory_figures());
        r
    }

    fn capture_figures(&self) -> Vec<Figure> {
        const FAMILY: &str = "tcpcopy_capture_packets";
        const HELP: &str = "Capture sources: packets handed to the engines and what was not.";
        let c = &self.capture;
        let ring_full = self
            .kernel
            .as_ref()
            .map_or(0, |k| k[kc::RING_FULL as usize]);
        let event = |name: &'static str, v| Figure::series(FAMILY, "event", name, HELP, v);
        vec![
            event("read", c.packets),
            event("skipped", c.skipped),
            event("malformed", c.malformed).summary("capture_malformed"),
            event("xsk_dropped", c.kernel_dropped).summary("xsk_kernel_dropped"),
            event("xsk_fill_ring_empty", c.fill_ring_empty).summary("xsk_fill_ring_empty"),
            event("steered", c.steered).summary("steered_to_owner"),
            event("queue_full", c.queue_full + self.dispatch_queue_full),
            Figure::derived(c.queue_full).summary("steer_queue_full"),
            Figure::derived(self.dispatch_queue_full).summary("dispatch_queue_full"),
            Figure::derived(c.socket_dropped).summary("packet_socket_dropped"),
            // The ways the capture itself loses segments.
            Figure::derived(ring_full).loss("kernel_ring_full", "kernel ring full"),
            Figure::derived(c.kernel_dropped).loss("xsk_socket_full", "AF_XDP socket full"),
            Figure::derived(c.socket_dropped).loss("packet_socket_full", "AF_PACKET socket full"),
            Figure::derived(self.dispatch_queue_full + c.queue_full)
                .loss("worker_queue_full", "worker queue full"),
            // Before capture: not segments of ours, so not among the losses.
            Figure::counter(
                "tcpcopy_nic_dropped_frames",
                "Frames the capture interfaces dropped before capture since tcpcopy started \
                 (rx_missed, rx_fifo and rx_over errors): tcpcopy never saw them.",
                self.nic_dropped,
            )
            .summary("nic_dropped_before_capture"),
        ]
    }

    fn output_figures(&self) -> Vec<Figure> {
        vec![
            Figure::counter(
                "tcpcopy_sent_packets",
                "Packets sent to the target.",
                self.sent,
            )
            .line(Section::Sent, "sent")
            .summary("packets_sent_ok"),
            Figure::counter(
                "tcpcopy_send_errors",
                "Sends to the target that failed.",
                self.send_errors,
            )
            .line(Section::Sent, "send_errors")
            .summary("send_errors"),
            Figure::counter(
                "tcpcopy_sent_gso_frames",
                "GSO packets that carried several of the packets sent (--send packet).",
                self.gso_frames,
            )
            .line(Section::Sent, "gso_frames")
            .summary("gso_frames"),
            Figure::counter(
                "tcpcopy_response_records",
                "Response header records received from intercept.",
                self.records,
            )
            .line(Section::Control, "responses")
            .summary("response_records"),
            Figure::counter(
                "tcpcopy_routes_sent",
                "CLIENT_ADD messages sent to intercept.",
                self.routes_sent,
            )
            .line(Section::Control, "routes"),
            Figure::counter(
                "tcpcopy_routes_unsent",
                "CLIENT_ADD messages no intercept connection could take.",
                self.routes_unsent,
            )
            .summary("routes_unsent"),
            Figure::counter(
                "tcpcopy_routes_ipv6_refused",
                "CLIENT_ADD messages of IPv6 sessions an intercept could not take (it did not grant IPv6).",
                self.routes_ipv6_refused,
            )
            .summary("routes_ipv6_refused"),
            Figure::counter(
                "tcpcopy_intercept_connections_lost",
                "Control connections to intercept that were lost.",
                self.conns_lost,
            )
            .summary("intercept_conns_lost"),
            Figure::gauge(
                "tcpcopy_active_sessions",
                "Live sessions.",
                self.active_sessions as u64,
            )
            .line(Section::Sessions, "active"),
            Figure::gauge(
                "tcpcopy_buffered_segments",
                "Captured segments held by sessions, not yet sent.",
                self.buffered,
            ),
            Figure::gauge(
                "tcpcopy_sessions_awaiting_target",
                "Sessions whose pipelined requests the target may still be answering.",
                self.awaiting_target,
            ),
            Figure::gauge("tcpcopy_workers", "Replay workers.", self.workers as u64),
        ]
    }

    pub fn stats_line(&self) -> String {
        self.report().line()
    }

    /// The exit summary: every counter that is not zero, then the answer
    /// in words.
    pub fn summary(&self) -> String {
        let report = self.report();
        let mut out = String::from("tcpcopy summary\n");
        out.push_str(&report.summary_lines());
        out.push_str(&in_words(&self.engine, &report));
        if self.nic_dropped > 0 {
            out.push_str(&format!(
                "The capture interfaces dropped {} frames before tcpcopy saw them (their receive \
                 rings overflowed): whatever they carried is missing above, uncounted.\n",
                self.nic_dropped
            ));
        }
        out
    }

    /// The Prometheus exposition of these totals (names in the README).
    pub fn exposition(&self) -> Exposition {
        let mut x = self.report().exposition(Some((
            "tcpcopy_lost_segments",
            "Captured client segments that were not replayed, by reason.",
        )));
        x.build_info("tcpcopy");
        if !self.verdicts.is_empty() {
            verdict_metrics(&mut x, &self.verdicts);
        }
        x
    }

    /// `--verdict`: the table of each target, for the log.
    pub fn verdict_tables(&self) -> Option<String> {
        (!self.verdicts.is_empty()).then(|| {
            self.verdicts
                .iter()
                .map(|(name, v)| v.table(name, self.target_prefixes))
                .collect::<Vec<_>>()
                .join("\n")
        })
    }

    /// `--verdict-json`: the same as JSON, one object per target.
    pub fn verdict_json(&self) -> String {
        let targets: Vec<String> = self
            .verdicts
            .iter()
            .map(|(name, v)| v.json(name, self.target_prefixes))
            .collect();
        format!("{{\"verdict\":[{}]}}\n", targets.join(","))
    }
}

/// The verdict's metrics, per target.
fn verdict_metrics(x: &mut Exposition, verdicts: &[(String, VerdictStats)]) {
    let lab = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let mut responses = Vec::new();
    let mut mismatches = Vec::new();
    let mut compared = Vec::new();
    let mut failures = Vec::new();
    let mut unpaired = Vec::new();
    let mut latency = Vec::new();
    for (target, v) in verdicts {
        for (side, mix) in [("online", &v.online_status), ("target", &v.target_status)] {
            for (status, n) in mix {
                responses.push((
                    lab(&[
                        ("target", target),
                        ("side", side),
                        ("status", status.as_str()),
                    ]),
                    *n,
                ));
            }
        }
        mismatches.push((lab(&[("target", target)]), v.mismatched));
        compared.push((lab(&[("target", target)]), v.compared));
        for (f, n) in &v.failures {
            failures.push((lab(&[("target", target), ("failure", f.name())]), *n));
        }
        unpaired.push((
            lab(&[("target", target), ("missing", "online")]),
            v.unpaired_online,
        ));
        unpaired.push((
            lab(&[("target", target), ("missing", "target")]),
            v.unpaired_target,
        ));
        unpaired.push((
            lab(&[("target", target), ("missing", "request")]),
            v.answers_without_request,
        ));
        for (side, l) in [
            ("online", &v.online_latency),
            ("target", &v.target_latency),
            ("intercept", &v.intercept_latency),
        ] {
            let (buckets, sum) = l.buckets();
            latency.push((
                lab(&[("target", target), ("side", side)]),
                sum,
                l.count(),
                buckets,
            ));
        }
    }
    x.labelled_counters(
        "tcpcopy_verdict_responses",
        "Answers the verdict read, by side (online, target) and status.",
        responses,
    );
    x.labelled_counters(
        "tcpcopy_verdict_compared",
        "Requests whose two answers were read and compared.",
        compared,
    );
    x.labelled_counters(
        "tcpcopy_verdict_mismatches",
        "Compared requests whose target status differed from the online one.",
        mismatches,
    );
    x.labelled_counters(
        "tcpcopy_verdict_failures",
        "Requests the target failed: reset, timeout, refused.",
        failures,
    );
    x.labelled_counters(
        "tcpcopy_verdict_unpaired",
        "Requests left without one of their answers, by the side missing; missing=\"request\": online answers whose request never came.",
        unpaired,
    );
    x.histograms(
        "tcpcopy_verdict_latency_seconds",
        "Time to an answer's first byte, online (from the request's last captured segment) and target (from its last byte sent, through intercept); side intercept: intercept's share of the target's (its XDP program seeing the answer to writing the record).",
        latency,
    );
}

/// tcpcopy-ebpf's counters (tap mode).
fn kernel_figures(k: &[u64]) -> Vec<Figure> {
    const HELP: &str = "tcpcopy-ebpf counters, summed over CPUs.";
    let mut figures: Vec<Figure> = kc::NAMES
        .iter()
        .zip(k)
        .map(|(name, v)| {
            let f = Figure::series("tcpcopy_kernel_packets", "counter", *name, HELP, *v)
                .summary(format!("kernel {name}"));
            match *name {
                "matched" => f.line(Section::Kernel, "matched"),
                "ring_full" => f.line(Section::Kernel, "ring_full"),
                "too_big" => f.line(Section::Kernel, "too_big"),
                _ => f,
            }
        })
        .collect();
    let to_user = k[kc::TAPPED as usize] + k[kc::REDIRECTED as usize];
    figures.push(Figure::derived(to_user).line(Section::Kernel, "to_user"));
    figures
}

/// The process's memory, as `-m` sees it.
fn memory_figures() -> Vec<Figure> {
    use crate::memory;
    vec![
        Figure::gauge(
            "tcpcopy_heap_bytes",
            "Heap bytes tcpcopy holds (what -m budgets)",
            memory::heap_bytes(),
        ),
        Figure::gauge(
            "tcpcopy_memory_budget_bytes",
            "Heap budget for sessions under -m (0: no limit)",
            memory::budget_bytes(),
        ),
        Figure::gauge(
            "tcpcopy_memory_refuse_at_bytes",
            "Heap at which -m refuses new sessions (0: no limit)",
            memory::refuse_at_bytes(),
        ),
        Figure::gauge(
            "tcpcopy_memory_pressure",
            "Under -m: 0 none, 1 new sessions refused, 2 growing sessions given up",
            memory::pressure() as u64,
        ),
        Figure::gauge(
            "tcpcopy_resident_bytes",
            "Resident memory (VmRSS)",
            memory::status_bytes("VmRSS").unwrap_or(0),
        ),
    ]
}

/// Where the captured segments went, in words.
fn in_words(e: &Counters, report: &Report) -> String {
    let mut s = format!(
        "{} segments captured, {} replayed ({} requests, {} bytes) to the target",
        e.captured, e.replayed, e.requests_replayed, e.bytes_replayed
    );
    match report.losses_in_words() {
        (_, None) => s.push_str("; none lost.\n"),
        (total, Some(why)) => s.push_str(&format!("; {total} lost: {why}.\n")),
    }
    s
}

#[cfg(test)]
mod tests {
    use super::Totals;
    use tcpcopy_common::tcpcopy_counter as kc;

    fn totals() -> Totals {
        let mut t = Totals::default();
        t.engine.captured = 100;
        t.engine.replayed = 90;
        t.engine.requests_replayed = 40;
        t.engine.lost_timed_out = 4;
        t.engine.session_limit = 1;
        t.sent = 95;
        t.capture.packets = 100;
        t.dispatch_queue_full = 2;
        let mut k = vec![0; kc::COUNT as usize];
        k[kc::MATCHED as usize] = 103;
        k[kc::TAPPED as usize] = 100;
        k[kc::RING_FULL as usize] = 3;
        t.kernel = Some(k);
        t.workers = 2;
        t
    }

    #[test]
    fn the_line_and_the_summary_come_from_the_declarations() {
        let t = totals();
        let line = t.stats_line();
        assert!(
            line.starts_with(
                "kernel matched:103 ring_full:3 too_big:0 to_user:100 | captured:100 replayed:90"
            ),
            "{line}"
        );
        assert!(
            line.contains("requests:40") && line.contains("lost:5"),
            "{line}"
        );
        assert!(
            line.contains("| sessions ") && line.contains("sent:95"),
            "{line}"
        );
        let summary = t.summary();
        for name in [
            "kernel matched",
            "captured",
            "lost_timed_out",
            "packets_sent_ok",
            "dispatch_queue_full",
        ] {
            assert!(summary.contains(&format!("  {name} ")), "{name}: {summary}");
        }
        assert!(
            !summary.contains("send_errors"),
            "zeros are not listed: {summary}"
        );
        assert!(
            summary.ends_with(
                "100 segments captured, 90 replayed (40 requests, 0 bytes) to the target; \
                 10 lost: 4 session timed out, 3 kernel ring full, 2 worker queue full, \
                 1 session limit (--max-sessions) reached.\n"
            ),
            "{summary}"
        );
    }

    /// Frames the NIC dropped are said apart from the losses: a counter,
    /// a metric, and a sentence after the answer, only when there were any.
    #[test]
    fn frames_the_nic_dropped_are_reported_apart_from_the_losses() {
        let quiet = totals().summary();
        assert!(!quiet.contains("nic_dropped"), "{quiet}");
        assert!(!quiet.contains("capture interfaces"), "{quiet}");
        let mut t = totals();
        t.nic_dropped = 12;
        let summary = t.summary();
        assert!(
            summary.contains("  nic_dropped_before_capture "),
            "{summary}"
        );
        assert!(
            summary.contains("; 10 lost: ")
                && summary.ends_with(
                    "The capture interfaces dropped 12 frames before tcpcopy saw them (their \
                     receive rings overflowed): whatever they carried is missing above, \
                     uncounted.\n"
                ),
            "not among the losses, said after them: {summary}"
        );
        let text = t.exposition().render();
        assert!(
            text.contains("tcpcopy_nic_dropped_frames_total 12"),
            "{text}"
        );
    }

    #[test]
    fn the_metrics_keep_their_names() {
        let text = totals().exposition().render();
        for series in [
            "tcpcopy_kernel_packets_total{counter=\"ring_full\"} 3",
            "tcpcopy_engine_segments_total{counter=\"captured\"} 100",
            "tcpcopy_capture_packets_total{event=\"read\"} 100",
            "tcpcopy_capture_packets_total{event=\"queue_full\"} 2",
            "tcpcopy_lost_segments_total{reason=\"kernel_ring_full\"} 3",
            "tcpcopy_lost_segments_total{reason=\"session_timeout\"} 4",
            "tcpcopy_lost_segments_total{reason=\"session_limit\"} 1",
            "tcpcopy_sent_packets_total 95",
            "tcpcopy_workers 2",
            "tcpcopy_memory_budget_bytes ",
            "tcpcopy_build_info{",
            "tcpcopy_engine_requests_total{counter=\"requests_replayed\"}",
            "tcpcopy_engine_bytes_total{counter=\"bytes_replayed\"}",
            "tcpcopy_engine_sessions_total{counter=\"sessions_created\"}",
        ] {
            assert!(text.contains(series), "{series} missing:\n{text}");
        }
        assert!(
            !text.contains("tcpcopy_engine_segments_total{counter=\"bytes_replayed\"}"),
            "one unit per family"
        );
    }
}
