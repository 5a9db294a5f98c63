//! The clock the kernel program compares block expiries against.

use std::time::Duration;

/// CLOCK_MONOTONIC in nanoseconds: the same clock as `bpf_ktime_get_ns()`,
/// so expiry times written by the agent mean the same thing in the kernel.
pub fn monotonic_now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC always exists.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC) failed");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Expiry time `d` from `now_ns`, saturating instead of wrapping.
pub fn expiry_after(now_ns: u64, d: Duration) -> u64 {
    now_ns.saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}
