//! Loading the embedded eBPF objects and attaching their XDP programs (and
//! tcpcopy's TC egress program, for `--verdict` in tap mode) behind
//! a guard: dropping an [`AttachedXdp`] detaches every attachment it made
//! (Ctrl-C, SIGTERM, errors and panics all end in a drop). Attachments are
//! made through bpf_link where the kernel has it, so even a SIGKILLed
//! process leaves no program behind. The programs' rare-event log lines
//! (aya-log) are passed into the process's `tracing` log by
//! [`AttachedXdp::flush_log`].

use crate::wire::Cidr;
use anyhow::{anyhow, Context, Result};
use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        HashMap as BpfHashMap, MapData, PerCpuArray,
    },
    programs::{tc::TcAttachType, SchedClassifier, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};

/// The tcpcopy capture program, built by build.rs.
pub static TCPCOPY_EBPF: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcpcopy-ebpf"));
/// The intercept program, built by build.rs.
pub static INTERCEPT_EBPF: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/intercept-ebpf"));

/// How to attach: `auto` lets the kernel choose (driver mode where the NIC
/// has it), `driver` insists on native XDP, `skb` uses generic XDP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    #[default]
    Auto,
    Driver,
    Skb,
}

impl AttachMode {
    fn aya(self) -> XdpMode {
        match self {
            AttachMode::Auto => XdpMode::Default,
            AttachMode::Driver => XdpMode::Driver,
            AttachMode::Skb => XdpMode::Skb,
        }
    }
}

/// A loaded eBPF object whose XDP program is attached to some interfaces.
/// Dropping it detaches the program from all of them.
pub struct AttachedXdp {
    ebpf: Ebpf,
    program: &'static str,
    ifaces: Vec<String>,
    /// Interfaces a TC egress program of the object is attached to.
    egress: Vec<String>,
    /// The program's aya-log lines (rare events), read by [`AttachedXdp::flush_log`].
    log: Option<std::sync::Mutex<aya_log::EbpfLogger<ToTracing>>>,
}

/// aya-log's records into this process's `tracing` log.
pub struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, r: &log::Record) {
        match r.level() {
            log::Level::Error => tracing::error!(target: "ebpf", "{}", r.args()),
            log::Level::Warn => tracing::warn!(target: "ebpf", "{}", r.args()),
            log::Level::Info => tracing::info!(target: "ebpf", "{}", r.args()),
            _ => tracing::debug!(target: "ebpf", "{}", r.args()),
        }
    }
    fn flush(&self) {}
}

impl AttachedXdp {
    /// Load `object`, setting `globals` (name, u32 value) first, and attach
    /// `program` to every interface in `ifaces`.
    pub fn load(
        object: &[u8],
        program: &'static str,
        globals: &[(&str, u32)],
        ifaces: &[String],
        mode: AttachMode,
    ) -> Result<Self> {
        Self::load_sized(object, program, globals, &[], ifaces, mode)
    }

    /// [`AttachedXdp::load`], with some maps given another size
    /// (`max_entries`; a ring buffer's bytes) than the object declares.
    pub fn load_sized(
        object: &[u8],
        program: &'static str,
        globals: &[(&str, u32)],
        map_sizes: &[(&str, u32)],
        ifaces: &[String],
        mode: AttachMode,
    ) -> Result<Self> {
        raise_memlock_limit();
        let mut loader = EbpfLoader::new();
        for (name, value) in globals {
            loader.override_global(name, value, true);
        }
        for &(name, size) in map_sizes {
            loader.map_max_entries(name, size);
        }
        let mut ebpf = loader
            .load(object)
            .map_err(|e| anyhow!(permission_hint(&e.to_string())))
            .context("loading the eBPF object")?;
        let prog: &mut Xdp = ebpf
            .program_mut(program)
            .ok_or_else(|| anyhow!("program {program} missing from the eBPF object"))?
            .try_into()?;
        prog.load()
            .with_context(|| format!("loading XDP program {program} (verifier)"))?;
        let log = aya_log::EbpfLogger::init_with_logger(&mut ebpf, ToTracing)
            .ok()
            .map(std::sync::Mutex::new);
        let mut attached = AttachedXdp {
            ebpf,
            program,
            ifaces: Vec::new(),
            egress: Vec::new(),
            log,
        };
        for iface in ifaces {
            attached.attach(iface, mode)?;
        }
        Ok(attached)
    }

    /// Attach the program to one more interface.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<()> {
        let prog: &mut Xdp = self.ebpf.program_mut(self.program).unwrap().try_into()?;
        prog.attach(iface, mode.aya()).with_context(|| {
            format!(
                "attaching XDP program {} to {iface} in {mode:?} mode",
                self.program
            )
        })?;
        tracing::info!(iface, ?mode, program = self.program, "XDP program attached");
        self.ifaces.push(iface.to_string());
        Ok(())
    }

    /// Attach the object's TC program `program` to `iface`'s egress (a tcx
    /// link: kernel 6.6 or later; it goes with the process like the XDP
    /// links). Loaded on first use.
    pub fn attach_egress(&mut self, program: &str, iface: &str) -> Result<()> {
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(program)
            .ok_or_else(|| anyhow!("program {program} missing from the eBPF object"))?
            .try_into()?;
        if prog.fd().is_err() {
            prog.load()
                .with_context(|| format!("loading TC program {program} (verifier)"))?;
        }
        prog.attach(iface, TcAttachType::Egress).with_context(|| {
            format!(
                "attaching TC program {program} to {iface} egress (needs tcx: Linux 6.6 or later)"
            )
        })?;
        tracing::info!(iface, program, "TC egress program attached");
        self.egress.push(iface.to_string());
        Ok(())
    }

    /// Pass the program's log lines (aya-log) to the process log.
    pub fn flush_log(&self) {
        if let Some(l) = &self.log {
            l.lock().unwrap_or_else(|e| e.into_inner()).flush();
        }
    }

    pub fn ifaces(&self) -> &[String] {
        &self.ifaces
    }

    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Fill a `HashMap<K, u8>` map of the object with `keys` (value 1).
    pub fn set_keys<K: aya::Pod>(&mut self, map: &str, keys: &[K]) -> Result<()> {
        let m = self
            .ebpf
            .map_mut(map)
            .ok_or_else(|| anyhow!("map {map} missing"))?;
        let mut hm: BpfHashMap<&mut MapData, K, u8> = BpfHashMap::try_from(m)?;
        for k in keys {
            hm.insert(k, 1u8, 0)
                .with_context(|| format!("filling map {map}"))?;
        }
        Ok(())
    }

    /// Fill the `LpmTrie<[u8; 4], u8>` map `v4` and the `LpmTrie<[u8; 16],
    /// u8>` map `v6` of the object with networks of their family (address
    /// bytes as on the wire).
    pub fn set_networks(&mut self, v4: &str, v6: &str, nets: &[Cidr]) -> Result<()> {
        for family_v4 in [true, false] {
            let map = if family_v4 { v4 } else { v6 };
            let m = self
                .ebpf
                .map_mut(map)
                .ok_or_else(|| anyhow!("map {map} missing"))?;
            if family_v4 {
                let mut trie: LpmTrie<&mut MapData, [u8; 4], u8> = LpmTrie::try_from(m)?;
                for c in nets {
                    if let std::net::IpAddr::V4(a) = c.addr {
                        trie.insert(&Key::new(c.len as u32, a.octets()), 1u8, 0)
                            .with_context(|| format!("filling map {map}"))?;
                    }
                }
            } else {
                let mut trie: LpmTrie<&mut MapData, [u8; 16], u8> = LpmTrie::try_from(m)?;
                for c in nets {
                    if let std::net::IpAddr::V6(a) = c.addr {
                        trie.insert(&Key::new(c.len as u32, a.octets()), 1u8, 0)
                            .with_context(|| format!("filling map {map}"))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Sum a per-CPU counter array over all CPUs.
    pub fn read_counters(&self, map: &str, count: u32) -> Result<Vec<u64>> {
        let m = self
            .ebpf
            .map(map)
            .ok_or_else(|| anyhow!("map {map} missing"))?;
        let arr: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(m)?;
        (0..count)
            .map(|i| Ok(arr.get(&i, 0)?.iter().sum()))
            .collect()
    }
}

impl Drop for AttachedXdp {
    fn drop(&mut self) {
        if !self.ifaces.is_empty() {
            tracing::info!(ifaces = ?self.ifaces, program = self.program, "detaching XDP program");
        }
        if !self.egress.is_empty() {
            tracing::info!(ifaces = ?self.egress, "detaching TC egress program");
        }
        // The Ebpf object owns the links; dropping it (right after this)
        // detaches every attachment.
    }
}

/// An error with "Operation not permitted" in it gets the privileges
/// loading and attaching XDP take.
fn permission_hint(error: &str) -> String {
    if error.contains("Operation not permitted") || error.contains("os error 1)") {
        format!(
            "{error}: loading eBPF maps and programs and attaching XDP needs root, or the \
             capabilities CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (CAP_NET_RAW too for \
             the raw send socket and AF_XDP); kernel 5.11 or later charges maps to the \
             memory cgroup instead of RLIMIT_MEMLOCK"
        )
    } else {
        error.to_string()
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK.
fn raise_memlock_limit() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    let ret = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
    if ret != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK; fine on kernels >= 5.11");
    }
}
