//! The metrics endpoint: a small HTTP/1.x server for `GET /metrics` and
//! `GET /countries.json` (counter-measure 4's report, which holds country
//! codes, labels, counts and times only: it is meant for a carrier's
//! customer page).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use log::{debug, warn};
use prometheus::{Encoder as _, Registry, TextEncoder};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
};

use crate::control::{Pending, Request, Response};

/// The period of `/countries.json` without `?since=`.
const DEFAULT_SINCE: Duration = Duration::from_secs(24 * 3600);
const TEXT: &str = "text/plain; charset=utf-8";

/// Renders every registered collector in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut buf = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut buf).expect("encoding to a Vec cannot fail");
    String::from_utf8(buf).expect("the text format is UTF-8")
}

/// Binds the metrics endpoint; errors surface before the agent reports ready.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `GET /metrics` and `GET /countries.json` until the task is
/// dropped; the reports are asked of the agent's main loop through
/// `control`, as the control socket asks.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>, control: mpsc::Sender<Pending>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let registry = Arc::clone(&registry);
                let control = control.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, registry, control).await {
                        debug!("metrics connection from {peer}: {e}");
                    }
                });
            }
            Err(e) => {
                warn!("metrics: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A deliberately small HTTP/1.x responder: one request per connection,
/// bounded request size and time. The page is rendered on the blocking
/// pool: reading every kernel map takes tens of milliseconds with a full
/// per-source map, and the agent's runtime has one thread, shared with the
/// decisions.
async fn handle(
    mut stream: TcpStream,
    registry: Arc<Registry>,
    control: mpsc::Sender<Pending>,
) -> std::io::Result<()> {
    const MAX_REQUEST: usize = 8192;
    let mut buf = Vec::with_capacity(1024);
    let read = async {
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request timed out"))??;
    let line = buf.split(|b| *b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    let (method, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let (path, query) = match path.iter().position(|b| *b == b'?') {
        Some(at) => (&path[..at], Some(&path[at + 1..])),
        None => (path, None),
    };
    let (status, ctype, body) = match (method, path) {
        (b"GET", b"/countries.json") => countries(&control, query).await,
        (b"GET", b"/metrics") => {
            let page = tokio::task::spawn_blocking(move || render(&registry))
                .await
                .map_err(std::io::Error::other)?;
            ("200 OK", "text/plain; version=0.0.4; charset=utf-8", page)
        }
        (b"GET", b"/") => {
            ("200 OK", TEXT, "tollgate: metrics at /metrics, countries at /countries.json\n".to_owned())
        }
        (b"GET", _) => ("404 Not Found", TEXT, "not found\n".to_owned()),
        _ => ("405 Method Not Allowed", TEXT, "only GET\n".to_owned()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// The countries report asked of the main loop: (status, content type,
/// body). A bad query gets 400 with its reason in one line.
async fn countries(
    control: &mpsc::Sender<Pending>,
    query: Option<&[u8]>,
) -> (&'static str, &'static str, String) {
    let request = match countries_request(query) {
        Ok(r) => r,
        Err(reason) => return ("400 Bad Request", TEXT, format!("{reason}\n")),
    };
    let unavailable = |why: &str| ("503 Service Unavailable", TEXT, format!("{why}\n"));
    let (reply, answer) = oneshot::channel();
    if control.send((request, reply)).await.is_err() {
        return unavailable("the agent is shutting down");
    }
    match tokio::time::timeout(Duration::from_secs(10), answer).await {
        Ok(Ok(Response { ok: true, countries: Some(report), .. })) => {
            ("200 OK", "application/json", crate::reports::json(&report))
        }
        Ok(Ok(r)) => (
            "500 Internal Server Error",
            TEXT,
            format!("{}\n", r.error.unwrap_or_else(|| "no report".into())),
        ),
        _ => unavailable("the agent did not answer"),
    }
}

/// The request of `/countries.json?since=DURATION` (`since` optional, 24h
/// by default; `%XX` and `+` decoded), or why it is refused.
fn countries_request(query: Option<&[u8]>) -> Result<Request, String> {
    let mut since = DEFAULT_SINCE;
    for pair in query.unwrap_or_default().split(|b| *b == b'&').filter(|p| !p.is_empty()) {
        let text = decode(pair)?;
        let (name, value) = text.split_once('=').ok_or_else(|| format!("{text:?} is not NAME=VALUE"))?;
        match name {
            "since" => since = crate::cli::parse_duration(value).map_err(|e| format!("since: {e}"))?,
            other => {
                return Err(format!("unknown parameter {other:?} (the one parameter is since=DURATION)"));
            }
        }
    }
    Ok(Request::ReportCountries { since_seconds: since.as_secs().max(1) })
}

/// A query's `%XX` and `+` decoded, as UTF-8.
fn decode(raw: &[u8]) -> Result<String, String> {
    let bad = || format!("{:?} is not a valid query", String::from_utf8_lossy(raw));
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.iter();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = [*bytes.next().ok_or_else(bad)?, *bytes.next().ok_or_else(bad)?];
                let hex = std::str::from_utf8(&hex).map_err(|_| bad())?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            }
            other => out.push(*other),
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reports::{CountriesReport, CountryRow, Period};

    fn since(seconds: u64) -> Result<Request, String> {
        Ok(Request::ReportCountries { since_seconds: seconds })
    }

    #[test]
    fn the_countries_query_is_since_or_nothing() {
        assert_eq!(countries_request(None), since(86_400));
        assert_eq!(countries_request(Some(b"")), since(86_400));
        assert_eq!(countries_request(Some(b"since=90d")), since(7_776_000));
        assert_eq!(countries_request(Some(b"since=1h+30m")), since(5400));
        assert_eq!(countries_request(Some(b"since=1h%2030m")), since(5400));
        assert_eq!(countries_request(Some(b"since=1500ms")), since(1), "at least a second");
        assert_eq!(
            countries_request(Some(b"since=0s")),
            Err("since: a duration must be greater than zero".into())
        );
        let soon = countries_request(Some(b"since=soon")).expect_err("bad");
        assert!(
            soon.starts_with(r#"since: "soon" is not a duration (expected e.g. 90s"#) && !soon.contains('\n')
        );
        assert_eq!(
            countries_request(Some(b"cc=232")),
            Err(r#"unknown parameter "cc" (the one parameter is since=DURATION)"#.into())
        );
        assert_eq!(countries_request(Some(b"since")), Err(r#""since" is not NAME=VALUE"#.into()));
        assert_eq!(countries_request(Some(b"since=%zz")), Err(r#""since=%zz" is not a valid query"#.into()));
        assert_eq!(countries_request(Some(b"since=%ff")), Err(r#""since=%ff" is not a valid query"#.into()));
        assert_eq!(countries_request(Some(b"since=%2")), Err(r#""since=%2" is not a valid query"#.into()));
    }

    /// `GET path` on `addr`: the status line and the body.
    async fn get(addr: SocketAddr, path: &str) -> (String, String, String) {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.expect("send");
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.expect("read");
        let (head, body) = answer.split_once("\r\n\r\n").expect("a head");
        let status = head.lines().next().unwrap_or_default().to_owned();
        let ctype =
            head.lines().find_map(|l| l.strip_prefix("Content-Type: ")).unwrap_or_default().to_owned();
        (status, ctype, body.to_owned())
    }

    fn report(since_seconds: u64) -> CountriesReport {
        CountriesReport {
            period: Period { start: "a".into(), end: "b".into(), seconds: since_seconds },
            countries: vec![CountryRow {
                cc: 232,
                country: "SL".into(),
                blocked: 3,
                ..CountryRow::default()
            }],
            ..CountriesReport::default()
        }
    }

    /// The endpoint asks the main loop, as the control socket does, and
    /// serves its answer as the CLI's --json prints it; /metrics is as
    /// before.
    #[tokio::test]
    async fn countries_json_is_the_main_loops_report_and_metrics_are_unchanged() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let registry = Arc::new(Registry::new());
        let (tx, mut rx) = mpsc::channel::<Pending>(4);
        let server = tokio::spawn(serve(listener, Arc::clone(&registry), tx));
        let main_loop = tokio::spawn(async move {
            while let Some((request, reply)) = rx.recv().await {
                let answer = match request {
                    Request::ReportCountries { since_seconds: 60 } => Response::error("the database is busy"),
                    Request::ReportCountries { since_seconds } => {
                        Response { ok: true, countries: Some(report(since_seconds)), ..Response::default() }
                    }
                    _ => Response::error("unexpected"),
                };
                let _ = reply.send(answer);
            }
        });
        let json = "application/json".to_owned();
        assert_eq!(
            get(addr, "/countries.json").await,
            ("HTTP/1.1 200 OK".into(), json.clone(), crate::reports::json(&report(86_400)))
        );
        assert_eq!(get(addr, "/countries.json?since=2h").await.2, crate::reports::json(&report(7200)));
        let text = TEXT.to_owned();
        assert_eq!(
            get(addr, "/countries.json?since=-1h").await,
            (
                "HTTP/1.1 400 Bad Request".into(),
                text.clone(),
                "since: \"-1h\" is not a duration (expected e.g. 90s, 30m, 2h): expected number at 0\n"
                    .into()
            )
        );
        assert_eq!(
            get(addr, "/countries.json?since=1m").await,
            ("HTTP/1.1 500 Internal Server Error".into(), text.clone(), "the database is busy\n".into())
        );
        assert_eq!(
            get(addr, "/metrics").await,
            ("HTTP/1.1 200 OK".into(), "text/plain; version=0.0.4; charset=utf-8".into(), render(&registry))
        );
        assert_eq!(get(addr, "/countries").await.0, "HTTP/1.1 404 Not Found");
        // Without a main loop to answer.
        main_loop.abort();
        let _ = main_loop.await;
        assert_eq!(get(addr, "/countries.json").await.0, "HTTP/1.1 503 Service Unavailable");
        server.abort();
    }
}
