//! Which tcpcopy connection gets a response (spec §3.5, §3.6.3): the route
//! table keyed by the exact 4-tuple of CLIENT_ADD (bounded, oldest route
//! evicted and counted), and the delay table that parks a SYN-ACK or RST
//! arriving before its CLIENT_ADD for up to 30 s. Sans-IO: no sockets, the
//! caller passes the clock.

use std::{collections::VecDeque, net::IpAddr};

use hashbrown::HashMap;

use crate::proto::{ResponseRecord, RouteMsg};

/// A control connection, as the server names it (never reused).
pub type PeerId = u64;

/// How long parked responses wait for their CLIENT_ADD.
pub const DELAY_MS: u64 = 30_000;
/// Most responses parked per 4-tuple (a handshake needs one or two).
const MAX_PARKED_PER_KEY: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteKey {
    pub client_ip: IpAddr,
    pub client_port: u16,
    pub target_ip: IpAddr,
    pub target_port: u16,
}

/// Two writes to the hasher (each address as one word, its port beside
/// it), not `IpAddr`'s discriminant-and-slice ones: looked up per record.
impl std::hash::Hash for RouteKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let word = crate::session::address_word;
        state.write_u128(word(self.client_ip) ^ ((self.client_port as u128) << 112));
        state.write_u128(word(self.target_ip) ^ ((self.target_port as u128) << 112));
    }
}

impl RouteKey {
    pub fn of_route(m: &RouteMsg) -> Self {
        RouteKey {
            client_ip: m.client_ip,
            client_port: m.client_port,
            target_ip: m.target_ip,
            target_port: m.target_port,
        }
    }
    /// The key of a response: it travels target → client.
    pub fn of_response(r: &ResponseRecord) -> Self {
        let ((client_ip, client_port), (target_ip, target_port)) = (r.client(), r.target());
        RouteKey {
            client_ip,
            client_port,
            target_ip,
            target_port,
        }
    }
}

/// What to do with one response record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    Send(PeerId),
    /// Parked in the delay table until its CLIENT_ADD arrives.
    Parked,
    /// No route and not a handshake answer: dropped.
    Unrouted,
    /// Would have been parked, but the delay table is full.
    DelayTableFull,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouterStats {
    pub route_adds: u64,
    pub routes_evicted: u64,
    pub routed: u64,
    pub unrouted: u64,
    pub parked: u64,
    pub parked_sent: u64,
    pub parked_expired: u64,
    pub delay_table_full: u64,
}

struct Route {
    peer: PeerId,
    seq: u64,
}

struct Parked {
    since_ms: u64,
    records: Vec<ResponseRecord>,
}

pub struct Router {
    routes: HashMap<RouteKey, Route>,
    /// Insertion order for eviction; entries whose seq no longer matches
    /// the table were overwritten and are skipped.
    order: VecDeque<(RouteKey, u64)>,
    next_seq: u64,
    max_routes: usize,
    parked: HashMap<RouteKey, Parked>,
    parked_order: VecDeque<(RouteKey, u64)>,
    max_parked_keys: usize,
    stats: RouterStats,
}

impl Router {
    pub fn new(max_routes: usize, max_parked_keys: usize) -> Self {
        Router {
            routes: HashMap::new(),
            order: VecDeque::new(),
            next_seq: 0,
            max_routes: max_routes.max(1),
            parked: HashMap::new(),
            parked_order: VecDeque::new(),
            max_parked_keys,
            stats: RouterStats::default(),
        }
    }

    pub fn stats(&self) -> RouterStats {
        self.stats
    }
    pub fn routes(&self) -> usize {
        self.routes.len()
    }
    pub fn parked_keys(&self) -> usize {
        self.parked.len()
    }

    /// Install a CLIENT_ADD (last add wins). Returns the responses that were
    /// parked for this 4-tuple, in arrival order, to be sent to `peer`.
    pub fn add_route(&mut self, msg: &RouteMsg, peer: PeerId) -> Vec<ResponseRecord> {
        let key = RouteKey::of_route(msg);
        self.stats.route_adds += 1;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.routes.insert(key, Route { peer, seq });
        self.order.push_back((key, seq));
        while self.routes.len() > self.max_routes {
            let Some((old, old_seq)) = self.order.pop_front() else {
                break;
            };
            if self.routes.get(&old).is_some_and(|r| r.seq == old_seq) {
                self.routes.remove(&old);
                self.stats.routes_evicted += 1;
            }
        }
        if self.order.len() > 2 * self.max_routes + 1024 {
            let routes = &self.routes;
            self.order
                .retain(|(k, s)| routes.get(k).is_some_and(|r| r.seq == *s));
        }
        match self.parked.remove(&key) {
            Some(p) => {
                self.stats.parked_sent += p.records.len() as u64;
                p.records
            }
            None => Vec::new(),
        }
    }

    /// Decide where a response goes.
    pub fn route(&mut self, now_ms: u64, record: &ResponseRecord) -> Disposition {
        let key = RouteKey::of_response(record);
        if let Some(r) = self.routes.get(&key) {
            self.stats.routed += 1;
            return Disposition::Send(r.peer);
        }
        let flags = record.flags();
        if !flags.syn() && !flags.rst() {
            self.stats.unrouted += 1;
            return Disposition::Unrouted;
        }
        if let Some(p) = self.parked.get_mut(&key) {
            if p.records.len() < MAX_PARKED_PER_KEY {
                p.records.push(record.clone());
                self.stats.parked += 1;
                return Disposition::Parked;
            }
            self.stats.delay_table_full += 1;
            return Disposition::DelayTableFull;
        }
        if self.parked.len() >= self.max_parked_keys {
            self.stats.delay_table_full += 1;
            return Disposition::DelayTableFull;
        }
        self.parked.insert(
            key,
            Parked {
                since_ms: now_ms,
                records: vec![record.clone()],
            },
        );
        self.parked_order.push_back((key, now_ms));
        self.stats.parked += 1;
        Disposition::Parked
    }

    /// Forget routes of a closed connection: their responses are unrouted
    /// from now on instead of going to a connection that no longer exists.
    pub fn peer_closed(&mut self, peer: PeerId) {
        self.routes.retain(|_, r| r.peer != peer);
    }

    /// Drop parked responses older than [`DELAY_MS`].
    pub fn expire(&mut self, now_ms: u64) {
        while let Some(&(key, since)) = self.parked_order.front() {
            if now_ms.saturating_sub(since) < DELAY_MS {
                break;
            }
            self.parked_order.pop_front();
            if let Some(p) = self.parked.get(&key) {
                if p.since_ms == since {
                    self.stats.parked_expired += p.records.len() as u64;
                    self.parked.remove(&key);
                }
            }
        }
    }
}

/// A record of a response 10.0.2.2:8080 → 10.9.9.5:`client_port`, for tests.
#[cfg(test)]
pub(super) fn test_record(flags: u8, client_port: u16, seq: u32) -> ResponseRecord {
    let mut b = [0u8; 64];
    b[0] = 0x45;
    b[2..4].copy_from_slice(&40u16.to_be_bytes());
    b[9] = 6;
    b[12..16].copy_from_slice(&[10, 0, 2, 2]);
    b[16..20].copy_from_slice(&[10, 9, 9, 5]);
    b[20..22].copy_from_slice(&8080u16.to_be_bytes());
    b[22..24].copy_from_slice(&client_port.to_be_bytes());
    b[24..28].copy_from_slice(&seq.to_be_bytes());
    b[32] = 5 << 4;
    b[33] = flags;
    ResponseRecord::new(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn record(flags: u8, client_port: u16) -> ResponseRecord {
        test_record(flags, client_port, 0)
    }

    fn add(port: u16) -> RouteMsg {
        RouteMsg::client_add(
            (Ipv4Addr::new(10, 9, 9, 5).into(), port),
            (Ipv4Addr::new(10, 0, 2, 2).into(), 8080),
        )
    }

    #[test]
    fn routed_by_exact_four_tuple_last_add_wins() {
        let mut r = Router::new(100, 100);
        assert!(r.add_route(&add(40000), 1).is_empty());
        assert_eq!(r.route(0, &record(0x10, 40000)), Disposition::Send(1));
        assert_eq!(r.route(0, &record(0x10, 40001)), Disposition::Unrouted);
        r.add_route(&add(40000), 2);
        assert_eq!(r.route(0, &record(0x10, 40000)), Disposition::Send(2));
        // Another target address is another key.
        let mut other = record(0x10, 40000);
        other.head[12..16].copy_from_slice(&[10, 0, 2, 3]);
        assert_eq!(r.route(0, &other), Disposition::Unrouted);
        assert_eq!(r.stats().unrouted, 2);
    }

    #[test]
    fn syn_ack_before_client_add_is_parked_then_delivered_in_order() {
        let mut r = Router::new(100, 100);
        let synack = record(0x12, 40000);
        let rst = record(0x04, 40000);
        assert_eq!(r.route(5, &synack), Disposition::Parked);
        assert_eq!(r.route(6, &rst), Disposition::Parked);
        assert_eq!(r.add_route(&add(40000), 7), vec![synack, rst]);
        assert_eq!(r.stats().parked_sent, 2);
        assert_eq!(r.parked_keys(), 0);
    }

    #[test]
    fn parked_responses_expire_after_30s() {
        let mut r = Router::new(100, 100);
        r.route(1000, &record(0x12, 40000));
        r.expire(1000 + DELAY_MS - 1);
        assert_eq!(r.parked_keys(), 1);
        r.expire(1000 + DELAY_MS);
        assert_eq!(r.parked_keys(), 0);
        assert_eq!(r.stats().parked_expired, 1);
        assert!(r.add_route(&add(40000), 1).is_empty());
    }

    #[test]
    fn tables_are_bounded_and_evictions_counted() {
        let mut r = Router::new(3, 2);
        for p in 1..=5 {
            r.add_route(&add(p), 9);
        }
        assert_eq!(r.routes(), 3);
        assert_eq!(r.stats().routes_evicted, 2);
        assert_eq!(r.route(0, &record(0x10, 1)), Disposition::Unrouted);
        assert_eq!(r.route(0, &record(0x10, 5)), Disposition::Send(9));
        // Re-adding an old key refreshes it; the stale order entry is skipped.
        r.add_route(&add(3), 9);
        r.add_route(&add(6), 9);
        assert_eq!(r.route(0, &record(0x10, 3)), Disposition::Send(9));
        assert_eq!(r.route(0, &record(0x10, 4)), Disposition::Unrouted);

        assert_eq!(r.route(0, &record(0x12, 100)), Disposition::Parked);
        assert_eq!(r.route(0, &record(0x12, 101)), Disposition::Parked);
        assert_eq!(r.route(0, &record(0x12, 102)), Disposition::DelayTableFull);
    }

    #[test]
    fn closed_peer_routes_are_forgotten() {
        let mut r = Router::new(10, 10);
        r.add_route(&add(1), 1);
        r.add_route(&add(2), 2);
        r.peer_closed(1);
        assert_eq!(r.route(0, &record(0x10, 1)), Disposition::Unrouted);
        assert_eq!(r.route(0, &record(0x10, 2)), Disposition::Send(2));
    }
}
