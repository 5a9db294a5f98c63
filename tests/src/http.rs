//! A minimal HTTP GET from inside a network namespace: enough for the
//! agent's metrics endpoint and Prometheus's HTTP API, both on loopback in
//! a test namespace where no client library's resolver or proxy settings
//! can interfere.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use crate::netns::enter;

/// `GET path` of the server at `addr` in the namespace at `ns` (a path
/// under /var/run/netns): its status code and body, or None when it cannot
/// be reached or answers nonsense. HTTP/1.0, so that the answer is neither
/// chunked nor kept alive: the body is whatever comes before the close.
pub fn get(ns: &str, addr: SocketAddr, path: &str, timeout: Duration) -> Option<(u16, String)> {
    let (ns, path) = (ns.to_owned(), path.to_owned());
    std::thread::spawn(move || {
        enter(&ns);
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
        s.set_read_timeout(Some(timeout)).ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
            .ok()?;
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).ok()?;
        let answer = String::from_utf8(answer).ok()?;
        let (head, body) = answer.split_once("\r\n\r\n")?;
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, body.to_owned()))
    })
    .join()
    .ok()
    .flatten()
}

/// `s` percent-encoded for a URL's query string (RFC 3986 unreserved
/// characters as they are, every other byte as %XX).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn encodes_promql() {
        assert_eq!(
            super::encode(r#"sum by (a) (rate(x{i=~".*"}[5s]))"#),
            "sum%20by%20%28a%29%20%28rate%28x%7Bi%3D~%22.%2A%22%7D%5B5s%5D%29%29"
        );
    }
}
