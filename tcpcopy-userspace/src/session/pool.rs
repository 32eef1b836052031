//! The `-c` client pool: the addresses replayed sessions come from instead
//! of their clients' own. IPv4 as the C tool writes it (`A.B.C.D`,
//! `A.B.C.x` for .1–.254, at most 4096 addresses); IPv6 as addresses or
//! prefixes (`2001:db8:ff::/112`, every address in it but the all-zeros
//! one, handed out in order without being listed). A client is bound to an
//! address of its own family; a family the pool has none of keeps its
//! clients' addresses.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{Arc, Mutex},
};

use super::config::{ConfigError, Transfer};
use crate::wire::Cidr;

/// Most IPv4 addresses a pool may list (the C tool's limit).
const MAX_V4: usize = 4096;

/// One family's addresses, in the order they are handed out.
#[derive(Debug, Default)]
struct Addresses {
    listed: Vec<IpAddr>,
    /// IPv6 prefixes: first address and how many follow it.
    ranges: Vec<(u128, u128)>,
}

impl Addresses {
    fn len(&self) -> u128 {
        self.listed.len() as u128 + self.ranges.iter().map(|r| r.1).sum::<u128>()
    }
    fn nth(&self, mut i: u128) -> IpAddr {
        if i < self.listed.len() as u128 {
            return self.listed[i as usize];
        }
        i -= self.listed.len() as u128;
        for &(first, count) in &self.ranges {
            if i < count {
                return Ipv6Addr::from(first + i).into();
            }
            i -= count;
        }
        unreachable!("index within len()")
    }
}

/// The pool. Each client address is bound, on first sight, to the next
/// pool address of its family in round-robin order, and keeps it for the
/// life of the process. Shared by all workers (so a client keeps one
/// address whichever worker sees it); each engine caches the bindings it
/// has used, so the lock is taken only the first time a worker meets a
/// client.
#[derive(Debug)]
pub struct ClientPool {
    v4: Addresses,
    v6: Addresses,
    /// Target addresses, never handed out.
    targets: Vec<IpAddr>,
    bound: Mutex<Bindings>,
}

#[derive(Debug, Default)]
struct Bindings {
    next_v4: u128,
    next_v6: u128,
    by_client: hashbrown::HashMap<IpAddr, IpAddr>,
}

impl ClientPool {
    /// Parse a `-c` list, leaving out every target address (spec §2.1.2).
    pub fn parse(s: &str, transfers: &[Transfer]) -> Result<Arc<ClientPool>, ConfigError> {
        let targets: Vec<IpAddr> = transfers.iter().map(|t| t.dst_ip).collect();
        let mut v4 = Addresses::default();
        let mut v6 = Addresses::default();
        for item in s.split(',').filter(|i| !i.is_empty()) {
            let bad = || ConfigError::ClientIp(item.into());
            if let Some(prefix) = item.strip_suffix('x') {
                let parts: Vec<&str> = prefix.trim_end_matches('.').split('.').collect();
                if parts.len() != 3 || !prefix.ends_with('.') {
                    return Err(bad());
                }
                let p: Vec<u8> = parts
                    .iter()
                    .map(|x| x.parse::<u8>().map_err(|_| bad()))
                    .collect::<Result<_, _>>()?;
                v4.listed
                    .extend((1..=254).map(|d| IpAddr::from(Ipv4Addr::new(p[0], p[1], p[2], d))));
                continue;
            }
            let net = Cidr::parse("-c", item).map_err(|_| bad())?;
            match net.addr {
                IpAddr::V4(_) if net.len == 32 => v4.listed.push(net.addr),
                IpAddr::V6(a) if net.len == 128 => v6.listed.push(a.into()),
                IpAddr::V6(a) => {
                    let host_bits = 128 - net.len as u32;
                    let first = u128::from(a) & u128::MAX.checked_shl(host_bits).unwrap_or(0);
                    let count = 1u128.checked_shl(host_bits).map_or(u128::MAX, |n| n - 1);
                    v6.ranges.push((first + 1, count));
                }
                IpAddr::V4(_) => return Err(bad()), // IPv4 networks: A.B.C.x
            }
        }
        v4.listed.retain(|ip| !targets.contains(ip));
        v6.listed.retain(|ip| !targets.contains(ip));
        if v4.listed.len() > MAX_V4 {
            return Err(ConfigError::TooManyClientIps);
        }
        let pool = ClientPool {
            v4,
            v6,
            targets,
            bound: Mutex::new(Bindings::default()),
        };
        // A range holding only target addresses is as empty as a list.
        if pool.v4.len() == 0 && (pool.v6.len() == 0 || pool.only_targets_in_v6()) {
            return Err(ConfigError::EmptyPool);
        }
        Ok(Arc::new(pool))
    }

    fn only_targets_in_v6(&self) -> bool {
        self.v6.len() <= self.targets.len() as u128
            && (0..self.v6.len()).all(|i| self.targets.contains(&self.v6.nth(i)))
    }

    /// The pool address `client` is replayed from (its own when the pool
    /// has none of its family).
    pub fn bind(&self, client: IpAddr) -> IpAddr {
        let mut g = self.bound.lock().unwrap_or_else(|e| e.into_inner());
        let Bindings {
            next_v4,
            next_v6,
            by_client,
        } = &mut *g;
        let (addrs, next) = match client {
            IpAddr::V4(_) => (&self.v4, next_v4),
            IpAddr::V6(_) => (&self.v6, next_v6),
        };
        let n = addrs.len();
        if n == 0 {
            return client;
        }
        *by_client.entry(client).or_insert_with(|| loop {
            let a = addrs.nth(*next % n);
            *next += 1;
            if !self.targets.contains(&a) {
                break a;
            }
        })
    }

    /// Addresses in the pool, both families (a prefix counts them all).
    pub fn len(&self) -> u128 {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::parse_transfers;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn x_expands_and_targets_are_left_out() {
        let t = parse_transfers("80-10.0.2.2:8080").unwrap();
        let p = ClientPool::parse("10.9.9.x", &t).unwrap();
        assert_eq!(p.len(), 254);
        assert_eq!(p.bind(ip("10.0.1.1")), ip("10.9.9.1"));
        let p = ClientPool::parse("10.0.2.2,10.9.9.7", &t).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p.bind(ip("10.0.1.1")), ip("10.9.9.7"));
        assert!(ClientPool::parse("10.9.9.*", &t).is_err());
        assert!(ClientPool::parse("10.9.9.0/24", &t).is_err());
        assert_eq!(
            ClientPool::parse("10.0.2.2", &t).err(),
            Some(ConfigError::EmptyPool)
        );
    }

    #[test]
    fn binding_is_round_robin_sticky_and_per_family() {
        let t = parse_transfers("80-10.0.2.2:8080,80-[2001:db8:ff::2]:8080").unwrap();
        let pool = ClientPool::parse("10.9.9.5,10.9.9.6,2001:db8:ff::/126", &t).unwrap();
        assert_eq!(pool.len(), 2 + 3);
        let (a, b) = (ip("10.0.1.10"), ip("10.0.1.11"));
        assert_eq!(pool.bind(a), ip("10.9.9.5"));
        assert_eq!(pool.bind(b), ip("10.9.9.6"));
        assert_eq!(pool.bind(a), ip("10.9.9.5"));
        // ::1, then ::2 is a target and skipped, then ::3, then ::1 again.
        let c: Vec<IpAddr> = (1..=4)
            .map(|i| pool.bind(ip(&format!("2001:db8:1::{i}"))))
            .collect();
        assert_eq!(
            c,
            [
                "2001:db8:ff::1",
                "2001:db8:ff::3",
                "2001:db8:ff::1",
                "2001:db8:ff::3"
            ]
            .map(ip)
        );
        // A pool of one family leaves the other's clients as they are.
        let v4_only = ClientPool::parse("10.9.9.5", &t).unwrap();
        assert_eq!(v4_only.bind(ip("2001:db8:1::9")), ip("2001:db8:1::9"));
        // A large prefix is not listed.
        let big = ClientPool::parse("2001:db8:ff::/64", &t).unwrap();
        assert_eq!(big.len(), (1u128 << 64) - 1);
        assert!(ClientPool::parse("2001:db8:ff::2/128", &t).is_err());
    }
}
