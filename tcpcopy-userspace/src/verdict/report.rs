//! The verdict's figures for one target: requests compared, the status
//! mix on each side, mismatches with examples, latency on each side,
//! failures and requests left unpaired. Workers keep their own and the
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

/// Latencies to the millisecond (a count per millisecond seen: few
/// distinct values, cheap to copy and add up).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Latency {
    counts: BTreeMap<u64, u64>,
    total: u64,
    sum_ms: u64,
}

impl Latency {
    pub fn record(&mut self, ms: u64) {
        *self.counts.entry(ms).or_default() += 1;
        self.total += 1;
        self.sum_ms += ms;
    }
    pub fn add(&mut self, o: &Latency) {
        for (ms, n) in &o.counts {
            *self.counts.entry(*ms).or_default() += n;
        }
        self.total += o.total;
        self.sum_ms += o.sum_ms;
    }
    pub fn count(&self) -> u64 {
        self.total
    }
    pub fn max_ms(&self) -> u64 {
        self.counts.keys().next_back().copied().unwrap_or(0)
    }
    /// The `q` quantile (0..=1), in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (ms, n) in &self.counts {
            seen += n;
            if seen >= rank {
                return *ms;
            }
        }
        self.max_ms()
    }
    /// Prometheus buckets (upper bound in seconds, count in the bucket),
    /// and the sum in seconds. A latency of n ms lies in [n, n+1) ms.
    pub fn buckets(&self) -> (Vec<(f64, u64)>, f64) {
        const BOUNDS_MS: [u64; 13] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000];
        let mut out: Vec<(f64, u64)> = BOUNDS_MS.iter().map(|b| (*b as f64 / 1000.0, 0)).collect();
        out.push((f64::INFINITY, 0));
        for (ms, n) in &self.counts {
            let i = BOUNDS_MS
                .iter()
                .position(|b| ms < b)
                .unwrap_or(BOUNDS_MS.len());
            out[i].1 += n;
        }
        (out, self.sum_ms as f64 / 1000.0)
    }
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
    pub failures: BTreeMap<Failure, u64>,
    /// Requests whose online answer never came (only the target's did, or
    /// neither).
    pub unpaired_online: u64,
    /// Requests the online server answered and the target did not, with
    /// no failure to blame.
    pub unpaired_target: u64,
    pub examples: Vec<Example>,
}

impl VerdictStats {
    /// A request with both answers read.
    pub fn compared(
        &mut self,
        online: Status,
        target: Status,
        online_ms: u64,
        target_ms: u64,
        example: impl FnOnce() -> Example,
    ) {
        self.compared += 1;
        *self.online_status.entry(online).or_default() += 1;
        *self.target_status.entry(target).or_default() += 1;
        self.online_latency.record(online_ms);
        self.target_latency.record(target_ms);
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
        for (f, n) in &o.failures {
            *self.failures.entry(*f).or_default() += n;
        }
        self.unpaired_online += o.unpaired_online;
        self.unpaired_target += o.unpaired_target;
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
            "verdict for {name}: {} compared, {} matched, {} mismatched; failures {}; unpaired: {} without an online answer, {} without the target's",
            self.compared,
            self.compared - self.mismatched,
            self.mismatched,
            failures_words(&self.failures),
            self.unpaired_online,
            self.unpaired_target,
        );
        if target_side == Some(false) {
            let _ = writeln!(t, "  target side unavailable: an intercept did not grant the payload extension (a C intercept, or an older one); only online answers are seen");
        }
        let _ = writeln!(t, "  status   online: {}", mix(&self.online_status));
        let _ = writeln!(t, "  status   target: {}", mix(&self.target_status));
        for (side, l) in [
            ("online", &self.online_latency),
            ("target", &self.target_latency),
        ] {
            let _ = writeln!(
                t,
                "  latency  {side}: p50 {} ms, p90 {} ms, p99 {} ms, max {} ms",
                l.quantile_ms(0.5),
                l.quantile_ms(0.9),
                l.quantile_ms(0.99),
                l.max_ms()
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
        let lat = |l: &Latency| {
            format!(
                "{{\"count\":{},\"p50_ms\":{},\"p90_ms\":{},\"p99_ms\":{},\"max_ms\":{}}}",
                l.count(),
                l.quantile_ms(0.5),
                l.quantile_ms(0.9),
                l.quantile_ms(0.99),
                l.max_ms()
            )
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
            "{{\"target\":{},\"target_side\":{side},\"compared\":{},\"matched\":{},\"mismatched\":{},\"status\":{{\"online\":{},\"target\":{}}},\"latency\":{{\"online\":{},\"target\":{}}},\"failures\":{{{}}},\"unpaired\":{{\"online\":{},\"target\":{}}},\"examples\":[{}]}}",
            json_str(name),
            self.compared,
            self.compared - self.mismatched,
            self.mismatched,
            mix(&self.online_status),
            mix(&self.target_status),
            lat(&self.online_latency),
            lat(&self.target_latency),
            failures.join(","),
            self.unpaired_online,
            self.unpaired_target,
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
            l.record(ms);
        }
        assert_eq!(l.quantile_ms(0.5), 50);
        assert_eq!(l.quantile_ms(0.9), 90);
        assert_eq!(l.quantile_ms(0.99), 99);
        assert_eq!(l.max_ms(), 100);
        let (b, sum) = l.buckets();
        assert_eq!(b.iter().map(|x| x.1).sum::<u64>(), 100);
        assert_eq!(b[0], (0.001, 0), "under 1 ms: none");
        assert_eq!(b[1], (0.002, 1), "1 ms");
        assert!((sum - 5.05).abs() < 1e-9);
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
            a.compared(st(b"HTTP/1.1 200 OK"), target, 1, 2, || Example {
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
            json.contains("\"target\":{\"200\":30,\"503\":30}"),
            "{json}"
        );
    }
}
