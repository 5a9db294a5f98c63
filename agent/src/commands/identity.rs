//! `tollgate identity-tag`: the identity tag of a name, as audit records
//! carry it, so an operator can tell whether a record concerns that name.

use std::os::unix::ffi::OsStrExt as _;

use tollgate_common::hash::{self, IdentityTag, MAX_HASHED};

use crate::{cli::IdentityTagArgs, state};

pub fn tag(args: IdentityTagArgs) -> anyhow::Result<()> {
    let key = state::load_identity_key(&args.state.state_dir)?;
    let name = args.name.as_bytes();
    if name.len() > MAX_HASHED {
        eprintln!(
            "tollgate: note: the name is {} bytes; its tag is that of its first {MAX_HASHED} (the kernel reads no more)",
            name.len()
        );
    }
    println!("{}", IdentityTag(hash::identity_tag(&key, name)));
    Ok(())
}
