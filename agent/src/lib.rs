//! The tollgate agent as a library: the binary (`main.rs`) is a thin shell
//! over it, and the integration tests and benchmarks use the same loader and
//! map wrappers.

pub mod audit;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod control;
pub mod countries;
pub mod daemon;
pub mod detect;
pub mod error;
pub mod feeds;
pub mod kernel;
pub mod metrics;
pub mod notify;
pub mod policy;
pub mod reports;
pub mod state;
pub mod store;
#[cfg(test)]
mod test_dir;

// The kernel side keeps its short paths (`tollgate::loader`, ...).
pub use kernel::{clsact, events, loader, loader::EBPF_OBJECT, maps, selftest};
