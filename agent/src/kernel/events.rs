//! Threshold events from the kernel: a source crossed the auth-failure or
//! international-INVITE threshold within its window, or international
//! INVITEs to one country from many sources crossed the country's. Read from the ring
//! buffer as soon as they are written (no map scans), logged with the
//! minimal evidence, and counted for /metrics. The decision engine builds
//! on this stream.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
};
use log::{info, warn};
use tollgate_common::{
    EVENT_AUTH_FAILURES, EVENT_COUNTRY_INVITES, EVENT_INTL_INVITES, MAP_CALL_EVENTS, MAP_EVENTS,
    ThresholdEvent,
};

use crate::{
    clock::monotonic_now_ns,
    error::{Error, Result},
    maps::key_addr,
};

/// Detections counted by (rule, scope, scale).
pub type DetectionCounts =
    Arc<std::sync::Mutex<std::collections::BTreeMap<(&'static str, &'static str, &'static str), u64>>>;

/// Events received, by kind.
#[derive(Clone, Default)]
pub struct EventCounts {
    pub auth_failures: Arc<AtomicU64>,
    pub intl_invites: Arc<AtomicU64>,
    pub country_invites: Arc<AtomicU64>,
    /// Call events read from their ring buffer.
    pub calls_read: Arc<AtomicU64>,
    /// The agent's own detections (longer scales, identities, new
    /// destinations, new prefixes), by (rule, scope, scale).
    pub detections: DetectionCounts,
}

impl EventCounts {
    pub fn detected(&self, r: &crate::detect::Report) {
        let rule = match r.rule {
            crate::detect::Rule::Surge => "surge",
            crate::detect::Rule::NewDestination => "new_destination",
            crate::detect::Rule::NewPrefix => "new_prefix",
        };
        let key = (rule, r.subject.scope(), crate::detect::SCALE_NAMES[r.scale.min(2)]);
        *self.detections.lock().unwrap_or_else(|p| p.into_inner()).entry(key).or_insert(0) += 1;
    }
}

/// Starts the task that drains the kernel's event ring buffer and passes
/// every event on to `tx` (the decision engine).
pub fn spawn(
    ebpf: &mut Ebpf,
    counts: EventCounts,
    tx: tokio::sync::mpsc::UnboundedSender<ThresholdEvent>,
) -> Result<()> {
    drain(ebpf, MAP_EVENTS, move |e| {
        report(&e, &counts);
        let _ = tx.send(e);
    })
}

/// Starts the task that drains the kernel's call event ring buffer (call
/// attempts, new authentications) into `tx`.
pub fn spawn_calls(
    ebpf: &mut Ebpf,
    counts: EventCounts,
    tx: tokio::sync::mpsc::UnboundedSender<ThresholdEvent>,
) -> Result<()> {
    drain(ebpf, MAP_CALL_EVENTS, move |e| {
        counts.calls_read.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let _ = tx.send(e);
    })
}

/// Hands every record of the ring buffer `name` to `sink` as it arrives.
fn drain(
    ebpf: &mut Ebpf,
    name: &'static str,
    mut sink: impl FnMut(ThresholdEvent) + Send + 'static,
) -> Result<()> {
    let map = ebpf.take_map(name).ok_or_else(|| Error::Map {
        context: format!("map {name} missing from the eBPF object"),
        error: aya::maps::MapError::InvalidName { name: name.to_owned() },
    })?;
    let ring: RingBuf<MapData> = RingBuf::try_from(map).map_err(Error::map(format!("map {name}")))?;
    // SAFETY: the ring buffer owns its descriptor and moves into the AsyncFd.
    let mut fd =
        unsafe { tokio::io::unix::AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| Error::io(format!("watching the ring buffer {name}"))(e.into()))?;
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                warn!("ring buffer {name}: polling failed; its events stop");
                break;
            };
            let ring = guard.get_inner_mut();
            while let Some(item) = ring.next() {
                if item.len() < size_of::<ThresholdEvent>() {
                    warn!("ring buffer {name}: short record of {} bytes", item.len());
                    continue;
                }
                // SAFETY: the kernel writes whole ThresholdEvent records;
                // read_unaligned makes no alignment assumption.
                let e: ThresholdEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                sink(e);
            }
            guard.clear_ready();
        }
    });
    Ok(())
}

/// What the kernel reports, typed: the one agent-side form of the ABI's
/// `EVENT_*` codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A source's authentication failures reached their threshold.
    AuthFailures,
    /// A source's international INVITEs reached its threshold.
    IntlInvites,
    /// International INVITEs to one country, from many sources, reached its
    /// threshold.
    CountryInvites,
}

impl EventKind {
    pub const fn from_code(code: u32) -> Option<Self> {
        match code {
            EVENT_AUTH_FAILURES => Some(Self::AuthFailures),
            EVENT_INTL_INVITES => Some(Self::IntlInvites),
            EVENT_COUNTRY_INVITES => Some(Self::CountryInvites),
            _ => None,
        }
    }
}

fn report(e: &ThresholdEvent, counts: &EventCounts) {
    let addr = key_addr(&e.addr);
    let window_age = Duration::from_millis(monotonic_now_ns().saturating_sub(e.window_start_ns) / 1_000_000);
    let age = humantime::format_duration(window_age);
    let threshold = e.threshold;
    match EventKind::from_code(e.kind) {
        Some(EventKind::AuthFailures) => {
            counts.auth_failures.fetch_add(1, Relaxed);
            info!(
                "source {addr}: {} REGISTER authentication failures in the current window (threshold {threshold}, window started {age} ago)",
                e.count
            );
        }
        Some(EventKind::IntlInvites) => {
            counts.intl_invites.fetch_add(1, Relaxed);
            info!(
                "source {addr}: {} international INVITEs in the current window (threshold {threshold}, window started {age} ago)",
                e.count
            );
        }
        Some(EventKind::CountryInvites) => {
            counts.country_invites.fetch_add(1, Relaxed);
            info!(
                "country +{}: {} international INVITEs from at least {} sources in the current window (threshold {threshold}, window started {age} ago)",
                e.cc, e.count, e.sources
            );
        }
        None => warn!("unknown event kind {} from the kernel", e.kind),
    }
}
