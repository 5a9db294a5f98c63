//! Types shared by the XDP program (`tollgate-ebpf`) and the agent (`tollgate`).
//!
//! Everything here is `no_std`, allocation-free and `#[repr(C)]` where it
//! crosses the kernel/userspace boundary. Parsing code is written once against
//! the [`packet::PacketView`] trait so that the kernel program and the host's
//! unit tests run exactly the same logic.
#![no_std]

#[cfg(any(test, feature = "frames"))]
extern crate std;

pub mod abi;
#[cfg(any(test, feature = "frames"))]
pub mod corpus;
#[cfg(any(test, feature = "frames"))]
pub mod frames;
pub mod hash;
pub mod headers;
pub mod maps;
pub mod number;
pub mod packet;
pub mod sip;

pub use abi::*;
