//! Process lifecycle shared by both programs: logging to stderr or a `-l`
//! file, `-d` daemonizing, the `-P` pid file (written, unlike the C tools,
//! and removed at exit), and the shutdown flag that SIGINT, SIGTERM and
//! SIGHUP raise so the run loops end through their normal, detaching exit.

use std::{
    fs::OpenOptions,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use anyhow::{Context, Result};

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

/// Detach from the terminal (fork, setsid, stdio to /dev/null). Must run
/// before any thread is started.
pub fn daemonize() -> Result<()> {
    // SAFETY: called before threads exist; daemon(3) forks and the parent exits.
    let r = unsafe { libc::daemon(1, 0) };
    if r != 0 {
        return Err(std::io::Error::last_os_error()).context("daemonizing (-d)");
    }
    Ok(())
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

/// A flag raised by SIGINT, SIGTERM or SIGHUP. SIGPIPE is ignored (a dead
/// peer shows up as a write error, never as a shutdown: a C-tool quirk fixed).
pub fn shutdown_flag() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(sig, Arc::clone(&flag))
            .context("installing signal handlers")?;
    }
    // SAFETY: setting a signal disposition to SIG_IGN.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    Ok(flag)
}

/// The common start of both programs: daemonize (`-d`), log to `-l` or
/// stderr, write the `-P` pid file, install the shutdown signals.
pub fn start(
    daemon: bool,
    log_file: Option<&Path>,
    pid_file: Option<&Path>,
) -> Result<(Option<PidFile>, Arc<AtomicBool>)> {
    if daemon {
        daemonize()?;
    }
    init_logging(log_file)?;
    let pid = pid_file.map(PidFile::create).transpose()?;
    Ok((pid, shutdown_flag()?))
}

pub fn should_stop(flag: &AtomicBool) -> bool {
    flag.load(Ordering::Relaxed)
}
