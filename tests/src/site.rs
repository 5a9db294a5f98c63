//! The acceptance topology: a carrier's edge host as a router between the
//! internet and its SIP core, with tollgate's XDP on every interface.
//!
//! ```text
//!  inet netns (attackers, customers, PBXs)       edge netns (router, tollgate)      core netns
//!  203.0.113.10-12  2001:db8:1::10-12            XDP on all three interfaces        Kamailio 192.0.2.66:5060
//!  198.51.100.10-29 2001:db8:2::10-29                                               [2001:db8:fffe::2]:5060
//!  198.51.100.101..   (many customers' PBXs)    192.0.2.1  <--o--> 192.0.2.2 (inet)  sipp UAS 192.0.2.66:5070
//!                                               192.0.2.65 <--i--> 192.0.2.66 (core)
//!  office netns: 40 phones on 192.0.2.200,      192.0.2.129 <--f--> 192.0.2.130 (office WAN)
//!  NAT'd (nftables snat) to 198.51.100.200
//! ```
//!
//! Requests from the internet and the office enter the edge on its outside
//! interfaces, the registrar's responses on the inside one: XDP sees both, so
//! no egress program is needed (README: "Where to attach"). Every address is
//! in a documentation range; everything is removed on drop.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{
    netns::{NetNs, ip},
    unique,
};

/// Kamailio's addresses in the core.
pub const CORE_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 66));
pub const CORE_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xfffe, 0, 0, 0, 0, 2));
/// The edge's outside address: the internet hosts' next hop.
pub const EDGE_OUTSIDE_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
/// Where Kamailio relays authenticated calls: a sipp UAS in the core.
pub const UAS_PORT: u16 = 5070;
/// The office's one public address, behind which its phones are NAT'd.
pub const OFFICE_PUBLIC: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 200));
/// The office phones' own (LAN) address.
pub const OFFICE_LAN: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 200));

/// An internet host's IPv4 address: attackers are 203.0.113.`10 + i`.
pub fn attacker_v4(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10 + i))
}
pub fn attacker_v6(i: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10 + i))
}
/// Legitimate customers: 198.51.100.`10 + i`.
pub fn customer_v4(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10 + i))
}
pub fn customer_v6(i: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x10 + i))
}
/// Many customers' PBXs: 198.51.100.`101 + i`.
pub fn pbx_v4(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 51, 100, 101 + i))
}

/// `tollgate run` flags for a surge to one country from the site's PBXs,
/// each below its own threshold: 24 calls a window to one country from at
/// least 5 sources restrict it (opted in), for 20 s at a time, 60 s at most.
pub const COUNTRY_SURGE_FLAGS: &[&str] = &[
    "--country-invite-threshold",
    "24",
    "--country-min-sources",
    "5",
    "--allow-country-restrict",
    "--country-restrict-for",
    "20s",
    "--country-restrict-max",
    "60s",
];

/// Kamailio's address of the same family as `src`.
pub fn core_for(src: IpAddr) -> IpAddr {
    if src.is_ipv4() { CORE_V4 } else { CORE_V6 }
}

pub struct Site {
    // Field order is drop order: namespaces go last.
    /// The edge's interfaces: to the internet, to the office, to the core.
    pub outside_if: String,
    pub office_if: String,
    pub inside_if: String,
    /// The internet side's interface (attackers' route source tricks).
    pub inet_if: String,
    /// The core's interface, facing the edge (Kamailio's).
    pub core_if: String,
    pub edge: NetNs,
    pub inet: NetNs,
    pub office: NetNs,
    pub core: NetNs,
}

/// A veth pair between two namespaces: (`a` side name, `b` side name).
fn link(a: &NetNs, b: &NetNs) -> (String, String) {
    let an = unique("v");
    let bn = format!("{an}p");
    ip(&["link", "add", &an, "netns", a.name(), "type", "veth", "peer", "name", &bn, "netns", b.name()]);
    for (ns, ifname) in [(a, &an), (b, &bn)] {
        ns.exec(&["ip", "link", "set", ifname, "up"]);
    }
    (an, bn)
}

fn addr(ns: &NetNs, ifname: &str, cidr: &str) {
    if cidr.contains(':') {
        ns.exec(&["ip", "addr", "add", cidr, "dev", ifname, "nodad"]);
    } else {
        ns.exec(&["ip", "addr", "add", cidr, "dev", ifname]);
    }
}

/// `ip route add DST via GW` in `ns` (IPv6 when the gateway is).
fn route(ns: &NetNs, dst: &str, gw: &str) {
    let family = if gw.contains(':') { "-6" } else { "-4" };
    ns.exec(&["ip", family, "route", "add", dst, "via", gw]);
}

impl Site {
    pub fn new() -> Self {
        let edge = NetNs::new(unique("e"));
        let inet = NetNs::new(unique("i"));
        let office = NetNs::new(unique("f"));
        let core = NetNs::new(unique("c"));
        let (outside_if, inet_if) = link(&edge, &inet);
        let (office_if, office_wan) = link(&edge, &office);
        let (inside_if, core_if) = link(&edge, &core);

        for s in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
            edge.exec(&["sysctl", "-qw", s]);
        }
        addr(&edge, &outside_if, "192.0.2.1/26");
        addr(&edge, &outside_if, "2001:db8:ffff::1/64");
        addr(&inet, &inet_if, "192.0.2.2/26");
        addr(&inet, &inet_if, "2001:db8:ffff::2/64");
        addr(&edge, &inside_if, "192.0.2.65/26");
        addr(&edge, &inside_if, "2001:db8:fffe::1/64");
        addr(&core, &core_if, "192.0.2.66/26");
        addr(&core, &core_if, "2001:db8:fffe::2/64");
        addr(&edge, &office_if, "192.0.2.129/26");
        addr(&office, &office_wan, "192.0.2.130/26");
        addr(&office, &office_wan, "198.51.100.200/32");
        addr(&office, "lo", "192.0.2.200/32");

        // The internet's hosts all live in one namespace, on its one link.
        for i in 0..3 {
            addr(&inet, &inet_if, &format!("{}/32", attacker_v4(i)));
            addr(&inet, &inet_if, &format!("{}/128", attacker_v6(u16::from(i))));
        }
        for i in 0..20 {
            addr(&inet, &inet_if, &format!("{}/32", customer_v4(i)));
            addr(&inet, &inet_if, &format!("{}/128", customer_v6(u16::from(i))));
        }
        for i in 0..8 {
            addr(&inet, &inet_if, &format!("{}/32", pbx_v4(i)));
        }

        route(&inet, "default", "192.0.2.1");
        route(&inet, "default", "2001:db8:ffff::1");
        route(&core, "default", "192.0.2.65");
        route(&core, "default", "2001:db8:fffe::1");
        route(&office, "default", "192.0.2.129");
        for r in ["203.0.113.0/24", "198.51.100.0/24"] {
            route(&edge, r, "192.0.2.2");
        }
        route(&edge, "198.51.100.200/32", "192.0.2.130");
        for r in ["2001:db8:1::/48", "2001:db8:2::/48"] {
            route(&edge, r, "2001:db8:ffff::2");
        }

        // The office's NAT: every phone leaves by its one public address.
        office.exec(&["nft", "add", "table", "ip", "nat"]);
        office.exec(&["nft", "add chain ip nat post { type nat hook postrouting priority 100 ; }"]);
        office
            .exec(&["nft", &format!("add rule ip nat post oifname \"{office_wan}\" snat to 198.51.100.200")]);

        Self { outside_if, office_if, inside_if, inet_if, core_if, edge, inet, office, core }
    }

    /// The edge's interfaces, for `tollgate run --iface` each.
    pub fn edge_ifaces(&self) -> [&str; 3] {
        [&self.outside_if, &self.office_if, &self.inside_if]
    }
}

impl Default for Site {
    fn default() -> Self {
        Self::new()
    }
}
