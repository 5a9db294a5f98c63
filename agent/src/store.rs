//! tollgate's durable state: what must outlive a restart or a reboot
//! (restrictions in force, offence counts, learned levels, operator
//! overrides, identity and line histories), in one SQLite file,
//! `tollgate.db` in the state directory (`--state-dir`).
//!
//! The store knows nothing of policy: it keeps plain records, and the agent
//! gives them meaning. Times are wall-clock UNIX milliseconds ([`now_ms`]),
//! never CLOCK_MONOTONIC, which restarts at boot.
//!
//! Operators may read the file with `sqlite3` (the agent may be running: the
//! journal is WAL, so readers do not block it). Schema version 2
//! (`PRAGMA user_version`), one table per record type:
//!
//! ```text
//! meta              (name PK, value)           counters; 'next_restriction_id',
//!                                              'history_since_ms', 'history_pruned_before_ms',
//!                                              the last readings of the kernel's per-country
//!                                              counters ('country_read_ms', 'country_attempts:CC',
//!                                              'country_blocked:CC')
//! restrictions      (id PK, kind, target, reason, note, evidence,
//!                    imposed_at_ms, expires_at_ms, enforced 0/1, offence)
//! offences          (kind, target PK, offences)
//! levels            (scope, key, scale PK, level, windows, first_ms, updated_ms)
//! overrides         (scope, key, scale PK, threshold, note, set_at_ms)
//! identity_prefixes (tag, prefix PK, first_seen_ms, last_seen_ms)
//! lines             (line PK, first_seen_ms, last_seen_ms, last_intl_ms (NULL: never),
//!                    customer 0/1)
//! destinations      (line, cc PK, first_call_ms, last_call_ms)
//! country_hours     (hour_ms, cc PK, attempts, blocked, surges, restrictions,
//!                    dry_run_restrictions)
//! ```
//!
//! A version 1 file (lines with `first_seen_ms` only, no `country_hours`)
//! is migrated in place, in one transaction, when this build opens it.
//!
//! Identity tags are kept as 16 lowercase hex digits (TEXT), as tollgate
//! prints them, so that `sqlite3` output can be compared with logs and
//! audit records; the other integers are SQLite INTEGERs.

use std::{
    fs::{self, DirBuilder, File, OpenOptions},
    io,
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use log::warn;
use rusqlite::{Connection, OpenFlags, OptionalExtension as _, Row, TransactionBehavior, params};

use crate::error::{Error, Result};

/// The database's file name in the state directory.
pub const DB_FILE: &str = "tollgate.db";
/// The schema this build reads and writes (`PRAGMA user_version`).
const SCHEMA_VERSION: u32 = 2;
/// What errors of an in-memory store name as its path.
const MEMORY: &str = "(in memory)";
/// Mode of the database and its `-wal`/`-shm` files: they hold who called
/// where, which is nobody else's business.
const FILE_MODE: u32 = 0o600;
/// Mode of a state directory tollgate creates.
const DIR_MODE: u32 = 0o700;
/// How long a write waits for another writer (an operator's `sqlite3`, say)
/// before it fails.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Version 2. No REFERENCES: lines and destinations are written by
/// different parts of the agent, in no set order.
const SCHEMA: &str = "
CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE restrictions (
    id INTEGER PRIMARY KEY, kind TEXT NOT NULL, target TEXT NOT NULL, reason TEXT NOT NULL,
    note TEXT, evidence TEXT NOT NULL, imposed_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL, enforced INTEGER NOT NULL, offence INTEGER NOT NULL);
CREATE TABLE offences (
    kind TEXT NOT NULL, target TEXT NOT NULL, offences INTEGER NOT NULL,
    PRIMARY KEY (kind, target));
CREATE TABLE levels (
    scope TEXT NOT NULL, key TEXT NOT NULL, scale INTEGER NOT NULL, level REAL NOT NULL,
    windows INTEGER NOT NULL, first_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL,
    PRIMARY KEY (scope, key, scale));
CREATE TABLE overrides (
    scope TEXT NOT NULL, key TEXT NOT NULL, scale INTEGER NOT NULL, threshold INTEGER NOT NULL,
    note TEXT, set_at_ms INTEGER NOT NULL, PRIMARY KEY (scope, key, scale));
CREATE TABLE identity_prefixes (
    tag TEXT NOT NULL, prefix TEXT NOT NULL, first_seen_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL, PRIMARY KEY (tag, prefix));
CREATE TABLE lines (
    line TEXT PRIMARY KEY, first_seen_ms INTEGER NOT NULL, last_seen_ms INTEGER NOT NULL,
    last_intl_ms INTEGER, customer INTEGER NOT NULL);
CREATE TABLE destinations (
    line TEXT NOT NULL, cc INTEGER NOT NULL, first_call_ms INTEGER NOT NULL,
    last_call_ms INTEGER NOT NULL, PRIMARY KEY (line, cc));
CREATE TABLE country_hours (
    hour_ms INTEGER NOT NULL, cc INTEGER NOT NULL, attempts INTEGER NOT NULL,
    blocked INTEGER NOT NULL, surges INTEGER NOT NULL, restrictions INTEGER NOT NULL,
    dry_run_restrictions INTEGER NOT NULL, PRIMARY KEY (hour_ms, cc));
";

/// From version 1 to 2. A line's last sighting and last international call
/// are what the rest of the database knows of them: its destinations (kept
/// for --new-destination-history only) and, for an identity, the prefixes
/// it was seen at. A line with a destination, or an identity seen
/// authenticating somewhere, is a customer's; a source without a
/// destination becomes one again when the kernel next sees it send an
/// INVITE. The history of international calls starts now
/// (`history_since_ms`): what was pruned before cannot be told from never.
const MIGRATE_1_TO_2: &str = "
ALTER TABLE lines RENAME TO lines_v1;
CREATE TABLE lines (
    line TEXT PRIMARY KEY, first_seen_ms INTEGER NOT NULL, last_seen_ms INTEGER NOT NULL,
    last_intl_ms INTEGER, customer INTEGER NOT NULL);
INSERT INTO lines
SELECT l.line, l.first_seen_ms,
    max(l.first_seen_ms,
        coalesce((SELECT max(d.last_call_ms) FROM destinations d WHERE d.line = l.line), l.first_seen_ms),
        coalesce((SELECT max(p.last_seen_ms) FROM identity_prefixes p WHERE 'identity:' || p.tag = l.line),
                 l.first_seen_ms)),
    (SELECT max(d.last_call_ms) FROM destinations d WHERE d.line = l.line),
    EXISTS (SELECT 1 FROM destinations d WHERE d.line = l.line)
        OR EXISTS (SELECT 1 FROM identity_prefixes p WHERE 'identity:' || p.tag = l.line)
FROM lines_v1 l;
DROP TABLE lines_v1;
CREATE TABLE country_hours (
    hour_ms INTEGER NOT NULL, cc INTEGER NOT NULL, attempts INTEGER NOT NULL,
    blocked INTEGER NOT NULL, surges INTEGER NOT NULL, restrictions INTEGER NOT NULL,
    dry_run_restrictions INTEGER NOT NULL, PRIMARY KEY (hour_ms, cc));
";

/// The length of a `country_hours` bucket.
pub const HOUR_MS: i64 = 3_600_000;

/// Wall-clock time in UNIX milliseconds, saturating (a clock before 1970
/// gives negative times, not a panic).
pub fn now_ms() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

/// A restriction in force, as imposed or last extended.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredRestriction {
    pub id: u64,
    pub kind: String,
    pub target: String,
    pub reason: String,
    pub note: Option<String>,
    /// JSON text, opaque to the store.
    pub evidence: String,
    pub imposed_at_ms: i64,
    pub expires_at_ms: i64,
    pub enforced: bool,
    pub offence: u32,
}

/// What a learned level or an override is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LevelKey {
    /// "source", "identity", "country" or "destination".
    pub scope: String,
    pub key: String,
    pub scale: u8,
}

#[derive(Clone, Debug, PartialEq)]
pub struct StoredLevel {
    pub key: LevelKey,
    /// Learned normal calls per window.
    pub level: f64,
    pub windows: u32,
    pub first_ms: i64,
    pub updated_ms: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct StoredOverride {
    pub key: LevelKey,
    pub threshold: u32,
    pub note: Option<String>,
    pub set_at_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityPrefix {
    pub tag: u64,
    pub prefix: String,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
}

/// A line's history ([`crate::detect::Line`]), under its `scope:key` text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredLine {
    pub line: String,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// None: no international call attempt seen.
    pub last_intl_ms: Option<i64>,
    pub customer: bool,
}

/// One destination country's counts in one hour.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CountryHour {
    /// The hour's start (a multiple of [`HOUR_MS`]).
    pub hour_ms: i64,
    pub cc: u16,
    /// International call attempts (blocked ones included).
    pub attempts: u64,
    /// International call attempts dropped.
    pub blocked: u64,
    /// Surges detected (the kernel's reports and the detector's).
    pub surges: u64,
    /// Restrictions imposed, enforced and dry-run ones.
    pub restrictions: u64,
    pub dry_run_restrictions: u64,
}

/// The kernel's cumulative per-country counters as last read: (attempts,
/// blocked) by country code, the countries not listed at 0.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CountryReadings {
    pub read_ms: i64,
    pub counters: std::collections::BTreeMap<u16, (u64, u64)>,
}

/// What the store knows of how far back its history goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HistoryBounds {
    /// When this schema's history began: the database was made or migrated
    /// (None: a database of an earlier build that did not record it).
    pub since_ms: Option<i64>,
    /// The latest time before which history was pruned.
    pub pruned_before_ms: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineDestination {
    pub line: String,
    pub cc: u16,
    pub first_call_ms: i64,
    pub last_call_ms: i64,
}

/// An open state database. Each write is one transaction, committed with
/// synchronous=FULL before the call returns: what the agent was told is
/// stored survives a crash or a power cut.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: Option<PathBuf>,
}

impl Store {
    /// Opens `dir/tollgate.db`, creating `dir` (0700) and the file (0600)
    /// if missing. Refused: a symbolic link or anything but a regular file
    /// there, a file that is not a SQLite database, another program's
    /// database, and one made by a newer tollgate. An existing file (and
    /// its `-wal`/`-shm`) broader than 0600 is narrowed to 0600.
    pub fn open(dir: &Path) -> Result<Self> {
        DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .map_err(Error::io(format!("creating the state directory {}", dir.display())))?;
        let path = dir.join(DB_FILE);
        if prepare_file(&path, true)? {
            // Make the new name durable, as SQLite does for its journals.
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(Error::io(format!("syncing the state directory {}", dir.display())))?;
        }
        // Before SQLite opens them: closing a descriptor of a file drops
        // every POSIX lock this process holds on it, SQLite's included.
        for suffix in ["-wal", "-shm"] {
            prepare_file(&PathBuf::from(format!("{}{suffix}", path.display())), false)?;
        }
        // NOFOLLOW again, in case a link was put there since.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NOFOLLOW
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&path, flags).map_err(classify(&path, "opening"))?;
        Self::setup(conn, Some(path))
    }

    /// A store in memory, gone when dropped (tests, or running without
    /// state).
    pub fn in_memory() -> Result<Self> {
        let conn = Connection::open_in_memory().map_err(classify(Path::new(MEMORY), "opening"))?;
        Self::setup(conn, None)
    }

    /// The database file; None in memory.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn setup(mut conn: Connection, file: Option<PathBuf>) -> Result<Self> {
        let path = file.clone().unwrap_or_else(|| MEMORY.into());
        let unusable = |problem: String| Error::StoreUnusable { path: path.clone(), problem };
        conn.set_transaction_behavior(TransactionBehavior::Immediate);
        conn.set_prepared_statement_cache_capacity(32);
        conn.busy_timeout(BUSY_TIMEOUT).map_err(classify(&path, "setting the busy timeout"))?;
        if conn.is_readonly(rusqlite::MAIN_DB).map_err(classify(&path, "opening"))? {
            return Err(unusable("it is read-only to this user; run as its owner (root?)".into()));
        }
        // The first read of the file: where a file that is not a database shows.
        let version = user_version(&conn).map_err(classify(&path, "reading the schema version"))?;
        let newer = |found: u32| {
            unusable(format!(
                "made by a newer tollgate (schema version {found}; this one knows up to {SCHEMA_VERSION}); run that tollgate, or move the file away to start afresh"
            ))
        };
        if version > SCHEMA_VERSION {
            return Err(newer(version));
        }
        // Checked before WAL is set, which would change another program's file.
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |row| row.get(0))
            .map_err(classify(&path, "reading the schema"))?;
        if version == 0 && tables > 0 {
            return Err(unusable(
                "it is a SQLite database, but not tollgate's (it has tables and no schema version); move it away and tollgate starts a new one".into(),
            ));
        }
        if file.is_some() {
            let mode: String = conn
                .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
                .map_err(classify(&path, "setting journal_mode=WAL"))?;
            if !mode.eq_ignore_ascii_case("wal") {
                // Still durable, only readers then block the agent.
                warn!("{}: the file system does not allow WAL; journal_mode stays {mode}", path.display());
            }
        }
        conn.pragma_update(None, "synchronous", "FULL").map_err(classify(&path, "setting synchronous"))?;
        conn.pragma_update(None, "foreign_keys", true).map_err(classify(&path, "setting foreign_keys"))?;
        // Immediate: of two tollgates starting at once on a new file, one
        // creates the tables and the other then finds them.
        let tx = conn.unchecked_transaction().map_err(classify(&path, "creating the schema"))?;
        let began = |tx: &Connection| set_meta(tx, "history_since_ms", now_ms());
        match user_version(&tx).map_err(classify(&path, "creating the schema"))? {
            0 => tx
                .execute_batch(SCHEMA)
                .and_then(|()| began(&tx))
                .and_then(|()| tx.pragma_update(None, "user_version", SCHEMA_VERSION))
                .map_err(classify(&path, "creating the schema"))?,
            1 => {
                tx.execute_batch(MIGRATE_1_TO_2)
                    .and_then(|()| began(&tx))
                    .and_then(|()| tx.pragma_update(None, "user_version", SCHEMA_VERSION))
                    .map_err(classify(&path, "migrating the schema from version 1 to 2"))?;
                log::info!("{}: migrated the schema from version 1 to 2", path.display());
            }
            SCHEMA_VERSION => {}
            found => return Err(newer(found)),
        }
        tx.commit().map_err(classify(&path, "creating the schema"))?;
        Ok(Self { conn, path: file })
    }

    fn error(&self, context: &str, error: String) -> Error {
        let path = self.path.clone().unwrap_or_else(|| MEMORY.into());
        Error::Store { path, context: context.to_owned(), error }
    }

    fn fail(&self, context: &str) -> impl FnOnce(rusqlite::Error) -> Error {
        move |e| self.error(context, e.to_string())
    }

    /// Runs `f` in one transaction, committed if it succeeds.
    fn write<T>(&self, context: &str, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        let run = || {
            let tx = self.conn.unchecked_transaction()?;
            let value = f(&tx)?;
            tx.commit()?;
            Ok(value)
        };
        run().map_err(self.fail(context))
    }

    /// Every row `sql` selects, made by `row`.
    fn read<T>(&self, what: &str, sql: &str, row: impl FnMut(&Row) -> rusqlite::Result<T>) -> Result<Vec<T>> {
        let run = || self.conn.prepare_cached(sql)?.query_map([], row)?.collect::<rusqlite::Result<_>>();
        run().map_err(self.fail(&format!("reading {what}")))
    }

    /// Stores `r`, replacing a restriction of the same id (an extension).
    pub fn put_restriction(&self, r: &StoredRestriction) -> Result<()> {
        self.write(&format!("storing restriction {}", r.id), |tx| {
            tx.prepare_cached(
                "INSERT INTO restrictions VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT (id) DO UPDATE SET
                 kind = ?2, target = ?3, reason = ?4, note = ?5, evidence = ?6, imposed_at_ms = ?7,
                 expires_at_ms = ?8, enforced = ?9, offence = ?10",
            )?
            .execute(params![
                r.id,
                r.kind,
                r.target,
                r.reason,
                r.note,
                r.evidence,
                r.imposed_at_ms,
                r.expires_at_ms,
                r.enforced,
                r.offence
            ])?;
            // An id stored is never handed out later, reserved or not.
            bump_next_id(tx, r.id.saturating_add(1))
        })
    }

    pub fn remove_restriction(&self, id: u64) -> Result<()> {
        self.write(&format!("removing restriction {id}"), |tx| {
            tx.prepare_cached("DELETE FROM restrictions WHERE id = ?1")?.execute([id]).map(drop)
        })
    }

    /// The restrictions stored, by id.
    pub fn restrictions(&self) -> Result<Vec<StoredRestriction>> {
        self.read("restrictions", "SELECT * FROM restrictions ORDER BY id", |row| {
            Ok(StoredRestriction {
                id: row.get(0)?,
                kind: row.get(1)?,
                target: row.get(2)?,
                reason: row.get(3)?,
                note: row.get(4)?,
                evidence: row.get(5)?,
                imposed_at_ms: row.get(6)?,
                expires_at_ms: row.get(7)?,
                enforced: row.get(8)?,
                offence: row.get(9)?,
            })
        })
    }

    /// Reserves and returns a restriction id greater than every id stored or
    /// reserved before, across restarts: an id in an audit record names one
    /// restriction only, even after it has expired and its row is gone.
    pub fn next_restriction_id(&self) -> Result<u64> {
        self.write("reserving a restriction id", |tx| {
            let counter: Option<u64> = tx
                .prepare_cached("SELECT value FROM meta WHERE name = 'next_restriction_id'")?
                .query_row([], |row| row.get(0))
                .optional()?;
            // Rows added with sqlite3 count too.
            let max: Option<u64> =
                tx.prepare_cached("SELECT max(id) FROM restrictions")?.query_row([], |row| row.get(0))?;
            let id = counter.unwrap_or(1).max(max.map_or(1, |m| m.saturating_add(1)));
            bump_next_id(tx, id.saturating_add(1))?;
            Ok(id)
        })
    }

    pub fn put_offence(&self, kind: &str, target: &str, offences: u32) -> Result<()> {
        self.write(&format!("storing the offences of {kind} {target}"), |tx| {
            tx.prepare_cached(
                "INSERT INTO offences VALUES (?1, ?2, ?3) ON CONFLICT (kind, target) DO UPDATE SET offences = ?3",
            )?
            .execute(params![kind, target, offences])
            .map(drop)
        })
    }

    /// (kind, target, offences), by kind and target.
    pub fn offences(&self) -> Result<Vec<(String, String, u32)>> {
        self.read("offences", "SELECT * FROM offences ORDER BY kind, target", |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
    }

    /// Stores a window's levels, replacing those of the same keys.
    pub fn put_levels(&self, rows: &[StoredLevel]) -> Result<()> {
        // NaN would be stored as NULL, and refused with a less clear message.
        if let Some(bad) = rows.iter().find(|r| !r.level.is_finite()) {
            let LevelKey { scope, key, scale } = &bad.key;
            let error = format!("the level of {scope} {key} (scale {scale}) is {}", bad.level);
            return Err(self.error("storing levels", error));
        }
        self.write("storing levels", |tx| {
            let mut put = tx.prepare_cached(
                "INSERT INTO levels VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (scope, key, scale)
                 DO UPDATE SET level = ?4, windows = ?5, first_ms = ?6, updated_ms = ?7",
            )?;
            for r in rows {
                let k = &r.key;
                put.execute(params![k.scope, k.key, k.scale, r.level, r.windows, r.first_ms, r.updated_ms])?;
            }
            Ok(())
        })
    }

    pub fn remove_levels(&self, keys: &[LevelKey]) -> Result<()> {
        self.write("removing levels", |tx| {
            let mut remove =
                tx.prepare_cached("DELETE FROM levels WHERE scope = ?1 AND key = ?2 AND scale = ?3")?;
            for k in keys {
                remove.execute(params![k.scope, k.key, k.scale])?;
            }
            Ok(())
        })
    }

    /// The levels stored, by key.
    pub fn levels(&self) -> Result<Vec<StoredLevel>> {
        self.read("levels", "SELECT * FROM levels ORDER BY scope, key, scale", |row| {
            Ok(StoredLevel {
                key: level_key(row)?,
                level: row.get(3)?,
                windows: row.get(4)?,
                first_ms: row.get(5)?,
                updated_ms: row.get(6)?,
            })
        })
    }

    pub fn put_override(&self, o: &StoredOverride) -> Result<()> {
        let k = &o.key;
        self.write(&format!("storing the override of {} {} (scale {})", k.scope, k.key, k.scale), |tx| {
            tx.prepare_cached(
                "INSERT INTO overrides VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (scope, key, scale)
                 DO UPDATE SET threshold = ?4, note = ?5, set_at_ms = ?6",
            )?
            .execute(params![k.scope, k.key, k.scale, o.threshold, o.note, o.set_at_ms])
            .map(drop)
        })
    }

    /// Removes the override of `k`; whether there was one.
    pub fn remove_override(&self, k: &LevelKey) -> Result<bool> {
        self.write(&format!("removing the override of {} {} (scale {})", k.scope, k.key, k.scale), |tx| {
            tx.prepare_cached("DELETE FROM overrides WHERE scope = ?1 AND key = ?2 AND scale = ?3")?
                .execute(params![k.scope, k.key, k.scale])
                .map(|n| n > 0)
        })
    }

    /// The overrides stored, by key.
    pub fn overrides(&self) -> Result<Vec<StoredOverride>> {
        self.read("overrides", "SELECT * FROM overrides ORDER BY scope, key, scale", |row| {
            Ok(StoredOverride {
                key: level_key(row)?,
                threshold: row.get(3)?,
                note: row.get(4)?,
                set_at_ms: row.get(5)?,
            })
        })
    }

    /// Records that identities authenticated from prefixes; a pair already
    /// stored keeps its earliest first and latest last sighting.
    pub fn put_identity_prefixes(&self, rows: &[IdentityPrefix]) -> Result<()> {
        self.write("storing identity prefixes", |tx| {
            let mut put = tx.prepare_cached(
                "INSERT INTO identity_prefixes VALUES (?1, ?2, ?3, ?4) ON CONFLICT (tag, prefix) DO UPDATE SET
                 first_seen_ms = min(first_seen_ms, ?3), last_seen_ms = max(last_seen_ms, ?4)",
            )?;
            for r in rows {
                put.execute(params![format!("{:016x}", r.tag), r.prefix, r.first_seen_ms, r.last_seen_ms])?;
            }
            Ok(())
        })
    }

    /// The identity prefixes stored, by tag and prefix.
    pub fn identity_prefixes(&self) -> Result<Vec<IdentityPrefix>> {
        self.read("identity prefixes", "SELECT * FROM identity_prefixes ORDER BY tag, prefix", |row| {
            let tag = row.get_ref(0)?.as_str()?;
            let tag = u64::from_str_radix(tag, 16).ok().filter(|_| tag.len() == 16).ok_or_else(|| {
                let problem = format!("identity tag {tag:?} is not 16 hex digits");
                rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, problem.into())
            })?;
            Ok(IdentityPrefix {
                tag,
                prefix: row.get(1)?,
                first_seen_ms: row.get(2)?,
                last_seen_ms: row.get(3)?,
            })
        })
    }

    /// Records lines' histories; a line stored keeps its earliest first and
    /// latest last sighting and international call, and stays a
    /// customer's once it was one (an agent that forgot a line at capacity
    /// and sees it again knows less of it than the database).
    pub fn put_lines(&self, rows: &[StoredLine]) -> Result<()> {
        self.write("storing lines", |tx| {
            // max() of SQL is NULL if either is: coalesce makes NULL "never".
            let mut put = tx.prepare_cached(
                "INSERT INTO lines VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (line) DO UPDATE SET
                 first_seen_ms = min(first_seen_ms, ?2), last_seen_ms = max(last_seen_ms, ?3),
                 last_intl_ms = max(coalesce(last_intl_ms, ?4), coalesce(?4, last_intl_ms)),
                 customer = max(customer, ?5)",
            )?;
            for r in rows {
                put.execute(params![r.line, r.first_seen_ms, r.last_seen_ms, r.last_intl_ms, r.customer])?;
            }
            Ok(())
        })
    }

    /// The lines stored, by line.
    pub fn lines(&self) -> Result<Vec<StoredLine>> {
        self.read("lines", "SELECT * FROM lines ORDER BY line", |row| {
            Ok(StoredLine {
                line: row.get(0)?,
                first_seen_ms: row.get(1)?,
                last_seen_ms: row.get(2)?,
                last_intl_ms: row.get(3)?,
                customer: row.get(4)?,
            })
        })
    }

    /// How far back the history goes.
    pub fn history(&self) -> Result<HistoryBounds> {
        let get = |name: &str| {
            self.conn
                .prepare_cached("SELECT value FROM meta WHERE name = ?1")?
                .query_row([name], |row| row.get::<_, i64>(0))
                .optional()
        };
        let run = || {
            Ok(HistoryBounds {
                since_ms: get("history_since_ms")?,
                pruned_before_ms: get("history_pruned_before_ms")?,
            })
        };
        run().map_err(self.fail("reading the history's bounds"))
    }

    /// Adds `rows` to the hours' counts and, in the same transaction,
    /// replaces the last readings of the kernel's counters with `readings`:
    /// what the counters grew by is counted once, whether the agent stops
    /// before or after.
    pub fn add_country_hours(&self, rows: &[CountryHour], readings: Option<&CountryReadings>) -> Result<()> {
        self.write("storing the countries' hours", |tx| {
            let mut add = tx.prepare_cached(
                "INSERT INTO country_hours VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (hour_ms, cc) DO UPDATE SET
                 attempts = attempts + ?3, blocked = blocked + ?4, surges = surges + ?5,
                 restrictions = restrictions + ?6, dry_run_restrictions = dry_run_restrictions + ?7",
            )?;
            for r in rows {
                add.execute(params![
                    r.hour_ms,
                    r.cc,
                    r.attempts,
                    r.blocked,
                    r.surges,
                    r.restrictions,
                    r.dry_run_restrictions
                ])?;
            }
            if let Some(readings) = readings {
                tx.prepare_cached("DELETE FROM meta WHERE name LIKE 'country\\_%:%' ESCAPE '\\'")?.execute([])?;
                set_meta(tx, "country_read_ms", readings.read_ms)?;
                for (cc, (attempts, blocked)) in &readings.counters {
                    for (name, value) in [("attempts", attempts), ("blocked", blocked)] {
                        if *value != 0 {
                            set_meta(tx, &format!("country_{name}:{cc}"), saturating_i64(*value))?;
                        }
                    }
                }
            }
            Ok(())
        })
    }

    /// The hours' counts from the hour `from_ms` on, by hour and country.
    pub fn country_hours(&self, from_ms: i64) -> Result<Vec<CountryHour>> {
        let run = || {
            self.conn
                .prepare_cached("SELECT * FROM country_hours WHERE hour_ms >= ?1 ORDER BY hour_ms, cc")?
                .query_map([from_ms], |row| {
                    Ok(CountryHour {
                        hour_ms: row.get(0)?,
                        cc: row.get(1)?,
                        attempts: row.get(2)?,
                        blocked: row.get(3)?,
                        surges: row.get(4)?,
                        restrictions: row.get(5)?,
                        dry_run_restrictions: row.get(6)?,
                    })
                })?
                .collect::<rusqlite::Result<_>>()
        };
        run().map_err(self.fail("reading the countries' hours"))
    }

    /// The last readings of the kernel's per-country counters (None: never
    /// read into this database).
    pub fn country_readings(&self) -> Result<Option<CountryReadings>> {
        let rows: Vec<(String, i64)> = self.read(
            "the countries' counter readings",
            "SELECT name, value FROM meta WHERE name = 'country_read_ms' OR name LIKE 'country\\_%:%' ESCAPE '\\'",
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        let mut out: Option<CountryReadings> = None;
        let mut counters = std::collections::BTreeMap::new();
        for (name, value) in rows {
            if name == "country_read_ms" {
                out = Some(CountryReadings { read_ms: value, ..Default::default() });
                continue;
            }
            let Some((what, cc)) = name.strip_prefix("country_").and_then(|n| n.split_once(':')) else {
                continue;
            };
            let (Ok(cc), Ok(value)) = (cc.parse::<u16>(), u64::try_from(value)) else { continue };
            let slot: &mut (u64, u64) = counters.entry(cc).or_default();
            match what {
                "attempts" => slot.0 = value,
                "blocked" => slot.1 = value,
                _ => {}
            }
        }
        Ok(out.map(|r| CountryReadings { counters, ..r }))
    }

    /// Records calls of lines to countries; a pair stored keeps its
    /// earliest first and latest last call.
    pub fn put_destinations(&self, rows: &[LineDestination]) -> Result<()> {
        self.write("storing destinations", |tx| {
            let mut put = tx.prepare_cached(
                "INSERT INTO destinations VALUES (?1, ?2, ?3, ?4) ON CONFLICT (line, cc) DO UPDATE SET
                 first_call_ms = min(first_call_ms, ?3), last_call_ms = max(last_call_ms, ?4)",
            )?;
            for r in rows {
                put.execute(params![r.line, r.cc, r.first_call_ms, r.last_call_ms])?;
            }
            Ok(())
        })
    }

    /// The destinations stored, by line and country code.
    pub fn destinations(&self) -> Result<Vec<LineDestination>> {
        self.read("destinations", "SELECT * FROM destinations ORDER BY line, cc", |row| {
            Ok(LineDestination {
                line: row.get(0)?,
                cc: row.get(1)?,
                first_call_ms: row.get(2)?,
                last_call_ms: row.get(3)?,
            })
        })
    }

    /// Forgets history not seen since `before_ms`: identity prefixes last
    /// seen, destinations last called and levels last updated before it,
    /// countries' hours that ended before it. Returns how many rows went.
    /// Lines are kept: a forgotten line would look new, and new lines are
    /// what is watched most closely. Restrictions, offences and overrides
    /// are not history.
    pub fn prune(&self, before_ms: i64) -> Result<usize> {
        self.write("forgetting old history", |tx| {
            let mut deleted = 0;
            for sql in [
                "DELETE FROM identity_prefixes WHERE last_seen_ms < ?1",
                "DELETE FROM destinations WHERE last_call_ms < ?1",
                "DELETE FROM levels WHERE updated_ms < ?1",
                "DELETE FROM country_hours WHERE hour_ms + 3600000 <= ?1",
            ] {
                deleted += tx.prepare_cached(sql)?.execute([before_ms])?;
            }
            // A report over a longer period then says how far back it sees.
            tx.prepare_cached(
                "INSERT INTO meta VALUES ('history_pruned_before_ms', ?1) ON CONFLICT (name) DO UPDATE SET value = max(value, ?1)",
            )?
            .execute([before_ms])?;
            Ok(deleted)
        })
    }
}

/// Raises the next restriction id to at least `next`.
fn bump_next_id(tx: &Connection, next: u64) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO meta VALUES ('next_restriction_id', ?1) ON CONFLICT (name) DO UPDATE SET value = max(value, ?1)",
    )?
    .execute([next])
    .map(drop)
}

fn set_meta(tx: &Connection, name: &str, value: i64) -> rusqlite::Result<()> {
    tx.prepare_cached("INSERT INTO meta VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET value = ?2")?
        .execute(params![name, value])
        .map(drop)
}

fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn level_key(row: &Row) -> rusqlite::Result<LevelKey> {
    Ok(LevelKey { scope: row.get(0)?, key: row.get(1)?, scale: row.get(2)? })
}

fn user_version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
}

/// An error of SQLite at `path`; a file that is not a database (or is
/// damaged beyond reading) gets advice instead.
fn classify(path: &Path, context: &str) -> impl FnOnce(rusqlite::Error) -> Error {
    let (path, context) = (path.to_owned(), context.to_owned());
    move |e| match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt) => {
            Error::StoreUnusable {
                path,
                problem: format!(
                    "it is not a SQLite database or is damaged ({e}); move it away and tollgate starts a new one (forgetting the restrictions and history it held)"
                ),
            }
        }
        _ => Error::Store { path, context, error: e.to_string() },
    }
}

/// Makes sure `path` is a regular file of mode 0600, creating it if missing
/// and `create`; true if it was created. A symbolic link is refused, not
/// followed. Only files that need it are opened (see [`Store::open`]).
fn prepare_file(path: &Path, create: bool) -> Result<bool> {
    let unusable =
        |problem: &str| Error::StoreUnusable { path: path.to_owned(), problem: problem.to_owned() };
    let io_error = || Error::io(format!("preparing the state database {}", path.display()));
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound && !create => return Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(FILE_MODE)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(path)
            {
                // The umask may have narrowed it further.
                Ok(file) => {
                    file.set_permissions(fs::Permissions::from_mode(FILE_MODE)).map_err(io_error())?;
                    return Ok(true);
                }
                // Made meanwhile: judged as if it had been there.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    fs::symlink_metadata(path).map_err(io_error())?
                }
                Err(e) => return Err(io_error()(e)),
            }
        }
        Err(e) => return Err(io_error()(e)),
    };
    if meta.file_type().is_symlink() {
        return Err(unusable(
            "it is a symbolic link, which tollgate does not follow; move it away, or give --state-dir the directory it points into",
        ));
    }
    if !meta.file_type().is_file() {
        return Err(unusable("it is not a regular file; move it away and tollgate starts a new one"));
    }
    if meta.mode() & 0o7777 != FILE_MODE {
        // O_NONBLOCK: a FIFO swapped in meanwhile cannot hang the open.
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .and_then(|file| file.set_permissions(fs::Permissions::from_mode(FILE_MODE)))
            .map_err(io_error())?;
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;
    use crate::test_dir::{TempDir, mode};

    fn restriction(id: u64, expires_at_ms: i64) -> StoredRestriction {
        StoredRestriction {
            id,
            kind: "intl-suspend".into(),
            target: "198.51.100.7/32 identity 00ab00ab00ab00ab".into(),
            reason: "intl-surge".into(),
            note: Some("ticket 4711".into()),
            evidence: r#"{"calls":42}"#.into(),
            imposed_at_ms: 1_700_000_000_000,
            expires_at_ms,
            enforced: true,
            offence: 2,
        }
    }

    fn key(scope: &str, key: &str, scale: u8) -> LevelKey {
        LevelKey { scope: scope.into(), key: key.into(), scale }
    }

    fn level(k: LevelKey, updated_ms: i64) -> StoredLevel {
        StoredLevel { key: k, level: 0.1 + 0.2, windows: 96, first_ms: 5, updated_ms }
    }

    fn prefix(tag: u64, prefix: &str, first_seen_ms: i64, last_seen_ms: i64) -> IdentityPrefix {
        IdentityPrefix { tag, prefix: prefix.into(), first_seen_ms, last_seen_ms }
    }

    fn dest(line: &str, cc: u16, first_call_ms: i64, last_call_ms: i64) -> LineDestination {
        LineDestination { line: line.into(), cc, first_call_ms, last_call_ms }
    }

    fn line(line: &str, first: i64, last: i64, intl: Option<i64>, customer: bool) -> StoredLine {
        StoredLine {
            line: line.into(),
            first_seen_ms: first,
            last_seen_ms: last,
            last_intl_ms: intl,
            customer,
        }
    }

    fn hour(hour_ms: i64, cc: u16, counts: [u64; 5]) -> CountryHour {
        let [attempts, blocked, surges, restrictions, dry_run_restrictions] = counts;
        CountryHour { hour_ms, cc, attempts, blocked, surges, restrictions, dry_run_restrictions }
    }

    /// Every table's `CREATE` statement, by name.
    fn schema_text(conn: &Connection) -> Vec<(String, String)> {
        conn.prepare("SELECT name, sql FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .and_then(|mut s| s.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?.collect())
            .expect("schema")
    }

    /// The one-line error of opening `dir`, checked to name `path`.
    fn refusal(dir: &Path, path: &Path) -> String {
        let text = Store::open(dir).expect_err("refused").to_string();
        assert!(text.contains(&path.display().to_string()) && !text.contains('\n'), "{text}");
        text
    }

    #[test]
    fn every_record_survives_a_restart() {
        let tmp = TempDir::new("store-roundtrip");
        let rs =
            vec![restriction(1, 10), StoredRestriction { note: None, enforced: false, ..restriction(7, 20) }];
        let levels = vec![level(key("country", "232", 3), 9), level(key("source", "198.51.100.7", 255), 9)];
        let ovr = StoredOverride { key: key("identity", "00ab", 1), threshold: 30, note: None, set_at_ms: 3 };
        let prefixes = vec![prefix(0, "2001:db8::/48", 1, 2), prefix(u64::MAX, "198.51.100.0/24", -5, 7)];
        let lines = vec![
            line("source:198.51.100.7", 11, 30, Some(20), true),
            line("source:203.0.113.9", 12, 12, None, false),
        ];
        let dests = vec![dest("198.51.100.7", 1, 1, 2), dest("198.51.100.7", 65535, 3, 4)];
        {
            let store = Store::open(&tmp.0).expect("created");
            assert_eq!(store.path(), Some(tmp.0.join(DB_FILE).as_path()));
            for r in &rs {
                store.put_restriction(r).expect("put");
            }
            store.put_offence("intl-suspend", "198.51.100.7/32", 3).expect("put");
            store.put_levels(&levels).expect("put");
            store.put_override(&ovr).expect("put");
            store.put_identity_prefixes(&prefixes).expect("put");
            store.put_lines(&lines).expect("put");
            store.put_destinations(&dests).expect("put");
        }
        let store = Store::open(&tmp.0).expect("reopened");
        assert_eq!(store.restrictions().expect("read"), rs);
        assert_eq!(store.offences().expect("read"), [("intl-suspend".into(), "198.51.100.7/32".into(), 3)]);
        assert_eq!(store.levels().expect("read"), levels, "f64 kept exactly");
        assert_eq!(store.overrides().expect("read"), [ovr]);
        assert_eq!(store.identity_prefixes().expect("read"), prefixes);
        assert_eq!(store.lines().expect("read"), lines);
        assert_eq!(store.destinations().expect("read"), dests);
        // Tags as operators see them in sqlite3.
        let tags: Vec<String> = store
            .conn
            .prepare("SELECT tag FROM identity_prefixes ORDER BY tag")
            .and_then(|mut s| s.query_map([], |row| row.get(0))?.collect())
            .expect("tags");
        assert_eq!(tags, ["0000000000000000", "ffffffffffffffff"]);
    }

    #[test]
    fn upserts_keep_the_earliest_first_and_the_latest_last() {
        let store = Store::in_memory().expect("store");
        assert_eq!(store.path(), None);
        store.put_identity_prefixes(&[prefix(9, "p", 10, 20), prefix(9, "q", 10, 20)]).expect("put");
        store.put_identity_prefixes(&[prefix(9, "p", 15, 15), prefix(9, "q", 5, 30)]).expect("put");
        assert_eq!(store.identity_prefixes().expect("read"), [prefix(9, "p", 10, 20), prefix(9, "q", 5, 30)]);
        store.put_lines(&[line("a", 10, 20, Some(15), false), line("b", 10, 20, None, true)]).expect("put");
        // An agent that forgot the lines knows less of them than the store.
        store.put_lines(&[line("a", 20, 19, None, false), line("b", 5, 25, Some(24), false)]).expect("put");
        assert_eq!(
            store.lines().expect("read"),
            [line("a", 10, 20, Some(15), false), line("b", 5, 25, Some(24), true)]
        );
        store.put_lines(&[line("a", 30, 30, Some(12), true)]).expect("put");
        assert_eq!(store.lines().expect("read")[0], line("a", 10, 30, Some(15), true));
        store.put_destinations(&[dest("a", 44, 10, 20)]).expect("put");
        store.put_destinations(&[dest("a", 44, 12, 18), dest("a", 44, 8, 25)]).expect("put");
        assert_eq!(store.destinations().expect("read"), [dest("a", 44, 8, 25)]);

        // Restrictions and levels are replaced, not merged.
        store.put_restriction(&restriction(3, 100)).expect("put");
        store.put_restriction(&restriction(3, 500)).expect("extend");
        assert_eq!(store.restrictions().expect("read"), [restriction(3, 500)]);
        store.remove_restriction(3).expect("remove");
        store.remove_restriction(3).expect("removing nothing is fine");
        assert_eq!(store.restrictions().expect("read"), []);
        store.put_offence("k", "t", 1).expect("put");
        store.put_offence("k", "t", 2).expect("put");
        assert_eq!(store.offences().expect("read"), [("k".into(), "t".into(), 2)]);
        let k = key("source", "a", 0);
        store.put_levels(&[level(k.clone(), 1), level(key("source", "b", 0), 1)]).expect("put");
        store.put_levels(&[StoredLevel { level: 7.5, ..level(k.clone(), 2) }]).expect("put");
        store.remove_levels(&[key("source", "b", 0), key("source", "c", 0)]).expect("remove");
        assert_eq!(store.levels().expect("read"), [StoredLevel { level: 7.5, ..level(k.clone(), 2) }]);
        let o = StoredOverride { key: k.clone(), threshold: 5, note: Some("x".into()), set_at_ms: 1 };
        store.put_override(&o).expect("put");
        store.put_override(&StoredOverride { threshold: 9, ..o.clone() }).expect("put");
        assert_eq!(store.overrides().expect("read"), [StoredOverride { threshold: 9, ..o }]);
        assert!(store.remove_override(&k).expect("remove"));
        assert!(!store.remove_override(&k).expect("remove"), "nothing left");

        let nan = [StoredLevel { level: f64::NAN, ..level(k, 1) }];
        let text = store.put_levels(&nan).expect_err("NaN").to_string();
        assert_eq!(
            text,
            "state database (in memory): storing levels: the level of source a (scale 0) is NaN"
        );
        // A batch is one transaction: one row refused and none is stored.
        store
            .conn
            .execute_batch(
                "CREATE TRIGGER refuse BEFORE INSERT ON levels WHEN NEW.key = 'e'
                 BEGIN SELECT RAISE(ABORT, 'refused'); END",
            )
            .expect("trigger");
        let batch = [level(key("source", "d", 0), 1), level(key("source", "e", 0), 1)];
        let text = store.put_levels(&batch).expect_err("refused").to_string();
        assert!(text.ends_with("storing levels: refused"), "{text}");
        assert_eq!(store.levels().expect("read").len(), 1, "d was not stored");
    }

    #[test]
    fn restriction_ids_are_never_reused() {
        let tmp = TempDir::new("store-ids");
        {
            let store = Store::open(&tmp.0).expect("created");
            assert_eq!(store.next_restriction_id().expect("id"), 1);
            let id = store.next_restriction_id().expect("id");
            assert_eq!(id, 2);
            store.put_restriction(&restriction(id, 1)).expect("put");
            // Stored without being reserved (say, by an older agent).
            store.put_restriction(&restriction(10, 1)).expect("put");
            store.remove_restriction(10).expect("remove");
            store.remove_restriction(id).expect("remove");
            let text = store.put_restriction(&restriction(u64::MAX, 1)).expect_err("too big").to_string();
            assert!(text.contains("storing restriction 18446744073709551615"), "{text}");
        }
        let store = Store::open(&tmp.0).expect("reopened");
        assert_eq!(store.next_restriction_id().expect("id"), 11);
        assert_eq!(store.next_restriction_id().expect("id"), 12);
        // A row added behind the store's back is not handed out again either.
        store.put_restriction(&restriction(20, 1)).expect("put");
        store.conn.execute("UPDATE restrictions SET id = 40", []).expect("renumber");
        assert_eq!(store.next_restriction_id().expect("id"), 41);
    }

    #[test]
    fn the_files_are_for_root_only_whatever_the_umask() {
        let tmp = TempDir::new("store-modes");
        let dir = tmp.0.join("var/lib/tollgate");
        // SAFETY: umask has no preconditions. It is the process's: other
        // tests running meanwhile may make broader files, none checks.
        let old = unsafe { libc::umask(0) };
        let store = Store::open(&dir);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let store = store.expect("created");
        let db = dir.join(DB_FILE);
        let (wal, shm) = (dir.join("tollgate.db-wal"), dir.join("tollgate.db-shm"));
        assert_eq!([mode(&dir), mode(&db), mode(&wal), mode(&shm)], [0o700, 0o600, 0o600, 0o600]);
        let journal: String =
            store.conn.pragma_query_value(None, "journal_mode", |r| r.get(0)).expect("mode");
        let sync: i64 = store.conn.pragma_query_value(None, "synchronous", |r| r.get(0)).expect("sync");
        assert_eq!((journal.as_str(), sync), ("wal", 2), "WAL, synchronous=FULL");
        drop(store);
        // An existing file made broader is narrowed again.
        fs::set_permissions(&db, fs::Permissions::from_mode(0o644)).expect("chmod");
        let store = Store::open(&dir).expect("reopened");
        assert_eq!(mode(&db), 0o600);
        drop(store);
    }

    #[test]
    fn what_is_not_a_tollgate_database_is_refused_and_left_alone() {
        let tmp = TempDir::new("store-refuse");
        let db = tmp.0.join(DB_FILE);
        let garbage = b"this is not a database, just some text an operator left here\n".repeat(100);
        fs::write(&db, &garbage).expect("write");
        let text = refusal(&tmp.0, &db);
        assert!(text.contains("not a SQLite database") && text.contains("move it away"), "{text}");
        assert_eq!(fs::read(&db).expect("read"), garbage, "not rewritten");

        // Another program's database.
        fs::remove_file(&db).expect("rm");
        Connection::open(&db).and_then(|c| c.execute_batch("CREATE TABLE t (x)")).expect("foreign db");
        let text = refusal(&tmp.0, &db);
        assert!(text.contains("not tollgate's"), "{text}");
        let journal: String = Connection::open(&db)
            .and_then(|c| c.pragma_query_value(None, "journal_mode", |r| r.get(0)))
            .expect("journal mode");
        assert_eq!(journal, "delete", "not switched to WAL");

        // One of a newer tollgate.
        fs::remove_file(&db).expect("rm");
        drop(Store::open(&tmp.0).expect("created"));
        Connection::open(&db).and_then(|c| c.pragma_update(None, "user_version", 3)).expect("version 3");
        let text = refusal(&tmp.0, &db);
        assert!(
            text.contains("made by a newer tollgate (schema version 3; this one knows up to 2)"),
            "{text}"
        );
        let version = Connection::open(&db).and_then(|c| user_version(&c)).expect("version");
        assert_eq!(version, 3, "left alone");

        // A symbolic link, even to a good database.
        let elsewhere = tmp.0.join("elsewhere.db");
        fs::rename(&db, &elsewhere).expect("mv");
        Connection::open(&elsewhere)
            .and_then(|c| c.pragma_update(None, "user_version", SCHEMA_VERSION))
            .expect("this version");
        symlink(&elsewhere, &db).expect("symlink");
        let text = refusal(&tmp.0, &db);
        assert!(text.contains("symbolic link"), "{text}");
        // And one in place of the WAL.
        fs::remove_file(&db).expect("rm");
        fs::rename(&elsewhere, &db).expect("mv");
        let wal = tmp.0.join("tollgate.db-wal");
        symlink(&elsewhere, &wal).expect("symlink");
        let text = refusal(&tmp.0, &wal);
        assert!(text.contains("symbolic link"), "{text}");
        fs::remove_file(&wal).expect("rm");
        Store::open(&tmp.0).expect("the database itself is fine");

        fs::remove_file(&db).expect("rm");
        fs::create_dir(&db).expect("mkdir");
        assert!(refusal(&tmp.0, &db).contains("not a regular file"));
    }

    #[test]
    fn prune_forgets_only_what_is_older() {
        let store = Store::in_memory().expect("store");
        store.put_identity_prefixes(&[prefix(1, "old", 1, 99), prefix(1, "new", 1, 100)]).expect("put");
        store
            .put_destinations(&[dest("a", 1, 1, 99), dest("a", 2, 1, 100), dest("b", 1, 1, 150)])
            .expect("put");
        store
            .put_levels(&[level(key("source", "old", 0), 99), level(key("source", "new", 0), 100)])
            .expect("put");
        store.put_lines(&[line("source:a", 1, 1, None, true)]).expect("put");
        store.add_country_hours(&[hour(-HOUR_MS, 232, [1; 5]), hour(0, 232, [1; 5])], None).expect("put");
        let o = StoredOverride { key: key("source", "old", 0), threshold: 1, note: None, set_at_ms: 1 };
        store.put_override(&o).expect("put");
        store.put_restriction(&restriction(1, 1)).expect("put");
        store.put_offence("k", "t", 1).expect("put");

        assert_eq!(store.history().expect("bounds").pruned_before_ms, None);
        assert_eq!(store.prune(100).expect("prune"), 4);
        // The hour that ended before 100 went; the one still going at 100 stays.
        assert_eq!(store.country_hours(i64::MIN).expect("read"), [hour(0, 232, [1; 5])]);
        assert_eq!(store.identity_prefixes().expect("read"), [prefix(1, "new", 1, 100)]);
        assert_eq!(store.destinations().expect("read"), [dest("a", 2, 1, 100), dest("b", 1, 1, 150)]);
        assert_eq!(store.levels().expect("read"), [level(key("source", "new", 0), 100)]);
        assert_eq!(store.lines().expect("read").len(), 1, "lines are kept");
        assert_eq!(store.overrides().expect("read").len(), 1, "overrides are not history");
        assert_eq!(store.restrictions().expect("read").len(), 1);
        assert_eq!(store.offences().expect("read").len(), 1);
        assert_eq!(store.prune(100).expect("prune again"), 0);
        store.prune(50).expect("prune less");
        assert_eq!(store.history().expect("bounds").pruned_before_ms, Some(100), "the latest cut stays");
    }

    /// The schema of version 1, as its build created it.
    const SCHEMA_V1: &str = "
CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE restrictions (
    id INTEGER PRIMARY KEY, kind TEXT NOT NULL, target TEXT NOT NULL, reason TEXT NOT NULL,
    note TEXT, evidence TEXT NOT NULL, imposed_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL, enforced INTEGER NOT NULL, offence INTEGER NOT NULL);
CREATE TABLE offences (
    kind TEXT NOT NULL, target TEXT NOT NULL, offences INTEGER NOT NULL,
    PRIMARY KEY (kind, target));
CREATE TABLE levels (
    scope TEXT NOT NULL, key TEXT NOT NULL, scale INTEGER NOT NULL, level REAL NOT NULL,
    windows INTEGER NOT NULL, first_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL,
    PRIMARY KEY (scope, key, scale));
CREATE TABLE overrides (
    scope TEXT NOT NULL, key TEXT NOT NULL, scale INTEGER NOT NULL, threshold INTEGER NOT NULL,
    note TEXT, set_at_ms INTEGER NOT NULL, PRIMARY KEY (scope, key, scale));
CREATE TABLE identity_prefixes (
    tag TEXT NOT NULL, prefix TEXT NOT NULL, first_seen_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL, PRIMARY KEY (tag, prefix));
CREATE TABLE lines (line TEXT PRIMARY KEY, first_seen_ms INTEGER NOT NULL);
CREATE TABLE destinations (
    line TEXT NOT NULL, cc INTEGER NOT NULL, first_call_ms INTEGER NOT NULL,
    last_call_ms INTEGER NOT NULL, PRIMARY KEY (line, cc));
PRAGMA user_version = 1;
";

    /// A version 1 file as an earlier agent left it: a line that called
    /// abroad, an identity seen authenticating, a source seen once, and a
    /// restriction in force.
    fn version_1_file(db: &Path) {
        Connection::open(db)
            .and_then(|c| {
                c.execute_batch(SCHEMA_V1)?;
                c.execute_batch(
                    "INSERT INTO lines VALUES ('source:198.51.100.7', 1000), ('identity:00000000000000ab', 2000),
                         ('source:203.0.113.9', 3000);
                     INSERT INTO destinations VALUES ('source:198.51.100.7', 232, 1500, 4000),
                         ('source:198.51.100.7', 44, 1200, 2500);
                     INSERT INTO identity_prefixes VALUES ('00000000000000ab', '198.51.100.0/24', 2000, 6000);
                     INSERT INTO restrictions VALUES (7, 'intl-suspend', '198.51.100.7/32', 'intl-surge', NULL,
                         '{}', 1700000000000, 10, 1, 2);
                     INSERT INTO meta VALUES ('next_restriction_id', 8);",
                )
            })
            .expect("a version 1 database");
    }

    #[test]
    fn a_version_1_database_is_migrated_in_place_and_keeps_its_rows() {
        let tmp = TempDir::new("store-migrate");
        let db = tmp.0.join(DB_FILE);
        version_1_file(&db);
        let before = now_ms();
        let store = Store::open(&tmp.0).expect("migrated");
        assert_eq!(user_version(&store.conn).expect("version"), 2);
        assert_eq!(
            store.lines().expect("read"),
            [
                // Seen authenticating until 6000 (its prefix), never called abroad.
                line("identity:00000000000000ab", 2000, 6000, None, true),
                // Last called abroad at 4000 (its latest destination).
                line("source:198.51.100.7", 1000, 4000, Some(4000), true),
                // Nothing known but its first sighting: not a customer's (yet).
                line("source:203.0.113.9", 3000, 3000, None, false),
            ]
        );
        assert_eq!(
            store.restrictions().expect("read"),
            [StoredRestriction {
                target: "198.51.100.7/32".into(),
                note: None,
                evidence: "{}".into(),
                ..restriction(7, 10)
            }]
        );
        assert_eq!(store.destinations().expect("read").len(), 2);
        assert_eq!(store.identity_prefixes().expect("read").len(), 1);
        assert_eq!(store.next_restriction_id().expect("id"), 8, "counters kept");
        assert_eq!(store.country_hours(i64::MIN).expect("read"), []);
        assert_eq!(store.country_readings().expect("read"), None);
        // The history of international calls starts at the migration.
        let since = store.history().expect("bounds").since_ms.expect("recorded");
        assert!((before..=now_ms()).contains(&since), "{since}");
        // The same schema, to the letter, as a database made by this build.
        let fresh = Store::in_memory().expect("fresh");
        assert_eq!(schema_text(&store.conn), schema_text(&fresh.conn));
        drop(store);
        // Opened again: nothing more to migrate, nothing changed.
        let store = Store::open(&tmp.0).expect("reopened");
        assert_eq!(store.lines().expect("read").len(), 3);
        assert_eq!(store.history().expect("bounds").since_ms, Some(since));
    }

    /// A migration that fails changes nothing: the file stays a version 1
    /// database with its rows, for this build to try again or an older one
    /// to use.
    #[test]
    fn a_migration_that_fails_leaves_the_version_1_file_as_it_was() {
        let tmp = TempDir::new("store-migrate-fails");
        let db = tmp.0.join(DB_FILE);
        version_1_file(&db);
        // In the migration's way.
        Connection::open(&db).and_then(|c| c.execute_batch("CREATE TABLE lines_v1 (x)")).expect("table");
        let text = refusal(&tmp.0, &db);
        assert!(
            text.contains("migrating the schema from version 1 to 2") && text.contains("lines_v1"),
            "{text}"
        );
        let conn = Connection::open(&db).expect("open");
        assert_eq!(user_version(&conn).expect("version"), 1);
        let lines: i64 = conn.query_row("SELECT count(*) FROM lines", [], |r| r.get(0)).expect("count");
        let columns: i64 = conn
            .query_row("SELECT count(*) FROM pragma_table_info('lines')", [], |r| r.get(0))
            .expect("cols");
        assert_eq!((lines, columns), (3, 2));
    }

    #[test]
    fn country_hours_add_up_and_their_readings_are_replaced_with_them() {
        let store = Store::in_memory().expect("store");
        assert_eq!(store.country_readings().expect("read"), None, "never read");
        let readings = |read_ms, counters: &[(u16, (u64, u64))]| CountryReadings {
            read_ms,
            counters: counters.iter().copied().collect(),
        };
        let first = readings(10, &[(232, (5, 2)), (44, (3, 0))]);
        store
            .add_country_hours(&[hour(0, 232, [5, 2, 1, 1, 0]), hour(0, 44, [3, 0, 0, 0, 0])], Some(&first))
            .expect("put");
        assert_eq!(store.country_readings().expect("read"), Some(first));
        // The next window: more of the same hour, one country fewer read.
        let second = readings(20, &[(232, (9, 2))]);
        store
            .add_country_hours(
                &[hour(0, 232, [4, 0, 0, 0, 1]), hour(HOUR_MS, 1, [1, 0, 0, 0, 0])],
                Some(&second),
            )
            .expect("put");
        assert_eq!(store.country_readings().expect("read"), Some(second.clone()));
        // Events alone (no reading) keep the readings as they were.
        store.add_country_hours(&[hour(HOUR_MS, 1, [0, 0, 1, 0, 0])], None).expect("put");
        assert_eq!(store.country_readings().expect("read"), Some(second));
        assert_eq!(
            store.country_hours(0).expect("read"),
            [hour(0, 44, [3, 0, 0, 0, 0]), hour(0, 232, [9, 2, 1, 1, 1]), hour(HOUR_MS, 1, [1, 0, 1, 0, 0])]
        );
        assert_eq!(store.country_hours(HOUR_MS).expect("read"), [hour(HOUR_MS, 1, [1, 0, 1, 0, 0])]);
        // A new database records when its history began.
        assert!(store.history().expect("bounds").since_ms.is_some());
    }

    #[test]
    fn now_is_wall_clock_milliseconds() {
        let now = now_ms();
        // After 2024-01-01, before 2100: not seconds, not nanoseconds, not boot time.
        assert!((1_704_067_200_000..4_102_444_800_000).contains(&now), "{now}");
    }
}
