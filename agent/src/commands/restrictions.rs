//! `tollgate restrictions list`, `tollgate restrict` and `tollgate lift`:
//! requests to the running agent over its control socket.

use std::{path::Path, time::Duration};

use crate::{
    cli::{BaselineArgs, BaselineCommand, ControlArgs, LiftArgs, RestrictArgs, Scope},
    control,
};

fn print_restrictions(list: &[control::RestrictionView]) {
    if list.is_empty() {
        println!("no restrictions in force");
        return;
    }
    println!(
        "{:>4}  {:<17} {:<43} {:<11} {:>10}  {:<8} note",
        "id", "kind", "target", "reason", "left", "mode"
    );
    for r in list {
        println!(
            "{:>4}  {:<17} {:<43} {:<11} {:>10}  {:<8} {}",
            r.id,
            r.kind,
            r.target,
            r.reason,
            humantime::format_duration(Duration::from_secs(r.expires_in_secs)).to_string(),
            match (r.enforced, &r.origin) {
                (true, _) => "enforced",
                // Decided elsewhere: allowlisted or in dry-run here.
                (false, Some(_)) => "off-here",
                (false, None) => "dry-run",
            },
            match &r.origin {
                Some(node) => format!(
                    "from {node}{}{}",
                    if r.note.is_some() { ": " } else { "" },
                    r.note.as_deref().unwrap_or("")
                ),
                None => r.note.clone().unwrap_or_default(),
            }
        );
    }
}

fn ask(path: &Path, request: control::Request) -> anyhow::Result<Vec<control::RestrictionView>> {
    let response = control::call(path, &request)?;
    if !response.ok {
        anyhow::bail!("{}", response.error.unwrap_or_else(|| "refused".to_owned()));
    }
    Ok(response.restrictions)
}

pub fn list(args: ControlArgs) -> anyhow::Result<()> {
    print_restrictions(&ask(&args.control_socket, control::Request::List)?);
    Ok(())
}

pub fn restrict(args: RestrictArgs) -> anyhow::Result<()> {
    // A tag names the line in the display form the agent reads back.
    let target = match (&args.target, &args.tag) {
        (Some(t), _) => t.clone(),
        (None, Some(tag)) => format!("identity {tag} everywhere"),
        (None, None) => String::new(),
    };
    let request = control::Request::Restrict {
        kind: args.kind,
        target,
        seconds: args.duration.as_secs().max(1),
        note: args.reason,
        identity: args.identity,
    };
    print_restrictions(&ask(&args.control.control_socket, request)?);
    Ok(())
}

pub fn lift(args: LiftArgs) -> anyhow::Result<()> {
    let lifted = ask(&args.control.control_socket, control::Request::Lift { id: args.id })?;
    println!("lifted:");
    print_restrictions(&lifted);
    Ok(())
}

/// `tollgate reload`: the running agent reads its configuration again.
pub fn reload(args: ControlArgs) -> anyhow::Result<()> {
    let response = control::call(&args.control_socket, &control::Request::Reload)?;
    if !response.ok {
        anyhow::bail!("{}", response.error.unwrap_or_else(|| "refused".to_owned()));
    }
    println!("reloaded: {}", response.message.unwrap_or_default());
    Ok(())
}

/// `tollgate baseline set|clear|list`.
pub fn baseline(command: BaselineCommand) -> anyhow::Result<()> {
    let (socket, request) = match command {
        BaselineCommand::List(c) => (c.control_socket, control::Request::BaselineList),
        BaselineCommand::Set(a) => {
            let Some(threshold) = a.threshold else { anyhow::bail!("baseline set needs --threshold N") };
            (a.control.control_socket.clone(), request(&a, Some(threshold)))
        }
        BaselineCommand::Clear(a) => (a.control.control_socket.clone(), request(&a, None)),
    };
    let response = control::call(&socket, &request)?;
    if !response.ok {
        anyhow::bail!("{}", response.error.unwrap_or_else(|| "refused".to_owned()));
    }
    if response.baselines.is_empty() {
        println!("no operator thresholds in force");
    }
    for b in &response.baselines {
        let level = b.level.map_or_else(|| "-".to_owned(), |l| format!("{l:.1}"));
        println!(
            "{:<9} {:<40} {:<7} threshold {:>7}  learned level {level}",
            b.scope, b.key, b.scale, b.threshold
        );
    }
    Ok(())
}

fn request(a: &BaselineArgs, threshold: Option<u32>) -> control::Request {
    let scope = match a.scope {
        Scope::Source => "source",
        Scope::Identity => "identity",
        Scope::Country => "country",
    };
    control::Request::Baseline {
        scope: scope.to_owned(),
        key: a.target.clone(),
        scale: a.scale.clone(),
        threshold,
        note: a.note.clone(),
    }
}
