//! Command-line interface. Doc comments are the `--help` text.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;
use tollgate_common::{IPPROTO_TCP, IPPROTO_UDP, number::Digits};

/// Default directory for pinned maps and links on the BPF filesystem.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/tollgate";

/// tollgate: stops SIP toll fraud at the network edge with XDP.
///
/// The XDP program drops traffic from blocked source addresses at the NIC,
/// before netfilter and conntrack, and counts every packet it sees. Every
/// block is temporary unless explicitly made permanent.
#[derive(Debug, Parser)]
#[command(name = "tollgate", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load and attach the XDP program, enforce blocks, serve metrics.
    ///
    /// The program and its maps are pinned under --pin-path, so enforcement
    /// (including the expiry of blocks) goes on if the agent dies, and a
    /// restarted agent adopts them. SIGINT/SIGTERM detach and remove
    /// everything unless --keep-attached-on-exit is given.
    Run(Box<RunArgs>),
    /// Show attachments, blocklist, allowlist and verdict counters from the
    /// pinned maps (works while `run` is active or after it died), the
    /// blocklist feeds from --state-dir, and the cluster as the running
    /// agent sees it.
    Status(StatusArgs),
    /// Detach the program from every interface and remove all pinned state.
    Detach(PinArgs),
    /// Show the busiest SIP sources (auth failures, international INVITEs)
    /// and destination countries, from the pinned maps.
    Top(TopArgs),
    /// Restrictions in force (asks the running agent).
    Restrictions {
        #[command(subcommand)]
        command: RestrictionsCommand,
    },
    /// Impose a restriction by hand, e.g. `restrict intl 198.51.100.7 --for 2h
    /// --reason "holder asked"`, `restrict intl --identity NAME --for 30d`
    /// (a line, from every address) or `restrict country 232 --for 1h`.
    /// Audited like automatic ones; refused for allowlisted sources.
    Restrict(RestrictArgs),
    /// Lift a restriction by its id (see `tollgate restrictions list`).
    Lift(LiftArgs),
    /// Make the running agent read its configuration file again and apply
    /// what changed (as SIGHUP does); prints what was applied, what needs a
    /// restart, or why the file was rejected (exit 1; nothing applied).
    Reload(ControlArgs),
    /// Operators' thresholds: raise (or lower) one source's, identity's or
    /// country's threshold on one timescale above what the learner may
    /// (a customer that grows), e.g. `baseline set source 198.51.100.10
    /// --scale medium --threshold 2000 --note "contract 1000/h"`. Audited
    /// and kept in the state database.
    Baseline {
        #[command(subcommand)]
        command: BaselineCommand,
    },
    /// Reports for line holders and customers, from the running agent:
    /// lines that have not called abroad (counter-measure 3) and the
    /// destination countries fraud targets (counter-measure 4).
    Report {
        #[command(subcommand)]
        command: ReportCommand,
    },
    /// Print the identity tag of a digest username, to find it in audit
    /// records ("is this alice?").
    ///
    /// tollgate never stores a username: where one is involved it keeps
    /// only its identity tag, a keyed hash (SipHash-2-4) of the name, shown
    /// as 16 hex digits. The key is made per deployment (identity.key in
    /// --state-dir, at the first `tollgate run`), so the same name has
    /// different tags in two deployments, and a tag cannot be reversed or
    /// computed without the key. NAME is not stored or logged. Reading the
    /// key needs root.
    IdentityTag(IdentityTagArgs),
    /// The configuration file `run` reads (see `run --config`): check one,
    /// or print a commented default one.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Write tollgate's man pages or shell completions into a directory,
    /// from the same definitions as --help (for packagers: `cargo xtask
    /// deb` runs it).
    #[command(hide = true)]
    Generate {
        #[command(subcommand)]
        command: GenerateCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check a configuration file and print the configuration `run` would
    /// use with it: every key, the built-in defaults and the file's values
    /// (marked). Exits 1 with one line naming the key when the file is
    /// invalid. Needs no root.
    Check {
        /// The file (default: the one `run` reads without --config,
        /// /etc/tollgate/tollgate.toml, when it exists).
        #[arg(value_name = "PATH")]
        path: Option<PathBuf>,
    },
    /// Print a complete configuration file: every `run` flag as a key, with
    /// its help as comments and its default (or an example) commented out.
    Default,
}

#[derive(Debug, Subcommand)]
pub enum GenerateCommand {
    /// One man page per command (section 1): tollgate.1, tollgate-run.1,
    /// tollgate-restrictions-list.1, ...
    Man(GenerateArgs),
    /// Completions for bash (tollgate.bash), zsh (_tollgate) and fish
    /// (tollgate.fish).
    Completions(GenerateArgs),
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Where the files go (created if missing; files of the same name are
    /// replaced). Each file written is printed.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct IdentityTagArgs {
    /// The username as it appears between the quotes of `username="..."` in
    /// Authorization: ASCII case does not count (registrars look names up
    /// without it), escapes as written (`\"` is two characters). Only the
    /// first 64 bytes count.
    #[arg(value_name = "NAME")]
    pub name: std::ffi::OsString,
    #[command(flatten)]
    pub state: StateArgs,
}

#[derive(Debug, Args)]
pub struct StateArgs {
    /// Directory of tollgate's persistent state: the identity key, made at
    /// the first `run` (the directory is created 0700, the key 0600). Kept
    /// by `detach`; not on the BPF filesystem.
    #[arg(long, value_name = "DIR", default_value = crate::state::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum BaselineCommand {
    /// Set the threshold of SCOPE TARGET on one scale.
    Set(BaselineArgs),
    /// Return SCOPE TARGET on one scale to its learned threshold.
    Clear(BaselineArgs),
    /// List the operators' thresholds in force.
    List(ControlArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scope {
    Source,
    Identity,
    Country,
}

#[derive(Debug, Args)]
pub struct BaselineArgs {
    #[arg(value_enum)]
    pub scope: Scope,
    /// A source address, an identity tag (`tollgate identity-tag NAME`) or
    /// an E.164 country code.
    #[arg(value_name = "TARGET")]
    pub target: String,
    /// The timescale: short (--window), medium (--medium-window) or long
    /// (--long-window).
    #[arg(long, value_name = "SCALE", default_value = "medium",
          value_parser = ["short", "medium", "long"])]
    pub scale: String,
    /// International call attempts per window at which it is reported
    /// (set only).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub threshold: Option<u32>,
    /// Why (kept in the audit trail).
    #[arg(long, value_name = "TEXT")]
    pub note: Option<String>,
    #[command(flatten)]
    pub control: ControlArgs,
}

#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Customers' lines with no international call attempt in the period,
    /// so their holders can be asked whether to suspend international
    /// calling (counter-measure 3).
    ///
    /// A line is an identity (shown as its identity tag, never the name)
    /// or a source address. Listed: identities that authenticated
    /// successfully, and sources where one did or that sent INVITEs (not
    /// every scanner), first seen before the period began and with no
    /// international call attempt since then (or ever); with any
    /// intl-suspend in force on them.
    Dormant(DormantArgs),
    /// Destination countries with surges, restrictions or blocked calls in
    /// the period, with counts, for a customer page (counter-measure 4).
    ///
    /// Whole hours: the period starts on the hour. Country codes, labels,
    /// counts and times only, never a number, an identity or an address.
    /// The same report is GET /countries.json?since=DURATION on the
    /// agent's --metrics-addr.
    Countries(CountriesArgs),
}

#[derive(Debug, Args)]
pub struct DormantArgs {
    /// How long the lines listed have not called abroad (e.g. 90d).
    #[arg(long, value_name = "DURATION", default_value = "90d", value_parser = parse_duration)]
    pub since: Duration,
    #[command(flatten)]
    pub output: ReportOutput,
}

#[derive(Debug, Args)]
pub struct CountriesArgs {
    /// The period, back from now (its start rounded down to the hour).
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    pub since: Duration,
    #[command(flatten)]
    pub output: ReportOutput,
}

#[derive(Debug, Args)]
pub struct ReportOutput {
    /// Print the report as JSON (stable field names; see the README)
    /// instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub control: ControlArgs,
}

#[derive(Debug, Subcommand)]
pub enum RestrictionsCommand {
    /// List every restriction in force with its id, reason and time left.
    List(ControlArgs),
}

#[derive(Debug, Args)]
pub struct ControlArgs {
    /// The running agent's control socket.
    #[arg(long, value_name = "PATH", default_value = crate::control::DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["target", "identity", "tag"])))]
pub struct RestrictArgs {
    pub kind: crate::policy::Kind,
    /// A source address or prefix, or for `country` an E.164 code (232).
    pub target: Option<String>,
    /// A line by its digest username (`intl`: its international calls, from
    /// every address; `auth`: every credentialed request of it). The agent
    /// turns the name into its identity tag at once and keeps only the tag:
    /// the name is not stored or logged.
    #[arg(long, value_name = "NAME")]
    pub identity: Option<String>,
    /// A line by its identity tag, as audit records show it (16 hex digits).
    #[arg(long, value_name = "TAG")]
    pub tag: Option<String>,
    /// How long (every restriction is temporary).
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Duration,
    /// Why, in the operator's words; kept in the audit trail.
    #[arg(long)]
    pub reason: Option<String>,
    #[command(flatten)]
    pub control: ControlArgs,
}

#[derive(Debug, Args)]
pub struct LiftArgs {
    pub id: u64,
    #[command(flatten)]
    pub control: ControlArgs,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub pin: PinArgs,
    /// How many sources and countries to show.
    #[arg(short = 'n', long, default_value_t = 10)]
    pub count: usize,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub pin: PinArgs,
    /// Where `run` keeps its state: the blocklist feeds' last refreshes
    /// are read from feeds.json there.
    #[arg(long, value_name = "DIR", default_value = crate::state::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Where the running agent answers (for the cluster section).
    #[command(flatten)]
    pub control: ControlArgs,
}

#[derive(Debug, Args)]
pub struct PinArgs {
    /// Directory on the BPF filesystem holding tollgate's pinned maps and links.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Interface to attach the XDP program to (repeat for several). It
    /// enforces and counts what arrives: requests from clients and, on a
    /// router's inside interface, the registrar's responses.
    #[arg(long = "iface", value_name = "IF", required = true)]
    pub ifaces: Vec<String>,

    /// Also count SIP responses leaving through this interface (TC egress):
    /// use it when the registrar runs on this host, whose responses never
    /// arrive on an XDP interface. Never drops anything. Linux 6.6+ attaches
    /// a TCX link; older kernels a TC filter under a clsact qdisc, which is
    /// added if missing and then removed on detach (an existing one is kept).
    #[arg(long = "egress-iface", value_name = "IF")]
    pub egress_ifaces: Vec<String>,

    /// XDP attach mode: `auto` tries driver (native) mode and falls back to
    /// generic (skb) mode with a warning.
    #[arg(long, value_enum, default_value_t = XdpModeArg::Auto)]
    pub xdp_mode: XdpModeArg,

    /// Block a source prefix, e.g. `203.0.113.0/24=2h`, `2001:db8::7=30m`.
    /// Without `=DURATION` the block lasts --block-duration; `=permanent`
    /// never lapses by itself. Repeat for several.
    #[arg(long = "block", value_name = "CIDR[=DURATION]", value_parser = parse_block)]
    pub blocks: Vec<BlockSpec>,

    /// How long a --block without an explicit duration lasts.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub block_duration: Duration,

    /// Never drop traffic from this prefix (own SBCs, PBXs, upstream peers);
    /// checked before the blocklist. Repeat for several.
    #[arg(long = "allow", value_name = "CIDR", value_parser = parse_cidr)]
    pub allows: Vec<IpNet>,

    /// A blocklist feed, refreshed in the background (repeat for several;
    /// `[[feeds]]` tables in the configuration file):
    /// `name=NAME,path=FILE` or `name=NAME,url=https://...`, then optionally
    /// `format=cidr|apiban` (default cidr: one prefix or address per line,
    /// `#` and `;` comments), `refresh=DURATION` (default 1h) and
    /// `ttl=DURATION` (default twice refresh; not shorter than refresh).
    ///
    /// Each entry is blocked for ttl after the refresh that listed it, with
    /// the feed's name as its reason; a successful refresh removes what the
    /// feed no longer lists. A feed that fails to load keeps its last good
    /// entries until their ttl (also across a restart). Refused whole: a
    /// prefix broader than /8 (IPv4) or /19 (IPv6), mostly malformed or
    /// empty text, more than 64 MiB, or more entries than the blocklist has
    /// room for. Entries inside an --allow prefix are not written, and
    /// entries never replace a --block, operator or automatic block.
    /// NAME: 1 to 32 of a-z, 0-9, - and _.
    #[arg(long = "feed", value_name = "name=NAME,url=URL", value_parser = crate::feeds::parse_feed)]
    pub feeds: Vec<crate::feeds::FeedSpec>,

    /// Most prefixes the kernel blocklist holds (--block, feeds, operator
    /// and automatic blocks together; feeds leave 4,096 of them free for
    /// the others). The kernel takes about 240 bytes per entry present,
    /// and 16 per entry of capacity up front (the lookup hash's buckets);
    /// a carrier-scale feed of a million prefixes needs 1048576 or more
    /// (README, Performance).
    #[arg(long, value_name = "N", default_value_t = tollgate_common::BLOCKLIST_CAPACITY,
          value_parser = clap::value_parser!(u32).range(8192..=16_777_216))]
    pub blocklist_capacity: u32,

    /// A SIP port: `N` for UDP and TCP, or `udp/N`, `tcp/N`. Repeat for
    /// several; replaces the default.
    #[arg(
        long = "sip-port",
        value_name = "[udp/|tcp/]N",
        default_values = ["5060", "5080"],
        value_parser = parse_sip_port
    )]
    pub sip_ports: Vec<SipPort>,

    /// Drop blocked sources on every port, not only on SIP ports.
    #[arg(long)]
    pub block_all_ports: bool,

    /// Address for the Prometheus /metrics endpoint.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9465")]
    pub metrics_addr: SocketAddr,

    #[command(flatten)]
    pub pin: PinArgs,

    #[command(flatten)]
    pub state: StateArgs,

    #[command(flatten)]
    pub detect: DetectArgs,

    #[command(flatten)]
    pub plan: PlanArgs,

    #[command(flatten)]
    pub policy: PolicyArgs,

    #[command(flatten)]
    pub cluster: crate::cluster::ClusterArgs,

    /// Where operators' `restrict`, `lift` and `restrictions list` reach
    /// this agent (a unix socket only root can use).
    #[arg(long, value_name = "PATH", default_value = crate::control::DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,

    /// On SIGINT/SIGTERM leave the program attached and the maps pinned
    /// (enforcement continues; the next `run` adopts them). Use it for
    /// restarts and upgrades without an enforcement gap.
    #[arg(long)]
    pub keep_attached_on_exit: bool,

    /// Read these flags from this TOML file too: keys are their long names
    /// without `--` (`window = "60s"`, `iface = ["eth0", "eth1"]`, `dry-run
    /// = true`); a flag given on the command line replaces the key's whole
    /// value. Without it /etc/tollgate/tollgate.toml is read when it
    /// exists; `--config /dev/null` reads nothing. `tollgate config check`
    /// validates a file, `tollgate config default` prints every key.
    // After `config::load`: the file read, given or the default.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

/// Counting windows and the thresholds at which sources, identities and
/// countries are reported. International thresholds count call attempts
/// (a new Call-ID), not packets: an INVITE's retransmissions and its
/// authentication retry are one attempt.
#[derive(Debug, Args)]
pub struct DetectArgs {
    /// Length of the short counting window (judged in the kernel, at once).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub window: Duration,

    /// Length of the medium counting window (slow fraud: a few calls a
    /// minute is caught here).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub medium_window: Duration,

    /// Length of the long counting window; it is also the "day" by which
    /// learned levels may rise (--baseline-max-rise).
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    pub long_window: Duration,

    /// International call attempts from one source within a medium window
    /// that report it when it has no learned level (0: never).
    #[arg(long, value_name = "N", default_value_t = 60)]
    pub intl_medium_threshold: u32,

    /// The same within a long window.
    #[arg(long, value_name = "N", default_value_t = 300)]
    pub intl_long_threshold: u32,

    /// International call attempts of one identity (digest username),
    /// summed over all the addresses it uses, within a short, medium and
    /// long window, that report it (0: that scale off).
    #[arg(long, value_name = "SHORT,MEDIUM,LONG", default_value = "30,60,300", value_parser = parse_triple)]
    pub identity_thresholds: Triple,

    /// International call attempts to one country, from all sources,
    /// within a medium and a long window (the short one is
    /// --country-invite-threshold), that report it.
    #[arg(long, value_name = "MEDIUM,LONG", default_value = "1000,10000", value_parser = parse_pair)]
    pub country_longer_thresholds: (u32, u32),

    /// Fraction of the threshold in force a window may reach and still
    /// teach the learned level: a source that stays just under its
    /// threshold never raises it.
    #[arg(long, value_name = "F", default_value_t = 0.5, value_parser = parse_weight)]
    pub baseline_learn_below: f64,

    /// Most a learned level may rise (or fall) per long window, as a factor.
    #[arg(long, value_name = "FACTOR", default_value_t = 1.5, value_parser = parse_ratio)]
    pub baseline_max_rise: f64,

    /// History a source, identity or country needs before its learned level
    /// is trusted (and before a country new to it counts as new).
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = parse_duration_or_zero)]
    pub baseline_min_history: Duration,

    /// A learned threshold never exceeds this many times its ceiling;
    /// above it only an operator raises one (`tollgate baseline set`).
    #[arg(long, value_name = "RATIO", default_value_t = 8.0, value_parser = parse_ratio)]
    pub learned_max_ratio: f64,

    /// A country a line (source or identity) has not called within this is
    /// new to it: for one long window, calls to it are judged at the
    /// ceilings divided by --new-destination-divisor.
    #[arg(long, value_name = "DURATION", default_value = "30d", value_parser = parse_duration)]
    pub new_destination_history: Duration,

    /// Divisor of the ceilings for a new destination (0: rule off).
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub new_destination_divisor: u32,

    /// File of high-risk destination country codes (one per line, `#`
    /// comments; e.g. the list carriers publish under counter-measure 4):
    /// a new one divides the ceilings further by --high-risk-divisor.
    #[arg(long, value_name = "PATH")]
    pub high_risk_destinations: Option<PathBuf>,

    /// Further divisor of the ceilings for a new destination on the
    /// --high-risk-destinations list.
    #[arg(long, value_name = "N", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub high_risk_divisor: u32,

    /// Prefix length (IPv4, IPv6) of the networks each identity's history
    /// of addresses is kept in.
    #[arg(long, value_name = "V4,V6", default_value = "24,48", value_parser = parse_prefix_lengths)]
    pub identity_prefix: (u8, u8),

    /// An identity with a history that authenticates from a prefix outside
    /// it and places --new-prefix-calls international calls from there
    /// within this is restricted there.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub new_prefix_horizon: Duration,

    /// International calls from a prefix new to an identity, within
    /// --new-prefix-horizon, that restrict it there (0: rule off).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub new_prefix_calls: u32,

    /// Authentication failures of one source within a window that report
    /// it (0: never). A failure is a 401/407 (not stale) or 403 answering a
    /// request of that source's own that carried credentials, with a nonce
    /// the registrar had issued to that address (or over TCP): the first
    /// challenge of a normal digest login is not one, and rejections of
    /// requests forged with someone else's address never count as theirs.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub auth_failure_threshold: u32,

    /// How long a nonce the registrar issued to an address binds the
    /// credentials sent from it (use the registrar's nonce lifetime, e.g.
    /// Kamailio's nonce_expire).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub nonce_horizon: Duration,

    /// How long an identity that authenticated successfully at an address
    /// makes it an address where others work (an office, a NAT): failures
    /// of one identity there restrict only that identity.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub success_horizon: Duration,

    /// International call attempts from one source within a short window
    /// that report it when it has no learned level (0: never). Sources with
    /// a learned level are reported at --surge-ratio times it, never below
    /// this (nor above --learned-max-ratio times it).
    #[arg(long, value_name = "N", default_value_t = 30)]
    pub intl_invite_threshold: u32,

    /// How many times its learned normal number of international calls per
    /// window a source, identity or country must reach to be reported.
    #[arg(long, value_name = "RATIO", default_value_t = 4.0, value_parser = parse_ratio)]
    pub surge_ratio: f64,

    /// Weight of the newest window in the peacetime levels of sources and
    /// countries (EWMA, 0 to 1).
    #[arg(long, value_name = "W", default_value_t = 0.2, value_parser = parse_weight)]
    pub baseline_weight: f64,

    /// Windows learned from before a learned level is trusted (besides
    /// --baseline-min-history).
    #[arg(long, value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub baseline_min_windows: u32,

    /// International call attempts to one country code, from all sources,
    /// within a short window that report the country when it has no
    /// learned level (0: never).
    /// Countries with a learned peacetime level are reported at
    /// --surge-ratio times it, never below this.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub country_invite_threshold: u32,

    /// Distinct source addresses a country's window must have before it is
    /// reported (a surge from fewer is for the per-source measures).
    #[arg(long, value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=tollgate_common::SOURCE_BUCKETS as i64))]
    pub country_min_sources: u32,

    /// Most source addresses tracked at once in the kernel (least recently
    /// seen are forgotten first, so a spoofed flood cannot exhaust memory);
    /// the agent's detection keeps at most 4 times as many sources,
    /// identities, lines and destinations.
    #[arg(long, value_name = "N", default_value_t = tollgate_common::SOURCES_CAPACITY,
          value_parser = clap::value_parser!(u32).range(1024..=16_777_216))]
    pub max_sources: u32,
}

/// How reported sources are restricted. Every restriction is temporary and
/// audited.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// Decide and audit everything, enforce nothing (metrics and the audit
    /// log show what would have happened).
    #[arg(long)]
    pub dry_run: bool,

    /// How long a source reported for authentication failures is
    /// auth-suspended (its REGISTERs and credentialed requests dropped) on a
    /// first offence; each repeat doubles it, up to --max-restriction.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    pub auth_suspend: Duration,

    /// How long a source reported for international INVITEs is
    /// intl-suspended (its international INVITEs dropped; domestic and
    /// emergency calls pass); extended while the surge lasts.
    #[arg(long, value_name = "DURATION", default_value = "30m", value_parser = parse_duration)]
    pub intl_suspend: Duration,

    /// Longest a restriction lasts after escalation, and the longest one an
    /// operator imposes by hand (but see --max-line-suspension).
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    pub max_restriction: Duration,

    /// Longest an operator suspends a line's international calling by hand
    /// (`restrict intl --identity NAME`: the holder asked, or agreed for a
    /// dormant line; counter-measures 2 and 3).
    #[arg(long, value_name = "DURATION", default_value = "365d", value_parser = parse_duration)]
    pub max_line_suspension: Duration,

    /// Let tollgate restrict a whole destination country code when a surge
    /// to it comes from at least --country-min-sources sources
    /// (counter-measure 7, the last resort). Without it such surges are
    /// only audited as alerts. Emergency and domestic calls are never
    /// affected.
    #[arg(long)]
    pub allow_country_restrict: bool,

    /// How long a reported country surge restricts the country; each
    /// further report extends it by this, and a window below the threshold
    /// lifts it at once.
    #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = parse_duration)]
    pub country_restrict_for: Duration,

    /// Longest an automatic country restriction lasts in all; after it, a
    /// surge that goes on is only alerted on until it ends.
    #[arg(long, value_name = "DURATION", default_value = "4h", value_parser = parse_duration)]
    pub country_restrict_max: Duration,

    /// Distinct identities failing at one address within a window from
    /// which the whole address is auth-suspended (password spraying). Below
    /// it, at an address where another identity authenticated within
    /// --success-horizon (an office behind one NAT), only the failing
    /// identity is suspended there (identity-suspend).
    #[arg(long, value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub spray_identities: u16,

    /// Most sources of one /24 (IPv4) or /48 (IPv6) restricted in one way;
    /// beyond it tollgate alerts instead of acting (spoofed sources). 0: no cap.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub prefix_cap: usize,

    /// Append every decision as a JSON line to this file (they also go to
    /// the log).
    #[arg(long, value_name = "PATH")]
    pub audit_log: Option<PathBuf>,

    /// Run this shell command when a restriction is imposed or lapses, with
    /// the audit record as JSON on standard input and TOLLGATE_EVENT,
    /// TOLLGATE_KIND, TOLLGATE_TARGET, TOLLGATE_MODE in the environment, so
    /// the line holder can be notified promptly (measure 5). It also runs in
    /// dry-run (check TOLLGATE_MODE). Killed after 10 s.
    #[arg(long, value_name = "CMD")]
    pub on_decision: Option<String>,
}

/// How dialled numbers are written in the carrier's country.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The home E.164 country code (calls to it are domestic).
    #[arg(long, value_name = "CC", default_value_t = 81,
          value_parser = clap::value_parser!(u16).range(1..=999))]
    pub home_cc: u16,

    /// International access prefix besides '+' (repeat; replaces the
    /// defaults; e.g. add 011 for North America).
    #[arg(long = "intl-prefix", value_name = "DIGITS", default_values = ["00", "010"], value_parser = parse_digits)]
    pub intl_prefixes: Vec<Digits>,

    /// National trunk prefix: numbers starting with it are domestic.
    #[arg(long, value_name = "DIGITS", default_value = "0", value_parser = parse_digits)]
    pub trunk_prefix: Digits,

    /// Emergency short number (repeat; replaces the defaults). INVITEs to
    /// these are counted apart and never restricted by tollgate.
    #[arg(long = "emergency-number", value_name = "DIGITS",
          default_values = ["110", "118", "119", "112", "911"], value_parser = parse_digits)]
    pub emergency_numbers: Vec<Digits>,
}

/// Three counts, one per timescale.
pub type Triple = [u32; 3];

fn counts(s: &str, n: usize) -> Result<Vec<u32>, String> {
    let v: Vec<u32> = s
        .split(',')
        .map(|p| p.trim().parse::<u32>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("{s:?} is not {n} comma-separated counts"))?;
    if v.len() == n { Ok(v) } else { Err(format!("{s:?} is not {n} comma-separated counts")) }
}

pub fn parse_triple(s: &str) -> Result<Triple, String> {
    let v = counts(s, 3)?;
    Ok([v[0], v[1], v[2]])
}

pub fn parse_pair(s: &str) -> Result<(u32, u32), String> {
    let v = counts(s, 2)?;
    Ok((v[0], v[1]))
}

pub fn parse_prefix_lengths(s: &str) -> Result<(u8, u8), String> {
    match counts(s, 2)?.as_slice() {
        [v4 @ 8..=32, v6 @ 16..=128] => Ok((*v4 as u8, *v6 as u8)),
        _ => Err(format!("{s:?} is not an IPv4 length (8-32) and an IPv6 length (16-128)")),
    }
}

pub fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 1.0 => Ok(r),
        _ => Err(format!("{s:?} is not a ratio of at least 1")),
    }
}

pub fn parse_weight(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(w) if w > 0.0 && w <= 1.0 => Ok(w),
        _ => Err(format!("{s:?} is not a weight in (0, 1]")),
    }
}

pub fn parse_digits(s: &str) -> Result<Digits, String> {
    Digits::new(s.trim().as_bytes()).ok_or_else(|| format!("{s:?} is not 1 to {} digits", Digits::MAX))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum XdpModeArg {
    Auto,
    Driver,
    Skb,
}

/// How long a block lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockDuration {
    /// Use --block-duration.
    Default,
    For(Duration),
    Permanent,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockSpec {
    pub net: IpNet,
    pub duration: BlockDuration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SipPort {
    /// `IPPROTO_UDP`, `IPPROTO_TCP`, or both when `None`.
    pub proto: Option<u8>,
    pub port: u16,
}

impl SipPort {
    /// The (protocol, port) pairs this spec covers.
    pub fn keys(&self) -> impl Iterator<Item = (u8, u16)> + '_ {
        [IPPROTO_UDP, IPPROTO_TCP]
            .into_iter()
            .filter(|p| self.proto.is_none_or(|q| q == *p))
            .map(|p| (p, self.port))
    }
}

/// Parses `CIDR` or a bare address (a /32 or /128). Host bits are cleared.
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    let net = match s.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => match s.parse::<std::net::IpAddr>() {
            Ok(addr) => IpNet::from(addr),
            Err(_) => {
                return Err(format!(
                    "{s:?} is not an IP prefix (expected e.g. 203.0.113.0/24, 2001:db8::/48 or 198.51.100.7)"
                ));
            }
        },
    };
    Ok(net.trunc())
}

/// Parses a positive duration such as `90s`, `30m`, `2h`, `1h30m`.
/// A duration, where zero means "none" (e.g. no history needed).
pub fn parse_duration_or_zero(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration (expected e.g. 0, 90s, 7d): {e}"))
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration (expected e.g. 90s, 30m, 2h): {e}"))?;
    if d.is_zero() {
        return Err("a duration must be greater than zero".to_owned());
    }
    Ok(d)
}

pub fn parse_block(s: &str) -> Result<BlockSpec, String> {
    let (cidr, duration) = match s.split_once('=') {
        None => (s, BlockDuration::Default),
        Some((cidr, "permanent")) => (cidr, BlockDuration::Permanent),
        Some((cidr, d)) => (cidr, BlockDuration::For(parse_duration(d)?)),
    };
    Ok(BlockSpec { net: parse_cidr(cidr)?, duration })
}

pub fn parse_sip_port(s: &str) -> Result<SipPort, String> {
    let (proto, port) = match s.split_once('/') {
        None => (None, s),
        Some(("udp", p)) => (Some(IPPROTO_UDP), p),
        Some(("tcp", p)) => (Some(IPPROTO_TCP), p),
        Some((other, _)) => return Err(format!("unknown transport {other:?} (use udp or tcp)")),
    };
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("{port:?} is not a port number (1-65535)")),
        Ok(port) => Ok(SipPort { proto, port }),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn identity_tag_help_names_the_hashed_length() {
        assert_eq!(tollgate_common::hash::MAX_HASHED, 64, "the NAME help of identity-tag says 64 bytes");
    }

    #[test]
    fn scale_lists_and_prefix_lengths() {
        assert_eq!(parse_triple("30, 60,300"), Ok([30, 60, 300]));
        assert_eq!(parse_pair("1000,10000"), Ok((1000, 10_000)));
        for bad in ["30,60", "30,60,300,1", "a,b,c", "", "30,,300", "-1,2,3"] {
            assert!(parse_triple(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_prefix_lengths("24,48"), Ok((24, 48)));
        for bad in ["33,48", "24,129", "7,48", "24"] {
            assert!(parse_prefix_lengths(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_duration_or_zero("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration_or_zero("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_duration_or_zero("soon").is_err());
    }

    #[test]
    fn cidrs() {
        assert_eq!(parse_cidr("203.0.113.9/24").unwrap().to_string(), "203.0.113.0/24");
        assert_eq!(parse_cidr("198.51.100.7").unwrap().to_string(), "198.51.100.7/32");
        assert_eq!(parse_cidr("2001:db8::1").unwrap().to_string(), "2001:db8::1/128");
        assert!(parse_cidr("203.0.113.0/33").is_err());
        assert!(parse_cidr("example.com").is_err());
    }

    #[test]
    fn blocks_and_durations() {
        let b = parse_block("203.0.113.0/24=2h").unwrap();
        assert_eq!(b.duration, BlockDuration::For(Duration::from_secs(7200)));
        assert_eq!(parse_block("2001:db8::/48").unwrap().duration, BlockDuration::Default);
        assert_eq!(parse_block("192.0.2.1=permanent").unwrap().duration, BlockDuration::Permanent);
        assert!(parse_block("192.0.2.1=0s").is_err());
        assert!(parse_block("192.0.2.1=-5s").is_err());
        assert!(parse_block("192.0.2.1=soon").is_err());
    }

    #[test]
    fn digits() {
        assert_eq!(parse_digits("010").unwrap().len, 3);
        assert!(parse_digits("0x").is_err());
        assert!(parse_digits("").is_err());
        assert!(parse_digits("12345678").is_err());
    }

    #[test]
    fn sip_ports() {
        let both = parse_sip_port("5060").unwrap();
        assert_eq!(both.keys().count(), 2);
        let udp = parse_sip_port("udp/5062").unwrap();
        assert_eq!(udp.keys().collect::<Vec<_>>(), vec![(IPPROTO_UDP, 5062)]);
        assert!(parse_sip_port("0").is_err());
        assert!(parse_sip_port("sctp/5060").is_err());
        assert!(parse_sip_port("70000").is_err());
    }
}
