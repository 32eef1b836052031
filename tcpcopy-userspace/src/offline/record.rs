//! `--record FILE`: the client segments a live tcpcopy captured, written to
//! pcapng (raw IP link type, IPv4 and IPv6; nanosecond timestamps) so the
//! session can be replayed later with `--offline`. Workers hand copies to
//! one writer thread over a bounded channel; a full channel drops the copy
//! and counts it (recording never slows the replay). With `--record-size
//! MB` the file rotates: FILE, then FILE.1, FILE.2, ...

use std::{
    borrow::Cow,
    fs::File,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use pcap_file::{
    pcapng::{
        blocks::{
            enhanced_packet::EnhancedPacketBlock,
            interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
        },
        PcapNgWriter,
    },
    DataLink,
};

const QUEUE: usize = 65536;

/// A packet for the recorder: capture time (ns since the epoch) and bytes.
type Item = (u64, Vec<u8>);

/// The workers' side: cheap to clone.
#[derive(Clone)]
pub struct RecordTap {
    tx: Sender<Item>,
    dropped: Arc<AtomicU64>,
}

impl RecordTap {
    pub fn record(&self, packet: &[u8]) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        if let Err(TrySendError::Full(_)) = self.tx.try_send((now, packet.to_vec())) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What the recorder wrote, reported when it ends.
#[derive(Clone, Debug, Default)]
pub struct RecordStats {
    pub packets: u64,
    pub bytes: u64,
    pub files: Vec<PathBuf>,
    /// Copies dropped because the writer fell behind.
    pub dropped: u64,
}

pub struct Recorder {
    handle: JoinHandle<Result<RecordStats>>,
    dropped: Arc<AtomicU64>,
}

/// Start the writer thread. `rotate_bytes` 0 = one file.
pub fn start(path: &Path, rotate_bytes: u64) -> Result<(RecordTap, Recorder)> {
    // Fail now, not in the thread, if the file cannot be created.
    let first = open(path)?;
    let (tx, rx) = crossbeam_channel::bounded(QUEUE);
    let dropped = Arc::new(AtomicU64::new(0));
    let path = path.to_path_buf();
    let handle = std::thread::Builder::new()
        .name("tcpcopy-record".into())
        .spawn(move || write_loop(path, first, rx, rotate_bytes))?;
    Ok((
        RecordTap {
            tx,
            dropped: Arc::clone(&dropped),
        },
        Recorder { handle, dropped },
    ))
}

impl Recorder {
    /// Wait for the writer once every [`RecordTap`] is dropped.
    pub fn finish(self) -> Result<RecordStats> {
        let mut stats = self
            .handle
            .join()
            .map_err(|_| anyhow::anyhow!("the recorder thread panicked"))??;
        stats.dropped = self.dropped.load(Ordering::Relaxed);
        Ok(stats)
    }
}

type Writer = PcapNgWriter<BufWriter<File>>;

fn open(path: &Path) -> Result<Writer> {
    let file = File::create(path).with_context(|| format!("--record {}", path.display()))?;
    let mut w = PcapNgWriter::new(BufWriter::with_capacity(1 << 20, file))
        .with_context(|| format!("--record {}", path.display()))?;
    let idb = InterfaceDescriptionBlock {
        linktype: DataLink::RAW,
        snaplen: 0,
        // Nanosecond timestamps (the writer stores them as given).
        options: vec![InterfaceDescriptionOption::IfTsResol(9)],
    };
    w.write_pcapng_block(idb)
        .with_context(|| format!("--record {}", path.display()))?;
    Ok(w)
}

fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

fn write_loop(
    path: PathBuf,
    mut w: Writer,
    rx: Receiver<Item>,
    rotate_bytes: u64,
) -> Result<RecordStats> {
    let mut stats = RecordStats {
        files: vec![path.clone()],
        ..Default::default()
    };
    let mut in_file = 0u64;
    loop {
        let item = match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(item) => item,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                w.get_mut().flush()?;
                continue;
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
        };
        let (ts, data) = item;
        if rotate_bytes > 0 && in_file > 0 && in_file + data.len() as u64 > rotate_bytes {
            w.get_mut().flush()?;
            let next = rotated(&path, stats.files.len() as u32);
            w = open(&next)?;
            stats.files.push(next);
            in_file = 0;
        }
        let epb = EnhancedPacketBlock {
            interface_id: 0,
            timestamp: Duration::from_nanos(ts),
            original_len: data.len() as u32,
            data: Cow::Borrowed(&data),
            options: vec![],
        };
        let n = w
            .write_pcapng_block(epb)
            .with_context(|| format!("writing {}", path.display()))?;
        in_file += n as u64;
        stats.packets += 1;
        stats.bytes += data.len() as u64;
    }
    w.get_mut().flush()?;
    Ok(stats)
}
