use std::process::ExitCode;

use tollgate::{
    cli::{Command, RestrictionsCommand},
    commands,
    config::{self, ParseError},
};

fn main() -> ExitCode {
    // SAFETY: first thing, before any thread exists.
    let notifier = unsafe { tollgate::notify::Notifier::take_from_env() };
    // `run` takes its flags from the configuration file too.
    let (cli, _) = match config::load(std::env::args_os().collect()) {
        Ok(parsed) => parsed,
        Err(ParseError::Usage(e)) => e.exit(),
        Err(e) => return fail(&e.into()),
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let result = match cli.command {
        Command::Run(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(tollgate::daemon::run(*args, notifier))),
        Command::Status(args) => commands::status::status(args),
        Command::Detach(args) => commands::detach::detach(args),
        Command::Top(args) => commands::top::top(args),
        Command::Restrictions { command: RestrictionsCommand::List(args) } => {
            commands::restrictions::list(args)
        }
        Command::Restrict(args) => commands::restrictions::restrict(args),
        Command::Lift(args) => commands::restrictions::lift(args),
        Command::Reload(args) => commands::restrictions::reload(args),
        Command::Baseline { command } => commands::restrictions::baseline(command),
        Command::Report { command } => commands::report::report(command),
        Command::IdentityTag(args) => commands::identity::tag(args),
        Command::Config { command } => commands::config::config(command),
        Command::Generate { command } => commands::generate::generate(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(e: &anyhow::Error) -> ExitCode {
    // One line, no backtrace: the operator's next step is in the text.
    eprintln!("tollgate: error: {e:#}");
    ExitCode::FAILURE
}
