//! What the kernel program and the agent must agree on, one concern per
//! file: [`names`] (maps, programs, tail-call tables and sizes), [`records`]
//! (key and value layouts) and [`codes`] (verdict, counter and event codes,
//! and the index arithmetic). Everything is re-exported at the crate root
//! (`tollgate_common::X`) and, as before, from [`crate::maps`].

pub mod codes;
pub mod names;
pub mod records;

pub use codes::*;
pub use names::*;
pub use records::*;
