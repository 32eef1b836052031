//! `--metrics ADDR`: a Prometheus endpoint for both programs. A small
//! blocking HTTP server on its own thread answers `GET /metrics` with the
//! OpenMetrics text that prometheus-client encodes from a snapshot the
//! program's main loop publishes (the hot paths never see a scrape).
//! Anything else gets 404 or 400; a slow or silent client is cut off by
//! socket timeouts, so a bad peer cannot stop the next scrape for long.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use anyhow::{Context, Result};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge, info::Info},
    registry::Registry,
};

pub type Labels = Vec<(String, String)>;
/// One histogram: its labels, sum, count and buckets (upper bound, count
/// in the bucket).
pub type HistogramSeries = (Labels, f64, u64, Vec<(f64, u64)>);

/// Histograms whose buckets were counted elsewhere (the verdict keeps its
/// latencies to the millisecond and adds them up across workers).
#[derive(Debug)]
struct FixedHistograms(Vec<HistogramSeries>);

impl prometheus_client::encoding::EncodeMetric for FixedHistograms {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        for (labels, sum, count, buckets) in &self.0 {
            encoder
                .encode_family(labels)?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    *sum, *count, buckets, None,
                )?;
        }
        Ok(())
    }
    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Histogram
    }
}

/// One scrape's worth of metrics, built from plain numbers.
#[derive(Default)]
pub struct Exposition {
    registry: Registry,
}

impl Exposition {
    /// A counter; the exposition name gets the `_total` suffix.
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        let c: Counter = Counter::default();
        c.inc_by(value);
        self.registry.register(name, help, c);
    }

    /// A counter with one label, one series per (label value, value).
    pub fn counters<'a>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        values: impl IntoIterator<Item = (&'a str, u64)>,
    ) {
        let family = Family::<Labels, Counter>::default();
        for (v, n) in values {
            family
                .get_or_create(&vec![(label.to_string(), v.to_string())])
                .inc_by(n);
        }
        self.registry.register(name, help, family);
    }

    /// A counter with several labels, one series per (labels, value).
    pub fn labelled_counters(&mut self, name: &str, help: &str, series: Vec<(Labels, u64)>) {
        let family = Family::<Labels, Counter>::default();
        for (labels, n) in series {
            family.get_or_create(&labels).inc_by(n);
        }
        self.registry.register(name, help, family);
    }

    /// Histograms counted elsewhere: per series (labels, sum, count,
    /// buckets as (upper bound, count in the bucket)).
    pub fn histograms(&mut self, name: &str, help: &str, series: Vec<HistogramSeries>) {
        self.registry.register(name, help, FixedHistograms(series));
    }

    /// `NAME_info{labels} 1`: what is running (version, protocol).
    pub fn info(&mut self, name: &str, help: &str, labels: &[(&str, &str)]) {
        let labels: Labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.registry.register(name, help, Info::new(labels));
    }

    /// The program's `NAME_build_info{version, protocol}`.
    pub fn build_info(&mut self, program: &str) {
        let protocol = crate::proto::INTERNAL_VERSION.to_string();
        self.info(
            &format!("{program}_build"),
            "The running build: its version and the control channel protocol.",
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("protocol", &protocol),
            ],
        );
    }

    pub fn gauge(&mut self, name: &str, help: &str, value: i64) {
        let g: Gauge = Gauge::default();
        g.set(value);
        self.registry.register(name, help, g);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serve `GET /metrics` on `addr` from `render`, on a thread of its own.
/// Returns the bound address (port 0 picks one).
pub fn serve(addr: SocketAddr, render: impl Fn() -> String + Send + 'static) -> Result<SocketAddr> {
    let listener =
        TcpListener::bind(addr).with_context(|| format!("--metrics {addr}: cannot listen"))?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(e) = answer(stream, &render) {
                    tracing::debug!("metrics client: {e}");
                }
            }
        })?;
    tracing::info!(%local, "metrics endpoint: GET /metrics");
    Ok(local)
}

fn answer(mut stream: TcpStream, render: &dyn Fn() -> String) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > 16 * 1024 {
            break;
        }
    }
    let line = head
        .split(|&b| b == b'\r' || b == b'\n')
        .next()
        .unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (status, ctype, body) = match (parts.next(), parts.next(), parts.next()) {
        (Some("GET"), Some(path), Some(v)) if v.starts_with("HTTP/1.") => {
            if path == "/metrics" || path.starts_with("/metrics?") {
                ("200 OK", CONTENT_TYPE, render())
            } else {
                (
                    "404 Not Found",
                    "text/plain",
                    "only /metrics is served here\n".to_string(),
                )
            }
        }
        _ => ("400 Bad Request", "text/plain", "bad request\n".to_string()),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(request).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn scrapes_parse_and_bad_requests_do_not_stop_the_server() {
        let addr = serve("127.0.0.1:0".parse().unwrap(), || {
            let mut e = Exposition::default();
            e.counter("demo_sent_packets", "Packets sent.", 42);
            e.counters(
                "demo_lost_segments",
                "Segments lost, by reason.",
                "reason",
                [("ring_full", 3), ("timed_out", 0)],
            );
            e.gauge("demo_active_sessions", "Live sessions.", 7);
            e.render()
        })
        .unwrap();
        // A client that connects and says nothing, and one that sends junk.
        let _silent = TcpStream::connect(addr).unwrap();
        assert!(get(addr, b"\x16\x03\x01junk\r\n\r\n").starts_with("HTTP/1.1 400"));
        assert!(get(addr, b"GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        let r = get(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        let body = r.split("\r\n\r\n").nth(1).unwrap();
        let samples = parse(body);
        assert_eq!(samples["demo_sent_packets_total"], 42.0);
        assert_eq!(
            samples["demo_lost_segments_total{reason=\"ring_full\"}"],
            3.0
        );
        assert_eq!(
            samples["demo_lost_segments_total{reason=\"timed_out\"}"],
            0.0
        );
        assert_eq!(samples["demo_active_sessions"], 7.0);
        assert!(body.ends_with("# EOF\n"));
    }

    /// Sample lines of the text format: name{labels} value.
    pub fn parse(body: &str) -> std::collections::HashMap<String, f64> {
        body.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect()
    }
}
