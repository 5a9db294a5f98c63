//! The configuration file: `tollgate run`'s flags as TOML keys.
//!
//! Before clap parses the command line, [`load`] finds the file (`run
//! --config PATH`, else [`DEFAULT_PATH`] when it exists), checks every key
//! with its flag's own value parser and inserts `--key=value` arguments for
//! the keys the command line does not give, ahead of the user's own. So a
//! built-in default applies only where neither gives a value, and a flag on
//! the command line replaces the key's whole value, lists included.
//!
//! Everything here works on the clap definition of `run` (a [`Command`]):
//! the keys, their value parsers, their help and their defaults are the
//! flags', so the file and `--help` cannot disagree.

use std::{
    ffi::{OsStr, OsString},
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use clap::{
    Arg, ArgAction, CommandFactory as _, FromArgMatches as _, Parser as _,
    error::{ContextKind, ContextValue},
};

use crate::cli::{Cli, Command as Subcommand, RunArgs};

/// The file `tollgate run` reads when no `--config` is given (if it exists).
pub const DEFAULT_PATH: &str = "/etc/tollgate/tollgate.toml";

/// Keys whose value is a list of tables, and the repeatable flag each table
/// becomes one value of (`k1=v1,k2=v2`, in the table's order): `[[feeds]]`
/// tables are `--feed` values. A key whose flag does not exist is unknown.
pub const TABLE_KEYS: &[(&str, &str)] = &[("feeds", "feed")];

/// The flag naming the file: not a key.
const CONFIG_FLAG: &str = "config";

/// Examples for the flags without a default, in `tollgate config default`
/// (each must pass its flag's value parser: a unit test checks).
const EXAMPLES: &[(&str, &[&str])] = &[
    ("iface", &["eth0"]),
    ("egress-iface", &["eth1"]),
    ("block", &["203.0.113.0/24=2h", "2001:db8:bad::/48"]),
    ("allow", &["198.51.100.0/24"]),
    ("feed", &["name=drop,url=https://feeds.example.net/drop.txt,format=cidr,refresh=1h,ttl=2h"]),
    ("high-risk-destinations", &["/etc/tollgate/high-risk"]),
    ("audit-log", &["/var/log/tollgate/audit.jsonl"]),
    ("on-decision", &["/usr/local/lib/tollgate/notify"]),
    ("cluster-endpoints", &["http://192.0.2.10:2379", "http://192.0.2.11:2379", "http://192.0.2.12:2379"]),
    ("node-name", &["edge-tokyo-1"]),
    ("cluster-prefix", &["tollgate/v1/default"]),
    ("cluster-ca", &["/etc/tollgate/etcd-ca.pem"]),
    ("cluster-cert", &["/etc/tollgate/etcd-client.pem"]),
    ("cluster-key", &["/etc/tollgate/etcd-client-key.pem"]),
];

/// A configuration file tollgate will not use. Each renders as one line
/// naming the file (and the key, where there is one).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {}: {error}{}", path.display(),
            if error.kind() == std::io::ErrorKind::PermissionDenied { " (run as root)" } else { "" })]
    Read { path: PathBuf, error: std::io::Error },

    #[error("{}{location}: not valid TOML: {message}", path.display())]
    Syntax {
        path: PathBuf,
        /// `:LINE` where the parser says.
        location: String,
        message: String,
    },

    #[error("{}: unknown key {key:?}{hint}", path.display())]
    UnknownKey { path: PathBuf, key: String, hint: String },

    #[error("{}: {key}: expected {expected}, found {found}", path.display())]
    Type { path: PathBuf, key: String, expected: &'static str, found: &'static str },

    #[error("{}: {key}: {reason}", path.display())]
    Invalid { path: PathBuf, key: String, reason: String },

    /// Values that are each valid but not together.
    #[error("{}: {reason}", path.display())]
    Inconsistent { path: PathBuf, reason: String },
}

/// Why a command line could not be turned into tollgate's arguments.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The command line itself is wrong, or asks for help: clap's answer,
    /// with its usage (`clap::Error::exit` prints it as clap would).
    #[error("{}", first_line(.0))]
    Usage(#[from] clap::Error),
    #[error("not a `tollgate run` command line")]
    NotRun,
}

/// clap's message as one line, without its usage.
fn first_line(e: &clap::Error) -> String {
    let text = e.to_string();
    let message: Vec<&str> = text.lines().take_while(|l| !l.trim().is_empty()).map(str::trim).collect();
    let message = message.join(" ");
    message.strip_prefix("error: ").unwrap_or(&message).to_owned()
}

/// Parses the process's command line (`std::env::args_os()`), with the
/// configuration file's keys for `run`; also returns the file read (for
/// `run`, its `config` is that file too, given or the default).
pub fn load(argv: Vec<OsString>) -> Result<(Cli, Option<PathBuf>), ParseError> {
    let (argv, path) = expand(&argv)?;
    let mut cli = Cli::try_parse_from(argv)?;
    if let Subcommand::Run(args) = &mut cli.command {
        args.config.clone_from(&path);
    }
    Ok((cli, path))
}

/// `tollgate run`'s effective arguments for the process's original command
/// line, and the configuration file they were read from, reading the file
/// again at each call (a reload gets what a restart would).
pub fn run_args(argv: Vec<OsString>) -> Result<(RunArgs, Option<PathBuf>), ParseError> {
    match load(argv)? {
        (Cli { command: Subcommand::Run(args) }, path) => Ok((*args, path)),
        _ => Err(ParseError::NotRun),
    }
}

/// `tollgate run`'s arguments as [`run_args`] reads them, and each run
/// flag's effective values as text (defaults included), by long name: what
/// a reload compares to tell what changed.
pub fn run_args_and_values(
    argv: Vec<OsString>,
) -> Result<(RunArgs, std::collections::BTreeMap<String, Vec<String>>), ParseError> {
    let (expanded, path) = expand(&argv)?;
    let matches = Cli::command().try_get_matches_from(&expanded)?;
    let Some(("run", run_matches)) = matches.subcommand() else { return Err(ParseError::NotRun) };
    let mut values = std::collections::BTreeMap::new();
    for arg in flags(&run_command()) {
        let raw = run_matches
            .get_raw(arg.get_id().as_str())
            .map(|vs| vs.map(|v| v.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        values.insert(long(arg).to_owned(), raw);
    }
    let mut args = match Cli::from_arg_matches(&matches)? {
        Cli { command: Subcommand::Run(args) } => *args,
        _ => return Err(ParseError::NotRun),
    };
    args.config = path;
    Ok((args, values))
}

/// The clap definition of `tollgate run`.
fn run_command() -> clap::Command {
    Cli::command().find_subcommand("run").expect("run is a subcommand").clone()
}

/// `argv` with the configuration file's settings inserted after `run`, and
/// the file read; unchanged for other subcommands and `run --help`.
pub fn expand(argv: &[OsString]) -> Result<(Vec<OsString>, Option<PathBuf>), ConfigError> {
    expand_with(&run_command(), Path::new(DEFAULT_PATH), argv)
}

fn expand_with(
    run: &clap::Command,
    default: &Path,
    argv: &[OsString],
) -> Result<(Vec<OsString>, Option<PathBuf>), ConfigError> {
    let unchanged = || Ok((argv.to_vec(), None));
    if argv.get(1).map(OsString::as_os_str) != Some(OsStr::new(run.get_name())) {
        return unchanged();
    }
    let line = CommandLine::scan(run, &argv[2..]);
    // Help needs no file; a `--config` without a value is clap's to report.
    if line.help || line.config == Some(None) {
        return unchanged();
    }
    let Some(settings) = read_chosen(run, line.config.flatten(), default)? else {
        return unchanged();
    };
    let mut out = argv[..2].to_vec();
    out.extend(settings.args(|long| line.given.iter().any(|g| g == long)));
    out.extend_from_slice(&argv[2..]);
    Ok((out, Some(settings.path)))
}

/// What the command line after `run` says about the file.
struct CommandLine {
    /// The long names of the flags it gives.
    given: Vec<String>,
    /// `--config`: `Some(None)` when it has no value.
    config: Option<Option<PathBuf>>,
    /// `--help` or `--version`.
    help: bool,
}

impl CommandLine {
    fn scan(run: &clap::Command, args: &[OsString]) -> Self {
        let mut line = Self { given: Vec::new(), config: None, help: false };
        for (i, arg) in args.iter().enumerate() {
            let bytes = arg.as_bytes();
            match bytes {
                b"--" => break,
                b"-h" | b"--help" | b"-V" | b"--version" => line.help = true,
                _ => {}
            }
            let Some(rest) = bytes.strip_prefix(b"--") else { continue };
            let (name, value) = match rest.iter().position(|&b| b == b'=') {
                Some(at) => (&rest[..at], Some(OsStr::from_bytes(&rest[at + 1..]))),
                None => (rest, None),
            };
            let Ok(name) = std::str::from_utf8(name) else { continue };
            if name == CONFIG_FLAG {
                let path = value.or_else(|| args.get(i + 1).map(OsString::as_os_str));
                line.config.get_or_insert(path.map(PathBuf::from));
            } else if flags(run).any(|f| f.get_long() == Some(name)) {
                line.given.push(name.to_owned());
            }
        }
        line
    }
}

/// Reads `explicit` (`--config`), else `default` when it exists.
fn read_chosen(
    run: &clap::Command,
    explicit: Option<PathBuf>,
    default: &Path,
) -> Result<Option<Settings>, ConfigError> {
    let is_default = explicit.is_none();
    let path = explicit.unwrap_or_else(|| default.to_owned());
    match std::fs::read_to_string(&path) {
        Ok(text) => Settings::parse(run, &path, &text).map(Some),
        Err(e) if is_default && e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(ConfigError::Read { path, error }),
    }
}

/// The flags that are keys: `run`'s long flags but --config (and clap's
/// own --help and --version).
fn flags(run: &clap::Command) -> impl Iterator<Item = &Arg> {
    run.get_arguments().filter(|a| {
        !a.is_hide_set() && a.get_long().is_some_and(|l| !matches!(l, CONFIG_FLAG | "help" | "version"))
    })
}

fn long(arg: &Arg) -> &str {
    arg.get_long().expect("keys are long flags")
}

/// The key of a table flag (`feeds` for `--feed`), if it is one.
fn table_key(arg: &Arg) -> Option<&'static str> {
    TABLE_KEYS.iter().find(|(_, flag)| *flag == long(arg)).map(|(key, _)| *key)
}

/// Every key a file may have.
fn keys(run: &clap::Command) -> impl Iterator<Item = &str> {
    flags(run).flat_map(|a| [Some(long(a)), table_key(a)]).flatten()
}

/// What a file gives one flag.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    /// A flag without a value (`dry-run = true`); false is as if not given.
    Switch(bool),
    /// The values as the flag's value parser reads them.
    Values(Vec<String>),
}

#[derive(Debug)]
struct Setting {
    /// As written in the file (`feeds` for `--feed`).
    key: String,
    /// The flag's long name.
    long: String,
    value: Value,
}

/// What one configuration file sets, flag by flag in the file's order,
/// every value checked.
#[derive(Debug)]
struct Settings {
    path: PathBuf,
    flags: Vec<Setting>,
}

impl Settings {
    /// Checks the text of the file at `path` against the flags of `run`.
    fn parse(run: &clap::Command, path: &Path, text: &str) -> Result<Self, ConfigError> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::Syntax {
            path: path.to_owned(),
            location: e.span().map(|s| format!(":{}", line_of(text, s.start))).unwrap_or_default(),
            message: one_line(e.message()),
        })?;
        let mut flags: Vec<Setting> = Vec::new();
        for (key, value) in &table {
            let arg = flag_of(run, key).ok_or_else(|| unknown_key(run, path, key))?;
            let long = long(arg);
            if let Some(other) = flags.iter().find(|s| s.long == long) {
                return Err(ConfigError::Inconsistent {
                    path: path.to_owned(),
                    reason: format!("{} and {key} both set --{long}: give one", other.key),
                });
            }
            let invalid = |reason| ConfigError::Invalid { path: path.to_owned(), key: key.clone(), reason };
            let value = convert(arg, value).map_err(|(expected, found)| ConfigError::Type {
                path: path.to_owned(),
                key: key.clone(),
                expected,
                found,
            })?;
            if let Value::Values(values) = &value {
                let defaults = defaults(arg);
                if values.is_empty() && !defaults.is_empty() {
                    return Err(invalid(format!(
                        "an empty list: leave the key out for the default ({})",
                        defaults.join(", ")
                    )));
                }
                for v in values {
                    check_value(arg, v).map_err(invalid)?;
                }
            }
            flags.push(Setting { key: key.clone(), long: long.to_owned(), value });
        }
        Ok(Self { path: path.to_owned(), flags })
    }

    /// The command-line arguments for what the file sets, but the flags
    /// for which `given` is true.
    fn args(&self, given: impl Fn(&str) -> bool) -> impl Iterator<Item = OsString> {
        let mut args = Vec::new();
        for s in self.flags.iter().filter(|s| !given(&s.long)) {
            match &s.value {
                Value::Switch(true) => args.push(format!("--{}", s.long)),
                Value::Switch(false) => {}
                Value::Values(values) => args.extend(values.iter().map(|v| format!("--{}={v}", s.long))),
            }
        }
        args.into_iter().map(OsString::from)
    }

    fn get(&self, long: &str) -> Option<&Value> {
        self.flags.iter().find(|s| s.long == long).map(|s| &s.value)
    }
}

fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The flag a key sets.
fn flag_of<'c>(run: &'c clap::Command, key: &str) -> Option<&'c Arg> {
    let long = TABLE_KEYS.iter().find(|(k, _)| *k == key).map_or(key, |(_, flag)| flag);
    flags(run).find(|a| a.get_long() == Some(long))
}

fn unknown_key(run: &clap::Command, path: &Path, key: &str) -> ConfigError {
    let hint = if key == CONFIG_FLAG {
        ": the file to read is named on the command line (--config)".to_owned()
    } else {
        closest(key, keys(run)).map(|k| format!(" (did you mean {k:?}?)")).unwrap_or_default()
    };
    ConfigError::UnknownKey { path: path.to_owned(), key: key.to_owned(), hint }
}

/// The key nearest `key`, when it is near enough to be a slip (a typo,
/// `_` for `-`, a plural, the flag's `--`).
fn closest<'k>(key: &str, keys: impl Iterator<Item = &'k str>) -> Option<&'k str> {
    let key = key.trim_start_matches('-').replace('_', "-").to_ascii_lowercase();
    keys.map(|k| (edit_distance(&key, k), k))
        .min_by_key(|(d, _)| *d)
        .filter(|(d, k)| *d <= (k.len() / 4).max(1))
        .map(|(_, k)| k)
}

/// Levenshtein distance, in bytes.
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let next = (diagonal + usize::from(ca != cb)).min(row[j] + 1).min(row[j + 1] + 1);
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

fn is_list(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::Append)
}

fn is_switch(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::SetTrue)
}

/// A TOML value as what it gives `arg`, or (what was expected, what was found).
fn convert(arg: &Arg, value: &toml::Value) -> Result<Value, (&'static str, &'static str)> {
    if is_switch(arg) {
        return match value {
            toml::Value::Boolean(b) => Ok(Value::Switch(*b)),
            v => Err(("true or false", v.type_str())),
        };
    }
    if !is_list(arg) {
        return scalar(value)
            .map(|s| Value::Values(vec![s]))
            .map_err(|found| ("a string or a number", found));
    }
    let item = |v: &toml::Value| match v {
        toml::Value::Table(table) => table_value(table),
        v => scalar(v),
    };
    let expected = "a string, a number, a table or a list of them";
    match value {
        toml::Value::Array(items) => items.iter().map(item).collect(),
        v => item(v).map(|s| vec![s]),
    }
    .map(Value::Values)
    .map_err(|found| (expected, found))
}

/// A table as one flag value: `k1=v1,k2=v2` in the table's order.
fn table_value(table: &toml::Table) -> Result<String, &'static str> {
    let pairs: Vec<String> =
        table.iter().map(|(k, v)| scalar(v).map(|v| format!("{k}={v}"))).collect::<Result<_, _>>()?;
    Ok(pairs.join(","))
}

/// A string or a number as the text a value parser reads, or the type found.
fn scalar(value: &toml::Value) -> Result<String, &'static str> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        v => Err(v.type_str()),
    }
}

/// Runs `arg`'s own value parser on `value`: the reason it gives on the
/// command line when it refuses it.
fn check_value(arg: &Arg, value: &str) -> Result<(), String> {
    let probe = clap::Command::new("tollgate").no_binary_name(true).arg(arg.clone().required(false));
    let Err(e) = probe.try_get_matches_from([format!("--{}={value}", long(arg))]) else {
        return Ok(());
    };
    let quoted = format!("{value:?}");
    let reason = if let Some(source) = std::error::Error::source(&e) {
        let source = source.to_string();
        if source.contains(&quoted) { source } else { format!("invalid value {quoted}: {source}") }
    } else if let Some(ContextValue::Strings(valid)) = e.get(ContextKind::ValidValue) {
        format!("invalid value {quoted}: expected one of {}", valid.join(", "))
    } else {
        first_line(&e)
    };
    Err(one_line(&reason))
}

/// `arg`'s built-in default values, as its value parser reads them.
fn defaults(arg: &Arg) -> Vec<String> {
    arg.get_default_values().iter().map(|v| v.to_string_lossy().into_owned()).collect()
}

/// What `arg` is when a file does not set it.
fn default_value(arg: &Arg) -> Value {
    if is_switch(arg) { Value::Switch(false) } else { Value::Values(defaults(arg)) }
}

/// A value as TOML: a number when it reads back as the same text (`10`,
/// `0.2`; never `010`), else a string.
fn toml_scalar(s: &str) -> String {
    let canonical_int = s.parse::<i64>().is_ok_and(|i| i.to_string() == s);
    let canonical_float =
        s.contains('.') && s.parse::<f64>().is_ok_and(|f| f.is_finite() && f.to_string() == s);
    if canonical_int || canonical_float {
        s.to_owned()
    } else {
        toml::Value::String(s.to_owned()).to_string()
    }
}

/// `key = value` for `arg`, or `None` for a single value that is not set.
fn assignment(arg: &Arg, value: &Value) -> Option<String> {
    let key = long(arg);
    match value {
        Value::Switch(b) => Some(format!("{key} = {b}")),
        Value::Values(values) if is_list(arg) => {
            let items: Vec<String> = values.iter().map(|v| toml_scalar(v)).collect();
            Some(format!("{key} = [{}]", items.join(", ")))
        }
        Value::Values(values) => values.first().map(|v| format!("{key} = {}", toml_scalar(v))),
    }
}

/// `tollgate config check`: the configuration `tollgate run` would use
/// with the file at `path` (default: the one it reads without --config), as
/// TOML. The file is checked whole first, including what `run` checks of
/// the values together, but nothing of the host (interfaces, root).
pub fn check(path: Option<&Path>) -> Result<String, ConfigError> {
    let run = run_command();
    let settings = read_chosen(&run, path.map(Path::to_owned), Path::new(DEFAULT_PATH))?;
    if let Some(settings) = &settings {
        let args = relaxed_run_args(settings)?;
        crate::daemon::setup::check_values(&args, &crate::countries::Countries::shipped()).map_err(|e| {
            ConfigError::Inconsistent { path: settings.path.clone(), reason: format!("{e:#}") }
        })?;
    }
    Ok(effective(&run, settings.as_ref()))
}

/// `run`'s arguments with what the file sets and nothing else (not even
/// the flags `run` requires).
fn relaxed_run_args(settings: &Settings) -> Result<RunArgs, ConfigError> {
    let mut cli = Cli::command().mut_subcommand("run", |run| run.mut_args(|a| a.required(false)));
    let argv = ["tollgate", "run"].map(OsString::from).into_iter().chain(settings.args(|_| false));
    let inconsistent =
        |e: clap::Error| ConfigError::Inconsistent { path: settings.path.clone(), reason: first_line(&e) };
    let matches = cli.try_get_matches_from_mut(argv).map_err(inconsistent)?;
    match Cli::from_arg_matches(&matches).map_err(inconsistent)? {
        Cli { command: Subcommand::Run(args) } => Ok(*args),
        _ => unreachable!("the command line is a run command line"),
    }
}

/// The effective configuration: every key, the file's values marked.
fn effective(run: &clap::Command, settings: Option<&Settings>) -> String {
    let mut out = match settings {
        Some(s) => format!(
            "# The configuration `tollgate run` uses with {}, without flags on\n\
             # the command line: its keys (marked) and the built-in defaults.\n",
            s.path.display()
        ),
        None => format!(
            "# No configuration file ({DEFAULT_PATH} does not exist): `tollgate run`\n\
             # uses the built-in defaults and its command line.\n"
        ),
    };
    for arg in flags(run) {
        let from_file = settings.and_then(|s| s.get(long(arg)));
        let value = from_file.cloned().unwrap_or_else(|| default_value(arg));
        let mut line = assignment(arg, &value).unwrap_or_else(|| format!("# {} is not set", long(arg)));
        if from_file.is_some() {
            line.push_str("  # from the file");
        }
        if arg.is_required_set() && value == Value::Values(Vec::new()) {
            line.push_str(&format!("  # required: set it here or give --{}", long(arg)));
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

const DEFAULT_HEADER: &str = "\
# /etc/tollgate/tollgate.toml: the configuration of `tollgate run`.
#
# Each key is a flag of `tollgate run` without its `--`, with the same
# meaning and values (`tollgate run --help`); a flag given on the command
# line replaces the key's whole value. Lists take [\"a\", \"b\"] (or one
# value), switches true or false, other values a string or a number. Every
# key is here, commented out, at its built-in default or with an example:
# uncomment and change what you need (at least `iface`), then check the file
# with `tollgate config check`, which also prints the configuration in effect.
#
# Generated by `tollgate config default` from the definitions `--help` shows.
# In tollgate's source tree it is packaging/tollgate.toml; regenerate it with
#   cargo run -p tollgate -- config default > packaging/tollgate.toml
";

/// `tollgate config default`: every key with its help as comments and its
/// default (or an example) commented out.
pub fn default_file() -> String {
    render_default(&run_command())
}

fn render_default(run: &clap::Command) -> String {
    let mut out = DEFAULT_HEADER.to_owned();
    // Tables last: in TOML a [[table]] header ends the top-level keys.
    let (tables, plain): (Vec<&Arg>, Vec<&Arg>) = flags(run).partition(|a| table_key(a).is_some());
    for arg in plain.into_iter().chain(tables) {
        out.push('\n');
        out.push_str(&help_comment(arg));
        let values =
            if is_switch(arg) || !defaults(arg).is_empty() { default_value(arg) } else { example(arg) };
        match (table_key(arg), &values) {
            (Some(key), Value::Values(values)) => {
                for table in values {
                    out.push_str(&format!("# [[{key}]]\n"));
                    for pair in table.split(',') {
                        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                        out.push_str(&format!("# {k} = {}\n", toml_scalar(v)));
                    }
                }
            }
            _ => {
                let line = assignment(arg, &values).expect("a default or an example");
                out.push_str(&format!("# {line}\n"));
            }
        }
    }
    out
}

/// The example for a flag without a default: [`EXAMPLES`], or its value
/// name as a placeholder.
fn example(arg: &Arg) -> Value {
    let values = match EXAMPLES.iter().find(|(flag, _)| *flag == long(arg)) {
        Some((_, examples)) => examples.iter().map(|e| e.to_string()).collect(),
        None => {
            let names = arg.get_value_names().unwrap_or_default();
            vec![names.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(" ")]
        }
    };
    Value::Values(values)
}

/// `arg`'s long help (and its possible values) as `# ` lines.
fn help_comment(arg: &Arg) -> String {
    let help = arg.get_long_help().or(arg.get_help()).map(|h| h.to_string()).unwrap_or_default();
    // clap drops the full stop of a one-paragraph help; a comment keeps it.
    let mut paragraphs: Vec<String> = help
        .split("\n\n")
        .map(|p| if p.trim_end().ends_with('.') { p.to_owned() } else { format!("{}.", p.trim_end()) })
        .collect();
    let possible: Vec<String> = arg.get_possible_values().iter().map(|p| p.get_name().to_owned()).collect();
    if !possible.is_empty() && !is_switch(arg) {
        paragraphs.push(format!("One of: {}.", possible.join(", ")));
    }
    let mut out = String::new();
    for (i, paragraph) in paragraphs.iter().enumerate() {
        if i > 0 {
            out.push_str("#\n");
        }
        out.push_str(&wrap(paragraph, 76));
    }
    out
}

/// `text` as `# ` lines of at most `width` characters of text (longer
/// words alone).
fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            out.push_str(&format!("# {line}\n"));
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        out.push_str(&format!("# {line}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::test_dir::TempDir;

    fn argv(args: &[&str]) -> Vec<OsString> {
        ["tollgate"].iter().chain(args).map(OsString::from).collect()
    }

    /// A configuration file of the test's own, removed on drop.
    struct File(PathBuf, #[allow(dead_code)] TempDir);

    impl File {
        fn new(text: &str) -> Self {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = TempDir::new(&format!("config{n}"));
            let path = dir.0.join("tollgate.toml");
            std::fs::write(&path, text).expect("write the file");
            Self(path, dir)
        }
        fn arg(&self) -> &str {
            self.0.to_str().expect("UTF-8")
        }
    }

    /// `tollgate run --config FILE ARGS` with `text` in FILE.
    fn run_with(text: &str, args: &[&str]) -> Result<RunArgs, ParseError> {
        let file = File::new(text);
        let line = [&["run", "--config", file.arg()][..], args].concat();
        run_args(argv(&line)).map(|(args, path)| {
            assert_eq!(path.as_deref(), Some(file.0.as_path()));
            assert_eq!(args.config, path);
            args
        })
    }

    /// The message for `text`, after the file's name.
    fn error(text: &str) -> String {
        let file = File::new(text);
        let e = run_args(argv(&["run", "--iface", "lo", "--config", file.arg()])).expect_err("refused");
        let message = e.to_string();
        assert!(!message.contains('\n'), "one line: {message}");
        let rest = message.strip_prefix(file.arg()).unwrap_or_else(|| panic!("names the file: {message}"));
        rest.strip_prefix(": ").unwrap_or(rest).to_owned()
    }

    #[test]
    fn the_file_sits_between_the_defaults_and_the_command_line() {
        let file = "window = \"90s\"\nauth-failure-threshold = 7\nintl-invite-threshold = 5\n\
                    iface = [\"eth0\", \"eth1\"]\nsip-port = [\"udp/5070\"]\nbaseline-weight = 0.5\n";
        let args = run_with(file, &["--intl-invite-threshold", "9", "--iface=eth2"]).expect("valid");
        assert_eq!(args.detect.window, Duration::from_secs(90), "file over default");
        assert_eq!(args.detect.auth_failure_threshold, 7, "file over default");
        assert_eq!(args.detect.intl_invite_threshold, 9, "command line over file");
        assert_eq!(args.ifaces, ["eth2"], "a list on the command line replaces the file's whole list");
        let ports: Vec<_> = args.sip_ports.iter().map(|p| p.port).collect();
        assert_eq!(ports, [5070], "a list in the file replaces the default list");
        assert_eq!(args.detect.baseline_weight, 0.5);
        assert_eq!(args.detect.medium_window, Duration::from_secs(3600), "neither: the default");
        assert_eq!(args.plan.intl_prefixes.len(), 2, "default list kept");
    }

    #[test]
    fn switches_and_single_values_for_lists() {
        let args =
            run_with("iface = \"eth0\"\ndry-run = true\nblock-all-ports = false\n", &[]).expect("valid");
        assert_eq!(args.ifaces, ["eth0"], "one value for a list, and --iface from the file alone");
        assert!(args.policy.dry_run);
        assert!(!args.block_all_ports);
        let args = run_with("iface = [\"eth0\"]\nblock-all-ports = false\n", &["--block-all-ports"]).unwrap();
        assert!(args.block_all_ports, "a switch on the command line");
        assert!(!args.policy.dry_run);
    }

    #[test]
    fn iface_is_required_from_somewhere() {
        let e = run_with("window = \"60s\"\n", &[]).expect_err("no --iface anywhere");
        assert!(matches!(e, ParseError::Usage(_)), "{e}");
        assert!(e.to_string().contains("--iface"), "{e}");
    }

    #[test]
    fn which_file_is_read() {
        let dir = TempDir::new("which");
        let default = dir.0.join("tollgate.toml");
        let run = run_command();
        let line = argv(&["run", "--iface", "lo"]);
        // None there: the command line as it is.
        assert_eq!(expand_with(&run, &default, &line).unwrap(), (line.clone(), None));
        std::fs::write(&default, "window = \"2m\"\n").unwrap();
        let (expanded, path) = expand_with(&run, &default, &line).unwrap();
        assert_eq!(path.as_deref(), Some(default.as_path()));
        assert_eq!(expanded, argv(&["run", "--window=2m", "--iface", "lo"]), "ahead of the user's own");
        // --config names another; /dev/null is an empty one.
        let null = argv(&["run", "--config=/dev/null", "--iface", "lo"]);
        assert_eq!(expand_with(&run, &default, &null).unwrap(), (null.clone(), Some("/dev/null".into())));
        // A missing --config file is an error, a missing default is not.
        let missing = dir.0.join("nope.toml");
        let e = expand_with(&run, &default, &argv(&["run", "--config", missing.to_str().unwrap()]));
        let message = e.expect_err("missing").to_string();
        assert!(message.starts_with(&format!("cannot read the configuration file {}: ", missing.display())));
        // Other subcommands and run --help never read it.
        std::fs::write(&default, "windw = 1\n").unwrap();
        for line in [argv(&["status"]), argv(&["run", "--help"]), argv(&["run", "-V"])] {
            assert_eq!(expand_with(&run, &default, &line).unwrap(), (line.clone(), None));
        }
        assert!(expand_with(&run, &default, &line).is_err());
    }

    #[test]
    fn arrays_of_tables_become_values_of_their_flag() {
        let run = clap::Command::new("run")
            .arg(Arg::new("feed").long("feed").action(ArgAction::Append).value_name("name=NAME,url=URL"))
            .arg(Arg::new("window").long("window").default_value("60s"));
        let text = "window = \"1m\"\n[[feeds]]\nname = \"spamhaus\"\nurl = \"https://example.net/drop.txt\"\n\
                    refresh = \"1h\"\n\n[[feeds]]\nurl = \"file:///etc/x\"\nname = 2\n";
        let settings = Settings::parse(&run, Path::new("t.toml"), text).expect("valid");
        let args: Vec<OsString> = settings.args(|_| false).collect();
        assert_eq!(
            args,
            [
                "--window=1m",
                "--feed=name=spamhaus,url=https://example.net/drop.txt,refresh=1h",
                "--feed=url=file:///etc/x,name=2",
            ]
            .map(OsString::from)
        );
        let e = Settings::parse(&run, Path::new("t.toml"), "feed = \"a=b\"\n[[feeds]]\nname = \"x\"\n");
        assert_eq!(e.unwrap_err().to_string(), "t.toml: feed and feeds both set --feed: give one");
        let e = Settings::parse(&run, Path::new("t.toml"), "[[feeds]]\nname = [\"x\"]\n");
        assert_eq!(
            e.unwrap_err().to_string(),
            "t.toml: feeds: expected a string, a number, a table or a list of them, found array"
        );
        // Without the flag, the key is unknown.
        let bare = clap::Command::new("run").arg(Arg::new("window").long("window"));
        let e = Settings::parse(&bare, Path::new("t.toml"), "[[feeds]]\nname = \"x\"\n");
        assert!(e.unwrap_err().to_string().starts_with("t.toml: unknown key \"feeds\""));
        // tollgate's own --feed checks each table with its value parser.
        let e = Settings::parse(&run_command(), Path::new("t.toml"), "[[feeds]]\nname = \"x\"\n");
        assert_eq!(
            e.unwrap_err().to_string(),
            "t.toml: feeds: invalid value \"name=x\": feed x: no source (path=FILE or url=http(s)://...)"
        );
        // The default file shows tables as tables, after every other key.
        let default = render_default(&run);
        assert!(
            default.ends_with(
                "# [[feeds]]\n# name = \"drop\"\n# url = \"https://feeds.example.net/drop.txt\"\n\
                 # format = \"cidr\"\n# refresh = \"1h\"\n# ttl = \"2h\"\n"
            ),
            "{default}"
        );
        let settings = Settings::parse(&run, Path::new("t.toml"), &uncomment(&run, &default)).expect("valid");
        let example = EXAMPLES.iter().find(|(k, _)| *k == "feed").expect("an example").1[0];
        assert_eq!(settings.get("feed"), Some(&Value::Values(vec![example.to_owned()])));
    }

    #[test]
    fn every_error_is_one_line_naming_the_key() {
        for (text, expect) in [
            ("windw = \"60s\"\n", "unknown key \"windw\" (did you mean \"window\"?)"),
            (
                "auth_failure_threshold = 3\n",
                "unknown key \"auth_failure_threshold\" (did you mean \"auth-failure-threshold\"?)",
            ),
            ("ifaces = [\"eth0\"]\n", "unknown key \"ifaces\" (did you mean \"iface\"?)"),
            ("frobnicate = 1\n", "unknown key \"frobnicate\""),
            (
                "config = \"/etc/x\"\n",
                "unknown key \"config\": the file to read is named on the command line (--config)",
            ),
            ("dry-run = \"yes\"\n", "dry-run: expected true or false, found string"),
            ("window = [\"60s\"]\n", "window: expected a string or a number, found array"),
            ("window = true\n", "window: expected a string or a number, found boolean"),
            (
                "block = [true]\n",
                "block: expected a string, a number, a table or a list of them, found boolean",
            ),
            ("window = \"soon\"\n", "window: \"soon\" is not a duration (expected e.g. 90s, 30m, 2h): "),
            (
                "block = [\"203.0.113.0/24\", \"203.0.113.0/33\"]\n",
                "block: \"203.0.113.0/33\" is not an IP prefix",
            ),
            (
                "auth-failure-threshold = \"ten\"\n",
                "auth-failure-threshold: invalid value \"ten\": invalid digit found in string",
            ),
            (
                "auth-failure-threshold = 1.5\n",
                "auth-failure-threshold: invalid value \"1.5\": invalid digit found in string",
            ),
            ("country-min-sources = 0\n", "country-min-sources: invalid value \"0\": 0 is not in 1..=128"),
            (
                "xdp-mode = \"turbo\"\n",
                "xdp-mode: invalid value \"turbo\": expected one of auto, driver, skb",
            ),
            (
                "metrics-addr = \"nowhere\"\n",
                "metrics-addr: invalid value \"nowhere\": invalid socket address syntax",
            ),
            ("sip-port = []\n", "sip-port: an empty list: leave the key out for the default (5060, 5080)"),
            ("window = \"60s\"\nwindow = \"2m\"\n", ":2: not valid TOML: duplicate key"),
            ("window = 60s\n", ":1: not valid TOML: "),
            ("\n\n[detect\n", ":3: not valid TOML: "),
        ] {
            let message = error(text);
            assert!(message.starts_with(expect), "{text:?}: expected {expect:?}, got {message:?}");
        }
        // A value the command line replaces must be valid all the same.
        let file = File::new("window = \"soon\"\n");
        assert!(run_args(argv(&["run", "--iface", "lo", "--window", "1m", "--config", file.arg()])).is_err());
    }

    #[test]
    fn check_prints_every_key_and_marks_the_files() {
        let file =
            File::new("window = \"90s\"\ndry-run = true\nblock = \"203.0.113.0/24=2h\"\nhome-cc = 44\n");
        let out = check(Some(&file.0)).expect("valid");
        let lines: Vec<&str> = out.lines().skip(2).collect();
        for want in [
            "window = \"90s\"  # from the file",
            "dry-run = true  # from the file",
            "block = [\"203.0.113.0/24=2h\"]  # from the file",
            "home-cc = 44  # from the file",
            "medium-window = \"1h\"",
            "intl-prefix = [\"00\", \"010\"]",
            "surge-ratio = 4",
            "baseline-weight = 0.2",
            "block-all-ports = false",
            "iface = []  # required: set it here or give --iface",
            "# audit-log is not set",
        ] {
            assert!(lines.contains(&want), "{want:?} in:\n{out}");
        }
        assert_eq!(lines.len(), flags(&run_command()).count(), "one line per key:\n{out}");
        // Values each valid, not together: what `run` refuses.
        let file = File::new("country-restrict-max = \"48h\"\n");
        assert_eq!(
            check(Some(&file.0)).unwrap_err().to_string(),
            format!(
                "{}: --country-restrict-max (2days) must not exceed --max-restriction (1day)",
                file.arg()
            )
        );
    }

    #[test]
    fn the_default_file_documents_every_key_and_round_trips() {
        let default = default_file();
        let run = run_command();
        for arg in flags(&run) {
            let key = table_key(arg).map_or(format!("\n# {} = ", long(arg)), |k| format!("\n# [[{k}]]\n"));
            assert!(default.contains(&key), "{} in the default file", long(arg));
        }
        // Commented out: as no file at all.
        let file = File::new(&default);
        assert!(check(Some(&file.0)).is_ok());
        let settings = Settings::parse(&run, &file.0, &default).expect("valid");
        assert_eq!(settings.flags.len(), 0);
        // Uncommented: every example and default passes its flag's parser,
        // and the defaults are the built-in ones.
        let uncommented = uncomment(&run, &default);
        let settings = Settings::parse(&run, &file.0, &uncommented).expect("every example is valid");
        assert_eq!(settings.flags.len(), flags(&run).count());
        for arg in flags(&run) {
            let value = settings.get(long(arg)).expect("set");
            if is_switch(arg) || !defaults(arg).is_empty() {
                assert_eq!(value, &default_value(arg), "{}", long(arg));
            } else {
                assert!(
                    EXAMPLES.iter().any(|(flag, _)| *flag == long(arg)),
                    "an example for --{}",
                    long(arg)
                );
            }
        }
        let file = File::new(&uncommented);
        assert!(run_args(argv(&["run", "--config", file.arg()])).is_ok());
    }

    /// The default file with every key's line (and `[[table]]`) uncommented.
    fn uncomment(run: &clap::Command, default: &str) -> String {
        let mut in_table = false;
        let mut out = String::new();
        for line in default.lines() {
            let text = line.strip_prefix("# ");
            let table = text.and_then(|t| t.strip_prefix("[[")?.strip_suffix("]]"));
            let key = text.and_then(|t| t.split_once(" = ")).map(|(k, _)| k);
            in_table =
                table.is_some_and(|t| TABLE_KEYS.iter().any(|(k, _)| *k == t)) || (in_table && key.is_some());
            let is_key = key.is_some_and(|k| keys(run).any(|known| known == k));
            out.push_str(if in_table || is_key { text.expect("commented") } else { line });
            out.push('\n');
        }
        out
    }

    #[test]
    fn numbers_print_as_numbers_only_when_they_read_back_the_same() {
        assert_eq!(toml_scalar("10"), "10");
        assert_eq!(toml_scalar("0.2"), "0.2");
        assert_eq!(toml_scalar("010"), "\"010\"");
        assert_eq!(toml_scalar("00"), "\"00\"");
        assert_eq!(toml_scalar("1e3"), "\"1e3\"");
        assert_eq!(toml_scalar("60s"), "\"60s\"");
        assert_eq!(toml_scalar("a \"b\""), "'a \"b\"'");
    }

    #[test]
    fn help_becomes_wrapped_comments() {
        assert_eq!(wrap("one two three", 7), "# one two\n# three\n");
        assert_eq!(wrap("averyveryverylongword x", 5), "# averyveryverylongword\n# x\n");
        assert_eq!(edit_distance("windw", "window"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
