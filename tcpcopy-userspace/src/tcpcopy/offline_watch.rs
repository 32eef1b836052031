//! Watching an offline replay from `run`'s loop: a progress bar (position,
//! rate, ETA) when stderr is a terminal, and the end of each pass: once the
//! file is read, wait until every released packet reached a worker, no
//! session holds unsent segments and the target has answered what went
//! pipelined (or until nothing was sent or answered for `--drain-timeout`),
//! then start the next `-T` pass or end the replay.

use std::{
    io::IsTerminal,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use indicatif::{ProgressBar, ProgressStyle};

use super::{OfflinePlan, Totals};
use crate::offline::Progress;

/// How long the workers must report "drained" before we believe it (their
/// reports are published every 200 ms).
const SETTLE: Duration = Duration::from_millis(450);

pub struct OfflineWatch {
    plan: OfflinePlan,
    progress: Arc<Progress>,
    /// Since the end of the pass, or since the replay last made progress.
    eof_at: Option<Instant>,
    /// (replayed, responses) at the last look.
    last_moved: (u64, u64),
    drained_since: Option<Instant>,
    bar: Option<ProgressBar>,
}

impl OfflineWatch {
    pub fn new(plan: OfflinePlan, progress: Arc<Progress>) -> OfflineWatch {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(progress.size.max(1));
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar
        });
        OfflineWatch {
            plan,
            progress,
            eof_at: None,
            last_moved: (0, 0),
            drained_since: None,
            bar,
        }
    }

    fn pass(&self) -> u32 {
        self.progress.pass.load(Ordering::Relaxed)
    }

    /// "pass 1/2, 12.0 of 48.0 MB (25%)".
    pub fn position(&self) -> String {
        let off = self.progress.offset.load(Ordering::Relaxed) as f64;
        let size = self.progress.size.max(1) as f64;
        format!(
            "offline pass {}/{}, {:.1} of {:.1} MB ({:.0}%)",
            self.pass(),
            self.plan.passes,
            off / 1e6,
            size / 1e6,
            100.0 * off / size
        )
    }

    /// Log without tearing the bar.
    pub fn log(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| tracing::info!("{line}")),
            None => tracing::info!("{line}"),
        }
    }

    /// One look; true when the replay is over.
    pub fn step(&mut self, t: &Totals) -> bool {
        if let Some(bar) = &self.bar {
            bar.set_message(format!("pass {}/{}", self.pass(), self.plan.passes));
            bar.set_position(self.progress.offset.load(Ordering::Relaxed));
        }
        let finished = self.progress.finished.load(Ordering::Acquire);
        if !finished && !self.progress.pass_done.load(Ordering::Acquire) {
            return false;
        }
        if self.eof_at.is_none() {
            self.log(&format!(
                "pass {}: {:.3} s of capture read in {:.3} s",
                self.pass(),
                self.progress.last_pass_span_ns.load(Ordering::Relaxed) as f64 / 1e9,
                self.progress.last_pass_wall_ns.load(Ordering::Relaxed) as f64 / 1e9
            ));
        }
        // The drain timeout runs while nothing moves: a replay still
        // working through its backlog, or a target still answering, is
        // never cut short.
        let moved = (t.engine.replayed, t.engine.responses);
        if moved != self.last_moved {
            self.last_moved = moved;
            self.eof_at = Some(Instant::now());
        }
        let eof_at = *self.eof_at.get_or_insert_with(Instant::now);
        let released = self.progress.released.load(Ordering::Acquire);
        // Sent is not done: pipelined requests may still wait in the
        // target's buffer, and the end of the replay resets every session.
        let drained = t.capture.packets >= released && t.buffered == 0 && t.awaiting_target == 0;
        if drained {
            self.drained_since.get_or_insert_with(Instant::now);
        } else {
            self.drained_since = None;
        }
        let settled = self.drained_since.is_some_and(|d| d.elapsed() >= SETTLE);
        let timed_out = eof_at.elapsed() >= self.plan.drain_timeout;
        if !settled && !timed_out {
            return false;
        }
        if !settled {
            self.log(&format!(
                "drain timeout: nothing sent or answered for {} s; {} segments still held by {} sessions, {} awaiting the target",
                self.plan.drain_timeout.as_secs(),
                t.buffered,
                t.active_sessions,
                t.awaiting_target
            ));
        }
        self.eof_at = None;
        self.drained_since = None;
        if finished {
            self.log("offline replay is complete");
            return true;
        }
        let pass = self.pass();
        self.log(&format!("pass {pass} of {} complete", self.plan.passes));
        self.progress.go_pass.store(pass + 1, Ordering::Release);
        false
    }

    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The offline part of the exit summary.
pub fn offline_words(plan: &OfflinePlan, progress: &Progress) -> String {
    let r = *progress.read.lock().unwrap_or_else(|e| e.into_inner());
    let mut s = format!(
        "offline: {} packets read from {} in {} pass(es)",
        r.packets,
        plan.path.display(),
        progress.pass.load(Ordering::Relaxed)
    );
    if r.snapped + r.not_ip > 0 {
        s.push_str(&format!(
            "; skipped {} snapped short by the capture, {} not IP",
            r.snapped, r.not_ip
        ));
    }
    if let Some(stop) = progress
        .stopped
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
    {
        s.push_str(&format!("; {stop}"));
    }
    s.push('\n');
    s
}
