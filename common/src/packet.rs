//! Link, network and transport header parsing, written once for the kernel
//! program and for host-side tests and fuzzing.
//!
//! The parser never trusts a length from the packet without a bound: VLAN
//! tags and IPv6 extension headers are followed at most a fixed number of
//! times, and no header is read past [`MAX_HEADER_OFFSET`]. That keeps every
//! loop bounded for the verifier and every offset small enough for it to track.

use crate::{AddrKey, IPPROTO_TCP, IPPROTO_UDP, v4_mapped};

/// Read access to a packet's bytes. The kernel implements it over the XDP
/// context with explicit bounds checks; tests and the fuzzer use `[u8]`.
pub trait PacketView {
    /// Copies `N` bytes starting at `off`, or `None` when they are not all
    /// inside the packet (or `off` is past [`MAX_HEADER_OFFSET`]).
    fn read<const N: usize>(&self, off: usize) -> Option<[u8; N]>;
}

impl PacketView for [u8] {
    #[inline(always)]
    fn read<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        if off > MAX_HEADER_OFFSET {
            return None;
        }
        let bytes = self.get(off..off.checked_add(N)?)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Some(out)
    }
}

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
/// 802.1ad outer tag plus 802.1Q inner tag (QinQ) is the deepest we follow.
pub const MAX_VLAN_TAGS: usize = 2;
/// Extension headers followed before giving up on finding the transport.
pub const MAX_IPV6_EXT_HEADERS: usize = 6;
/// No header is read beyond this offset from the start of the frame.
pub const MAX_HEADER_OFFSET: usize = 512;

const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AUTH: u8 = 51;
const IPV6_DEST_OPTS: u8 = 60;

/// Ports and payload position of a UDP or TCP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ports {
    pub proto: u8,
    pub src_port: u16,
    pub dst_port: u16,
    /// Offset of the first payload byte from the start of the frame. For a
    /// TCP header whose options run past the end of a truncated frame this
    /// is beyond the frame: there is no payload, and consumers must check
    /// (the ports are still valid, so enforcement applies).
    pub payload_offset: u16,
    /// Offset just past the IP packet's end, from its own length (IPv4
    /// total length, IPv6 payload length; `u16::MAX` for an IPv6
    /// jumbogram): bytes after it are Ethernet padding (a short frame is
    /// padded to 60 bytes), not payload.
    pub payload_end: u16,
}

/// What the parser could learn about the transport layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// UDP or TCP with a complete header.
    Ports(Ports),
    /// Another protocol (ICMP, ESP, SCTP, ...), carried in the first fragment.
    Other(u8),
    /// A non-first fragment: it has no transport header of its own.
    Fragment,
    /// An IPv6 extension header chain longer than we follow: the transport
    /// is unknown. Enforcement treats such a packet as if it were on a SIP
    /// port, so a blocked source cannot hide behind padding headers.
    Opaque,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Headers {
    /// Source address (IPv4 mapped into IPv6, see [`crate::v4_mapped`]).
    pub src: AddrKey,
    /// Destination address, same encoding.
    pub dst: AddrKey,
    pub is_ipv4: bool,
    pub transport: Transport,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Not IPv4 or IPv6 (ARP, LLDP, ...).
    NotIp,
    /// Truncated or inconsistent headers, or more VLAN tags than we follow.
    Malformed,
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// Parses Ethernet (with up to [`MAX_VLAN_TAGS`] 802.1Q/802.1ad tags), IPv4
/// or IPv6 (skipping up to [`MAX_IPV6_EXT_HEADERS`] extension headers), and
/// the UDP or TCP header.
#[inline(always)]
pub fn parse_headers<P: PacketView + ?Sized>(p: &P) -> Result<Headers, ParseError> {
    let mut ethertype = be16(p.read::<2>(12).ok_or(ParseError::Malformed)?);
    let mut off = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        // Tag control information (2 bytes), then the next ethertype.
        let tag = p.read::<4>(off).ok_or(ParseError::Malformed)?;
        ethertype = be16([tag[2], tag[3]]);
        off += 4;
    }
    match ethertype {
        ETH_P_IPV4 => parse_ipv4(p, off),
        ETH_P_IPV6 => parse_ipv6(p, off),
        ETH_P_8021Q | ETH_P_8021AD => Err(ParseError::Malformed),
        _ => Err(ParseError::NotIp),
    }
}

#[inline(always)]
fn parse_ipv4<P: PacketView + ?Sized>(p: &P, off: usize) -> Result<Headers, ParseError> {
    let h = p.read::<20>(off).ok_or(ParseError::Malformed)?;
    if h[0] >> 4 != 4 {
        return Err(ParseError::Malformed);
    }
    // IHL is honoured: options may follow the fixed 20 bytes.
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    let total_len = be16([h[2], h[3]]) as usize;
    if ihl < 20 || total_len < ihl {
        return Err(ParseError::Malformed);
    }
    let src = v4_mapped([h[12], h[13], h[14], h[15]]);
    let dst = v4_mapped([h[16], h[17], h[18], h[19]]);
    let fragment_offset = be16([h[6], h[7]]) & 0x1fff;
    let end = (off + total_len).min(u16::MAX as usize);
    let transport =
        if fragment_offset != 0 { Transport::Fragment } else { parse_transport(p, h[9], off + ihl, end)? };
    Ok(Headers { src, dst, is_ipv4: true, transport })
}

#[inline(always)]
fn parse_ipv6<P: PacketView + ?Sized>(p: &P, off: usize) -> Result<Headers, ParseError> {
    let h = p.read::<40>(off).ok_or(ParseError::Malformed)?;
    if h[0] >> 4 != 6 {
        return Err(ParseError::Malformed);
    }
    let mut src = [0u8; 16];
    src.copy_from_slice(&h[8..24]);
    let mut dst = [0u8; 16];
    dst.copy_from_slice(&h[24..40]);
    let mut next = h[6];
    let plen = be16([h[4], h[5]]) as usize;
    // A jumbogram (payload length 0) ends with the frame.
    let end = if plen == 0 { u16::MAX as usize } else { (off + 40 + plen).min(u16::MAX as usize) };
    let mut off = off + 40;
    let mut transport = Transport::Opaque;
    for _ in 0..=MAX_IPV6_EXT_HEADERS {
        match next {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS => {
                let e = p.read::<2>(off).ok_or(ParseError::Malformed)?;
                next = e[0];
                off += (e[1] as usize + 1) * 8;
            }
            IPV6_AUTH => {
                let e = p.read::<2>(off).ok_or(ParseError::Malformed)?;
                next = e[0];
                off += (e[1] as usize + 2) * 4;
            }
            IPV6_FRAGMENT => {
                let e = p.read::<4>(off).ok_or(ParseError::Malformed)?;
                if be16([e[2], e[3]]) >> 3 != 0 {
                    transport = Transport::Fragment;
                    break;
                }
                next = e[0];
                off += 8;
            }
            proto => {
                transport = parse_transport(p, proto, off, end)?;
                break;
            }
        }
        if off > MAX_HEADER_OFFSET {
            // Longer than anything we follow: transport unknown.
            break;
        }
    }
    Ok(Headers { src, dst, is_ipv4: false, transport })
}

#[inline(always)]
fn parse_transport<P: PacketView + ?Sized>(
    p: &P,
    proto: u8,
    off: usize,
    end: usize,
) -> Result<Transport, ParseError> {
    match proto {
        IPPROTO_UDP => {
            let h = p.read::<8>(off).ok_or(ParseError::Malformed)?;
            Ok(Transport::Ports(Ports {
                proto,
                src_port: be16([h[0], h[1]]),
                dst_port: be16([h[2], h[3]]),
                payload_offset: (off + 8) as u16,
                payload_end: end as u16,
            }))
        }
        IPPROTO_TCP => {
            let h = p.read::<20>(off).ok_or(ParseError::Malformed)?;
            // The data offset is honoured: options may follow 20 bytes.
            let data_offset = ((h[12] >> 4) as usize) * 4;
            if data_offset < 20 {
                return Err(ParseError::Malformed);
            }
            Ok(Transport::Ports(Ports {
                proto,
                src_port: be16([h[0], h[1]]),
                dst_port: be16([h[2], h[3]]),
                payload_offset: (off + data_offset) as u16,
                payload_end: end as u16,
            }))
        }
        other => Ok(Transport::Other(other)),
    }
}

#[cfg(test)]
mod tests {
    use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use std::vec::Vec;

    use proptest::prelude::*;

    use super::*;
    use crate::frames::FrameBuilder;

    const V4_SRC: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10));
    const V4_DST: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    const V6_SRC: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10));
    const V6_DST: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1));

    fn ports(h: &Headers) -> Ports {
        match h.transport {
            Transport::Ports(p) => p,
            other => panic!("expected ports, got {other:?}"),
        }
    }

    #[test]
    fn ipv4_udp() {
        let f = FrameBuilder::udp(V4_SRC, V4_DST, 40000, 5060).payload(b"OPTIONS").build();
        let h = parse_headers(f.as_slice()).unwrap();
        assert!(h.is_ipv4);
        assert_eq!(h.src, v4_mapped([203, 0, 113, 10]));
        assert_eq!(h.dst, v4_mapped([192, 0, 2, 1]));
        let p = ports(&h);
        assert_eq!((p.proto, p.src_port, p.dst_port), (IPPROTO_UDP, 40000, 5060));
        assert_eq!(p.payload_offset as usize, 14 + 20 + 8);
        assert_eq!(&f[p.payload_offset as usize..], b"OPTIONS");
    }

    #[test]
    fn ipv4_options_are_honoured() {
        let f = FrameBuilder::tcp(V4_SRC, V4_DST, 40000, 5080).ipv4_options(3).payload(b"X").build();
        let p = ports(&parse_headers(f.as_slice()).unwrap());
        assert_eq!((p.proto, p.dst_port), (IPPROTO_TCP, 5080));
        assert_eq!(p.payload_offset as usize, 14 + 32 + 20);
    }

    #[test]
    fn tcp_options_cut_off_leave_ports_but_no_payload() {
        let mut f = FrameBuilder::tcp(V4_SRC, V4_DST, 1, 5060).build();
        f[14 + 20 + 12] = 15 << 4; // data offset 60 bytes, frame ends after 20
        let p = ports(&parse_headers(f.as_slice()).unwrap());
        assert_eq!(p.dst_port, 5060);
        assert!(p.payload_offset as usize > f.len());
    }

    #[test]
    fn vlan_and_qinq() {
        for tags in [&[ETH_P_8021Q][..], &[ETH_P_8021AD, ETH_P_8021Q]] {
            let mut b = FrameBuilder::udp(V6_SRC, V6_DST, 5060, 5060);
            for t in tags {
                b = b.vlan(*t);
            }
            let f = b.build();
            let h = parse_headers(f.as_slice()).unwrap();
            assert_eq!(ports(&h).payload_offset as usize, 14 + 4 * tags.len() + 40 + 8);
        }
        // Three tags is more than we follow: fail open as malformed.
        let f = FrameBuilder::udp(V4_SRC, V4_DST, 1, 5060)
            .vlan(ETH_P_8021AD)
            .vlan(ETH_P_8021Q)
            .vlan(ETH_P_8021Q)
            .build();
        assert_eq!(parse_headers(f.as_slice()), Err(ParseError::Malformed));
    }

    #[test]
    fn ipv6_extension_headers_are_skipped() {
        let f = FrameBuilder::udp(V6_SRC, V6_DST, 1, 5060).ipv6_ext(0).ipv6_ext(60).ipv6_ext(44).build();
        let h = parse_headers(f.as_slice()).unwrap();
        assert!(!h.is_ipv4);
        assert_eq!(ports(&h).dst_port, 5060);
        assert_eq!(ports(&h).payload_offset as usize, 14 + 40 + 24 + 8);
    }

    #[test]
    fn too_many_ipv6_extension_headers_is_opaque() {
        let mut b = FrameBuilder::udp(V6_SRC, V6_DST, 1, 5060);
        for _ in 0..=MAX_IPV6_EXT_HEADERS {
            b = b.ipv6_ext(60);
        }
        assert_eq!(parse_headers(b.build().as_slice()).unwrap().transport, Transport::Opaque);
    }

    #[test]
    fn fragments_and_other_protocols() {
        let f = FrameBuilder::udp(V4_SRC, V4_DST, 1, 5060).ipv4_fragment(100).build();
        assert_eq!(parse_headers(f.as_slice()).unwrap().transport, Transport::Fragment);
        let f = FrameBuilder::other(1, V4_SRC, V4_DST).payload(&[8, 0, 0, 0]).build();
        assert_eq!(parse_headers(f.as_slice()).unwrap().transport, Transport::Other(1));
    }

    #[test]
    fn not_ip() {
        let mut f = FrameBuilder::udp(V4_SRC, V4_DST, 1, 5060).build();
        f[12..14].copy_from_slice(&0x0806u16.to_be_bytes()); // ARP
        assert_eq!(parse_headers(f.as_slice()), Err(ParseError::NotIp));
    }

    #[test]
    fn bad_ihl_and_version() {
        let mut f = FrameBuilder::udp(V4_SRC, V4_DST, 1, 5060).build();
        f[14] = 0x44; // IHL 4 words < 20 bytes
        assert_eq!(parse_headers(f.as_slice()), Err(ParseError::Malformed));
        f[14] = 0x65; // version 6 under an IPv4 ethertype
        assert_eq!(parse_headers(f.as_slice()), Err(ParseError::Malformed));
    }

    #[test]
    fn every_truncation_of_a_valid_frame_is_malformed() {
        let frames = [
            FrameBuilder::udp(V4_SRC, V4_DST, 1, 5060).vlan(ETH_P_8021Q).build(),
            FrameBuilder::tcp(V6_SRC, V6_DST, 1, 5060).ipv6_ext(0).build(),
        ];
        for f in frames {
            let header_len = match parse_headers(f.as_slice()).unwrap().transport {
                Transport::Ports(p) => p.payload_offset as usize,
                _ => unreachable!(),
            };
            for len in 0..header_len {
                assert_eq!(parse_headers(&f[..len]), Err(ParseError::Malformed), "truncated to {len} bytes");
            }
        }
    }

    proptest! {
        #[test]
        fn never_panics_and_offsets_stay_in_bounds(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
            if let Ok(h) = parse_headers(bytes.as_slice())
                && let Transport::Ports(p) = h.transport
            {
                // Only TCP options may point past the frame (see Ports).
                prop_assert!(p.payload_offset as usize <= bytes.len() || p.proto == IPPROTO_TCP);
                prop_assert!(p.payload_offset as usize <= MAX_HEADER_OFFSET + 60);
            }
        }

        #[test]
        fn mutated_valid_frames_never_panic(seed in proptest::collection::vec((0usize..120, any::<u8>()), 0..8)) {
            let mut f: Vec<u8> = FrameBuilder::udp(V6_SRC, V6_DST, 1, 5060).ipv6_ext(0).payload(b"REGISTER sip:x SIP/2.0\r\n").build();
            for (i, b) in seed {
                if let Some(slot) = f.get_mut(i) {
                    *slot = b;
                }
            }
            let _ = parse_headers(f.as_slice());
        }
    }
}
