//! The tollgate agent as a library: the binary (`main.rs`) is a thin shell
//! over it, and the integration tests and benchmarks use the same loader and
//! map wrappers.

pub mod audit;
pub mod baseline;
pub mod cli;
pub mod clock;
pub mod clsact;
pub mod commands;
pub mod control;
pub mod countries;
pub mod daemon;
pub mod error;
pub mod events;
pub mod loader;
pub mod maps;
pub mod metrics;
pub mod policy;
pub mod selftest;

pub use loader::EBPF_OBJECT;
