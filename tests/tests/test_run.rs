//! Exact verdicts for hand-built frames, through the loaded program with
//! BPF_PROG_TEST_RUN. Covers the header shapes a veth test cannot easily
//! produce: VLAN/QinQ, IPv4 options, IPv6 extension chains, fragments,
//! truncation.

use std::net::IpAddr;

use tollgate::clock::monotonic_now_ns;
use tollgate_common::{
    frames::FrameBuilder,
    packet::{ETH_P_8021AD, ETH_P_8021Q, MAX_IPV6_EXT_HEADERS},
    verdict::*,
};
use tollgate_tests::{
    privileged,
    testrun::{Loaded, XDP_DROP, XDP_PASS},
    topology::*,
};

const SIP: &[u8] = b"REGISTER sip:edge.example SIP/2.0\r\nCSeq: 1 REGISTER\r\n\r\n";

fn udp(src: IpAddr, dport: u16) -> FrameBuilder {
    FrameBuilder::udp(src, edge_for(src), 40000, dport).payload(SIP)
}

fn tcp(src: IpAddr, dport: u16) -> FrameBuilder {
    FrameBuilder::tcp(src, edge_for(src), 40000, dport).payload(SIP)
}

fn loaded() -> Loaded {
    let mut l = Loaded::new();
    l.block("203.0.113.0/24", 0);
    l.block("2001:db8:1::/48", 0);
    l.allow(&["203.0.113.20/32", "2001:db8:1::20/128"]);
    l
}

/// Every program passes the verifier, with its work printed as
/// `verifier: NAME INSNS` (read by `cargo xtask kernels` for the matrix).
#[test]
fn verifier_budget() {
    if !privileged("verifier_budget") {
        return;
    }
    let counts = Loaded::new().verifier_counts();
    assert!(counts.len() >= 7, "every program was loaded: {counts:?}");
    for (name, insns) in counts {
        println!("verifier: {name} {insns} ({:.1}% of 1000000)", f64::from(insns) / 10_000.0);
        assert!(insns < 1_000_000, "{name} is over the verifier's budget");
    }
}

#[test]
fn verdicts_for_header_shapes() {
    if !privileged("verdicts_for_header_shapes") {
        return;
    }
    let l = loaded();
    let mut too_long_v6 = udp(ATTACKER_V6, 5999);
    for _ in 0..=MAX_IPV6_EXT_HEADERS {
        too_long_v6 = too_long_v6.ipv6_ext(60);
    }
    let mut arp = udp(CUSTOMER_V4, 5060).build();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    let mut bad_ihl = udp(ATTACKER_V4, 5060).build();
    bad_ihl[14] = 0x43;
    let cases: Vec<(&str, Vec<u8>, u32, u32)> = vec![
        ("v4 udp blocked", udp(ATTACKER_V4, 5060).build(), XDP_DROP, DROP_BLOCKLIST),
        ("v4 udp blocked, second SIP port", udp(ATTACKER_V4, 5080).build(), XDP_DROP, DROP_BLOCKLIST),
        ("v4 tcp blocked", tcp(ATTACKER_V4, 5060).build(), XDP_DROP, DROP_BLOCKLIST),
        ("v6 udp blocked", udp(ATTACKER_V6, 5060).build(), XDP_DROP, DROP_BLOCKLIST),
        ("v6 tcp blocked", tcp(ATTACKER_V6, 5080).build(), XDP_DROP, DROP_BLOCKLIST),
        (
            "v4 blocked, from SIP source port",
            FrameBuilder::udp(ATTACKER_V4, EDGE_V4, 5060, 40000).build(),
            XDP_DROP,
            DROP_BLOCKLIST,
        ),
        ("v4 blocked non-SIP port", udp(ATTACKER_V4, 5999).build(), XDP_PASS, PASS_NOT_SIP),
        ("v6 blocked non-SIP port", tcp(ATTACKER_V6, 443).build(), XDP_PASS, PASS_NOT_SIP),
        ("v4 customer", udp(CUSTOMER_V4, 5060).build(), XDP_PASS, PASS_SIP),
        ("v6 customer", tcp(CUSTOMER_V6, 5060).build(), XDP_PASS, PASS_SIP),
        ("v4 allowlisted in blocked prefix", udp(TRUSTED_V4, 5060).build(), XDP_PASS, PASS_ALLOWLISTED),
        ("v6 allowlisted in blocked prefix", udp(TRUSTED_V6, 5060).build(), XDP_PASS, PASS_ALLOWLISTED),
        ("802.1Q v4 blocked", udp(ATTACKER_V4, 5060).vlan(ETH_P_8021Q).build(), XDP_DROP, DROP_BLOCKLIST),
        (
            "QinQ v6 blocked",
            udp(ATTACKER_V6, 5060).vlan(ETH_P_8021AD).vlan(ETH_P_8021Q).build(),
            XDP_DROP,
            DROP_BLOCKLIST,
        ),
        (
            "QinQ v4 customer",
            udp(CUSTOMER_V4, 5060).vlan(ETH_P_8021AD).vlan(ETH_P_8021Q).build(),
            XDP_PASS,
            PASS_SIP,
        ),
        (
            "three VLAN tags",
            udp(ATTACKER_V4, 5060).vlan(ETH_P_8021AD).vlan(ETH_P_8021Q).vlan(ETH_P_8021Q).build(),
            XDP_PASS,
            PASS_MALFORMED,
        ),
        ("v4 options blocked", tcp(ATTACKER_V4, 5060).ipv4_options(10).build(), XDP_DROP, DROP_BLOCKLIST),
        (
            "v6 ext headers blocked",
            udp(ATTACKER_V6, 5060).ipv6_ext(0).ipv6_ext(43).ipv6_ext(44).ipv6_ext(60).build(),
            XDP_DROP,
            DROP_BLOCKLIST,
        ),
        ("v6 too many ext headers blocked", too_long_v6.build(), XDP_DROP, DROP_BLOCKLIST),
        (
            "v4 non-first fragment blocked",
            udp(ATTACKER_V4, 5060).ipv4_fragment(185).build(),
            XDP_PASS,
            PASS_NOT_SIP,
        ),
        (
            "icmp from blocked",
            FrameBuilder::other(1, ATTACKER_V4, EDGE_V4).payload(&[8, 0, 0, 0]).build(),
            XDP_PASS,
            PASS_NOT_SIP,
        ),
        ("arp", arp, XDP_PASS, PASS_NOT_IP),
        ("bad ihl", bad_ihl, XDP_PASS, PASS_MALFORMED),
        (
            "truncated udp header",
            udp(ATTACKER_V4, 5060).build()[..14 + 20 + 4].to_vec(),
            XDP_PASS,
            PASS_MALFORMED,
        ),
        ("truncated v6 header", udp(ATTACKER_V6, 5060).build()[..14 + 30].to_vec(), XDP_PASS, PASS_MALFORMED),
        (
            "truncated vlan tag",
            udp(ATTACKER_V4, 5060).vlan(ETH_P_8021Q).build()[..16].to_vec(),
            XDP_PASS,
            PASS_MALFORMED,
        ),
    ];
    for (name, frame, action, code) in cases {
        assert_eq!(l.run(&frame), (action, code), "{name}");
    }
}

#[test]
fn expiry_is_judged_by_the_kernel_clock() {
    if !privileged("expiry_is_judged_by_the_kernel_clock") {
        return;
    }
    let mut l = Loaded::new();
    let now = monotonic_now_ns();
    l.block("203.0.113.10/32", now - 1);
    l.block("2001:db8:1::10/128", now + 3_600_000_000_000);
    assert_eq!(l.run(&udp(ATTACKER_V4, 5060).build()), (XDP_PASS, PASS_EXPIRED));
    assert_eq!(l.run(&udp(ATTACKER_V6, 5060).build()), (XDP_DROP, DROP_BLOCKLIST));
}

#[test]
fn expired_entries_never_shadow_active_ones_and_block_all_ports_widens_scope() {
    if !privileged("expired_entries_never_shadow_active_ones_and_block_all_ports_widens_scope") {
        return;
    }
    let mut l = Loaded::new();
    let now = monotonic_now_ns();
    // An expired narrow entry inside an active broad block must not open a
    // hole in it (the agent may be dead and not sweeping).
    l.block("203.0.113.0/24", 0);
    l.block("203.0.113.10/32", now - 1);
    assert_eq!(l.run(&udp(ATTACKER_V4, 5060).build()), (XDP_DROP, DROP_BLOCKLIST));
    // Expired at every level: passes, counted as expired.
    l.block("198.51.100.0/24", now - 1);
    l.block("198.51.100.10/32", now - 1);
    assert_eq!(l.run(&udp(CUSTOMER_V4, 5060).build()), (XDP_PASS, PASS_EXPIRED));
    // An active narrow entry inside an expired broad one still drops.
    l.block("2001:db8:1::/48", now - 1);
    l.block("2001:db8:1::10/128", 0);
    assert_eq!(l.run(&udp(ATTACKER_V6, 5060).build()), (XDP_DROP, DROP_BLOCKLIST));
    assert_eq!(l.run(&udp(TRUSTED_V6, 5060).build()), (XDP_PASS, PASS_EXPIRED));
    assert_eq!(l.run(&udp(TRUSTED_V4, 5060).build()), (XDP_DROP, DROP_BLOCKLIST));
    l.block_all_ports(true);
    assert_eq!(l.run(&udp(TRUSTED_V4, 5999).build()), (XDP_DROP, DROP_BLOCKLIST));
    assert_eq!(l.run(&FrameBuilder::other(1, TRUSTED_V4, EDGE_V4).build()), (XDP_DROP, DROP_BLOCKLIST));
    assert_eq!(l.run(&udp(CUSTOMER_V6, 5999).build()), (XDP_PASS, PASS_NOT_SIP));
}

/// The kernel looks a source up once per prefix length the blocklist
/// holds, in a hash by exact prefix, and walks the trie when there are more
/// lengths than it looks up one by one: both give the same verdicts, past
/// expired entries too, and a length goes out of use with its last entry.
#[test]
fn lookups_by_prefix_length_and_the_trie_agree() {
    if !privileged("lookups_by_prefix_length_and_the_trie_agree") {
        return;
    }
    let mut l = Loaded::new();
    let now = monotonic_now_ns();
    for (net, expires) in [
        ("203.0.113.0/24", 0),
        ("203.0.113.10/32", now - 1),
        ("198.51.100.0/24", now - 1),
        ("198.51.100.10/32", now - 1),
        ("2001:db8:1::/48", now - 1),
        ("2001:db8:1::10/128", 0),
    ] {
        l.block(net, expires);
    }
    let lengths = |l: &Loaded| l.maps.blocklist.lengths_in_force().expect("BLOCK_LENGTHS");
    // The keys' lengths: IPv4's are 96 more (mapped into ::ffff:0:0/96).
    let both = [vec![128, 120], vec![128, 48]];
    assert_eq!(lengths(&l), Some(both.clone()), "IPv4 sources at IPv4 entries' lengths, IPv6 at IPv6's");
    let sources = [ATTACKER_V4, TRUSTED_V4, CUSTOMER_V4, ATTACKER_V6, TRUSTED_V6, CUSTOMER_V6, EDGE_V4];
    let verdicts = |l: &Loaded| sources.map(|s| l.run(&udp(s, 5060).build()));
    let by_length = verdicts(&l);
    assert_eq!(
        by_length,
        [
            (XDP_DROP, DROP_BLOCKLIST),
            (XDP_DROP, DROP_BLOCKLIST),
            (XDP_PASS, PASS_EXPIRED),
            (XDP_DROP, DROP_BLOCKLIST),
            (XDP_PASS, PASS_EXPIRED),
            (XDP_PASS, PASS_SIP),
            (XDP_PASS, PASS_SIP),
        ]
    );
    // Seven more IPv6 lengths, covering none of the sources: the trie
    // answers.
    let more: Vec<String> =
        [36, 40, 44, 52, 56, 60, 62].iter().map(|n| format!("2001:db8:8000::/{n}")).collect();
    for net in &more {
        l.block(net, 0);
    }
    assert_eq!(lengths(&l), None, "9 IPv6 lengths: more than the kernel looks up one by one");
    assert_eq!(verdicts(&l), by_length, "the trie's verdicts");
    for net in &more {
        l.unblock(net);
    }
    assert_eq!(lengths(&l), Some(both));
    assert_eq!(verdicts(&l), by_length);
    // The /48's only entry goes, and its length with it; the /128 in it
    // still drops.
    l.unblock("2001:db8:1::/48");
    assert_eq!(lengths(&l), Some([vec![128, 120], vec![128]]));
    assert_eq!(l.run(&udp(ATTACKER_V6, 5060).build()), (XDP_DROP, DROP_BLOCKLIST));
    assert_eq!(l.run(&udp(TRUSTED_V6, 5060).build()), (XDP_PASS, PASS_SIP));
    // What a restarted agent finds pinned is indexed again, the same.
    l.maps.blocklist.index().expect("indexing");
    assert_eq!(lengths(&l), Some([vec![128, 120], vec![128]]));
    assert_eq!(l.run(&udp(ATTACKER_V4, 5060).build()), (XDP_DROP, DROP_BLOCKLIST));
    // An IPv6 prefix over ::ffff:0:0/96 covers IPv4 sources too.
    l.block("::/8", 0);
    assert_eq!(lengths(&l), Some([vec![128, 120, 8], vec![128, 8]]));
    assert_eq!(l.run(&udp(CUSTOMER_V4, 5060).build()), (XDP_DROP, DROP_BLOCKLIST));
    assert_eq!(l.run(&udp(CUSTOMER_V6, 5060).build()), (XDP_PASS, PASS_SIP), "2001:db8:2::10 is not in ::/8");
    l.unblock("::/8");
    assert_eq!(l.run(&udp(CUSTOMER_V4, 5060).build()), (XDP_PASS, PASS_EXPIRED));
}
