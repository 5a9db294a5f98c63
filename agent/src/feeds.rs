//! Blocklist feeds (`tollgate run --feed`, `[[feeds]]` in the file): what a
//! feed is, how its text is read, and how it is fetched. Pure but for
//! [`fetch`]; the daemon (`daemon/feeds.rs`) writes the entries.
//!
//! A feed is a local file or an HTTP(S) URL listing prefixes, either one
//! CIDR (or bare address) per line with `#` and `;` comments — whole-line
//! or trailing, as in Spamhaus DROP's `203.0.113.0/24 ; SBL123` — or
//! APIBAN-style JSON (`{"ipaddress": ["192.0.2.1", ...], "ID": "..."}`).
//!
//! Refused whole, so that a broken or poisoned feed never becomes a partial
//! or a world-wide block: a prefix shorter than [`MIN_V4_PREFIX`] /
//! [`MIN_V6_PREFIX`] (0.0.0.0/0 would drop everyone) or enclosing the
//! IPv4-mapped range the kernel keys IPv4 in, more malformed lines
//! than good ones (an HTML error page served with 200), no entry at all (a
//! truncated download must not unblock everything at once), or more than
//! [`MAX_FEED_BYTES`]. A few malformed lines among good ones are skipped and
//! counted.

use std::{
    collections::BTreeSet,
    io::Read as _,
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::IpNet;

/// Shortest IPv4 prefix a feed may list (a /7 is 2 % of the Internet).
pub const MIN_V4_PREFIX: u8 = 8;
/// Shortest IPv6 prefix a feed may list (RIRs allocate /19 at the largest).
pub const MIN_V6_PREFIX: u8 = 19;
/// Largest feed read, file or download.
pub const MAX_FEED_BYTES: u64 = 64 << 20;
/// Longest a feed name may be (it is a metric label).
pub const MAX_NAME_LEN: usize = 32;
/// Time to connect to a feed's server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for a whole download, connection included: a server that trickles
/// (or never ends) its answer fails the refresh.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(60);
/// Redirects followed.
pub const MAX_REDIRECTS: u32 = 3;
/// Default refresh interval.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(3600);

/// Where a feed comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Path(PathBuf),
    Url(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Path(p) => write!(f, "{}", p.display()),
            // Credentials in the URL stay out of logs, audit and status.
            Self::Url(u) => match u.split_once("://") {
                Some((scheme, rest)) if rest.split('/').next().is_some_and(|h| h.contains('@')) => {
                    let after = &rest[rest.find('@').expect("checked") + 1..];
                    write!(f, "{scheme}://***@{after}")
                }
                _ => f.write_str(u),
            },
        }
    }
}

/// How a feed's text is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One prefix per line, `#`/`;` comments.
    Cidr,
    /// APIBAN's `/banned` answer: `{"ipaddress": [...]}`.
    Apiban,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Self::Cidr => "cidr",
            Self::Apiban => "apiban",
        }
    }
}

/// One `--feed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedSpec {
    /// `[a-z0-9_-]`, at most [`MAX_NAME_LEN`]: a metric label, and the
    /// reason in audit records and `tollgate status`.
    pub name: String,
    pub source: Source,
    pub format: Format,
    /// How often it is fetched.
    pub refresh: Duration,
    /// How long each entry lasts after the refresh that listed it.
    pub ttl: Duration,
}

/// Parses `name=NAME,(path=FILE|url=URL),format=cidr|apiban,refresh=D,ttl=D`
/// (clap's value parser for `--feed`). Defaults: format=cidr, refresh=1h,
/// ttl=2×refresh. A ttl shorter than refresh is refused: the entries would
/// lapse before every refresh.
pub fn parse_feed(s: &str) -> Result<FeedSpec, String> {
    let (mut name, mut path, mut url, mut format, mut refresh, mut ttl) =
        (None, None, None, None, None, None);
    for pair in s.split(',') {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(format!(
                "feed: {pair:?} is not key=value (keys: name, path, url, format, refresh, ttl)"
            ));
        };
        let (key, value) = (key.trim(), value.trim());
        let slot = match key {
            "name" => &mut name,
            "path" => &mut path,
            "url" => &mut url,
            "format" => &mut format,
            "refresh" => &mut refresh,
            "ttl" => &mut ttl,
            other => {
                return Err(format!(
                    "feed: unknown key {other:?} (keys: name, path, url, format, refresh, ttl)"
                ));
            }
        };
        if slot.replace(value.to_owned()).is_some() {
            return Err(format!("feed: {key} given twice"));
        }
    }
    let name = name.ok_or("feed: no name (name=NAME)")?;
    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err(format!("feed: name {name:?} must be 1 to {MAX_NAME_LEN} of a-z, 0-9, - and _"));
    }
    let source = match (path, url) {
        (Some(_), Some(_)) => return Err(format!("feed {name}: give path or url, not both")),
        (None, None) => return Err(format!("feed {name}: no source (path=FILE or url=http(s)://...)")),
        (Some(p), None) if p.is_empty() => return Err(format!("feed {name}: empty path")),
        (Some(p), None) => Source::Path(PathBuf::from(p)),
        (None, Some(u)) => {
            let lower = u.to_ascii_lowercase();
            let rest = lower.strip_prefix("https://").or_else(|| lower.strip_prefix("http://"));
            if rest.is_none_or(|r| r.is_empty() || r.starts_with('/')) {
                return Err(format!("feed {name}: url {u:?} is not an http:// or https:// URL"));
            }
            Source::Url(u)
        }
    };
    let format = match format.as_deref() {
        None | Some("cidr") => Format::Cidr,
        Some("apiban") => Format::Apiban,
        Some(other) => return Err(format!("feed {name}: format {other:?} is not cidr or apiban")),
    };
    let duration =
        |key: &str, v: &str| crate::cli::parse_duration(v).map_err(|e| format!("feed {name}: {key}: {e}"));
    let refresh = refresh.map(|v| duration("refresh", &v)).transpose()?.unwrap_or(DEFAULT_REFRESH);
    let ttl = ttl.map(|v| duration("ttl", &v)).transpose()?.unwrap_or(refresh * 2);
    if ttl < refresh {
        return Err(format!(
            "feed {name}: ttl ({}) is shorter than refresh ({}): its entries would lapse before each refresh",
            humantime::format_duration(ttl),
            humantime::format_duration(refresh)
        ));
    }
    Ok(FeedSpec { name, source, format, refresh, ttl })
}

/// A `--feed` value as it may be shown: a `url=`'s credentials hidden.
pub fn redacted(value: &str) -> String {
    value
        .split(',')
        .map(|pair| match pair.split_once('=') {
            Some((k, url)) if k.trim() == "url" => format!("{k}={}", Source::Url(url.to_owned())),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Feeds given together: their names must differ.
pub fn check_unique(feeds: &[FeedSpec]) -> Result<(), String> {
    for (i, f) in feeds.iter().enumerate() {
        if feeds[..i].iter().any(|g| g.name == f.name) {
            return Err(format!("two feeds are named {:?}: each needs its own name", f.name));
        }
    }
    Ok(())
}

/// A feed's entries, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub nets: BTreeSet<IpNet>,
    /// Lines (or JSON items) that were not prefixes, skipped.
    pub skipped: usize,
    /// The first of them, for the log.
    pub first_skipped: Option<String>,
}

/// Why a feed's text was refused whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("lists {net}, broader than /{min}: a feed may not block that much")]
    TooBroad { net: IpNet, min: u8 },
    #[error("{bad} of {total} entries are not IP prefixes (the first: {first:?}): not a {format} feed")]
    Malformed { bad: usize, total: usize, first: String, format: &'static str },
    #[error("not APIBAN JSON (an object with an \"ipaddress\" list): {0}")]
    Json(String),
    #[error("lists no entries")]
    Empty,
}

/// Reads a feed's text.
pub fn parse(format: Format, text: &[u8]) -> Result<Parsed, ParseError> {
    let text = String::from_utf8_lossy(text);
    let items: Vec<String> = match format {
        Format::Cidr => text
            .lines()
            .map(|l| l.split(['#', ';']).next().unwrap_or("").trim())
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
        Format::Apiban => apiban_items(&text)?,
    };
    let mut parsed = Parsed { nets: BTreeSet::new(), skipped: 0, first_skipped: None };
    for item in &items {
        // A line may carry more after the prefix (whitespace-separated).
        let word = item.split_whitespace().next().unwrap_or("");
        match crate::cli::parse_cidr(word) {
            Ok(net) => {
                let net = unmapped(net)?;
                let min = if net.addr().is_ipv4() { MIN_V4_PREFIX } else { MIN_V6_PREFIX };
                if net.prefix_len() < min {
                    return Err(ParseError::TooBroad { net, min });
                }
                parsed.nets.insert(net);
            }
            Err(_) => {
                parsed.skipped += 1;
                parsed.first_skipped.get_or_insert_with(|| item.chars().take(80).collect());
            }
        }
    }
    if parsed.skipped > parsed.nets.len() {
        return Err(ParseError::Malformed {
            bad: parsed.skipped,
            total: items.len(),
            first: parsed.first_skipped.unwrap_or_default(),
            format: format.name(),
        });
    }
    if parsed.nets.is_empty() {
        return Err(ParseError::Empty);
    }
    Ok(parsed)
}

/// The kernel keys IPv4 as IPv4-mapped IPv6 (`::ffff:0:0/96`): a mapped
/// prefix is the IPv4 one it stands for (and judged as such), and an IPv6
/// prefix that encloses the whole mapped range would block all of IPv4.
fn unmapped(net: IpNet) -> Result<IpNet, ParseError> {
    let IpNet::V6(v6) = net else { return Ok(net) };
    let mapped =
        ipnet::Ipv6Net::new(std::net::Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96).expect("valid");
    if v6.contains(&mapped) {
        return Err(ParseError::TooBroad { net, min: 97 });
    }
    if mapped.contains(&v6) {
        let v4 = v6.addr().to_ipv4_mapped().expect("inside ::ffff:0:0/96");
        return Ok(IpNet::V4(ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).expect("valid")));
    }
    Ok(net)
}

fn apiban_items(text: &str) -> Result<Vec<String>, ParseError> {
    #[derive(serde::Deserialize)]
    struct Banned {
        ipaddress: Vec<serde_json::Value>,
    }
    let banned: Banned = serde_json::from_str(text).map_err(|e| ParseError::Json(e.to_string()))?;
    Ok(banned
        .ipaddress
        .into_iter()
        .map(|v| match v {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        })
        // APIBAN answers "no new bans" in the list when it has none.
        .filter(|s| !s.eq_ignore_ascii_case("no new bans"))
        .collect())
}

/// Fetches a feed's text: blocking (the daemon runs it on a blocking
/// thread), bounded by [`MAX_FEED_BYTES`] and, for URLs, by
/// [`CONNECT_TIMEOUT`] and [`FETCH_TIMEOUT`]; a non-2xx answer fails.
pub fn fetch(source: &Source) -> Result<Vec<u8>, String> {
    match source {
        Source::Path(path) => read_file(path),
        Source::Url(url) => fetch_url(url, FETCH_TIMEOUT),
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut body = Vec::new();
    file.take(MAX_FEED_BYTES + 1)
        .read_to_end(&mut body)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if body.len() as u64 > MAX_FEED_BYTES {
        return Err(format!("{} is larger than {} MiB", path.display(), MAX_FEED_BYTES >> 20));
    }
    Ok(body)
}

fn fetch_url(url: &str, timeout: Duration) -> Result<Vec<u8>, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_global(Some(timeout))
        .max_redirects(MAX_REDIRECTS)
        .http_status_as_error(false)
        .user_agent(concat!("tollgate/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let shown = Source::Url(url.to_owned()).to_string();
    let mut response = agent.get(url).call().map_err(|e| format!("GET {shown}: {e}"))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("GET {shown}: HTTP {}", status.as_u16()));
    }
    response
        .body_mut()
        .with_config()
        .limit(MAX_FEED_BYTES)
        .read_to_vec()
        .map_err(|e| format!("GET {shown}: reading the body: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(p: &Parsed) -> Vec<String> {
        p.nets.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn feed_flags() {
        let f = parse_feed("name=spamhaus-drop,url=https://example.net/drop.txt").unwrap();
        assert_eq!(f.source, Source::Url("https://example.net/drop.txt".into()));
        assert_eq!((f.format, f.refresh, f.ttl), (Format::Cidr, DEFAULT_REFRESH, DEFAULT_REFRESH * 2));
        let f = parse_feed("name=a_1,path=/etc/x,format=apiban,refresh=5m,ttl=1h").unwrap();
        assert_eq!(f.source, Source::Path("/etc/x".into()));
        assert_eq!(
            (f.format, f.refresh, f.ttl),
            (Format::Apiban, Duration::from_secs(300), Duration::from_secs(3600))
        );
        assert_eq!(parse_feed("name=a,path=/x,refresh=10m").unwrap().ttl, Duration::from_secs(1200));
        for (bad, says) in [
            ("path=/x", "no name"),
            ("name=A,path=/x", "must be 1 to 32"),
            ("name=a b,path=/x", "must be 1 to 32"),
            (&format!("name={},path=/x", "a".repeat(33)), "must be 1 to 32"),
            ("name=a", "no source"),
            ("name=a,path=/x,url=http://h/", "not both"),
            ("name=a,url=ftp://h/x", "not an http:// or https:// URL"),
            ("name=a,url=https://", "not an http:// or https:// URL"),
            ("name=a,path=/x,colour=red", "unknown key \"colour\""),
            ("name=a,path=/x,format=csv", "format \"csv\""),
            ("name=a,path=/x,refresh=soon", "refresh: \"soon\" is not a duration"),
            ("name=a,path=/x,refresh=1h,ttl=30m", "ttl (30m) is shorter than refresh (1h)"),
            ("name=a,path=/x,name=b", "name given twice"),
            ("name=a,path", "\"path\" is not key=value"),
        ] {
            let e = parse_feed(bad).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
            assert!(!e.contains('\n'));
        }
        let f = parse_feed("name=a,url=https://user:secret@feeds.example.net/x?k=v").unwrap();
        assert_eq!(f.source.to_string(), "https://***@feeds.example.net/x?k=v");
        assert_eq!(Source::Url("http://h/a@b".into()).to_string(), "http://h/a@b");
        assert_eq!(
            redacted("name=a,url=https://u:p@h/x,refresh=1h"),
            "name=a,url=https://***@h/x,refresh=1h"
        );
        let a = parse_feed("name=a,path=/x").unwrap();
        assert!(check_unique(&[a.clone(), parse_feed("name=b,path=/x").unwrap()]).is_ok());
        assert!(check_unique(&[a.clone(), a]).unwrap_err().contains("two feeds are named \"a\""));
    }

    #[test]
    fn cidr_lists_with_comments_as_carriers_publish_them() {
        let text = "; Spamhaus DROP List 2026/12/01\n; https://www.spamhaus.org/drop/drop.txt\n\
                    203.0.113.0/24 ; SBL123\n198.51.100.7\n\n  # a comment\n2001:db8:bad::/48 # trailing\r\n\
                    192.0.2.9/24\n2001:db8::1\n";
        let p = parse(Format::Cidr, text.as_bytes()).unwrap();
        assert_eq!(
            nets(&p),
            ["192.0.2.0/24", "198.51.100.7/32", "203.0.113.0/24", "2001:db8::1/128", "2001:db8:bad::/48"]
        );
        assert_eq!(p.skipped, 0);
    }

    #[test]
    fn a_few_bad_lines_are_skipped_most_refuse_the_feed() {
        let p = parse(Format::Cidr, b"203.0.113.0/24\n198.51.100.0/24\nnot-an-address\n").unwrap();
        assert_eq!((p.nets.len(), p.skipped, p.first_skipped.as_deref()), (2, 1, Some("not-an-address")));
        let html = b"<html>\n<body>Service Unavailable</body>\n</html>\n203.0.113.1\n";
        assert!(matches!(parse(Format::Cidr, html), Err(ParseError::Malformed { bad: 3, total: 4, .. })));
        assert_eq!(parse(Format::Cidr, b"# nothing\n\n"), Err(ParseError::Empty));
        assert_eq!(parse(Format::Cidr, b""), Err(ParseError::Empty));
    }

    #[test]
    fn prefixes_that_would_block_the_world_refuse_the_feed() {
        for (text, net) in [
            ("203.0.113.0/24\n0.0.0.0/0\n", "0.0.0.0/0"),
            ("1.0.0.0/7\n", "0.0.0.0/7"),
            ("::/0\n", "::/0"),
            ("2000::/3\n", "2000::/3"),
            ("2001:db8::/18\n", "2001::/18"),
        ] {
            match parse(Format::Cidr, text.as_bytes()) {
                Err(ParseError::TooBroad { net: n, .. }) => assert_eq!(n.to_string(), net),
                other => panic!("{text:?}: {other:?}"),
            }
        }
        assert!(parse(Format::Cidr, b"10.0.0.0/8\n2001:db8::/19\n").is_ok());
        // The kernel keys IPv4 inside ::ffff:0:0/96: a mapped prefix is its
        // IPv4 one, and one enclosing the mapped range is all of IPv4.
        let p = parse(Format::Cidr, b"::ffff:203.0.113.7\n::ffff:198.51.100.0/120\n").unwrap();
        assert_eq!(nets(&p), ["198.51.100.0/24", "203.0.113.7/32"]);
        for text in ["::ffff:0.0.0.0/96\n", "::/20\n", "::ffff:0.0.0.0/100\n"] {
            assert!(
                matches!(parse(Format::Cidr, text.as_bytes()), Err(ParseError::TooBroad { .. })),
                "{text}"
            );
        }
        let e = parse(Format::Cidr, b"0.0.0.0/0\n").unwrap_err().to_string();
        assert_eq!(e, "lists 0.0.0.0/0, broader than /8: a feed may not block that much");
    }

    #[test]
    fn apiban_json() {
        let p = parse(
            Format::Apiban,
            br#"{"ipaddress":["192.0.2.1","198.51.100.0/24","2001:db8::5"],"ID":"987654"}"#,
        )
        .unwrap();
        assert_eq!(nets(&p), ["192.0.2.1/32", "198.51.100.0/24", "2001:db8::5/128"]);
        assert_eq!(
            parse(Format::Apiban, br#"{"ipaddress":["no new bans"],"ID":"none"}"#),
            Err(ParseError::Empty)
        );
        assert!(matches!(parse(Format::Apiban, b"192.0.2.1\n"), Err(ParseError::Json(_))));
        assert!(matches!(parse(Format::Apiban, br#"{"ID":"1"}"#), Err(ParseError::Json(_))));
        assert!(matches!(
            parse(Format::Apiban, br#"{"ipaddress":["0.0.0.0/0"]}"#),
            Err(ParseError::TooBroad { .. })
        ));
    }

    /// An HTTP server on loopback answering each request with `answer`
    /// (given the request's path), for `n` requests; its base URL.
    fn serve(n: usize, answer: impl Fn(&str) -> Vec<u8> + Send + 'static) -> String {
        use std::io::{BufRead as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for stream in listener.incoming().take(n) {
                let Ok(mut stream) = stream else { continue };
                let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                let _ = reader.read_line(&mut line);
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let _ = stream.write_all(&answer(&path));
            }
        });
        base
    }

    fn http(status: &str, extra: &str, body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[test]
    fn http_feeds_non_2xx_fail_redirects_are_followed_a_few_times() {
        let base = serve(16, |path| match path {
            "/drop.txt" => http("200 OK", "", "203.0.113.0/24 ; SBL1\n"),
            "/moved" => http("302 Found", "Location: /drop.txt\r\n", ""),
            "/loop" => http("302 Found", "Location: /loop\r\n", ""),
            _ => http("500 Internal Server Error", "", "oops"),
        });
        let get = |path: &str| fetch_url(&format!("{base}{path}"), Duration::from_secs(5));
        assert_eq!(get("/drop.txt").unwrap(), b"203.0.113.0/24 ; SBL1\n");
        assert_eq!(get("/moved").unwrap(), b"203.0.113.0/24 ; SBL1\n");
        assert!(get("/loop").is_err(), "more than {MAX_REDIRECTS} redirects");
        let e = get("/broken").unwrap_err();
        assert!(e.ends_with("HTTP 500"), "{e}");
    }

    #[test]
    fn a_server_that_never_finishes_its_answer_times_out() {
        // Slow loris: headers, then a body that never comes.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/drop.txt", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            use std::io::Write as _;
            let (mut s, _) = listener.accept().unwrap();
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n203.0.113.0/24\n");
            std::thread::sleep(Duration::from_secs(30));
        });
        let started = std::time::Instant::now();
        assert!(fetch_url(&url, Duration::from_secs(2)).is_err());
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    }

    #[test]
    fn files_are_bounded() {
        let dir = crate::test_dir::TempDir::new("feeds");
        let path = dir.0.join("feed.txt");
        std::fs::write(&path, "192.0.2.1\n").unwrap();
        assert_eq!(fetch(&Source::Path(path.clone())).unwrap(), b"192.0.2.1\n");
        let big = std::fs::File::create(&path).unwrap();
        big.set_len(MAX_FEED_BYTES + 1).unwrap();
        assert!(fetch(&Source::Path(path.clone())).unwrap_err().contains("larger than 64 MiB"));
        assert!(fetch(&Source::Path(dir.0.join("missing"))).unwrap_err().starts_with("cannot read "));
    }
}
