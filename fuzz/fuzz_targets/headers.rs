//! The Ethernet/VLAN/IP/transport parser on arbitrary frames: no panic; a
//! payload offset stays within the bounded header area, and only a TCP
//! header with cut-off options points past the frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_common::packet::{MAX_HEADER_OFFSET, Transport, parse_headers};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = parse_headers(data)
        && let Transport::Ports(p) = h.transport
    {
        assert!(p.payload_offset as usize <= data.len() || p.proto == tollgate_common::IPPROTO_TCP);
        assert!(p.payload_offset as usize <= MAX_HEADER_OFFSET + 60);
    }
});
