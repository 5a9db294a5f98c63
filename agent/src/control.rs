//! Local operator control: a unix socket (mode 0600, so root only), one
//! JSON request and one JSON response per connection. The agent's main
//! loop answers, so manual decisions go through the same engine, kernel
//! writes and audit trail as automatic ones.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::{
        fs::{DirBuilderExt as _, PermissionsExt as _},
        net::UnixStream as StdUnixStream,
    },
    path::{Path, PathBuf},
    time::Duration,
};

use crate::error::{Error, Result};
use log::{debug, warn};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _},
    net::UnixListener,
    sync::{mpsc, oneshot},
};

/// Default path of the control socket: in the runtime directory systemd
/// makes for the unit (`RuntimeDirectory=tollgate`), made by the agent
/// when it runs by hand.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/tollgate/control.sock";

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    List,
    Restrict {
        kind: crate::policy::Kind,
        target: String,
        seconds: u64,
        note: Option<String>,
        /// A line's digest username instead of `target`: the agent keeps
        /// only its identity tag.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        identity: Option<String>,
    },
    Lift {
        id: u64,
    },
    /// An operator's threshold for one source, identity or country on one
    /// timescale (`threshold: None` clears it).
    Baseline {
        scope: String,
        key: String,
        scale: String,
        threshold: Option<u32>,
        note: Option<String>,
    },
    BaselineList,
    /// Counter-measure 3: customers' lines with no international call
    /// attempt within the last `since_seconds`.
    ReportDormant {
        since_seconds: u64,
    },
    /// Counter-measure 4: destination countries with surges, restrictions
    /// or blocked calls within the whole hours since `since_seconds` ago.
    ReportCountries {
        since_seconds: u64,
    },
    /// Read the configuration again, as SIGHUP does.
    Reload,
    /// The cluster as this agent sees it (`tollgate status`).
    Cluster,
}

/// A member of the cluster: a node whose key is alive.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct MemberView {
    pub name: String,
    pub version: String,
    /// Seconds since its last heartbeat, by this node's clock.
    pub heartbeat_age_secs: f64,
}

/// The cluster as one agent sees it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct ClusterView {
    pub node: String,
    pub prefix: String,
    pub endpoints: Vec<String>,
    pub connected: bool,
    /// Seconds since the last exchange with etcd (None: never).
    pub last_sync_age_secs: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub members: Vec<MemberView>,
    /// Restrictions in force here, by the node that decided them.
    pub by_origin: std::collections::BTreeMap<String, usize>,
    pub queued: usize,
    /// Countries and sources whose counts on other nodes are summed here,
    /// and from how many other nodes.
    #[serde(default)]
    pub summed_countries: usize,
    #[serde(default)]
    pub summed_sources: usize,
    #[serde(default)]
    pub counting_nodes: usize,
}

/// A threshold in force for a subject on one scale.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct BaselineView {
    pub scope: String,
    pub key: String,
    pub scale: String,
    pub threshold: u32,
    /// Set by an operator (else learned).
    pub operator: bool,
    pub level: Option<f64>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RestrictionView {
    pub id: u64,
    pub kind: String,
    pub target: String,
    pub reason: String,
    pub note: Option<String>,
    pub expires_in_secs: u64,
    pub enforced: bool,
    /// The node that decided it (clustering; absent without a cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct Response {
    pub ok: bool,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub restrictions: Vec<RestrictionView>,
    #[serde(default)]
    pub baselines: Vec<BaselineView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dormant: Option<crate::reports::DormantReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub countries: Option<crate::reports::CountriesReport>,
    /// What a reload did, for the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The cluster (None: the agent runs without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterView>,
}

impl Response {
    pub fn error(e: impl Into<String>) -> Self {
        Self { ok: false, error: Some(e.into()), ..Self::default() }
    }
}

/// A request waiting for the main loop's answer.
pub type Pending = (Request, oneshot::Sender<Response>);

/// Binds the socket (root only). A leftover socket from a dead agent is
/// replaced; a live one is an error (two agents would fight over the maps).
pub fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(Error::io(format!("creating the directory of the control socket {}", dir.display())))?;
    }
    if path.exists() {
        if StdUnixStream::connect(path).is_ok() {
            return Err(Error::AgentRunning { path: path.to_owned() });
        }
        std::fs::remove_file(path)
            .map_err(Error::io(format!("removing the stale socket {}", path.display())))?;
    }
    let listener = UnixListener::bind(path).map_err(Error::io(format!("binding {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(Error::io(format!("restricting {} to root", path.display())))?;
    Ok(listener)
}

/// Accepts connections until the task is dropped.
pub async fn serve(listener: UnixListener, tx: mpsc::Sender<Pending>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            warn!("control socket: accept failed");
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = tokio::io::BufReader::new(read.take(64 * 1024));
            let read = tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line)).await;
            let response = match read {
                Ok(Ok(_)) => match serde_json::from_str::<Request>(&line) {
                    Ok(req) => {
                        let (reply, answer) = oneshot::channel();
                        if tx.send((req, reply)).await.is_err() {
                            Response::error("the agent is shutting down")
                        } else {
                            answer.await.unwrap_or_else(|_| Response::error("no answer"))
                        }
                    }
                    Err(e) => Response::error(format!("bad request: {e}")),
                },
                _ => Response::error("no request received"),
            };
            let mut out = serde_json::to_string(&response).expect("responses serialize");
            out.push('\n');
            if let Err(e) = write.write_all(out.as_bytes()).await {
                debug!("control socket: {e}");
            }
        });
    }
}

use tokio::io::AsyncReadExt as _;

/// Sends one request to a running agent (used by the CLI).
pub fn call(path: &Path, request: &Request) -> Result<Response> {
    let mut stream = StdUnixStream::connect(path)
        .map_err(|error| Error::AgentUnreachable { path: path.to_owned(), error })?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(Error::io("setting a read timeout"))?;
    let mut line = serde_json::to_string(request).expect("requests serialize");
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(Error::io("sending the request"))?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).map_err(Error::io("reading the agent's answer"))?;
    serde_json::from_str(&answer).map_err(|error| Error::BadAnswer { error })
}

/// Where the socket is removed when the agent exits.
pub struct SocketFile(pub PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Kind;

    /// The wire form is what clients of earlier releases send: kinds in
    /// their short form.
    #[test]
    fn restrict_requests_keep_their_wire_form() {
        for (kind, short) in [
            (Kind::AuthSuspend, "auth"),
            (Kind::IntlSuspend, "intl"),
            (Kind::Block, "block"),
            (Kind::CountryRestrict, "country"),
        ] {
            let request =
                Request::Restrict { kind, target: "x".into(), seconds: 1, note: None, identity: None };
            let json = serde_json::to_string(&request).expect("serialize");
            assert_eq!(
                json,
                format!(r#"{{"op":"restrict","kind":"{short}","target":"x","seconds":1,"note":null}}"#)
            );
            assert_eq!(serde_json::from_str::<Request>(&json).expect("parse"), request);
        }
        assert!(
            serde_json::from_str::<Request>(r#"{"op":"restrict","kind":"nope","target":"x","seconds":1}"#)
                .is_err()
        );
    }

    #[test]
    fn report_requests_and_answers_have_a_stable_wire_form() {
        for (request, json) in [
            (
                Request::ReportDormant { since_seconds: 7_776_000 },
                r#"{"op":"report-dormant","since_seconds":7776000}"#,
            ),
            (
                Request::ReportCountries { since_seconds: 86_400 },
                r#"{"op":"report-countries","since_seconds":86400}"#,
            ),
        ] {
            assert_eq!(serde_json::to_string(&request).expect("serialize"), json);
            assert_eq!(serde_json::from_str::<Request>(json).expect("parse"), request);
        }
        // Other answers are as they were: no report fields.
        assert_eq!(
            serde_json::to_string(&Response { ok: true, ..Response::default() }).expect("serialize"),
            r#"{"ok":true,"error":null,"restrictions":[],"baselines":[]}"#
        );
    }
}
