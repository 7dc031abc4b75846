//! kindler: declare local Kubernetes clusters (k3d or kind) over HTTP; a reconciler in the
//! same daemon makes them exist, by running the host's scripts.
//!
//! The modules, from the top down (no module imports one above it):
//! - [`daemon`]: `kindler serve` and `reconcile --once`: wiring, signals, reload, watchdog;
//! - [`api`] (HTTP and WebSocket) and [`reconciler`] (the loop, the state machine, actions);
//! - [`runner`] and [`procs`]: one command in its process group; finding its processes;
//! - [`store`]: the operations on the store; SQLite (migrations, the group-committing
//!   writer) or PostgreSQL (a fleet's shared database); [`fleet`]: a host's lease;
//! - [`model`]: names, states, actions; [`config`]: settings; [`health`], [`log`],
//!   [`systemd`], [`output`], [`app`]: what the parts share.
//!
//! `testkit` (hidden) is not kindler: it is what the integration tests and the benchmarks
//! share to drive the real daemon.

pub mod api;
pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod fleet;
pub mod health;
pub mod log;
pub mod metrics;
pub mod model;
pub mod output;
pub mod procs;
pub mod reconciler;
pub mod runner;
pub mod store;
pub mod systemd;
#[doc(hidden)]
pub mod testkit;
