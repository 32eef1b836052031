//! tcpcopy's memory limit (`-m MB`): a counting global allocator that knows
//! how much heap the process holds, the budget that leaves for sessions
//! once the capture rings and the program itself are paid for, and the
//! pressure the workers read before each batch (refuse new sessions, then
//! shed sessions that keep buffering). The C tool exited when its RSS
//! passed `-m`; this one stays under it and counts what it gave up.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    sync::atomic::{AtomicIsize, AtomicU64, Ordering::Relaxed},
};

/// The system allocator, counting the bytes it holds.
pub struct CountingAlloc;

/// Heap bytes held, summed over threads (each thread's last few KiB may not
/// have arrived yet: see `FLUSH`).
static HEAP: AtomicIsize = AtomicIsize::new(0);
/// A thread adds its allocations to `HEAP` once they move this far, so the
/// shared counter is touched rarely.
const FLUSH: isize = 64 * 1024;

thread_local! {
    static DELTA: Cell<isize> = const { Cell::new(0) };
}

/// What one allocation costs in glibc malloc: its chunk header, rounded up
/// to the 16-byte granule (a 1-byte Vec still takes 32 bytes).
fn charge(size: usize) -> isize {
    (((size + 8).max(32) + 15) & !15) as isize
}

fn account(bytes: isize) {
    // `try_with`: a thread being torn down has no DELTA any more.
    let flushed = DELTA.try_with(|d| {
        let v = d.get() + bytes;
        if v.abs() >= FLUSH {
            HEAP.fetch_add(v, Relaxed);
            d.set(0);
        } else {
            d.set(v);
        }
    });
    if flushed.is_err() {
        HEAP.fetch_add(bytes, Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to `System`; the counting
// touches only an atomic and a const-initialised thread-local that has no
// destructor (no allocation on the way).
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            account(charge(layout.size()));
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            account(charge(layout.size()));
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        account(-charge(layout.size()));
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            account(charge(new_size) - charge(layout.size()));
        }
        p
    }
}

/// Heap bytes held now (0 when the counting allocator is not installed).
pub fn heap_bytes() -> u64 {
    HEAP.load(Relaxed).max(0) as u64
}

/// A field of `/proc/self/status` in bytes (`VmRSS`, `VmHWM`).
pub fn status_bytes(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// How hard the workers must hold back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Pressure {
    #[default]
    None,
    /// Near the budget: no new sessions.
    Refuse,
    /// At the budget: also give up sessions that keep buffering.
    Shed,
}

/// Heap budget for everything that grows with the traffic (0: no limit).
static BUDGET: AtomicU64 = AtomicU64::new(0);

/// New sessions stop at this share of the budget (per mille), so the rest
/// absorbs the sessions already open.
const REFUSE_AT: u64 = 850;

/// The heap budget of `-m` in bytes (0: no limit).
pub fn budget_bytes() -> u64 {
    BUDGET.load(Relaxed)
}

/// The heap at which new sessions are refused (0: no limit).
pub fn refuse_at_bytes() -> u64 {
    budget_bytes() * REFUSE_AT / 1000
}

/// The current pressure against the budget set by [`set_limit`].
pub fn pressure() -> Pressure {
    let budget = BUDGET.load(Relaxed);
    if budget == 0 {
        return Pressure::None;
    }
    let heap = heap_bytes();
    if heap >= budget {
        Pressure::Shed
    } else if heap >= refuse_at_bytes() {
        Pressure::Refuse
    } else {
        Pressure::None
    }
}

/// Room kept for what the heap counter cannot see: allocator free lists
/// and fragmentation, thread stacks, a batch in flight between checks.
const SLACK: u64 = 8 << 20;

/// Set the limit of `-m`: `limit` bytes of resident memory in all, of
/// which what the process holds outside the heap is taken first: now, or
/// `reserved` (capture rings and UMEM) if more. (The kernel maps the pages
/// of tap rings and of xsk-rs UMEMs in when they are created, so they are
/// resident already; `reserved` covers a mapping that fills later.)
/// Fails, saying why, when too little would be left for sessions.
pub fn set_limit(limit: u64, reserved: u64) -> anyhow::Result<u64> {
    let rss = status_bytes("VmRSS").unwrap_or(0);
    let fixed = rss.saturating_sub(heap_bytes()).max(reserved) + SLACK;
    let heap_now = heap_bytes();
    let budget = limit.saturating_sub(fixed);
    let mib = |b: u64| b.div_ceil(1 << 20);
    if budget < heap_now + (16 << 20) {
        anyhow::bail!(
            "-m {}: too small: the program and its capture rings already take {} MiB \
             ({} MiB of rings), and sessions need at least 16 MiB more; use -m {} or more",
            mib(limit),
            mib(fixed - SLACK + heap_now),
            mib(reserved),
            mib(fixed + heap_now + (16 << 20))
        );
    }
    tracing::debug!(rss, heap_now, reserved, budget, "-m: the budget");
    BUDGET.store(budget, Relaxed);
    Ok(budget)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_follow_glibc_chunks() {
        assert_eq!(charge(0), 32);
        assert_eq!(charge(24), 32);
        assert_eq!(charge(25), 48);
        assert_eq!(charge(1000), 1008);
    }

    #[test]
    fn pressure_rises_with_the_heap() {
        // Without the counting allocator (unit tests) the heap reads 0.
        BUDGET.store(100, Relaxed);
        HEAP.store(50, Relaxed);
        assert_eq!(pressure(), Pressure::None);
        HEAP.store(90, Relaxed);
        assert_eq!(pressure(), Pressure::Refuse);
        HEAP.store(100, Relaxed);
        assert_eq!(pressure(), Pressure::Shed);
        BUDGET.store(0, Relaxed);
        HEAP.store(0, Relaxed);
        assert_eq!(pressure(), Pressure::None);
    }
}
