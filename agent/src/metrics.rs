//! Prometheus metrics, read from the kernel's maps at scrape time (no second
//! copy of the counters in the agent), served over plain HTTP.
//!
//! Labels are bounded: verdict codes, interface names from the command line.
//! No address, number or user name ever becomes a label.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use log::{debug, warn};
use prometheus::{
    Encoder as _, Registry, TextEncoder,
    core::{Collector, Desc},
    proto::{self, LabelPair, MetricFamily, MetricType},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};
use tollgate_common::{BLOCKLIST_CAPACITY, number::class, sip::method, sip_stat, verdict};

use crate::{clock::monotonic_now_ns, countries::Countries, events::EventCounts, maps::Maps};

/// One (name, help, type) family with its samples.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
}

const PACKETS: Family = Family {
    name: "tollgate_xdp_packets_total",
    help: "Packets seen by the XDP program, by action and reason.",
    kind: MetricType::COUNTER,
};
const BYTES: Family = Family {
    name: "tollgate_xdp_bytes_total",
    help: "Bytes seen by the XDP program, by action and reason.",
    kind: MetricType::COUNTER,
};
const BLOCKLIST: Family = Family {
    name: "tollgate_blocklist_entries",
    help: "Blocklist entries; expired ones no longer drop and are removed within seconds.",
    kind: MetricType::GAUGE,
};
const BLOCKLIST_CAP: Family = Family {
    name: "tollgate_blocklist_capacity_entries",
    help: "Maximum number of blocklist entries the kernel map holds.",
    kind: MetricType::GAUGE,
};
const ALLOWLIST: Family = Family {
    name: "tollgate_allowlist_entries",
    help: "Prefixes in the allowlist.",
    kind: MetricType::GAUGE,
};
const ATTACHED: Family = Family {
    name: "tollgate_xdp_attached",
    help: "1 for each interface the XDP program is attached to, with its mode.",
    kind: MetricType::GAUGE,
};
const SCRAPE_ERRORS: Family = Family {
    name: "tollgate_map_read_errors_total",
    help: "Scrapes during which a kernel map could not be read.",
    kind: MetricType::COUNTER,
};

const SIP_REQUESTS: Family = Family {
    name: "tollgate_sip_requests_total",
    help: "SIP requests seen, by method.",
    kind: MetricType::COUNTER,
};
const REGISTERS: Family = Family {
    name: "tollgate_sip_register_requests_total",
    help: "REGISTER requests, by whether they carried credentials.",
    kind: MetricType::COUNTER,
};
const REGISTER_RESPONSES: Family = Family {
    name: "tollgate_sip_register_responses_total",
    help: "Responses to REGISTER: challenge (401/407), forbidden (403), ok (2xx), other.",
    kind: MetricType::COUNTER,
};
const OTHER_RESPONSES: Family = Family {
    name: "tollgate_sip_other_responses_total",
    help: "Responses to methods other than REGISTER.",
    kind: MetricType::COUNTER,
};
const INVITES: Family = Family {
    name: "tollgate_sip_invites_total",
    help: "INVITEs by class of the dialled number.",
    kind: MetricType::COUNTER,
};
const INTL_BY_COUNTRY: Family = Family {
    name: "tollgate_sip_international_invites_total",
    help: "International INVITEs by destination country (label, E.164 code).",
    kind: MetricType::COUNTER,
};
const KEEPALIVES: Family = Family {
    name: "tollgate_sip_keepalives_total",
    help: "CRLF keep-alives on SIP ports.",
    kind: MetricType::COUNTER,
};
const UNPARSED: Family = Family {
    name: "tollgate_sip_unparsed_total",
    help: "Payloads on SIP ports not counted as SIP (not a message start, or cut off before what is needed).",
    kind: MetricType::COUNTER,
};
const EVENTS: Family = Family {
    name: "tollgate_threshold_events_total",
    help: "Sources reported by the kernel for crossing a per-window threshold, by kind.",
    kind: MetricType::COUNTER,
};
const EVENTS_LOST: Family = Family {
    name: "tollgate_threshold_events_lost_total",
    help: "Threshold events the kernel could not deliver (ring buffer full).",
    kind: MetricType::COUNTER,
};
const SOURCES: Family = Family {
    name: "tollgate_sources_tracked",
    help: "Source addresses with SIP counters in the kernel (least recently seen are evicted at capacity).",
    kind: MetricType::GAUGE,
};
const SOURCES_CAP: Family = Family {
    name: "tollgate_sources_capacity",
    help: "Most source addresses tracked at once (--max-sources).",
    kind: MetricType::GAUGE,
};

const LEARNED: Family = Family {
    name: "tollgate_learned_levels",
    help: "Sources and countries judged by a threshold learned from their normal level (above the ceiling).",
    kind: MetricType::GAUGE,
};
const COUNTRY_THRESHOLD: Family = Family {
    name: "tollgate_country_invite_threshold",
    help: "Learned per-window threshold of international INVITEs to a country (countries above the ceiling only).",
    kind: MetricType::GAUGE,
};

const RESTRICTIONS_ACTIVE: Family = Family {
    name: "tollgate_restrictions_active",
    help: "Restrictions in force in the kernel now, by kind.",
    kind: MetricType::GAUGE,
};
const DECISIONS: Family = Family {
    name: "tollgate_decisions_total",
    help: "Decisions of the policy engine, by event (impose, extend, expire, lift, alert), kind and mode.",
    kind: MetricType::COUNTER,
};

/// (event, kind, mode) of a decision.
type DecisionKey = (&'static str, &'static str, &'static str);

/// Decisions taken, by (event, kind, mode).
#[derive(Clone, Default)]
pub struct DecisionCounts(Arc<Mutex<std::collections::BTreeMap<DecisionKey, u64>>>);

impl DecisionCounts {
    pub fn record(&self, d: &crate::policy::Decision) {
        use crate::policy::Decision::*;
        let (event, kind, enforced) = match d {
            Impose(a) => ("impose", a.kind, a.enforced),
            Extend(a) => ("extend", a.kind, a.enforced),
            Expire(a) => ("expire", a.kind, a.enforced),
            Lift(a, _) => ("lift", a.kind, a.enforced),
            Alert { kind, .. } => ("alert", *kind, false),
        };
        let mode = if enforced || event == "alert" { "enforce" } else { "dry-run" };
        *self.0.lock().unwrap_or_else(|p| p.into_inner()).entry((event, kind.name(), mode)).or_insert(0) += 1;
    }
}

const FAMILIES: [&Family; 23] = [
    &LEARNED,
    &COUNTRY_THRESHOLD,
    &RESTRICTIONS_ACTIVE,
    &DECISIONS,
    &PACKETS,
    &BYTES,
    &BLOCKLIST,
    &BLOCKLIST_CAP,
    &ALLOWLIST,
    &ATTACHED,
    &SCRAPE_ERRORS,
    &SIP_REQUESTS,
    &REGISTERS,
    &REGISTER_RESPONSES,
    &OTHER_RESPONSES,
    &INVITES,
    &INTL_BY_COUNTRY,
    &KEEPALIVES,
    &UNPARSED,
    &EVENTS,
    &EVENTS_LOST,
    &SOURCES,
    &SOURCES_CAP,
];

fn counter(f: &Family, labels: &[(&str, &str)], v: u64) -> MetricFamily {
    family(f, vec![sample(labels, v as f64, f.kind)])
}

fn sample(labels: &[(&str, &str)], value: f64, kind: MetricType) -> proto::Metric {
    let mut m = proto::Metric::default();
    let pairs: Vec<LabelPair> = labels
        .iter()
        .map(|(k, v)| {
            let mut p = LabelPair::default();
            p.set_name((*k).to_owned());
            p.set_value((*v).to_owned());
            p
        })
        .collect();
    m.set_label(pairs);
    match kind {
        MetricType::COUNTER => {
            let mut c = proto::Counter::default();
            c.set_value(value);
            m.set_counter(c);
        }
        _ => {
            let mut g = proto::Gauge::default();
            g.set_value(value);
            m.set_gauge(g);
        }
    }
    m
}

fn family(f: &Family, samples: Vec<proto::Metric>) -> MetricFamily {
    let mut mf = MetricFamily::default();
    mf.set_name(f.name.to_owned());
    mf.set_help(f.help.to_owned());
    mf.set_field_type(f.kind);
    mf.set_metric(samples);
    mf
}

/// Collects kernel state on every scrape.
pub struct KernelCollector {
    maps: Arc<Mutex<Maps>>,
    attached: Vec<(String, String)>,
    countries: Countries,
    events: EventCounts,
    decisions: DecisionCounts,
    max_sources: u32,
    descs: Vec<Desc>,
    read_errors: std::sync::atomic::AtomicU64,
}

impl KernelCollector {
    pub fn new(
        maps: Arc<Mutex<Maps>>,
        attached: Vec<(String, String)>,
        countries: Countries,
        events: EventCounts,
        decisions: DecisionCounts,
        max_sources: u32,
    ) -> Self {
        let descs = FAMILIES
            .iter()
            .map(|f| Desc::new(f.name.to_owned(), f.help.to_owned(), vec![], Default::default()))
            .collect::<Result<_, _>>()
            .expect("metric names are valid");
        Self {
            maps,
            attached,
            countries,
            events,
            decisions,
            max_sources,
            descs,
            read_errors: Default::default(),
        }
    }
}

impl Collector for KernelCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        use std::sync::atomic::Ordering::Relaxed;
        let maps = self.maps.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        match maps.verdict_totals() {
            Ok(totals) => {
                let (mut packets, mut bytes) = (Vec::new(), Vec::new());
                for (code, action, reason) in verdict::ALL {
                    let c = totals[code as usize];
                    let labels = [("action", action), ("reason", reason)];
                    packets.push(sample(&labels, c.packets as f64, MetricType::COUNTER));
                    bytes.push(sample(&labels, c.bytes as f64, MetricType::COUNTER));
                }
                out.push(family(&PACKETS, packets));
                out.push(family(&BYTES, bytes));
            }
            Err(e) => {
                warn!("metrics: {e}");
                self.read_errors.fetch_add(1, Relaxed);
            }
        }
        let now = monotonic_now_ns();
        let entries = maps.blocklist.entries();
        let active = entries.iter().filter(|(_, e)| e.is_active(now)).count();
        out.push(family(
            &BLOCKLIST,
            vec![
                sample(&[("state", "active")], active as f64, MetricType::GAUGE),
                sample(&[("state", "expired")], (entries.len() - active) as f64, MetricType::GAUGE),
            ],
        ));
        out.push(family(&BLOCKLIST_CAP, vec![sample(&[], BLOCKLIST_CAPACITY as f64, MetricType::GAUGE)]));
        out.push(family(
            &ALLOWLIST,
            vec![sample(&[], maps.allowlist.prefixes().len() as f64, MetricType::GAUGE)],
        ));
        out.push(family(
            &ATTACHED,
            self.attached
                .iter()
                .map(|(iface, mode)| sample(&[("interface", iface), ("mode", mode)], 1.0, MetricType::GAUGE))
                .collect(),
        ));
        match self.sip_families(&maps) {
            Ok(mut sip) => out.append(&mut sip),
            Err(e) => {
                warn!("metrics: {e}");
                self.read_errors.fetch_add(1, Relaxed);
            }
        }
        out.push(family(
            &EVENTS,
            vec![
                sample(
                    &[("kind", "auth_failures")],
                    self.events.auth_failures.load(Relaxed) as f64,
                    MetricType::COUNTER,
                ),
                sample(
                    &[("kind", "intl_invites")],
                    self.events.intl_invites.load(Relaxed) as f64,
                    MetricType::COUNTER,
                ),
                sample(
                    &[("kind", "country_invites")],
                    self.events.country_invites.load(Relaxed) as f64,
                    MetricType::COUNTER,
                ),
            ],
        ));
        let restrictions = maps.restrictions.entries();
        let active = |f: fn(&tollgate_common::Restriction) -> u64| {
            restrictions.iter().filter(|(_, r)| f(r) > now).count() as f64
        };
        let countries_restricted = maps
            .country_restrictions()
            .map(|v| v.iter().filter(|(_, r)| r.until_ns > now).count())
            .unwrap_or(0);
        out.push(family(
            &RESTRICTIONS_ACTIVE,
            vec![
                sample(&[("kind", "auth-suspend")], active(|r| r.auth_until_ns), MetricType::GAUGE),
                sample(&[("kind", "intl-suspend")], active(|r| r.intl_until_ns), MetricType::GAUGE),
                sample(
                    &[("kind", "block")],
                    entries
                        .iter()
                        .filter(|(_, e)| e.reason == tollgate_common::reason::OPERATOR && e.is_active(now))
                        .count() as f64,
                    MetricType::GAUGE,
                ),
                sample(&[("kind", "country-restrict")], countries_restricted as f64, MetricType::GAUGE),
            ],
        ));
        let decisions = self.decisions.0.lock().unwrap_or_else(|p| p.into_inner());
        out.push(family(
            &DECISIONS,
            decisions
                .iter()
                .map(|((event, kind, mode), n)| {
                    sample(
                        &[("event", event), ("kind", kind), ("mode", mode)],
                        *n as f64,
                        MetricType::COUNTER,
                    )
                })
                .collect(),
        ));
        drop(decisions);
        match maps.country_baselines() {
            Ok(countries) => {
                out.push(family(
                    &LEARNED,
                    vec![
                        sample(&[("scope", "source")], maps.intl_baselines().len() as f64, MetricType::GAUGE),
                        sample(&[("scope", "country")], countries.len() as f64, MetricType::GAUGE),
                    ],
                ));
                out.push(family(
                    &COUNTRY_THRESHOLD,
                    countries
                        .iter()
                        .map(|(cc, b)| {
                            let label = self.countries.label(*cc).unwrap_or("unassigned");
                            let code = cc.to_string();
                            sample(
                                &[("country", label), ("cc", &code)],
                                b.threshold as f64,
                                MetricType::GAUGE,
                            )
                        })
                        .collect(),
                ));
            }
            Err(e) => {
                warn!("metrics: {e}");
                self.read_errors.fetch_add(1, Relaxed);
            }
        }
        out.push(counter(&SOURCES, &[], maps.sources().len() as u64));
        out.push(counter(&SOURCES_CAP, &[], self.max_sources as u64));
        out.push(family(
            &SCRAPE_ERRORS,
            vec![sample(&[], self.read_errors.load(Relaxed) as f64, MetricType::COUNTER)],
        ));
        out
    }
}

impl KernelCollector {
    fn sip_families(&self, maps: &Maps) -> crate::error::Result<Vec<MetricFamily>> {
        let t = maps.sip_totals()?;
        let at = |i: u32| t[i as usize];
        let requests = (0..method::COUNT as u32)
            .filter(|m| *m != method::NONE as u32)
            .map(|m| {
                sample(
                    &[("method", method::NAMES[m as usize])],
                    at(sip_stat::REQUEST_BASE + m) as f64,
                    MetricType::COUNTER,
                )
            })
            .collect();
        let with_auth = at(sip_stat::REGISTER_WITH_AUTH);
        let registers = at(sip_stat::REQUEST_BASE + method::REGISTER as u32);
        let invites = (0..class::COUNT as u32)
            .map(|c| {
                sample(
                    &[("class", class::NAMES[c as usize])],
                    at(sip_stat::INVITE_CLASS_BASE + c) as f64,
                    MetricType::COUNTER,
                )
            })
            .collect();
        let by_country = maps
            .country_invites()?
            .into_iter()
            .map(|(cc, n)| {
                let code = cc.to_string();
                let label = self.countries.label(cc).unwrap_or("unassigned");
                sample(&[("country", label), ("cc", &code)], n as f64, MetricType::COUNTER)
            })
            .collect();
        Ok(vec![
            family(&SIP_REQUESTS, requests),
            family(
                &REGISTERS,
                vec![
                    sample(&[("credentials", "present")], with_auth as f64, MetricType::COUNTER),
                    sample(
                        &[("credentials", "absent")],
                        registers.saturating_sub(with_auth) as f64,
                        MetricType::COUNTER,
                    ),
                ],
            ),
            family(
                &REGISTER_RESPONSES,
                [
                    ("challenge", sip_stat::RESPONSE_REGISTER_CHALLENGE),
                    ("forbidden", sip_stat::RESPONSE_REGISTER_FORBIDDEN),
                    ("ok", sip_stat::RESPONSE_REGISTER_OK),
                    ("other", sip_stat::RESPONSE_REGISTER_OTHER),
                ]
                .iter()
                .map(|(r, i)| sample(&[("result", r)], at(*i) as f64, MetricType::COUNTER))
                .collect(),
            ),
            counter(&OTHER_RESPONSES, &[], at(sip_stat::RESPONSE_OTHER)),
            family(&INVITES, invites),
            family(&INTL_BY_COUNTRY, by_country),
            counter(&KEEPALIVES, &[], at(sip_stat::KEEPALIVE)),
            family(
                &UNPARSED,
                vec![
                    sample(&[("transport", "udp")], at(sip_stat::UNPARSED_UDP) as f64, MetricType::COUNTER),
                    sample(&[("transport", "tcp")], at(sip_stat::UNPARSED_TCP) as f64, MetricType::COUNTER),
                ],
            ),
            counter(&EVENTS_LOST, &[], at(sip_stat::EVENTS_LOST)),
        ])
    }
}

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

/// Serves `GET /metrics` until the task is dropped.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let registry = Arc::clone(&registry);
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, registry).await {
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
async fn handle(mut stream: TcpStream, registry: Arc<Registry>) -> std::io::Result<()> {
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
    let path = path.split(|b| *b == b'?').next().unwrap_or_default();
    let (status, ctype, body) = match (method, path) {
        (b"GET", b"/metrics") => {
            let page = tokio::task::spawn_blocking(move || render(&registry))
                .await
                .map_err(std::io::Error::other)?;
            ("200 OK", "text/plain; version=0.0.4; charset=utf-8", page)
        }
        (b"GET", b"/") => {
            ("200 OK", "text/plain; charset=utf-8", "tollgate: metrics at /metrics\n".to_owned())
        }
        (b"GET", _) => ("404 Not Found", "text/plain; charset=utf-8", "not found\n".to_owned()),
        _ => ("405 Method Not Allowed", "text/plain; charset=utf-8", "only GET\n".to_owned()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
