//! Choosing and shaping what is replayed (issue #24): the client filters
//! (`--only-clients`, `--skip-clients`), the `-g` ramp and the
//! `--max-session-rate` cap. The ramp and the cap decide once per captured
//! connection, at its first segment, and [`SkippedFlows`] remembers a
//! "skip" until the connection ends, so sessions are replayed or skipped
//! whole, never cut in the middle. The ramp's clock and the cap's window
//! are shared by every worker (one run, one ramp, one rate).

use super::config::sample_bucket;
use crate::wire::Cidr;
use hashbrown::HashMap;
use std::{
    collections::VecDeque,
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
};

/// `--only-clients` and `--skip-clients`, on the captured client address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientFilter {
    /// Empty: every client (that `skip` leaves).
    pub only: Vec<Cidr>,
    pub skip: Vec<Cidr>,
}

impl ClientFilter {
    pub fn is_empty(&self) -> bool {
        self.only.is_empty() && self.skip.is_empty()
    }
    /// Is a client at `ip` replayed?
    pub fn admits(&self, ip: IpAddr) -> bool {
        (self.only.is_empty() || self.only.iter().any(|c| c.contains(ip)))
            && !self.skip.iter().any(|c| c.contains(ip))
    }
}

/// `-g`: the C tool's gradual ramp (spec §4.2 step 8): the share of
/// sessions replayed, in percent, is the seconds since the first captured
/// connection plus one, full from the 100th second; chosen by the `-r`
/// bucket, so the sessions replayed at P% are those replayed at any lower
/// share and more. Quirk fixed: the C tool decided per packet, so a
/// connection skipped at its start was picked up mid-stream (a fabricated
/// SYN) once the share reached its bucket; here a connection keeps the
/// decision made at its first segment.
#[derive(Debug)]
pub struct Ramp {
    /// Engine clock (ms) of the first accepted segment; `u64::MAX` before.
    start: AtomicU64,
}

impl Default for Ramp {
    fn default() -> Self {
        Ramp {
            start: AtomicU64::new(u64::MAX),
        }
    }
}

impl Ramp {
    /// The share (1..=100) replayed at `now`; the first call starts the
    /// ramp.
    pub fn percent(&self, now: u64) -> u8 {
        let start =
            match self
                .start
                .compare_exchange(u64::MAX, now, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => now,
                Err(s) => s,
            };
        (now.saturating_sub(start) / 1000 + 1).min(100) as u8
    }

    /// Is a new connection from (client after `-c`, captured port)
    /// replayed at `now`?
    pub fn admits(&self, now: u64, client: IpAddr, port: u16) -> bool {
        sample_bucket(client, port) < self.percent(now)
    }
}

/// `--max-session-rate N`: no window of one second holds more than N new
/// sessions, over all workers. Exact, not smoothed: a burst takes the
/// second's N at once and the rest of the second is skipped.
#[derive(Debug)]
pub struct SessionRate {
    per_second: u32,
    /// Engine clock (ms) of the sessions admitted in the last second.
    admitted: Mutex<VecDeque<u64>>,
}

impl SessionRate {
    pub fn new(per_second: u32) -> Self {
        SessionRate {
            per_second: per_second.max(1),
            admitted: Mutex::new(VecDeque::new()),
        }
    }

    pub fn per_second(&self) -> u32 {
        self.per_second
    }

    /// May one more session start at `now`? (Taken if so.)
    pub fn admit(&self, now: u64) -> bool {
        let mut q = self.admitted.lock().unwrap_or_else(|e| e.into_inner());
        while q.front().is_some_and(|&t| t + 1000 <= now) {
            q.pop_front();
        }
        if q.len() >= self.per_second as usize {
            return false;
        }
        // Workers read the clock at slightly different moments: keep the
        // window ordered.
        let t = q.back().map_or(now, |&b| b.max(now));
        q.push_back(t);
        true
    }
}

/// Why a captured connection is not replayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// `-g`: its bucket was above the ramp's share when it started.
    Ramp,
    /// `--max-session-rate`: the second's sessions were taken.
    RateLimit,
}

#[derive(Clone, Copy, Debug)]
struct Skipped {
    why: Skip,
    /// The connection's SYN sequence number, when its SYN was seen: a
    /// SYN with another one is a new connection on the port.
    syn_seq: Option<u32>,
    last_seen: u64,
}

/// The captured connections a worker skips, until they end: a later SYN
/// with a new sequence number (the port reused) or `quiet_ms` without a
/// segment forgets one.
#[derive(Debug, Default)]
pub struct SkippedFlows {
    flows: HashMap<(IpAddr, u16), Skipped>,
    next_sweep: u64,
}

impl SkippedFlows {
    /// Whether the connection `seg` belongs to is skipped, and why (the
    /// segment is then counted by the caller). A SYN of a new connection
    /// forgets the old decision: the caller decides again.
    pub fn check(&mut self, now: u64, flow: (IpAddr, u16), syn: Option<u32>) -> Option<Skip> {
        if self.flows.is_empty() {
            return None;
        }
        let s = self.flows.get_mut(&flow)?;
        if syn.is_some() && s.syn_seq.is_some() && syn != s.syn_seq {
            self.flows.remove(&flow);
            return None;
        }
        s.last_seen = now;
        s.syn_seq = s.syn_seq.or(syn);
        Some(s.why)
    }

    pub fn insert(&mut self, now: u64, flow: (IpAddr, u16), syn: Option<u32>, why: Skip) {
        self.flows.insert(
            flow,
            Skipped {
                why,
                syn_seq: syn,
                last_seen: now,
            },
        );
    }

    /// Forget connections quiet for `quiet_ms` (looks at most once a
    /// second).
    pub fn sweep(&mut self, now: u64, quiet_ms: u64) {
        if now < self.next_sweep || self.flows.is_empty() {
            return;
        }
        self.next_sweep = now + 1000;
        self.flows.retain(|_, s| s.last_seen + quiet_ms > now);
        if self.flows.capacity() > 4 * self.flows.len() + 1024 {
            self.flows.shrink_to(2 * self.flows.len());
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.flows.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_only_then_skip() {
        let f = ClientFilter {
            only: Cidr::parse_list("o", "10.0.1.0/24").unwrap(),
            skip: Cidr::parse_list("s", "10.0.1.11").unwrap(),
        };
        assert!(f.admits(IpAddr::from([10, 0, 1, 10])));
        assert!(!f.admits(IpAddr::from([10, 0, 1, 11])));
        assert!(!f.admits(IpAddr::from([10, 0, 2, 10])));
        assert!(ClientFilter::default().admits(IpAddr::from([1, 1, 1, 1])));
    }

    #[test]
    fn ramp_share_is_seconds_plus_one_from_the_first_segment() {
        let r = Ramp::default();
        assert_eq!(r.percent(5_000), 1);
        assert_eq!(r.percent(5_999), 1);
        assert_eq!(r.percent(6_000), 2);
        assert_eq!(r.percent(5_000 + 49_000), 50);
        assert_eq!(r.percent(5_000 + 99_000), 100);
        assert_eq!(r.percent(5_000 + 500_000), 100);
    }

    #[test]
    fn rate_cap_holds_in_every_one_second_window() {
        let cap = SessionRate::new(10);
        // 100 sessions a second for 5 s, one every 10 ms.
        let admitted: Vec<u64> = (0..500u64)
            .map(|i| i * 10)
            .filter(|&t| cap.admit(t))
            .collect();
        for &t in &admitted {
            let in_window = admitted.iter().filter(|&&u| u >= t && u < t + 1000).count();
            assert!(in_window <= 10, "{in_window} in the second from {t}");
        }
        assert_eq!(admitted.len(), 50, "10 a second for 5 s");
    }

    #[test]
    fn skipped_flows_end_with_a_new_syn_or_quiet() {
        let mut s = SkippedFlows::default();
        let f = (IpAddr::from([10, 0, 1, 10]), 4000);
        s.insert(0, f, Some(100), Skip::RateLimit);
        assert_eq!(s.check(10, f, None), Some(Skip::RateLimit));
        assert_eq!(
            s.check(20, f, Some(100)),
            Some(Skip::RateLimit),
            "its SYN again"
        );
        assert_eq!(s.check(30, f, Some(900)), None, "a new connection");
        s.insert(30, f, None, Skip::Ramp);
        s.sweep(5_000, 6_000);
        assert_eq!(s.len(), 1);
        s.sweep(6_100, 6_000);
        assert_eq!(s.len(), 0);
    }
}
