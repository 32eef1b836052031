//! Process lifecycle shared by both programs: logging to stderr or a `-l`
//! file, `-d` daemonizing, the `-P` pid file (written, unlike the C tools,
//! and removed at exit), and the shutdown flag that SIGINT, SIGTERM and
//! SIGHUP raise so the run loops end through their normal, detaching exit,
//! and its stop bell, which wakes a loop asleep in `poll`/`epoll` at once
//! (so an idle loop may sleep long without making the exit wait).
//!
//! `-d` tells the truth: the shell's process waits until the daemon says
//! it is ready ([`ready`]: interfaces found, XDP attached, intercept
//! reached) and exits 0, or until the daemon exits first, and then exits
//! with its status; until ready, the daemon's errors still reach the
//! terminal (and the `-l` log).

use std::{
    fs::OpenOptions,
    io::Write as _,
    os::{
        fd::{AsRawFd, RawFd},
        unix::net::UnixStream,
    },
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, OnceLock,
    },
    time::Duration,
};

use anyhow::{Context, Result};

/// The options both programs share, with the same letters and meanings:
/// logging, statistics and metrics, daemon, pid file, version, `--check`.
#[derive(clap::Args, Debug, Clone)]
pub struct CommonOptions {
    /// Log file (appended) [default: stderr]
    #[arg(
        short = 'l',
        long = "log",
        value_name = "FILE",
        help_heading = "Output and metrics"
    )]
    pub log_file: Option<PathBuf>,
    /// Seconds between statistics lines
    #[arg(
        long = "stats-interval",
        value_name = "SECONDS",
        default_value_t = 30,
        help_heading = "Output and metrics"
    )]
    pub stats_interval: u64,
    /// Serve Prometheus metrics on this address (GET /metrics)
    #[arg(
        long = "metrics",
        value_name = "ADDR:PORT",
        help_heading = "Output and metrics"
    )]
    pub metrics: Option<std::net::SocketAddr>,
    /// Run as a daemon, once start-up has succeeded (the shell gets its
    /// exit status)
    #[arg(short = 'd', long = "daemon", help_heading = "Process")]
    pub daemon: bool,
    /// Write the process id to this file (removed at exit)
    #[arg(
        short = 'P',
        long = "pid-file",
        value_name = "FILE",
        help_heading = "Process"
    )]
    pub pid_file: Option<PathBuf>,
    /// Print the version and exit
    #[arg(short = 'v', long = "version", help_heading = "Process")]
    pub version: bool,
    /// After a wake that found little work, pause this long before
    /// taking it, so that one wake serves many packets (0: take work at
    /// once; at most 10000)
    #[arg(long = "wake-pause", value_name = "MICROSECONDS", default_value_t = crate::wake::DEFAULT_PAUSE_US,
        value_parser = clap::value_parser!(u64).range(0..=10_000), help_heading = "Process")]
    pub wake_pause_us: u64,
    /// Check what this run needs (kernel, privileges, interfaces, the
    /// eBPF program, routes; tcpcopy: intercept and a probe of the loop;
    /// intercept: the control port, forwarding off), print a checklist
    /// and exit (1 if a check failed)
    #[arg(long = "check", help_heading = "Process")]
    pub check: bool,
    /// Write a man page or a shell completion script to stdout (for
    /// packaging)
    #[arg(long = "generate", value_enum, value_name = "WHAT", hide = true)]
    pub generate: Option<crate::docs::Generate>,
}

impl CommonOptions {
    /// `--wake-pause`.
    pub fn wake_pause(&self) -> std::time::Duration {
        std::time::Duration::from_micros(self.wake_pause_us)
    }
}

/// Set once tracing writes to a `-l` file rather than stderr.
static LOGS_TO_FILE: AtomicBool = AtomicBool::new(false);

/// What the user must see (the exit summary, a fatal error): on stderr,
/// and in the `-l` log when there is one (a daemon's stderr is
/// /dev/null).
pub fn tell(text: &str, fatal: bool) {
    eprintln!("{text}");
    if LOGS_TO_FILE.load(Ordering::Relaxed) {
        if fatal {
            tracing::error!("{text}");
        } else {
            tracing::info!("{text}");
        }
    }
}

/// Send `tracing` output to `log_file` (appended, created 0644) or stderr.
/// `RUST_LOG` overrides the default level (info).
pub fn init_logging(log_file: Option<&Path>) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    match log_file {
        Some(path) => {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening log file {}", path.display()))?;
            builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .init();
            LOGS_TO_FILE.store(true, Ordering::Relaxed);
        }
        None => {
            use std::io::IsTerminal;
            builder
                .with_ansi(std::io::stderr().is_terminal())
                .with_writer(std::io::stderr)
                .init()
        }
    }
    Ok(())
}

/// The write end of the pipe the waiting parent of a `-d` daemon reads.
static READY_PIPE: std::sync::Mutex<Option<std::os::fd::OwnedFd>> = std::sync::Mutex::new(None);

/// Detach from the terminal: fork and setsid. The parent waits (see the
/// module comment) and never returns; the child keeps the terminal's
/// stderr until [`ready`]. Must run before any thread is started.
pub fn daemonize() -> Result<()> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("daemonizing (-d): pipe");
    }
    // SAFETY: fresh fds, owned here.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: no threads exist yet (the caller's contract).
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()).context("daemonizing (-d): fork"),
        0 => {
            drop(read);
            // SAFETY: plain syscalls in the child.
            unsafe {
                libc::setsid();
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                if null >= 0 {
                    libc::dup2(null, 0);
                    libc::dup2(null, 1);
                    libc::close(null);
                }
            }
            *READY_PIPE.lock().unwrap_or_else(|e| e.into_inner()) = Some(write);
            Ok(())
        }
        child => {
            drop(write);
            std::process::exit(wait_for_daemon(read, child));
        }
    }
}

/// The parent of a `-d` daemon: 0 once it is ready, else its exit status.
fn wait_for_daemon(read: std::os::fd::OwnedFd, child: libc::pid_t) -> i32 {
    use std::io::Read;
    let mut byte = [0u8; 1];
    if matches!(std::fs::File::from(read).read(&mut byte), Ok(1)) {
        return 0;
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(child, &mut status, 0) };
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) != 0 {
        libc::WEXITSTATUS(status)
    } else {
        1
    }
}

/// Start-up succeeded: a `-d` daemon lets the waiting shell go (exit 0)
/// and lets go of the terminal. Nothing without `-d`.
pub fn ready() {
    let Some(fd) = READY_PIPE.lock().unwrap_or_else(|e| e.into_inner()).take() else {
        return;
    };
    let _ = std::io::Write::write_all(&mut std::fs::File::from(fd), b"R");
    // SAFETY: stderr onto /dev/null; the log is `-l` from here on.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 2);
            libc::close(null);
        }
    }
}

/// A pid file that is removed when dropped.
pub struct PidFile(PathBuf);

impl PidFile {
    pub fn create(path: &Path) -> Result<PidFile> {
        std::fs::write(path, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing pid file {}", path.display()))?;
        Ok(PidFile(path.to_path_buf()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The stop bell: a socket pair whose reading end becomes readable, and
/// stays readable (nothing reads it), once it is rung: by a signal
/// (signal-hook writes a byte) or by [`raise_stop`]. A loop that sleeps
/// in `poll` or `epoll` watches it too ([`stop_bell`]).
pub struct StopBell {
    read: UnixStream,
    write: UnixStream,
}

impl StopBell {
    pub fn new() -> Result<StopBell> {
        let (read, write) = UnixStream::pair().context("creating the stop bell")?;
        write.set_nonblocking(true)?;
        Ok(StopBell { read, write })
    }

    pub fn ring(&self) {
        let _ = (&self.write).write(&[1]);
    }

    /// The fd to watch for reading.
    pub fn fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    /// Sleep up to `most`, less once the bell has rung.
    pub fn sleep(&self, most: Duration) {
        let mut pfd = libc::pollfd {
            fd: self.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = most.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd. EINTR (a signal) just ends the sleep.
        unsafe { libc::poll(&mut pfd, 1, ms) };
    }
}

/// The process's bell, made by [`shutdown_flag`].
static STOP_BELL: OnceLock<StopBell> = OnceLock::new();

/// The process's stop bell's fd, once [`shutdown_flag`] made it.
pub fn stop_bell() -> Option<RawFd> {
    STOP_BELL.get().map(StopBell::fd)
}

/// Raise the shutdown flag from inside the program, and ring the bell.
pub fn raise_stop(flag: &AtomicBool) {
    flag.store(true, Ordering::Relaxed);
    if let Some(bell) = STOP_BELL.get() {
        bell.ring();
    }
}

/// Sleep up to `most`; the process's stop bell ends it sooner.
pub fn sleep_unless_stopped(most: Duration) {
    match STOP_BELL.get() {
        Some(bell) => bell.sleep(most),
        None => std::thread::sleep(most),
    }
}

/// A flag raised by SIGINT, SIGTERM or SIGHUP, each of which rings the
/// stop bell too. SIGPIPE is ignored (a dead peer shows up as a write
/// error, never as a shutdown: a C-tool quirk fixed).
pub fn shutdown_flag() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    if STOP_BELL.get().is_none() {
        let _ = STOP_BELL.set(StopBell::new()?);
    }
    let bell = &STOP_BELL.get().expect("made above").write;
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        // The flag first: whoever the bell wakes finds it raised.
        signal_hook::flag::register(sig, Arc::clone(&flag))
            .context("installing signal handlers")?;
        signal_hook::low_level::pipe::register(sig, bell.try_clone()?)
            .context("installing signal handlers")?;
    }
    // SAFETY: setting a signal disposition to SIG_IGN.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    Ok(flag)
}

/// The common start of both programs: daemonize (`-d`), log to `-l` or
/// stderr, write the `-P` pid file, install the shutdown signals.
pub fn start(opts: &CommonOptions) -> Result<(Option<PidFile>, Arc<AtomicBool>)> {
    if opts.daemon {
        daemonize()?;
    }
    init_logging(opts.log_file.as_deref())?;
    let pid = opts.pid_file.as_deref().map(PidFile::create).transpose()?;
    Ok((pid, shutdown_flag()?))
}

pub fn should_stop(flag: &AtomicBool) -> bool {
    flag.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::StopBell;
    use std::time::{Duration, Instant};

    /// Readable (a poll with no wait finds it), as many times as asked.
    fn rung(bell: &StopBell) -> bool {
        let mut pfd = libc::pollfd {
            fd: bell.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, 0) == 1 }
    }

    #[test]
    fn the_bell_stays_rung_and_ends_every_sleep() {
        let bell = StopBell::new().unwrap();
        assert!(!rung(&bell));
        bell.ring();
        for _ in 0..3 {
            assert!(rung(&bell), "nothing reads it, so it stays readable");
            // A minute's sleep, ended by the bell already rung: it does
            // not wait (the bound is far from any machine's speed).
            let start = Instant::now();
            bell.sleep(Duration::from_secs(60));
            assert!(start.elapsed() < Duration::from_secs(30));
        }
        bell.ring(); // ringing again is harmless
        assert!(rung(&bell));
    }
}
