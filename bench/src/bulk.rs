//! `bench send` and `bench sink`: one bulk TCP stream at a fixed rate, and
//! a server that counts what it receives. The lab's elephant-flow checks
//! compare the sink on the online host with the one on the target; both
//! cost little CPU (64 KiB writes, 1 MiB reads), so on a 2-CPU machine the
//! measurement leaves the cores to what is measured.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

/// Send `seconds` of a stream at `bits_per_s` to `addr` (host:port), in
/// 64 KiB writes paced every millisecond; returns (bytes, seconds).
pub fn send(addr: &str, bits_per_s: f64, seconds: f64) -> Result<(u64, f64)> {
    let mut c = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    let chunk = vec![b'x'; 64 * 1024];
    let start = Instant::now();
    let mut sent = 0u64;
    loop {
        let elapsed = start.elapsed().as_secs_f64();
        if elapsed >= seconds {
            break;
        }
        let due = (bits_per_s / 8.0 * elapsed) as u64;
        if sent < due {
            c.write_all(&chunk)?;
            sent += chunk.len() as u64;
        } else {
            std::thread::sleep(Duration::from_micros(500));
        }
    }
    c.shutdown(std::net::Shutdown::Write)?;
    // Wait for the server's close, so every byte is delivered when we end.
    let mut rest = [0u8; 64];
    while matches!(c.read(&mut rest), Ok(n) if n > 0) {}
    Ok((sent, start.elapsed().as_secs_f64()))
}

/// Accept connections on `port` forever; after each one ends, write the
/// total bytes received over all of them to `out`.
pub fn sink(port: u16, out: PathBuf) -> Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", port)).with_context(|| format!("port {port}"))?;
    std::fs::write(&out, "0\n")?;
    let total = Arc::new(AtomicU64::new(0));
    for conn in listener.incoming() {
        let Ok(mut c) = conn else { continue };
        let (total, out) = (Arc::clone(&total), out.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 20];
            let mut got = 0u64;
            while let Ok(n) = c.read(&mut buf) {
                if n == 0 {
                    break;
                }
                got += n as u64;
            }
            let all = total.fetch_add(got, Ordering::SeqCst) + got;
            let _ = std::fs::write(&out, format!("{all}\n"));
        });
    }
    Ok(())
}
