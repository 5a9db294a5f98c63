//! `tollgate generate man|completions DIR` (hidden): the man pages and the
//! shell completions, made from the clap definitions that also make
//! `--help`, so the three cannot disagree. The Debian package ships them
//! (`cargo xtask deb` runs this with the binary it packages).

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use clap::CommandFactory as _;
use clap_complete::Shell;

use crate::cli::{Cli, GenerateCommand};

/// The shells whose completions are written, with the file names
/// clap_complete gives them.
const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

pub fn generate(command: GenerateCommand) -> anyhow::Result<()> {
    let (dir, written) = match command {
        GenerateCommand::Man(args) => {
            let written = man_pages(&args.dir);
            (args.dir, written)
        }
        GenerateCommand::Completions(args) => {
            let written = completions(&args.dir);
            (args.dir, written)
        }
    };
    for path in written.with_context(|| format!("writing into {}", dir.display()))? {
        println!("{}", path.display());
    }
    Ok(())
}

/// Writes one page per visible command into `dir`: tollgate.1 for the
/// top level, tollgate-run.1, tollgate-restrictions-list.1, ... for the
/// others (hidden commands, such as this one, and clap's `help` get none).
pub fn man_pages(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    fs::create_dir_all(dir)?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    // NAME reads "tollgate - <about>": without the "tollgate: " --help
    // starts its first line with.
    let about = cmd.get_about().map(|a| a.to_string()).unwrap_or_default();
    if let Some(rest) = about.strip_prefix("tollgate: ") {
        cmd = cmd.about(rest.to_owned());
    }
    // Building sets each subcommand's display name (tollgate-run: the file
    // and the title) and binary name (`tollgate run`: the synopsis).
    cmd.build();
    let mut written = Vec::new();
    write_pages(&cmd, dir, &mut written)?;
    Ok(written)
}

fn write_pages(cmd: &clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    written.push(clap_mangen::Man::new(cmd.clone()).generate_to(dir)?);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, dir, written)?;
    }
    Ok(())
}

/// Writes the completions of every shell in [`SHELLS`] into `dir`.
pub fn completions(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    fs::create_dir_all(dir)?;
    let mut cmd = Cli::command();
    SHELLS
        .into_iter()
        .map(|shell| Ok(clap_complete::generate_to(shell, &mut cmd, "tollgate", dir)?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_dir::TempDir;

    fn names(paths: &[PathBuf]) -> Vec<String> {
        paths.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn one_man_page_per_visible_command() {
        let dir = TempDir::new("man");
        let pages = names(&man_pages(&dir.0).unwrap());
        for page in [
            "tollgate.1",
            "tollgate-run.1",
            "tollgate-detach.1",
            "tollgate-restrictions-list.1",
            "tollgate-report-dormant.1",
            "tollgate-baseline-set.1",
        ] {
            assert!(pages.iter().any(|p| p == page), "{page} missing from {pages:?}");
        }
        // Hidden commands and clap's help have no page.
        assert!(!pages.iter().any(|p| p.contains("generate") || p.contains("help")), "{pages:?}");
        // One page per command, and every page is in DIR.
        let mut listed: Vec<String> =
            fs::read_dir(&dir.0).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
        listed.sort();
        let mut sorted = pages.clone();
        sorted.sort();
        assert_eq!(listed, sorted);

        let top = fs::read_to_string(dir.0.join("tollgate.1")).unwrap();
        assert!(top.contains("tollgate \\- stops SIP toll fraud"), "NAME line:\n{top}");
        assert!(top.contains("tollgate\\-run(1)"), "the subcommands are listed:\n{top}");
        let run = fs::read_to_string(dir.0.join("tollgate-run.1")).unwrap();
        assert!(run.contains("\\-\\-block\\-duration"), "run's options are on its page");
        assert!(run.contains(env!("CARGO_PKG_VERSION")), "the version is on every page");
    }

    #[test]
    fn completions_for_bash_zsh_and_fish() {
        let dir = TempDir::new("completions");
        let files = completions(&dir.0).unwrap();
        assert_eq!(names(&files), ["tollgate.bash", "_tollgate", "tollgate.fish"]);
        for file in files {
            let text = fs::read_to_string(&file).unwrap();
            for word in ["restrictions", "block-duration"] {
                assert!(text.contains(word), "{} lacks {word}", file.display());
            }
        }
    }
}
