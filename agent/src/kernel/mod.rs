//! Everything that talks to the kernel: loading and pinning the object,
//! the map wrappers, the event ring buffer, the TC qdisc and the start-up
//! self-test, and [`Kernel::start`], the one start-up sequence the agent,
//! its self-test and the tests share.

pub mod clsact;
pub mod events;
pub mod loader;
pub mod maps;
pub mod selftest;

use std::path::Path;

use aya::Ebpf;
use tollgate_common::{Config, number::NumberPlan};

use self::maps::Maps;
use crate::error::Result;

/// What the kernel program is configured with before anything is attached.
#[derive(Clone, Debug)]
pub struct KernelConfig {
    /// Capacity of the per-source map.
    pub max_sources: u32,
    /// Capacity of the blocklist.
    pub blocklist_capacity: u32,
    pub plan: NumberPlan,
    /// The E.164 country codes international INVITEs are counted under.
    pub country_codes: Vec<u16>,
    /// The SIP ports as (IP protocol, port).
    pub sip_ports: Vec<(u8, u16)>,
    pub config: Config,
}

/// The loaded object, its SIP stages loaded, and its maps configured.
pub struct Kernel {
    pub ebpf: Ebpf,
    pub maps: Maps,
}

impl Kernel {
    /// Loads the object (its maps pinned in `pin_dir`, or private without
    /// one) and its SIP stages, and writes `cfg` into its maps. Nothing is
    /// attached.
    pub fn start(pin_dir: Option<&Path>, cfg: &KernelConfig) -> Result<Self> {
        let mut ebpf = loader::load_with(
            pin_dir,
            loader::MapSizes { max_sources: cfg.max_sources, blocklist_capacity: cfg.blocklist_capacity },
        )?;
        loader::load_sip_stages(&mut ebpf)?;
        let mut maps = Maps::take(&mut ebpf)?;
        maps.set_config(cfg.config)?;
        maps.set_sip_ports(&cfg.sip_ports)?;
        maps.set_number_plan(cfg.plan)?;
        maps.set_country_codes(&cfg.country_codes)?;
        Ok(Self { ebpf, maps })
    }
}
