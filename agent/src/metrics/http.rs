//! The metrics endpoint: a small HTTP/1.x server for `GET /metrics`.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use log::{debug, warn};
use prometheus::{Encoder as _, Registry, TextEncoder};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

/// Renders every registered collector in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut buf = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut buf).expect("encoding to a Vec cannot fail");
    String::from_utf8(buf).expect("the text format is UTF-8")
}

/// Binds the metrics endpoint; errors surface before the agent reports ready.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `GET /metrics` until the task is dropped.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let registry = Arc::clone(&registry);
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, registry).await {
                        debug!("metrics connection from {peer}: {e}");
                    }
                });
            }
            Err(e) => {
                warn!("metrics: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A deliberately small HTTP/1.x responder: one request per connection,
/// bounded request size and time. The page is rendered on the blocking
/// pool: reading every kernel map takes tens of milliseconds with a full
/// per-source map, and the agent's runtime has one thread, shared with the
/// decisions.
async fn handle(mut stream: TcpStream, registry: Arc<Registry>) -> std::io::Result<()> {
    const MAX_REQUEST: usize = 8192;
    let mut buf = Vec::with_capacity(1024);
    let read = async {
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request timed out"))??;
    let line = buf.split(|b| *b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    let (method, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let path = path.split(|b| *b == b'?').next().unwrap_or_default();
    let (status, ctype, body) = match (method, path) {
        (b"GET", b"/metrics") => {
            let page = tokio::task::spawn_blocking(move || render(&registry))
                .await
                .map_err(std::io::Error::other)?;
            ("200 OK", "text/plain; version=0.0.4; charset=utf-8", page)
        }
        (b"GET", b"/") => {
            ("200 OK", "text/plain; charset=utf-8", "tollgate: metrics at /metrics\n".to_owned())
        }
        (b"GET", _) => ("404 Not Found", "text/plain; charset=utf-8", "not found\n".to_owned()),
        _ => ("405 Method Not Allowed", "text/plain; charset=utf-8", "only GET\n".to_owned()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
