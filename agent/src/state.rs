//! tollgate's persistent state outside the BPF filesystem (`--state-dir`):
//! for now the identity key, the per-deployment key of identity tags
//! ([`tollgate_common::hash::identity_tag`]).
//!
//! The key file is `identity.key` in the state directory: 16 random bytes
//! from the kernel (getrandom), the SipHash key as written, mode 0600. It is
//! made once, at the first `tollgate run`, and never overwritten: tags in
//! earlier audit records stay comparable for as long as it is kept. The
//! state directory survives `tollgate detach`.

use std::{
    fs::{self, DirBuilder, File, OpenOptions},
    io::{self, Read as _, Write as _},
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use log::info;
use tollgate_common::IdentityKey;

use crate::error::{Error, Result};

/// Default `--state-dir`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/tollgate";
/// The identity key's file name in the state directory.
pub const IDENTITY_KEY_FILE: &str = "identity.key";
/// Mode of the key file (and the most it may have).
const KEY_MODE: u32 = 0o600;
/// Mode of a state directory tollgate creates.
const DIR_MODE: u32 = 0o700;

/// Where the identity key of state directory `dir` is.
pub fn identity_key_path(dir: &Path) -> PathBuf {
    dir.join(IDENTITY_KEY_FILE)
}

/// The deployment's identity key, for `tollgate run` to load into the
/// kernel: creates `dir` (0700) and the key (0600) if missing, then loads
/// and checks it as [`load_identity_key`] does.
pub fn identity_key(dir: &Path) -> Result<IdentityKey> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(Error::io(format!("creating the state directory {}", dir.display())))?;
    let path = identity_key_path(dir);
    // Whatever is there already is judged by the load.
    if fs::symlink_metadata(&path).is_err_and(|e| e.kind() == io::ErrorKind::NotFound) && create_key(&path)? {
        info!("created the identity key {} (identity tags are keyed with it)", path.display());
    }
    load_identity_key(dir)
}

/// The identity key in `dir`, never creating one (`tollgate identity-tag`).
/// Refused unless it is a regular file of 16 bytes owned by this user,
/// readable and writable by no one else (mode 0600 or narrower), and not
/// all zero.
pub fn load_identity_key(dir: &Path) -> Result<IdentityKey> {
    let path = identity_key_path(dir);
    let invalid =
        |problem: &str| Error::IdentityKeyInvalid { path: path.clone(), problem: problem.to_owned() };
    // O_NOFOLLOW: a symbolic link is refused, not followed. O_NONBLOCK: a
    // FIFO put there cannot hang the open (it is then refused below).
    let opened = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&path);
    let mut file = match opened {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(Error::NoIdentityKey { dir: dir.to_owned() });
        }
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(invalid("it is a symbolic link")),
        Err(error) => return Err(Error::identity_key_unreadable(path, error)),
    };
    // Checked on the open file, so what is checked is what is read.
    let meta = file.metadata().map_err(Error::io(format!("reading {}", path.display())))?;
    if !meta.file_type().is_file() {
        return Err(invalid("it is not a regular file"));
    }
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if meta.uid() != uid {
        return Err(Error::IdentityKeyOwner { path, owner: meta.uid(), uid });
    }
    let mode = meta.mode() & 0o7777;
    if mode & !KEY_MODE != 0 {
        return Err(Error::IdentityKeyMode { path, mode });
    }
    if meta.len() != IdentityKey::LEN as u64 {
        return Err(invalid(&format!("it is {} bytes", meta.len())));
    }
    let mut bytes = [0u8; IdentityKey::LEN];
    file.read_exact(&mut bytes).map_err(|error| Error::identity_key_unreadable(path.clone(), error))?;
    let key = IdentityKey::from_bytes(bytes);
    if key.is_unset() {
        return Err(invalid("it is all zeros"));
    }
    Ok(key)
}

/// Writes a new random key to `path`; false if another process made one
/// first (which is then used). The key is written and synced under a
/// temporary name created with O_EXCL, then given its name with link(2),
/// which never replaces a file: the key appears whole or not at all, even
/// across a crash, and an existing key is never overwritten.
fn create_key(path: &Path) -> Result<bool> {
    let key = random_key()?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{IDENTITY_KEY_FILE}.{}", std::process::id()));
    // Only a dead process with this PID can have left one.
    let _ = fs::remove_file(&tmp);
    let written = write_new(&tmp, &key);
    let linked = written.and_then(|()| {
        fs::hard_link(&tmp, path)
            .map(|()| true)
            .or_else(|e| if e.kind() == io::ErrorKind::AlreadyExists { Ok(false) } else { Err(e) })
    });
    let _ = fs::remove_file(&tmp);
    let created = linked.map_err(Error::io(format!("creating the identity key {}", path.display())))?;
    // Make the new name durable too.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io(format!("syncing the state directory {}", dir.display())))?;
    Ok(created)
}

/// Creates `path` (O_EXCL, mode 0600 whatever the umask) holding `bytes`,
/// synced.
fn write_new(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(KEY_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    file.set_permissions(fs::Permissions::from_mode(KEY_MODE))?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Replaces `path` with `bytes` atomically (a synced temporary file, mode
/// 0600, renamed over it): a crash leaves the old file or the new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = fs::remove_file(&tmp);
    write_new(&tmp, bytes)?;
    fs::rename(&tmp, path)
}

/// 16 bytes from the kernel's CSPRNG (getrandom(2), which waits until it is
/// seeded); never all zero.
fn random_key() -> Result<[u8; IdentityKey::LEN]> {
    let mut key = [0u8; IdentityKey::LEN];
    loop {
        let mut filled = 0;
        while filled < key.len() {
            let rest = &mut key[filled..];
            // SAFETY: the pointer and length describe `rest`, writable memory.
            let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
            if n < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Error::Random { error });
            }
            filled += n as usize;
        }
        // All zero is "no key" to the kernel (a 2^-128 chance).
        if key.iter().any(|b| *b != 0) {
            return Ok(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;
    use crate::test_dir::{TempDir, mode};

    fn write_key(path: &Path, bytes: &[u8], mode: u32) {
        fs::write(path, bytes).expect("write key");
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn the_first_start_creates_the_directory_and_the_key_root_only() {
        let tmp = TempDir::new("state-create");
        let dir = tmp.0.join("var/lib/tollgate");
        let key = identity_key(&dir).expect("created");
        assert_eq!(mode(&dir), 0o700);
        let path = identity_key_path(&dir);
        assert_eq!(mode(&path), 0o600);
        let bytes = fs::read(&path).expect("read");
        assert_eq!(bytes.len(), 16);
        assert_eq!(IdentityKey::from_bytes(bytes.try_into().expect("16 bytes")), key);
        assert!(!key.is_unset());
        // Nothing else is left in the directory (no temporary file).
        assert_eq!(fs::read_dir(&dir).expect("list").count(), 1);
    }

    #[test]
    fn later_starts_load_the_same_key_and_never_overwrite_it() {
        let tmp = TempDir::new("state-stable");
        let first = identity_key(&tmp.0).expect("created");
        assert_eq!(identity_key(&tmp.0).expect("loaded"), first);
        assert_eq!(load_identity_key(&tmp.0).expect("loaded"), first);
        let other = TempDir::new("state-stable-other");
        assert_ne!(identity_key(&other.0).expect("created"), first, "a key per deployment");
    }

    #[test]
    fn loading_never_creates_a_key() {
        let tmp = TempDir::new("state-nokey");
        let err = load_identity_key(&tmp.0).unwrap_err();
        assert!(matches!(err, Error::NoIdentityKey { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!("no identity key in {}: it is created when `tollgate run` first starts", tmp.0.display())
        );
        assert!(!identity_key_path(&tmp.0).exists());
        // Nor a state directory that does not exist.
        let missing = tmp.0.join("missing");
        assert!(matches!(load_identity_key(&missing), Err(Error::NoIdentityKey { .. })));
        assert!(!missing.exists());
    }

    #[test]
    fn a_key_others_may_read_is_refused_and_left_alone() {
        let tmp = TempDir::new("state-mode");
        let path = identity_key_path(&tmp.0);
        write_key(&path, &[7; 16], 0o644);
        for refuse in [identity_key(&tmp.0), load_identity_key(&tmp.0)] {
            let err = refuse.unwrap_err();
            assert!(matches!(err, Error::IdentityKeyMode { mode: 0o644, .. }), "{err}");
            let text = err.to_string();
            assert!(text.contains(&path.display().to_string()) && text.contains("chmod 600"), "{text}");
        }
        assert_eq!((mode(&path), fs::read(&path).expect("read")), (0o644, vec![7; 16]), "not rewritten");
        for broader in [0o640, 0o604, 0o700, 0o4600] {
            fs::set_permissions(&path, fs::Permissions::from_mode(broader)).expect("chmod");
            assert!(matches!(load_identity_key(&tmp.0), Err(Error::IdentityKeyMode { .. })), "{broader:o}");
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).expect("chmod");
        assert_eq!(load_identity_key(&tmp.0).expect("narrower is fine"), IdentityKey::from_bytes([7; 16]));
    }

    #[test]
    fn what_is_not_a_key_is_refused_and_left_alone() {
        let tmp = TempDir::new("state-invalid");
        let path = identity_key_path(&tmp.0);
        for (bytes, problem) in [
            (&[1u8; 15][..], "it is 15 bytes"),
            (&[1; 17], "it is 17 bytes"),
            (&[], "it is 0 bytes"),
            (&[0; 16], "all zeros"),
        ] {
            write_key(&path, bytes, 0o600);
            let err = identity_key(&tmp.0).unwrap_err();
            assert!(matches!(err, Error::IdentityKeyInvalid { .. }), "{err}");
            let text = err.to_string();
            assert!(text.contains(problem) && text.contains("move it away"), "{text}");
            assert_eq!(fs::read(&path).expect("read"), bytes, "not rewritten");
        }
        fs::remove_file(&path).expect("rm");
        let elsewhere = tmp.0.join("elsewhere");
        write_key(&elsewhere, &[3; 16], 0o600);
        symlink(&elsewhere, &path).expect("symlink");
        let err = identity_key(&tmp.0).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        fs::remove_file(&path).expect("rm");
        fs::create_dir(&path).expect("mkdir");
        let err = load_identity_key(&tmp.0).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn a_key_of_another_user_is_refused() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("a_key_of_another_user_is_refused: needs root to chown; skipped");
            return;
        }
        let tmp = TempDir::new("state-owner");
        let path = identity_key_path(&tmp.0);
        write_key(&path, &[9; 16], 0o600);
        std::os::unix::fs::chown(&path, Some(65534), None).expect("chown");
        let err = load_identity_key(&tmp.0).unwrap_err();
        assert!(matches!(err, Error::IdentityKeyOwner { owner: 65534, uid: 0, .. }), "{err}");
    }
}
