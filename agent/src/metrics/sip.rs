//! The SIP families: requests, REGISTER outcomes, INVITE classes and
//! destination countries, keep-alives and what could not be parsed.

use prometheus::proto::{MetricFamily, MetricType};
use tollgate_common::{number::class, sip::method, sip_stat};

use super::{Family, counter, family, sample};
use crate::{countries::Countries, maps::Maps};

pub(super) const SIP_REQUESTS: Family = Family {
    name: "tollgate_sip_requests_total",
    help: "SIP requests seen, by method.",
    kind: MetricType::COUNTER,
};
pub(super) const REGISTERS: Family = Family {
    name: "tollgate_sip_register_requests_total",
    help: "REGISTER requests, by whether they carried credentials.",
    kind: MetricType::COUNTER,
};
pub(super) const REGISTER_RESPONSES: Family = Family {
    name: "tollgate_sip_register_responses_total",
    help: "Responses to REGISTER: challenge (401/407), forbidden (403), ok (2xx), other.",
    kind: MetricType::COUNTER,
};
pub(super) const OTHER_RESPONSES: Family = Family {
    name: "tollgate_sip_other_responses_total",
    help: "Responses to methods other than REGISTER.",
    kind: MetricType::COUNTER,
};
pub(super) const INVITES: Family = Family {
    name: "tollgate_sip_invites_total",
    help: "INVITEs by class of the dialled number.",
    kind: MetricType::COUNTER,
};
pub(super) const INTL_BY_COUNTRY: Family = Family {
    name: "tollgate_sip_international_invites_total",
    help: "International INVITEs by destination country (label, E.164 code).",
    kind: MetricType::COUNTER,
};
pub(super) const KEEPALIVES: Family = Family {
    name: "tollgate_sip_keepalives_total",
    help: "CRLF keep-alives on SIP ports.",
    kind: MetricType::COUNTER,
};
pub(super) const UNPARSED: Family = Family {
    name: "tollgate_sip_unparsed_total",
    help: "Payloads on SIP ports not counted as SIP (not a message start, or cut off before what is needed).",
    kind: MetricType::COUNTER,
};
pub(super) const AUTH_ATTEMPTS: Family = Family {
    name: "tollgate_auth_attempts_total",
    help: "Requests carrying credentials, by binding: bound when the nonce was issued to the request's source address (or over TCP), unbound when not (possibly forged).",
    kind: MetricType::COUNTER,
};
pub(super) const AUTH_FAILURES: Family = Family {
    name: "tollgate_auth_failures_total",
    help: "Authentication failures: 401/407 (not stale) or 403 answering a credentialed request of the client's own, by the request's binding; only bound ones restrict.",
    kind: MetricType::COUNTER,
};
pub(super) const AUTH_STALE: Family = Family {
    name: "tollgate_auth_stale_challenges_total",
    help: "Stale-nonce challenges answering credentialed requests (not failures).",
    kind: MetricType::COUNTER,
};
pub(super) const INTL_BLOCKED_BY_COUNTRY: Family = Family {
    name: "tollgate_sip_international_blocked_calls_total",
    help: "International call attempts dropped (by any restriction or the blocklist), by destination country (label, E.164 code); each call once.",
    kind: MetricType::COUNTER,
};
pub(super) const RING_EVENTS: Family = Family {
    name: "tollgate_ring_buffer_events_total",
    help: "Events from the kernel, by ring buffer (events: threshold crossings; call_events: call attempts, authentications and customers' sources seen in a window) and outcome (read by the agent, lost to a full buffer).",
    kind: MetricType::COUNTER,
};
pub(super) const EVENTS_LOST: Family = Family {
    name: "tollgate_threshold_events_lost_total",
    help: "Threshold events the kernel could not deliver (ring buffer full).",
    kind: MetricType::COUNTER,
};

pub(super) const INTL_CALLS: Family = Family {
    name: "tollgate_sip_international_calls_total",
    help: "International call attempts counted (one per Call-ID: thresholds count these, not INVITE packets).",
    kind: MetricType::COUNTER,
};
pub(super) const INTL_REPEATS: Family = Family {
    name: "tollgate_sip_international_repeats_total",
    help: "International INVITEs not counted again: retransmissions and the authentication retry of an attempt counted.",
    kind: MetricType::COUNTER,
};
pub(super) const CALL_EVENTS_LOST: Family = Family {
    name: "tollgate_call_events_lost_total",
    help: "Call events the kernel could not deliver (ring buffer full): the agent's longer scales undercount by this (a lost sighting of a source only delays its last-seen time by a window).",
    kind: MetricType::COUNTER,
};

/// Every SIP family, from the kernel's SIP counters.
pub(super) fn families(
    maps: &Maps,
    countries: &Countries,
    events: &crate::events::EventCounts,
) -> crate::error::Result<Vec<MetricFamily>> {
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
    let per_country = |counts: Vec<(u16, u64)>| {
        counts
            .into_iter()
            .map(|(cc, n)| {
                let code = cc.to_string();
                let label = countries.label(cc).unwrap_or("unassigned");
                sample(&[("country", label), ("cc", &code)], n as f64, MetricType::COUNTER)
            })
            .collect()
    };
    let by_country = per_country(maps.country_invites()?);
    let blocked = per_country(maps.country_blocked()?);
    let ring = |ring: &'static str, read: u64, lost: u64| {
        [("read", read), ("lost", lost)].map(|(outcome, n)| {
            sample(&[("ring", ring), ("outcome", outcome)], n as f64, MetricType::COUNTER)
        })
    };
    let e = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let threshold_read = e(&events.auth_failures) + e(&events.intl_invites) + e(&events.country_invites);
    let rings = ring("events", threshold_read, at(sip_stat::EVENTS_LOST))
        .into_iter()
        .chain(ring("call_events", e(&events.calls_read), at(sip_stat::CALL_EVENTS_LOST)))
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
        family(&INTL_BLOCKED_BY_COUNTRY, blocked),
        family(&RING_EVENTS, rings),
        counter(&KEEPALIVES, &[], at(sip_stat::KEEPALIVE)),
        family(
            &UNPARSED,
            vec![
                sample(&[("transport", "udp")], at(sip_stat::UNPARSED_UDP) as f64, MetricType::COUNTER),
                sample(&[("transport", "tcp")], at(sip_stat::UNPARSED_TCP) as f64, MetricType::COUNTER),
            ],
        ),
        counter(&EVENTS_LOST, &[], at(sip_stat::EVENTS_LOST)),
        counter(&INTL_CALLS, &[], at(sip_stat::INTL_CALLS)),
        counter(&INTL_REPEATS, &[], at(sip_stat::INTL_REPEATS)),
        counter(&CALL_EVENTS_LOST, &[], at(sip_stat::CALL_EVENTS_LOST)),
        family(&AUTH_ATTEMPTS, by_binding(at(sip_stat::ATTEMPT_BOUND), at(sip_stat::ATTEMPT_UNBOUND))),
        family(&AUTH_FAILURES, by_binding(at(sip_stat::FAILURE_BOUND), at(sip_stat::FAILURE_UNBOUND))),
        counter(&AUTH_STALE, &[], at(sip_stat::STALE)),
    ])
}

fn by_binding(bound: u64, unbound: u64) -> Vec<prometheus::proto::Metric> {
    vec![
        sample(&[("binding", "bound")], bound as f64, MetricType::COUNTER),
        sample(&[("binding", "unbound")], unbound as f64, MetricType::COUNTER),
    ]
}
