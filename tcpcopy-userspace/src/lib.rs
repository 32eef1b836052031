//! tcpcopy in Rust: live TCP traffic replication. This library holds every
//! room of the userspace side (see ../shared/design.md); the binaries
//! `tcpcopy` and `intercept` are thin shells around it.
//!
//! Rooms, each reaching only into the ones above it:
//! - [`wire`]: packet views, builders and checksums;
//! - [`proto`]: the control channel's messages and framing;
//! - [`session`]: the sans-IO session engine;
//! - [`xdp`]: loading and attaching the eBPF programs behind a detach guard;
//! - [`send`]: sending replayed packets (raw IPv4 socket);
//! - [`process`]: logging, daemon, pid file, shutdown signals;
//! - [`preflight`]: the checklist both programs' `--check` print;
//! - [`docs`]: man pages and completions from the option definitions;
//! - [`stats`]: every reported figure declared once; the statistics line,
//!   the exit summary, the losses and the metrics are generated from it;
//! - [`metrics`]: the Prometheus endpoint (`--metrics`) of both programs;
//! - [`capture`]: sources of captured client segments (tap ring, AF_XDP,
//!   AF_PACKET);
//! - [`offline`]: capture files: reading them as a paced source, recording
//!   live captures to pcapng;
//! - [`tcpcopy`]: the tcpcopy program (options, channel client, workers, summary);
//! - [`intercept`]: the intercept program (router, control channel server);
//! - [`verdict`]: does the target answer like production (`--verdict`);
//! - [`wake`]: when a woken worker takes its work (a pause after small
//!   batches, so one wake serves many).

pub mod capture;
pub mod docs;
pub mod intercept;
pub mod memory;
pub mod metrics;
pub mod offline;
pub mod preflight;
pub mod process;
pub mod proto;
pub mod send;
pub mod session;
pub mod stats;
pub mod tcpcopy;
pub mod verdict;
pub mod wake;
pub mod wire;
pub mod xdp;
