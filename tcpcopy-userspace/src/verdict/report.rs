//! The verdict's figures for one target: requests compared, the status
//! mix on each side, mismatches with examples, latency on each side (and
//! intercept's share of the target's), failures and requests left
//! unpaired. Workers keep their own and the
//! stats thread adds them up ([`VerdictStats::add`]); rendered as the
//! table in the log, as JSON (`--verdict-json`) and as metrics.

use std::{collections::BTreeMap, fmt::Write};

use super::status::Status;

/// Mismatching requests kept as examples.
pub const MAX_EXAMPLES: usize = 20;

/// What the target did instead of answering a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Failure {
    /// It reset or closed the connection with the request unanswered.
    Reset,
    /// It never answered (handshake or session timed out).
    Timeout,
    /// It refused the connection.
    Refused,
}

impl Failure {
    pub fn name(self) -> &'static str {
        match self {
            Failure::Reset => "reset",
            Failure::Timeout => "timeout",
            Failure::Refused => "refused",
        }
    }
}

/// A mismatching request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    /// The request's first line (`GET /differs HTTP/1.1`).
    pub request: String,
    pub online: Status,
    pub target: Status,
}

/// A distribution of latencies, kept in microseconds to three
/// significant digits (a count per bucket seen: at most 900 buckets a
/// decade, cheap to copy and add up).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Latency {
    counts: BTreeMap<u64, u64>,
    total: u64,
    sum_us: u64,
}

/// A latency's bucket: its first three digits (exact below 1 ms; within
/// 1% above).
fn bucket_us(us: u64) -> u64 {
    let mut unit = 1;
    while us / unit >= 1000 {
        unit *= 10;
    }
    us / unit * unit
}

impl Latency {
    pub fn record_us(&mut self, us: u64) {
        *self.counts.entry(bucket_us(us)).or_default() += 1;
        self.total += 1;
        self.sum_us += us;
    }
    pub fn record_ms(&mut self, ms: u64) {
        self.record_us(ms.saturating_mul(1000));
    }
    pub fn add(&mut self, o: &Latency) {
        for (us, n) in &o.counts {
            *self.counts.entry(*us).or_default() += n;
        }
        self.total += o.total;
        self.sum_us += o.sum_us;
    }
    pub fn count(&self) -> u64 {
        self.total
    }
    pub fn max_us(&self) -> u64 {
        self.counts.keys().next_back().copied().unwrap_or(0)
    }
    /// The `q` quantile (0..=1), in microseconds.
    pub fn quantile_us(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (us, n) in &self.counts {
            seen += n;
            if seen >= rank {
                return *us;
            }
        }
        self.max_us()
    }
    /// Prometheus buckets (upper bound in seconds, count in the bucket),
    /// and the sum in seconds.
    pub fn buckets(&self) -> (Vec<(f64, u64)>, f64) {
        const BOUNDS_US: [u64; 17] = [
            50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000,
            500_000, 1_000_000, 2_000_000, 5_000_000, 10_000_000,
        ];
        let mut out: Vec<(f64, u64)> = BOUNDS_US.iter().map(|b| (*b as f64 / 1e6, 0)).collect();
        out.push((f64::INFINITY, 0));
        for (us, n) in &self.counts {
            let i = BOUNDS_US
                .iter()
                .position(|b| us < b)
                .unwrap_or(BOUNDS_US.len());
            out[i].1 += n;
        }
        (out, self.sum_us as f64 / 1e6)
    }
    /// p50, p90, p99 and max in words.
    fn words(&self) -> String {
        format!(
            "p50 {}, p90 {}, p99 {}, max {}",
            ms_words(self.quantile_us(0.5)),
            ms_words(self.quantile_us(0.9)),
            ms_words(self.quantile_us(0.99)),
            ms_words(self.max_us())
        )
    }
    fn json(&self) -> String {
        format!(
            "{{\"count\":{},\"p50_ms\":{},\"p90_ms\":{},\"p99_ms\":{},\"max_ms\":{}}}",
            self.count(),
            ms_number(self.quantile_us(0.5)),
            ms_number(self.quantile_us(0.9)),
            ms_number(self.quantile_us(0.99)),
            ms_number(self.max_us())
        )
    }
}

/// Microseconds as milliseconds, to the microsecond: `0.043`, `12`.
fn ms_number(us: u64) -> String {
    let s = format!("{}.{:03}", us / 1000, us % 1000);
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn ms_words(us: u64) -> String {
    format!("{} ms", ms_number(us))
}

/// One compared request's latencies, in microseconds: online and target,
/// and intercept's share of the target's when it told.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Latencies {
    pub online_us: u64,
    pub target_us: u64,
    pub intercept_us: Option<u32>,
}

/// The verdict for one target.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerdictStats {
    /// Requests with both answers read.
    pub compared: u64,
    pub mismatched: u64,
    pub online_status: BTreeMap<Status, u64>,
    pub target_status: BTreeMap<Status, u64>,
    pub online_latency: Latency,
    pub target_latency: Latency,
    /// intercept's share of the target's latency: from its XDP program
    /// seeing the answer to writing its record to tcpcopy.
    pub intercept_latency: Latency,
    pub failures: BTreeMap<Failure, u64>,
    /// Requests whose online answer never came (only the target's did, or
    /// neither).
    pub unpaired_online: u64,
    /// Requests the online server answered and the target did not, with
    /// no failure to blame.
    pub unpaired_target: u64,
    /// Online answers kept for a request that never came (dropped beyond
    /// the bound, or left at the session's end).
    pub answers_without_request: u64,
    pub examples: Vec<Example>,
}

impl VerdictStats {
    /// A request with both answers read.
    pub fn compared(
        &mut self,
        online: Status,
        target: Status,
        latency: Latencies,
        example: impl FnOnce() -> Example,
    ) {
        self.compared += 1;
        *self.online_status.entry(online).or_default() += 1;
        *self.target_status.entry(target).or_default() += 1;
        self.online_latency.record_us(latency.online_us);
        self.target_latency.record_us(latency.target_us);
        if let Some(us) = latency.intercept_us {
            self.intercept_latency.record_us(us as u64);
        }
        if online != target {
            self.mismatched += 1;
            if self.examples.len() < MAX_EXAMPLES {
                let e = example();
                tracing::info!(
                    request = %e.request,
                    online = %e.online,
                    target = %e.target,
                    "verdict: the target answered differently"
                );
                self.examples.push(e);
            }
        }
    }

    /// A request left without one of its answers.
    pub fn unpaired(&mut self, online_read: bool, target_read: bool) {
        if !online_read {
            self.unpaired_online += 1;
        } else if !target_read {
            self.unpaired_target += 1;
        }
    }

    /// A request the target failed (its online status, when read).
    pub fn failed(&mut self, f: Failure, online: Option<Status>) {
        *self.failures.entry(f).or_default() += 1;
        if let Some(s) = online {
            *self.online_status.entry(s).or_default() += 1;
        }
    }

    pub fn add(&mut self, o: &VerdictStats) {
        self.compared += o.compared;
        self.mismatched += o.mismatched;
        for (s, n) in &o.online_status {
            *self.online_status.entry(*s).or_default() += n;
        }
        for (s, n) in &o.target_status {
            *self.target_status.entry(*s).or_default() += n;
        }
        self.online_latency.add(&o.online_latency);
        self.target_latency.add(&o.target_latency);
        self.intercept_latency.add(&o.intercept_latency);
        for (f, n) in &o.failures {
            *self.failures.entry(*f).or_default() += n;
        }
        self.unpaired_online += o.unpaired_online;
        self.unpaired_target += o.unpaired_target;
        self.answers_without_request += o.answers_without_request;
        for e in &o.examples {
            if self.examples.len() < MAX_EXAMPLES {
                self.examples.push(e.clone());
            }
        }
    }

    pub fn failed_total(&self) -> u64 {
        self.failures.values().sum()
    }

    /// The table the log shows, for target `name`; `target_side`: whether
    /// the intercepts send the target's payload (None: not known yet).
    pub fn table(&self, name: &str, target_side: Option<bool>) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "verdict for {name}: {} compared, {} matched, {} mismatched; failures {}; unpaired: {} without an online answer, {} without the target's, {} online answers without a request",
            self.compared,
            self.compared - self.mismatched,
            self.mismatched,
            failures_words(&self.failures),
            self.unpaired_online,
            self.unpaired_target,
            self.answers_without_request,
        );
        if target_side == Some(false) {
            let _ = writeln!(t, "  target side unavailable: an intercept did not grant the payload extension (a C intercept, or an older one); only online answers are seen");
        }
        let _ = writeln!(t, "  status   online: {}", mix(&self.online_status));
        let _ = writeln!(t, "  status   target: {}", mix(&self.target_status));
        let _ = writeln!(t, "  latency  online: {}", self.online_latency.words());
        let _ = writeln!(t, "  latency  target: {}", self.target_latency.words());
        if self.intercept_latency.count() > 0 {
            let _ = writeln!(
                t,
                "  of which intercept held the record: {}",
                self.intercept_latency.words()
            );
        }
        for e in &self.examples {
            let _ = writeln!(
                t,
                "  differs: {:?}: online {}, target {}",
                e.request, e.online, e.target
            );
        }
        t.trim_end().to_string()
    }

    /// The same as a JSON object.
    pub fn json(&self, name: &str, target_side: Option<bool>) -> String {
        let mix = |m: &BTreeMap<Status, u64>| {
            let items: Vec<String> = m
                .iter()
                .map(|(s, n)| format!("{}:{n}", json_str(s.as_str())))
                .collect();
            format!("{{{}}}", items.join(","))
        };
        let failures: Vec<String> = self
            .failures
            .iter()
            .map(|(f, n)| format!("\"{}\":{n}", f.name()))
            .collect();
        let examples: Vec<String> = self
            .examples
            .iter()
            .map(|e| {
                format!(
                    "{{\"request\":{},\"online\":{},\"target\":{}}}",
                    json_str(&e.request),
                    json_str(e.online.as_str()),
                    json_str(e.target.as_str())
                )
            })
            .collect();
        let side = match target_side {
            Some(true) => "\"available\"",
            Some(false) => "\"unavailable\"",
            None => "\"unknown\"",
        };
        format!(
            "{{\"target\":{},\"target_side\":{side},\"compared\":{},\"matched\":{},\"mismatched\":{},\"status\":{{\"online\":{},\"target\":{}}},\"latency\":{{\"online\":{},\"target\":{},\"intercept\":{}}},\"failures\":{{{}}},\"unpaired\":{{\"online\":{},\"target\":{},\"answers_without_request\":{}}},\"examples\":[{}]}}",
            json_str(name),
            self.compared,
            self.compared - self.mismatched,
            self.mismatched,
            mix(&self.online_status),
            mix(&self.target_status),
            self.online_latency.json(),
            self.target_latency.json(),
            self.intercept_latency.json(),
            failures.join(","),
            self.unpaired_online,
            self.unpaired_target,
            self.answers_without_request,
            examples.join(",")
        )
    }
}

fn mix(m: &BTreeMap<Status, u64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    let mut v: Vec<_> = m.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    v.iter()
        .map(|(s, n)| format!("{s} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn failures_words(m: &BTreeMap<Failure, u64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter()
        .map(|(f, n)| format!("{} {n}", f.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::status::{Parse, Protocol};

    fn st(b: &[u8]) -> Status {
        match Protocol::Http.status(b) {
            Parse::Done(s) => s,
            Parse::NeedMore => panic!("more"),
        }
    }

    #[test]
    fn quantiles_and_buckets() {
        let mut l = Latency::default();
        for ms in 1..=100 {
            l.record_ms(ms);
        }
        assert_eq!(l.quantile_us(0.5), 50_000);
        assert_eq!(l.quantile_us(0.9), 90_000);
        assert_eq!(l.quantile_us(0.99), 99_000);
        assert_eq!(l.max_us(), 100_000);
        assert_eq!(bucket_us(123_456), 123_000, "three digits");
        assert_eq!(bucket_us(999), 999);
        let (b, sum) = l.buckets();
        assert_eq!(b.iter().map(|x| x.1).sum::<u64>(), 100);
        assert_eq!(b[3], (0.0005, 0), "under 1 ms: none");
        assert_eq!(b[4], (0.001, 0), "under 1 ms: none");
        assert_eq!(b[5], (0.002, 1), "1 ms");
        assert!((sum - 5.05).abs() < 1e-9);
        // Below 1 ms, exact: intercept's share is tens of microseconds.
        let mut small = Latency::default();
        for us in [12, 40, 41, 41, 127] {
            small.record_us(us);
        }
        assert_eq!((small.quantile_us(0.5), small.max_us()), (41, 127));
        assert_eq!(
            small.words(),
            "p50 0.041 ms, p90 0.127 ms, p99 0.127 ms, max 0.127 ms"
        );
        assert_eq!(ms_number(12_000), "12");
        assert_eq!(ms_number(1_500), "1.5");
    }

    #[test]
    fn counts_add_up_and_examples_stay_bounded() {
        let mut a = VerdictStats::default();
        for i in 0..30 {
            let target = if i % 2 == 0 {
                st(b"HTTP/1.1 503 x")
            } else {
                st(b"HTTP/1.1 200 x")
            };
            let latency = Latencies {
                online_us: 1_000,
                target_us: 2_000,
                intercept_us: Some(30),
            };
            a.compared(st(b"HTTP/1.1 200 OK"), target, latency, || Example {
                request: format!("GET /{i} HTTP/1.1"),
                online: st(b"HTTP/1.1 200 OK"),
                target,
            });
        }
        assert_eq!((a.compared, a.mismatched, a.examples.len()), (30, 15, 15));
        let mut b = a.clone();
        b.add(&a);
        assert_eq!(
            (b.compared, b.mismatched, b.examples.len()),
            (60, 30, MAX_EXAMPLES)
        );
        assert_eq!(b.target_status[&st(b"HTTP/1.1 503 x")], 30);
        let table = b.table("10.0.2.2:8080", Some(true));
        assert!(
            table.contains("60 compared, 30 matched, 30 mismatched"),
            "{table}"
        );
        assert!(
            table.contains("\"GET /0 HTTP/1.1\": online 200, target 503"),
            "{table}"
        );
        let json = b.json("10.0.2.2:8080", Some(true));
        assert!(json.contains("\"mismatched\":30"), "{json}");
        assert!(
            json.contains("\"intercept\":{\"count\":60,\"p50_ms\":0.03,"),
            "{json}"
        );
        assert!(
            table.contains("of which intercept held the record: p50 0.03 ms"),
            "{table}"
        );
        assert!(
            json.contains("\"target\":{\"200\":30,\"503\":30}"),
            "{json}"
        );
    }
}
