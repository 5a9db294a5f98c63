//! `tollgate detach`: removes the program and its pinned state.

use crate::{cli::PinArgs, loader};

pub fn detach(args: PinArgs) -> anyhow::Result<()> {
    loader::require_root("detach")?;
    let dir = args.pin_path.as_path();
    if !dir.exists() {
        println!("nothing to detach: {} does not exist", dir.display());
        return Ok(());
    }
    let ifaces = loader::remove_pinned_state(dir)?;
    if ifaces.is_empty() {
        println!("removed {} (no interface was attached)", dir.display());
    } else {
        println!("detached from {} and removed {}", ifaces.join(", "), dir.display());
    }
    Ok(())
}
