//! Map names, keys, values and verdict codes shared by kernel and userspace.
//!
//! They live in [`crate::abi`]; this module keeps every item reachable at
//! `tollgate_common::maps::X` as well.

pub use crate::abi::*;
