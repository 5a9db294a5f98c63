//! `tollgate restrictions list`, `tollgate restrict` and `tollgate lift`:
//! requests to the running agent over its control socket.

use std::{path::Path, time::Duration};

use crate::{
    cli::{ControlArgs, LiftArgs, RestrictArgs},
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
            if r.enforced { "enforced" } else { "dry-run" },
            r.note.as_deref().unwrap_or("")
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
    let request = control::Request::Restrict {
        kind: args.kind,
        target: args.target,
        seconds: args.duration.as_secs().max(1),
        note: args.reason,
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
