//! The capture interfaces' own drop counters: frames a NIC dropped before
//! XDP or a socket saw them, its RX ring or FIFO full (a mirror port at
//! line rate, a worker that fell behind the ring's refill). tcpcopy cannot
//! count them as lost segments, since it never saw them and not all of
//! them were its flows; it reports how many there were since it started.

use std::{
    cell::Cell,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// The sysfs counters of a ring or FIFO that overflowed. `rx_dropped` is
/// left out: the stack adds to it every frame of a protocol nobody takes,
/// which a mirror port receives plenty of.
const OVERFLOW_COUNTERS: [&str; 3] = ["rx_missed_errors", "rx_fifo_errors", "rx_over_errors"];

/// While running, the counters are read at most this often: the metrics
/// are refreshed five times a second, and each read of a sysfs file is
/// three system calls (read on every refresh, an idle tcpcopy's CPU
/// doubled: 0.03% to 0.06% of a CPU per worker).
const READ_EVERY: Duration = Duration::from_secs(5);

/// The capture interfaces' overflow counters as they stood at start.
#[derive(Debug, Default)]
pub struct NicDrops {
    /// Each interface's `statistics` directory, and its sum at start.
    ifaces: Vec<(PathBuf, u64)>,
    /// The last reading, and when it was taken.
    last: Cell<Option<(Instant, u64)>>,
}

impl NicDrops {
    /// Note where the counters of `ifaces` stand now.
    pub fn start(ifaces: &[String]) -> NicDrops {
        NicDrops::start_under(Path::new("/sys/class/net"), ifaces)
    }

    fn start_under(root: &Path, ifaces: &[String]) -> NicDrops {
        let ifaces = ifaces
            .iter()
            .map(|iface| {
                let dir = root.join(iface).join("statistics");
                let at_start = overflows(&dir);
                (dir, at_start)
            })
            .collect();
        NicDrops {
            ifaces,
            last: Cell::new(None),
        }
    }

    /// Frames the interfaces dropped since start, as read within the last
    /// [`READ_EVERY`].
    pub fn since_start(&self) -> u64 {
        match self.last.get() {
            Some((at, n)) if at.elapsed() < READ_EVERY => n,
            _ => self.read_now(),
        }
    }

    /// Frames the interfaces dropped since start, read now, all of them
    /// together (a counter that went back, a driver reset, counts none
    /// until it passes where it stood at start).
    pub fn read_now(&self) -> u64 {
        let n = self
            .ifaces
            .iter()
            .map(|(dir, at_start)| overflows(dir).saturating_sub(*at_start))
            .sum();
        self.last.set(Some((Instant::now(), n)));
        n
    }
}

/// The sum of an interface's overflow counters; one it does not have (or
/// cannot be read) counts 0.
fn overflows(dir: &Path) -> u64 {
    OVERFLOW_COUNTERS
        .iter()
        .filter_map(|name| std::fs::read_to_string(dir.join(name)).ok())
        .filter_map(|text| text.trim().parse::<u64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(root: &Path, iface: &str, name: &str, value: u64) {
        let dir = root.join(iface).join("statistics");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), format!("{value}\n")).unwrap();
    }

    #[test]
    fn counts_the_overflows_of_every_interface_since_start() {
        let root = std::env::temp_dir().join(format!("tcpcopy-nic-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        set(&root, "eth0", "rx_missed_errors", 100);
        set(&root, "eth0", "rx_fifo_errors", 7);
        set(&root, "eth0", "rx_dropped", 5_000);
        set(&root, "eth1", "rx_over_errors", 3);
        let ifaces = ["eth0", "eth1", "gone0"].map(String::from);
        let drops = NicDrops::start_under(&root, &ifaces);
        assert_eq!(drops.read_now(), 0, "nothing yet");
        set(&root, "eth0", "rx_missed_errors", 150);
        set(&root, "eth0", "rx_dropped", 9_000);
        set(&root, "eth1", "rx_over_errors", 4);
        assert_eq!(drops.since_start(), 0, "the last reading, for a while");
        assert_eq!(
            drops.read_now(),
            51,
            "missed, fifo and over errors of both; rx_dropped is not an overflow"
        );
        set(&root, "eth1", "rx_over_errors", 0);
        assert_eq!(drops.read_now(), 50, "a counter reset counts as none");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
