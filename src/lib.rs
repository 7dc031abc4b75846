//! kindler: declare local Kubernetes clusters (k3d or kind) over HTTP; a reconciler in the
//! same daemon makes them exist, by running the host's scripts.
//!
//! The modules, from the top down (no module imports one above it, nor one beside it on
//! its line):
//! - [`daemon`]: `kindler serve` and `reconcile --once`: wiring, signals, reload, watchdog;
//! - [`api`] (HTTP and WebSocket; it asks the reconciler's state machine what runs next);
//! - [`reconciler`] (the loop, the state machine, actions) and [`fleet`] (a host's lease);
//! - [`app`]: what the API, the reconciler and the fleet share;
//! - [`health`]; then [`config`] (settings) and [`systemd`];
//! - [`store`]: the operations on the store; SQLite (migrations, the group-committing
//!   writer) or PostgreSQL (a fleet's shared database); [`runner`]: one command in its
//!   process group; [`live`]: the runs in progress, as others see them;
//! - [`procs`] (finding a run's processes) and [`metrics`];
//! - [`log`], [`model`] (names, states, actions), [`output`], [`clock`].
//!
//! [`cli`], the client commands, imports only [`model`].
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
pub mod live;
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
