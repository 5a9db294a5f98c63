//! The session with etcd: connects (and reconnects with backoff), keeps
//! this node's key alive, publishes local decisions, and watches the
//! restrictions' prefix for everyone else's.
//!
//! Local decisions are queued by key while the store is away, and the
//! latest for each key is written when it is back, unless it expired
//! meanwhile. The watch resumes from the last revision seen; when that
//! revision was compacted away, the prefix is listed again and compared
//! with what was known, so a delete missed while away is still seen.
//!
//! What was known and what waits are kept in --state-dir
//! ([`super::STATE_FILE`]) so that a restart loses neither: a decision
//! queued while the store was away is still published, and a restriction
//! this node had (restored from its state database) that was lifted
//! elsewhere meanwhile is lifted here once the store is listed.

use std::{collections::BTreeMap, time::Duration};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use log::{debug, info, warn};
use tokio::sync::mpsc;

use super::{
    Config, Op, Remote, Shared,
    counts::{self, NodeCounts},
    record::{self, NodeRecord, Record},
};
use crate::store::now_ms;

/// The node key's lease: a dead node's key is gone this long after its
/// last keep-alive.
pub const NODE_TTL_SECS: i64 = 10;
/// How often the node key is renewed (and the members read).
const HEARTBEAT: Duration = Duration::from_secs(2);
/// One request to the store; longer is a lost store (a stopped etcd
/// accepts connections and never answers).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// How often what is known is saved while connected (decisions made while
/// the store is away are saved at once).
const SAVE_EVERY: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

type Result<T> = std::result::Result<T, String>;

fn err(what: &str) -> impl Fn(etcd_client::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Bounds one request.
async fn timed<T>(
    what: &str,
    f: impl Future<Output = std::result::Result<T, etcd_client::Error>>,
) -> Result<T> {
    match tokio::time::timeout(REQUEST_TIMEOUT, f).await {
        Ok(r) => r.map_err(err(what)),
        Err(_) => Err(format!("{what}: no answer within {REQUEST_TIMEOUT:?}")),
    }
}

struct Session {
    config: Config,
    shared: Shared,
    remote: mpsc::UnboundedSender<Remote>,
    /// Local decisions not yet written, by key.
    pending: BTreeMap<String, Op>,
    /// The last revision of the restrictions' prefix seen.
    revision: Option<i64>,
    /// The endpoint to try first.
    next: usize,
    /// The other nodes' counts, by node, as last read.
    others: BTreeMap<String, NodeCounts>,
    /// What is known or waits changed since it was last saved.
    dirty: bool,
}

/// The session's state file.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Saved {
    #[serde(default)]
    known: BTreeMap<String, Record>,
    #[serde(default)]
    pending: Vec<Op>,
}

type CountsRx = tokio::sync::watch::Receiver<Option<NodeCounts>>;

pub(super) async fn run(
    config: Config,
    shared: Shared,
    mut ops: mpsc::UnboundedReceiver<Op>,
    mut counts: CountsRx,
    remote: mpsc::UnboundedSender<Remote>,
) {
    let mut s = Session {
        config,
        shared,
        remote,
        pending: BTreeMap::new(),
        revision: None,
        next: 0,
        others: BTreeMap::new(),
        dirty: false,
    };
    s.load();
    let mut backoff = BACKOFF_MIN;
    loop {
        let why = s.serve(&mut ops, &mut counts).await;
        // What the lost session left queued must survive a restart.
        s.save();
        let Err(why) = why else { return };
        // The others' counts go stale while away: they judge nothing.
        if !s.others.is_empty() {
            s.others.clear();
            let _ = s.remote.send(Remote::Counts(BTreeMap::new()));
        }
        // The next attempt starts with another member.
        s.next = (s.next + 1) % s.config.endpoints.len();
        let was_connected = {
            let mut st = s.shared.lock();
            let was = st.connected;
            if was {
                warn!("cluster: lost the store ({why}); enforcing locally, decisions queued");
            } else {
                debug!("cluster: {why}");
            }
            st.connected = false;
            st.last_error = Some(why);
            st.queued = s.pending.len();
            was
        };
        // A session that was up retries at once on another member (a lost
        // leader); only repeated failures back off further.
        if was_connected {
            backoff = BACKOFF_MIN;
        }
        // Decisions made while waiting join the queue.
        let until = tokio::time::Instant::now() + backoff;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                op = ops.recv() => match op {
                    Some(op) => {
                        s.queue(op);
                        // Rare, and what must survive a restart most.
                        s.save();
                    }
                    None => return,
                },
            }
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

fn op_key(op: &Op, prefix: &str) -> Option<String> {
    match op {
        Op::Put { record, .. } => record.key(prefix),
        Op::Delete { key } => Some(key.clone()),
    }
}

impl Session {
    /// Takes over what an earlier agent saved.
    fn load(&mut self) {
        let Some(path) = self.config.state_file.clone() else { return };
        let saved: Saved = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(saved) => saved,
                Err(e) => {
                    warn!("cluster: ignoring {} ({e}): the store is listed afresh", path.display());
                    return;
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                warn!("cluster: cannot read {} ({e}): the store is listed afresh", path.display());
                return;
            }
        };
        let (known, pending) = (saved.known.len(), saved.pending.len());
        for op in saved.pending {
            self.queue(op);
        }
        self.shared.lock().known = saved.known.into_iter().collect();
        if known + pending > 0 {
            info!(
                "cluster: {} restrictions known in the store and {pending} decisions waiting for it, from {}",
                known,
                path.display()
            );
        }
        self.dirty = false;
    }

    /// Saves what is known and waits, if it changed.
    fn save(&mut self) {
        let Some(path) = &self.config.state_file else { return };
        if !self.dirty {
            return;
        }
        let saved = Saved {
            known: self.shared.lock().known.iter().map(|(k, r)| (k.clone(), r.clone())).collect(),
            pending: self.pending.values().cloned().collect(),
        };
        let bytes = serde_json::to_vec(&saved).expect("cluster state serializes");
        match crate::state::write_atomic(path, &bytes) {
            Ok(()) => self.dirty = false,
            Err(e) => warn!("cluster: cannot write {}: {e}", path.display()),
        }
    }

    fn queue(&mut self, op: Op) {
        let Some(key) = op_key(&op, &self.config.prefix) else { return };
        // A later Put of a key that was created while away is still a
        // create: the store may not have it yet.
        let op = match (self.pending.get(&key), op) {
            (Some(Op::Put { create: true, .. }), Op::Put { record, .. }) => Op::Put { record, create: true },
            (_, op) => op,
        };
        self.pending.insert(key, op);
        self.dirty = true;
        self.shared.lock().queued = self.pending.len();
    }

    async fn connect(&mut self) -> Result<Client> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), REQUEST_TIMEOUT);
        if let Some(tls) = &self.config.tls {
            let mut t = etcd_client::TlsOptions::new();
            if let Some(ca) = &tls.ca {
                t = t.ca_certificate(etcd_client::Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = &tls.identity {
                t = t.identity(etcd_client::Identity::from_pem(cert, key));
            }
            options = options.with_tls(t);
        }
        // One endpoint at a time, from the one after the last that failed:
        // a client balanced over all of them keeps sending some requests to
        // a dead member, and each failure would end the session.
        let n = self.config.endpoints.len();
        let mut why = String::new();
        for i in 0..n {
            let endpoint = &self.config.endpoints[(self.next + i) % n];
            let tried = async {
                let mut c = timed("connecting", Client::connect([endpoint], Some(options.clone()))).await?;
                timed("asking the member's status", c.status()).await?;
                Ok::<_, String>(c)
            };
            match tried.await {
                Ok(c) => {
                    self.next = (self.next + i) % n;
                    return Ok(c);
                }
                Err(e) => why = format!("{endpoint}: {e}"),
            }
        }
        Err(why)
    }

    /// One connection, until the store is lost (Err) or the agent stops.
    async fn serve(&mut self, ops: &mut mpsc::UnboundedReceiver<Op>, counts: &mut CountsRx) -> Result<()> {
        let mut client = self.connect().await?;
        let node_lease =
            timed("granting the node lease", client.lease_grant(NODE_TTL_SECS, None)).await?.id();
        let (mut keeper, mut alive) =
            timed("keeping the node lease alive", client.lease_keep_alive(node_lease)).await?;
        self.heartbeat(&mut client, node_lease).await?;
        // What was decided while away, before anything is read: it is newer.
        let queued: Vec<(String, Op)> = std::mem::take(&mut self.pending).into_iter().collect();
        let n = queued.len();
        for (i, (_, op)) in queued.iter().enumerate() {
            if let Err(e) = self.write(&mut client, op.clone()).await {
                // Keep what is not written yet.
                self.pending.extend(queued[i..].iter().cloned());
                return Err(e);
            }
        }
        self.shared.lock().queued = 0;
        self.dirty = true;
        self.save();
        // The watcher is kept: dropping it would end the watch.
        let (mut watcher, mut watch) = self.watch(&mut client).await?;
        let (mut counts_watcher, mut counts_watch) = self.watch_counts(&mut client).await?;
        let mine = counts.borrow_and_update().clone();
        self.publish(&mut client, node_lease, mine).await?;
        {
            let mut st = self.shared.lock();
            st.connected = true;
            st.last_sync_ms = Some(now_ms());
            st.last_error = None;
        }
        info!(
            "cluster: connected to {} as node {} under {}{}",
            self.config.endpoints.join(","),
            self.config.node,
            self.config.prefix,
            if n > 0 { format!("; published {n} queued decisions") } else { String::new() }
        );
        let mut beat = tokio::time::interval(HEARTBEAT);
        beat.tick().await;
        let mut save = tokio::time::interval(SAVE_EVERY);
        loop {
            tokio::select! {
                _ = save.tick() => self.save(),
                op = ops.recv() => {
                    let Some(op) = op else { return Ok(()) };
                    if let Err(e) = self.write(&mut client, op.clone()).await {
                        self.queue(op);
                        return Err(e);
                    }
                }
                msg = watch.message() => {
                    match msg.map_err(err("watching"))? {
                        Some(resp) if resp.compact_revision() > 0 => {
                            // Our revision was compacted away: read it all again.
                            info!("cluster: watch revision compacted ({}); listing again", resp.compact_revision());
                            self.revision = None;
                            let _ = watcher.cancel().await;
                            (watcher, watch) = self.watch(&mut client).await?;
                        }
                        Some(resp) if resp.canceled() => {
                            return Err(format!("the watch was cancelled: {}", resp.cancel_reason()));
                        }
                        Some(resp) => self.events(&resp),
                        None => return Err("the watch ended".into()),
                    }
                }
                changed = counts.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    let mine = counts.borrow_and_update().clone();
                    self.publish(&mut client, node_lease, mine).await?;
                }
                msg = counts_watch.message() => {
                    match msg.map_err(err("watching counts"))? {
                        Some(resp) if resp.compact_revision() > 0 || resp.canceled() => {
                            let _ = counts_watcher.cancel().await;
                            (counts_watcher, counts_watch) = self.watch_counts(&mut client).await?;
                        }
                        Some(resp) => self.count_events(&resp),
                        None => return Err("the counts watch ended".into()),
                    }
                }
                _ = beat.tick() => {
                    timed("keeping the node lease alive", keeper.keep_alive()).await?;
                    match timed("keeping the node lease alive", alive.message()).await? {
                        Some(r) if r.ttl() > 0 => {}
                        _ => return Err("the node lease ended".into()),
                    }
                    self.heartbeat(&mut client, node_lease).await?;
                }
            }
        }
    }

    /// Writes this node's key and reads the members'.
    async fn heartbeat(&self, client: &mut Client, lease: i64) -> Result<()> {
        let me = NodeRecord {
            name: self.config.node.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            heartbeat_ms: now_ms(),
        };
        let key = record::node_key(&self.config.prefix, &self.config.node);
        let value = serde_json::to_vec(&me).expect("node records serialize");
        timed("writing the node key", client.put(key, value, Some(PutOptions::new().with_lease(lease))))
            .await?;
        let prefix = record::nodes_prefix(&self.config.prefix);
        let resp =
            timed("reading the members", client.get(prefix, Some(GetOptions::new().with_prefix()))).await?;
        let mut members: Vec<NodeRecord> =
            resp.kvs().iter().filter_map(|kv| serde_json::from_slice(kv.value()).ok()).collect();
        members.sort_by(|a, b| a.name.cmp(&b.name));
        let mut st = self.shared.lock();
        st.members = members;
        st.last_sync_ms = Some(now_ms());
        Ok(())
    }

    /// Watches the restrictions from the revision after the last one seen;
    /// without one, lists them first and reconciles.
    async fn watch(
        &mut self,
        client: &mut Client,
    ) -> Result<(etcd_client::Watcher, etcd_client::WatchStream)> {
        let prefix = record::restrictions_prefix(&self.config.prefix);
        let from = match self.revision {
            Some(r) => r + 1,
            None => {
                let resp = timed(
                    "listing restrictions",
                    client.get(prefix.as_str(), Some(GetOptions::new().with_prefix())),
                )
                .await?;
                let rev = resp.header().map_or(0, |h| h.revision());
                let listed: Vec<(String, Record)> = resp
                    .kvs()
                    .iter()
                    .filter_map(|kv| Some((kv.key_str().ok()?.to_owned(), Record::decode(kv.value())?)))
                    .collect();
                self.reconcile(listed);
                self.revision = Some(rev);
                rev + 1
            }
        };
        timed(
            "watching restrictions",
            client.watch(prefix, Some(WatchOptions::new().with_prefix().with_start_revision(from))),
        )
        .await
    }

    /// Lists the other nodes' counts, hands them to the main loop, and
    /// watches them from there.
    async fn watch_counts(
        &mut self,
        client: &mut Client,
    ) -> Result<(etcd_client::Watcher, etcd_client::WatchStream)> {
        let prefix = counts::counts_prefix(&self.config.prefix);
        let resp =
            timed("listing counts", client.get(prefix.as_str(), Some(GetOptions::new().with_prefix())))
                .await?;
        let rev = resp.header().map_or(0, |h| h.revision());
        self.others.clear();
        for kv in resp.kvs() {
            let Some(node) = kv.key_str().ok().and_then(|k| k.strip_prefix(prefix.as_str())) else {
                continue;
            };
            if let Some(c) = NodeCounts::decode(kv.value()).filter(|_| node != self.config.node) {
                self.others.insert(node.to_owned(), c);
            }
        }
        let _ = self.remote.send(Remote::Counts(self.others.clone()));
        timed(
            "watching counts",
            client.watch(prefix, Some(WatchOptions::new().with_prefix().with_start_revision(rev + 1))),
        )
        .await
    }

    fn count_events(&mut self, resp: &etcd_client::WatchResponse) {
        let prefix = counts::counts_prefix(&self.config.prefix);
        let mut changed = false;
        for e in resp.events() {
            let Some(kv) = e.kv() else { continue };
            let Some(node) = kv.key_str().ok().and_then(|k| k.strip_prefix(prefix.as_str())) else {
                continue;
            };
            if node == self.config.node {
                continue;
            }
            changed = true;
            match (e.event_type(), NodeCounts::decode(kv.value())) {
                (EventType::Put, Some(c)) => {
                    self.others.insert(node.to_owned(), c);
                }
                _ => {
                    self.others.remove(node);
                }
            }
        }
        if changed {
            let _ = self.remote.send(Remote::Counts(self.others.clone()));
        }
        self.shared.lock().last_sync_ms = Some(now_ms());
    }

    /// Writes this node's counts under its node lease (so they go with
    /// it); counts of nothing are deleted instead.
    async fn publish(&mut self, client: &mut Client, lease: i64, mine: Option<NodeCounts>) -> Result<()> {
        let Some(mine) = mine else { return Ok(()) };
        let key = counts::counts_key(&self.config.prefix, &self.config.node);
        if mine.is_empty() {
            timed("deleting counts", client.delete(key, None)).await?;
        } else {
            let put = PutOptions::new().with_lease(lease);
            timed("writing counts", client.put(key, mine.encode(), Some(put))).await?;
        }
        self.shared.lock().counts_published += 1;
        Ok(())
    }

    /// The store's whole list against what was known: deletes for what is
    /// gone, the rest as puts (the main loop's merge ignores what it has).
    fn reconcile(&mut self, listed: Vec<(String, Record)>) {
        self.dirty = true;
        let mut st = self.shared.lock();
        let listed: std::collections::HashMap<String, Record> = listed.into_iter().collect();
        let gone: Vec<String> = st.known.keys().filter(|k| !listed.contains_key(*k)).cloned().collect();
        for key in gone {
            if let Some(r) = st.known.remove(&key) {
                let _ = self.remote.send(Remote::Delete(r));
            }
        }
        for (key, r) in listed {
            if st.known.get(&key) != Some(&r) {
                st.known.insert(key, r.clone());
                let _ = self.remote.send(Remote::Put(r));
            }
        }
    }

    fn events(&mut self, resp: &etcd_client::WatchResponse) {
        self.dirty |= !resp.events().is_empty();
        let mut st = self.shared.lock();
        for e in resp.events() {
            let Some(kv) = e.kv() else { continue };
            let Ok(key) = kv.key_str() else { continue };
            self.revision = Some(self.revision.unwrap_or(0).max(kv.mod_revision()));
            match e.event_type() {
                EventType::Put => {
                    let Some(r) = Record::decode(kv.value()) else { continue };
                    st.known.insert(key.to_owned(), r.clone());
                    if r.writer != self.config.node {
                        let _ = self.remote.send(Remote::Put(r));
                    }
                }
                EventType::Delete => {
                    if let Some(r) = st.known.remove(key) {
                        let _ = self.remote.send(Remote::Delete(r));
                    }
                }
            }
        }
        if let Some(h) = resp.header() {
            self.revision = Some(self.revision.unwrap_or(0).max(h.revision()));
        }
        st.last_sync_ms = Some(now_ms());
    }

    /// Writes one local decision. A create that finds the key taken leaves
    /// the record in force and hands it to the main loop to adopt.
    async fn write(&mut self, client: &mut Client, op: Op) -> Result<()> {
        self.dirty = true;
        let prefix = self.config.prefix.clone();
        match op {
            Op::Delete { key } => {
                self.shared.lock().known.remove(&key);
                timed("deleting a restriction", client.delete(key, None)).await?;
            }
            Op::Put { record, create } => {
                let now = now_ms();
                // Never write a restriction that has lapsed.
                let (Some(ttl), Some(key)) = (record.lease_ttl(now), record.key(&prefix)) else {
                    return Ok(());
                };
                let lease = timed("granting a restriction lease", client.lease_grant(ttl, None)).await?.id();
                let put = PutOptions::new().with_lease(lease);
                let value = record.encode();
                if create {
                    let txn = Txn::new()
                        .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                        .and_then([TxnOp::put(key.as_str(), value.clone(), Some(put.clone()))])
                        .or_else([TxnOp::get(key.as_str(), None)]);
                    let resp = timed("creating a restriction", client.txn(txn)).await?;
                    if !resp.succeeded() {
                        let winner = resp.op_responses().into_iter().find_map(|r| match r {
                            TxnOpResponse::Get(g) => {
                                g.kvs().first().and_then(|kv| Record::decode(kv.value()))
                            }
                            _ => None,
                        });
                        match winner {
                            // In force: ours lost; adopt it.
                            Some(w) if !w.expired(now) && w.writer != self.config.node => {
                                let _ = client.lease_revoke(lease).await;
                                self.shared.lock().known.insert(key, w.clone());
                                let _ = self.remote.send(Remote::Superseded(w));
                                return Ok(());
                            }
                            // Lapsed (its lease not yet ended), or our own
                            // from before a restart: ours replaces it.
                            _ => {
                                timed("writing a restriction", client.put(key.as_str(), value, Some(put)))
                                    .await?;
                            }
                        }
                    }
                } else {
                    timed("writing a restriction", client.put(key.as_str(), value, Some(put))).await?;
                }
                let mut st = self.shared.lock();
                st.known.insert(key, *record);
                st.published += 1;
            }
        }
        Ok(())
    }
}
