//! `tollgate config check|default`: the configuration file, checked or
//! generated (the work is in `crate::config`).

use crate::{cli::ConfigCommand, config};

pub fn config(command: ConfigCommand) -> anyhow::Result<()> {
    let text = match command {
        ConfigCommand::Check { path } => config::check(path.as_deref())?,
        ConfigCommand::Default => config::default_file(),
    };
    print!("{text}");
    Ok(())
}
