//! Builds Ethernet frames for tests, benchmarks and fuzzing (std only).
//!
//! Checksums are left at zero: XDP sees frames before any checksum is
//! verified, and BPF_PROG_TEST_RUN does not verify them either.

use core::net::IpAddr;
use std::vec::Vec;

use crate::{
    IPPROTO_TCP, IPPROTO_UDP,
    packet::{ETH_P_IPV4, ETH_P_IPV6},
};

#[derive(Clone, Debug)]
pub struct FrameBuilder {
    vlan_tpids: Vec<u16>,
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    src_port: u16,
    dst_port: u16,
    ipv4_options: usize,
    ipv6_ext: Vec<u8>,
    ipv4_fragment_offset: u16,
    payload: Vec<u8>,
}

impl FrameBuilder {
    fn new(proto: u8, src: IpAddr, dst: IpAddr, src_port: u16, dst_port: u16) -> Self {
        assert_eq!(src.is_ipv4(), dst.is_ipv4(), "mixed address families");
        Self {
            vlan_tpids: Vec::new(),
            src,
            dst,
            proto,
            src_port,
            dst_port,
            ipv4_options: 0,
            ipv6_ext: Vec::new(),
            ipv4_fragment_offset: 0,
            payload: Vec::new(),
        }
    }

    pub fn udp(src: IpAddr, dst: IpAddr, src_port: u16, dst_port: u16) -> Self {
        Self::new(IPPROTO_UDP, src, dst, src_port, dst_port)
    }

    pub fn tcp(src: IpAddr, dst: IpAddr, src_port: u16, dst_port: u16) -> Self {
        Self::new(IPPROTO_TCP, src, dst, src_port, dst_port)
    }

    /// Another IP protocol with no ports (e.g. 1 for ICMP).
    pub fn other(proto: u8, src: IpAddr, dst: IpAddr) -> Self {
        Self::new(proto, src, dst, 0, 0)
    }

    /// Adds a VLAN tag with this TPID (0x8100 or 0x88a8), outermost first.
    pub fn vlan(mut self, tpid: u16) -> Self {
        self.vlan_tpids.push(tpid);
        self
    }

    /// Adds `words` 32-bit words of IPv4 options (NOPs).
    pub fn ipv4_options(mut self, words: usize) -> Self {
        self.ipv4_options = words;
        self
    }

    /// Marks the IPv4 packet as a non-first fragment.
    pub fn ipv4_fragment(mut self, offset_units: u16) -> Self {
        self.ipv4_fragment_offset = offset_units;
        self
    }

    /// Adds an IPv6 extension header of this type (0, 43, 44 or 60), 8 bytes.
    pub fn ipv6_ext(mut self, next_header_type: u8) -> Self {
        self.ipv6_ext.push(next_header_type);
        self
    }

    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        match self.proto {
            IPPROTO_UDP => {
                l4.extend_from_slice(&self.src_port.to_be_bytes());
                l4.extend_from_slice(&self.dst_port.to_be_bytes());
                l4.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                l4.extend_from_slice(&[0, 0]);
            }
            IPPROTO_TCP => {
                l4.extend_from_slice(&self.src_port.to_be_bytes());
                l4.extend_from_slice(&self.dst_port.to_be_bytes());
                l4.extend_from_slice(&1u32.to_be_bytes()); // seq
                l4.extend_from_slice(&0u32.to_be_bytes()); // ack
                l4.extend_from_slice(&[5 << 4, 0x18]); // data offset 5, PSH|ACK
                l4.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]); // window, csum, urg
            }
            _ => {}
        }
        l4.extend_from_slice(&self.payload);

        let mut frame = Vec::new();
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]); // dst MAC
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]); // src MAC
        for (i, tpid) in self.vlan_tpids.iter().enumerate() {
            frame.extend_from_slice(&tpid.to_be_bytes());
            frame.extend_from_slice(&(100 + i as u16).to_be_bytes());
        }
        match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                frame.extend_from_slice(&ETH_P_IPV4.to_be_bytes());
                let ihl = 5 + self.ipv4_options;
                let total = (ihl * 4 + l4.len()) as u16;
                frame.push(0x40 | ihl as u8);
                frame.push(0);
                frame.extend_from_slice(&total.to_be_bytes());
                frame.extend_from_slice(&[0, 1]);
                frame.extend_from_slice(&self.ipv4_fragment_offset.to_be_bytes());
                frame.extend_from_slice(&[64, self.proto, 0, 0]);
                frame.extend_from_slice(&src.octets());
                frame.extend_from_slice(&dst.octets());
                frame.extend(core::iter::repeat_n(1u8, self.ipv4_options * 4));
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                frame.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
                let ext_len = self.ipv6_ext.len() * 8;
                frame.extend_from_slice(&[0x60, 0, 0, 0]);
                frame.extend_from_slice(&((ext_len + l4.len()) as u16).to_be_bytes());
                let first = self.ipv6_ext.first().copied().unwrap_or(self.proto);
                frame.extend_from_slice(&[first, 64]);
                frame.extend_from_slice(&src.octets());
                frame.extend_from_slice(&dst.octets());
                for (i, _) in self.ipv6_ext.iter().enumerate() {
                    let next = self.ipv6_ext.get(i + 1).copied().unwrap_or(self.proto);
                    // 8 bytes: next header, length 0 (=8 bytes); for a
                    // fragment header the offset field stays 0 (first fragment).
                    frame.extend_from_slice(&[next, 0, 0, 0, 0, 0, 0, 0]);
                }
            }
            _ => unreachable!("checked in new()"),
        }
        frame.extend_from_slice(&l4);
        frame
    }
}
