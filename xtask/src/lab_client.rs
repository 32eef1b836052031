//! `cargo xtask lab-client ADDR` (hidden; the e2e tests run it inside the
//! lab's client namespace): an HTTP client driven line by line from stdin,
//! so that a test builds exactly the load it asserts on instead of hoping
//! a load generator is fast enough.
//!
//! - `open N`: N more keep-alive connections, each sends one request and
//!   reads its answer, then stays open and idle;
//! - `get PATH`: one request on the first connection (opened if there is
//!   none), its answer read;
//! - `close`, or the end of stdin: close everything and exit.
//!
//! Each command is answered with a line `ok N` (N: connections open), or
//! `error ...`.
//!
//! `cargo xtask lab-slow-server ADDR DELAY_MS` (hidden): the other end, an
//! HTTP/1.1 server that answers every request `DELAY_MS` after it came, so
//! a test knows by construction how much slower a target is.

use std::{
    io::{BufRead, Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{bail, Context, Result};

pub fn run(addr: SocketAddr) -> Result<()> {
    let mut conns: Vec<TcpStream> = Vec::new();
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    for line in stdin.lock().lines() {
        let line = line?;
        let mut words = line.split_whitespace();
        let result = match (words.next(), words.next()) {
            (Some("open"), Some(n)) => open(addr, &mut conns, n.parse().context("open N")?),
            (Some("get"), Some(path)) => get_on_first(addr, &mut conns, path),
            (Some("close"), None) => break,
            _ => Err(anyhow::anyhow!("unknown command {line:?}")),
        };
        match result {
            Ok(()) => writeln!(out, "ok {}", conns.len())?,
            Err(e) => writeln!(out, "error {e:#}")?,
        }
        out.flush()?;
    }
    Ok(())
}

fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_nodelay(true)?;
    Ok(s)
}

fn open(addr: SocketAddr, conns: &mut Vec<TcpStream>, n: usize) -> Result<()> {
    for i in 0..n {
        let mut s = connect(addr)?;
        request(&mut s, &format!("/held/{}", conns.len() + i))?;
        conns.push(s);
    }
    Ok(())
}

fn get_on_first(addr: SocketAddr, conns: &mut Vec<TcpStream>, path: &str) -> Result<()> {
    if conns.is_empty() {
        conns.push(connect(addr)?);
    }
    request(&mut conns[0], path)
}

/// One GET, keep-alive, and its whole answer (headers and the body that
/// Content-Length announces).
fn request(s: &mut TcpStream, path: &str) -> Result<()> {
    write!(s, "GET {path} HTTP/1.1\r\nHost: lab\r\n\r\n")?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            bail!("the server closed the connection");
        }
        got.extend_from_slice(&buf[..n]);
        let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
        let body: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if got.len() >= end + 4 + body {
            return Ok(());
        }
    }
}

/// A lab client running in the lab's client namespace, driven from a test.
pub struct LabClient {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    answers: std::io::BufReader<std::process::ChildStdout>,
}

impl LabClient {
    /// Start one toward `addr` (a host and port the client namespace reaches).
    pub fn spawn(addr: &str) -> Result<LabClient> {
        use std::process::{Command, Stdio};
        let me = std::env::current_exe()?;
        // Room for thousands of held connections.
        let mut child = Command::new("ip")
            .args(["netns", "exec", crate::lab::CLIENT, "sh", "-c"])
            .arg(format!(
                "ulimit -n $(ulimit -Hn) && exec {} lab-client '{addr}'",
                me.display()
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the lab client")?;
        let stdin = child.stdin.take().context("lab client stdin")?;
        let answers = std::io::BufReader::new(child.stdout.take().context("lab client stdout")?);
        Ok(LabClient {
            child,
            stdin,
            answers,
        })
    }

    /// Send one command and wait for its answer; returns the connections open.
    pub fn command(&mut self, cmd: &str) -> Result<usize> {
        writeln!(self.stdin, "{cmd}")?;
        self.stdin.flush()?;
        let mut line = String::new();
        self.answers.read_line(&mut line)?;
        match line.trim().strip_prefix("ok ") {
            Some(n) => Ok(n.parse()?),
            None => bail!("lab client, `{cmd}`: {}", line.trim()),
        }
    }
}

impl Drop for LabClient {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "close");
        let _ = self.stdin.flush();
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Answer every HTTP request on `addr` with a short 200, `delay_ms` late;
/// keep-alive, a thread per connection, until killed.
pub fn slow_server(addr: SocketAddr, delay_ms: u64) -> Result<()> {
    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    buf.drain(..end + 4);
                    std::thread::sleep(Duration::from_millis(delay_ms));
                    let body = b"slow answer\n";
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                    if conn.write_all(head.as_bytes()).is_err() || conn.write_all(body).is_err() {
                        return;
                    }
                }
                match conn.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        });
    }
    Ok(())
}
