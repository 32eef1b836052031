//! Offline replay (`--offline FILE`): a capture file read as a capture
//! source. [`OfflineSource`] releases each packet when the replay clock
//! reaches its own timestamp (divided by `-a`, idle gaps longer than `-I`
//! collapsed), or at once with `--speed max`, where the engines' own
//! request/response pacing is the only brake. It feeds the same dispatcher
//! and workers as live capture; `run` watches [`Progress`] to drain the
//! sessions at the end of each pass (`-T`) and to stop.
//!
//! Fixed C quirks: the one-packet look-ahead (each packet waits for its own
//! timestamp, not the previous one's), the repeated `-I` offset (each gap
//! is collapsed once), and the fixed 120 s tail (we wait until the sessions
//! are drained, at most `--drain-timeout`).

mod reader;
pub mod record;
#[cfg(test)]
mod tests;

pub use reader::{CaptureFile, Link, Next, ReadStats};

use std::{
    os::fd::RawFd,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Instant,
};

use anyhow::Result;

use crate::capture::{Capture, CaptureStats};

/// Pacing of an offline replay.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pace {
    /// `-a`: the file's clock runs this many times faster.
    pub accel: f64,
    /// `-I`: gaps between packets longer than this (ns) are collapsed.
    pub idle_gap_ns: Option<u64>,
    /// `--speed max`: no clock at all.
    pub max_speed: bool,
}

/// When each packet of one pass is due, on a clock that starts at 0 with
/// the pass (sans-IO: the caller compares with its own elapsed time).
#[derive(Debug)]
pub struct Pacer {
    pace: Pace,
    first: Option<u64>,
    last: u64,
    skipped: u64,
}

impl Pacer {
    /// File time from the first packet to the latest one.
    pub fn span_ns(&self) -> u64 {
        self.first.map_or(0, |f| self.last.saturating_sub(f))
    }

    pub fn new(pace: Pace) -> Pacer {
        Pacer {
            pace,
            first: None,
            last: 0,
            skipped: 0,
        }
    }

    /// Nanoseconds after the start of the pass at which a packet captured
    /// at `ts_ns` is due. Timestamps that go backwards are due at once.
    pub fn due(&mut self, ts_ns: u64) -> u64 {
        let first = *self.first.get_or_insert(ts_ns);
        if self.last == 0 {
            self.last = ts_ns;
        }
        if self.pace.max_speed {
            self.last = self.last.max(ts_ns);
            return 0;
        }
        if let Some(idle) = self.pace.idle_gap_ns {
            if ts_ns > self.last + idle {
                self.skipped += ts_ns - self.last;
            }
        }
        self.last = self.last.max(ts_ns);
        let file_time = ts_ns.saturating_sub(first).saturating_sub(self.skipped);
        (file_time as f64 / self.pace.accel.max(1e-9)) as u64
    }
}

/// Where an offline replay stands; shared by the source (in the dispatcher
/// thread) and `run`.
#[derive(Debug, Default)]
pub struct Progress {
    pub size: u64,
    /// Bytes of the file read in the current pass.
    pub offset: AtomicU64,
    /// Packets handed to the workers, all passes.
    pub released: AtomicU64,
    /// The pass now being read, from 1.
    pub pass: AtomicU32,
    /// The current pass reached its end and waits for `go_pass`.
    pub pass_done: AtomicBool,
    /// Set by `run` to let the next pass start.
    pub go_pass: AtomicU32,
    /// The last pass is done.
    pub finished: AtomicBool,
    /// Why the file could not be read to its end (truncated, corrupt).
    pub stopped: Mutex<Option<String>>,
    pub read: Mutex<ReadStats>,
    /// Of the last finished pass: file time it covered, and wall time it
    /// took to release (ns).
    pub last_pass_span_ns: AtomicU64,
    pub last_pass_wall_ns: AtomicU64,
}

pub struct OfflineSource {
    path: PathBuf,
    file: CaptureFile,
    pace: Pace,
    pacer: Pacer,
    passes: u32,
    pass: u32,
    /// Set when the pass's first packet is read.
    pass_start: Option<Instant>,
    waiting: bool,
    pending: Option<(u64, Vec<u8>)>,
    progress: Arc<Progress>,
    stats: CaptureStats,
    totals: ReadStats,
}

impl OfflineSource {
    /// Open the file (refusing what cannot be replayed) for `passes` passes.
    pub fn open(path: PathBuf, pace: Pace, passes: u32) -> Result<(OfflineSource, Arc<Progress>)> {
        let file = CaptureFile::open(&path)?;
        let progress = Arc::new(Progress {
            size: file.size(),
            ..Default::default()
        });
        progress.pass.store(1, Ordering::Relaxed);
        Ok((
            OfflineSource {
                path,
                file,
                pace,
                pacer: Pacer::new(pace),
                passes: passes.max(1),
                pass: 1,
                pass_start: None,
                waiting: false,
                pending: None,
                progress: Arc::clone(&progress),
                stats: CaptureStats::default(),
                totals: ReadStats::default(),
            },
            progress,
        ))
    }

    fn elapsed_ns(&self) -> u64 {
        self.pass_start.map_or(0, |s| s.elapsed().as_nanos() as u64)
    }

    fn end_of_pass(&mut self) {
        self.progress
            .last_pass_span_ns
            .store(self.pacer.span_ns(), Ordering::Relaxed);
        self.progress
            .last_pass_wall_ns
            .store(self.elapsed_ns(), Ordering::Relaxed);
        let s = self.file.stats;
        self.totals.add(&s);
        self.file.stats = ReadStats::default();
        self.publish_read();
        if self.pass < self.passes {
            self.waiting = true;
            self.progress.pass_done.store(true, Ordering::Release);
        } else {
            self.progress.finished.store(true, Ordering::Release);
        }
    }

    /// Reads of the finished passes plus the current one.
    fn publish_read(&self) {
        let mut s = self.totals;
        s.add(&self.file.stats);
        *self.progress.read.lock().unwrap_or_else(|e| e.into_inner()) = s;
    }

    fn next_pass(&mut self) -> bool {
        match CaptureFile::open(&self.path) {
            Ok(f) => {
                self.file = f;
                self.pacer = Pacer::new(self.pace);
                self.pass += 1;
                self.pass_start = None;
                self.waiting = false;
                self.progress.pass.store(self.pass, Ordering::Relaxed);
                self.progress.pass_done.store(false, Ordering::Release);
                true
            }
            Err(e) => {
                tracing::error!("reopening for pass {}: {e:#}", self.pass + 1);
                self.progress.finished.store(true, Ordering::Release);
                false
            }
        }
    }
}

impl Capture for OfflineSource {
    /// No fd: the dispatcher's short poll is the offline clock tick.
    fn fds(&self, _out: &mut Vec<RawFd>) {}

    fn read_batch(&mut self, max: usize, f: &mut dyn FnMut(&[u8])) -> usize {
        let mut n = 0;
        while n < max && !self.progress.finished.load(Ordering::Acquire) {
            if self.waiting
                && (self.progress.go_pass.load(Ordering::Acquire) <= self.pass || !self.next_pass())
            {
                break;
            }
            if self.pending.is_none() {
                match self.file.next_record() {
                    Next::Packet { ts_ns, ip } => {
                        self.pass_start.get_or_insert_with(Instant::now);
                        self.pending = Some((self.pacer.due(ts_ns), ip));
                    }
                    Next::Skipped => {
                        self.stats.skipped += 1;
                        continue;
                    }
                    Next::End => {
                        self.end_of_pass();
                        continue;
                    }
                    Next::Stopped { offset, reason } => {
                        let msg = format!(
                            "{}: stopped reading at byte {offset} of {}: {reason}",
                            self.path.display(),
                            self.file.size()
                        );
                        tracing::warn!("{msg}");
                        *self
                            .progress
                            .stopped
                            .lock()
                            .unwrap_or_else(|e| e.into_inner()) = Some(msg);
                        self.end_of_pass();
                        continue;
                    }
                }
            }
            let Some((due, _)) = &self.pending else { break };
            if *due > self.elapsed_ns() {
                break;
            }
            let (_, ip) = self.pending.take().unwrap();
            f(&ip);
            n += 1;
        }
        self.stats.packets += n as u64;
        self.progress
            .offset
            .store(self.file.offset(), Ordering::Relaxed);
        self.progress
            .released
            .fetch_add(n as u64, Ordering::Release);
        if n > 0 {
            self.publish_read();
        }
        n
    }

    fn stats(&self) -> CaptureStats {
        self.stats
    }

    fn next_due(&self) -> Option<std::time::Duration> {
        let (due, _) = self.pending.as_ref()?;
        Some(std::time::Duration::from_nanos(
            due.saturating_sub(self.elapsed_ns()),
        ))
    }
}
