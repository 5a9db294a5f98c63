//! The one-shot subcommands: each reads the pinned state, asks the running
//! agent, reads the state directory or the configuration file, and prints
//! what it found.

pub mod config;
pub mod detach;
pub mod generate;
pub mod identity;
pub mod report;
pub mod restrictions;
pub mod status;
pub mod top;

use std::path::Path;

use crate::{error::Error, loader, maps::Maps};

/// The pinned maps of the agent pinned in `dir`, for `command` (run as root).
fn open_pinned(command: &'static str, dir: &Path) -> anyhow::Result<Maps> {
    loader::require_root(command)?;
    if !dir.exists() {
        return Err(Error::NothingPinned { path: dir.to_owned() }.into());
    }
    Ok(Maps::open_pinned(dir)?)
}
