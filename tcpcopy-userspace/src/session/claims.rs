//! Who owns a (client address, port), shared by the workers of one run.
//!
//! Two tables of this kind exist in a run with several workers:
//! - the connections to the target: every session claims the (client
//!   address, port) it replays from before it opens, and gives it back when
//!   it ends, so no two workers ever open the same connection (`-n` copies,
//!   `-c` addresses and moved ports included);
//! - the captured flows under AF_XDP capture: the worker whose RX queue a
//!   flow arrives on claims it, and a flow that later shows up on another
//!   worker's queue is handed to its owner.
//!
//! Claims are taken when a session opens or a flow is first seen, not per
//! segment, so the locks are off the hot path; the table is split into
//! shards so that workers opening sessions at once rarely meet.

use std::{net::IpAddr, sync::Mutex};

use hashbrown::{hash_map::Entry, HashMap};

use super::SessionKey;

/// A worker's number within its run.
pub type WorkerIndex = u16;

const SHARDS: usize = 64;

pub struct Claims {
    shards: Box<[Mutex<HashMap<SessionKey, WorkerIndex>>]>,
}

impl Default for Claims {
    fn default() -> Self {
        Claims {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

/// The flow hash the eBPF programs compute for a client of either family
/// (an IPv6 address folded to 32 bits first).
pub fn flow_hash(client: IpAddr, port: u16) -> u32 {
    let addr = match client {
        IpAddr::V4(v4) => u32::from(v4),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let w = |i: usize| u32::from_be_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            tcpcopy_common::fold_ipv6([w(0), w(4), w(8), w(12)])
        }
    };
    tcpcopy_common::flow_hash(addr, port)
}

impl Claims {
    fn shard(
        &self,
        key: SessionKey,
    ) -> std::sync::MutexGuard<'_, HashMap<SessionKey, WorkerIndex>> {
        let h = flow_hash(key.client, key.port) as usize;
        self.shards[h % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Claim `key` for `worker`: Ok if it was free or already `worker`'s,
    /// else the worker that holds it.
    pub fn claim(&self, key: SessionKey, worker: WorkerIndex) -> Result<(), WorkerIndex> {
        match self.shard(key).entry(key) {
            Entry::Occupied(o) if *o.get() == worker => Ok(()),
            Entry::Occupied(o) => Err(*o.get()),
            Entry::Vacant(v) => {
                v.insert(worker);
                Ok(())
            }
        }
    }

    /// Give `key` back, if `worker` holds it.
    pub fn release(&self, key: SessionKey, worker: WorkerIndex) {
        let mut shard = self.shard(key);
        if shard.get(&key) == Some(&worker) {
            shard.remove(&key);
            let len = shard.len();
            if shard.capacity() > 4 * len + 1024 {
                shard.shrink_to(2 * len);
            }
        }
    }

    /// The worker holding `key`, if any.
    pub fn owner(&self, key: SessionKey) -> Option<WorkerIndex> {
        self.shard(key).get(&key).copied()
    }

    /// Keys held, over all workers.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn key(port: u16) -> SessionKey {
        SessionKey {
            client: Ipv4Addr::new(10, 0, 0, 1).into(),
            port,
        }
    }

    #[test]
    fn a_key_has_one_owner_until_it_is_given_back() {
        let c = Claims::default();
        assert_eq!(c.claim(key(1), 0), Ok(()));
        assert_eq!(c.claim(key(1), 0), Ok(()), "claiming again is harmless");
        assert_eq!(c.claim(key(1), 3), Err(0));
        c.release(key(1), 3); // not 3's: stays
        assert_eq!(c.owner(key(1)), Some(0));
        c.release(key(1), 0);
        assert_eq!(c.owner(key(1)), None);
        assert_eq!(c.claim(key(1), 3), Ok(()));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn racing_workers_never_share_a_key() {
        let c = std::sync::Arc::new(Claims::default());
        let won: Vec<Vec<u16>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4u16)
                .map(|w| {
                    let c = &c;
                    s.spawn(move || (0..5000).filter(|&p| c.claim(key(p), w).is_ok()).collect())
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut all: Vec<u16> = won.concat();
        all.sort_unstable();
        assert_eq!(
            all,
            (0..5000).collect::<Vec<_>>(),
            "each port won exactly once"
        );
    }
}
