//! The audit log: one JSON line per request (and per admin-CLI change), allowed or denied,
//! appended to `DATA_DIR/audit.log` and chained: every record carries the SHA-256 of the one
//! before it, and its own hash over everything else it says. Editing or removing a record
//! breaks the chain at that record; removing the newest ones is caught against the chain head
//! the database keeps. Records never hold key material, plaintexts, PINs or tokens — only who,
//! what, which key, when, from where, and how it ended.
//!
//! The service appends from one writer thread in batches. No request is answered before its
//! record has been written to the file; a request that changed state waits until its record is
//! synced to disk, so an acknowledged change is always in the log. Other records are synced
//! within a second (a power cut can lose that last second of reads and key operations; a crash
//! of the process cannot). The admin CLI appends under the same file lock.
//!
//! When the file cannot be written (a full disk, an I/O error), the log is in an *outage*: the
//! requests whose records failed are answered 503 and their records are kept in memory (up to
//! [`MAX_BACKLOG`]); every new request is refused with 503 before it is served, and counted; the
//! writer retries every [`RETRY_EVERY`]. The first write that succeeds starts with an outage
//! record (when, why, how many records follow late, how many requests were refused, how many
//! records were dropped), followed by the kept records, so the loss is in the chain.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::store::Store;

/// The file name under the data dir.
pub const FILE_NAME: &str = "audit.log";

/// The `meta` key of the chain head: `{seq}:{hash}`.
pub const HEAD_KEY: &str = "audit_head";

/// The chain starts from this "previous hash".
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// How long records of requests that changed nothing (reads, key operations) may sit in the page
/// cache before the file is synced and the chain head recorded in the database. A request that
/// changed state never waits for this: its record is synced before it is answered.
const SYNC_EVERY: Duration = Duration::from_secs(1);

/// How often the writer tries the file again while it cannot be written.
pub const RETRY_EVERY: Duration = Duration::from_millis(250);

/// How many records of requests that were served but could not be recorded are kept in memory
/// during an outage, to be written once the file takes them again. Beyond this, records are
/// dropped and counted (`verify` then fails: requests that ran are missing from the log).
pub const MAX_BACKLOG: usize = 10_000;

/// How a request ended, as far as access control is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Authenticated and authorized; `status` says how the operation itself ended.
    Allowed,
    /// Authenticated, but no role assignment grants the action.
    Denied,
    /// No valid credential.
    Unauthenticated,
    /// Authenticated, but refused before an action could be checked (an unknown path, a
    /// missing api-version).
    Rejected,
}

/// One thing that happened, before it is numbered and chained.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub time: String,
    pub request_id: String,
    pub client_request_id: Option<String>,
    pub source: Option<String>,
    pub principal: Option<String>,
    pub principal_name: Option<String>,
    pub method: String,
    pub path: String,
    pub action: Option<String>,
    pub key: Option<String>,
    pub version: Option<String>,
    pub outcome: Outcome,
    pub status: u16,
    /// The status the client was answered, where it differs from `status`: a record that could
    /// not be written in time is written late, and its request was answered 503.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answered: Option<u16>,
    /// Only on an outage record: what the log could not take while the file was unwritable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outage: Option<OutageSummary>,
}

/// What an outage record says.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutageSummary {
    /// When the first write failed.
    pub from: String,
    /// When writing worked again.
    pub until: String,
    /// The operating system's error.
    pub reason: String,
    /// How many records follow this one, written late: their requests were served but
    /// answered 503 (a change they made stands, and a retry sees it).
    pub late: u64,
    /// The sequence numbers of those records.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub late_seqs: Option<(u64, u64)>,
    /// Requests refused with 503 before they were served: they changed nothing.
    pub refused: u64,
    /// Records of served requests that were lost for good (more than [`MAX_BACKLOG`]).
    pub dropped: u64,
}

impl Event {
    /// The current wall-clock time in the records' format.
    pub fn now() -> String {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        crate::clock::rfc3339_millis(ms)
    }
}

#[derive(Serialize)]
struct Record<'a> {
    seq: u64,
    #[serde(flatten)]
    event: &'a Event,
    prev: &'a str,
}

/// The end of the chain as the file has it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Tail {
    seq: u64,
    hash: String,
    len: u64,
}

/// Appends to the log under an exclusive file lock, so the service and the admin CLI can both
/// write without forking the chain.
pub struct Appender {
    file: File,
    tail: Tail,
    /// The highest sequence number known to have been written, by this process or (through
    /// the database's head) by anyone. A file that ends before it lost records.
    known_seq: u64,
    /// Set while the database has not taken the head the file has synced.
    head_behind: bool,
}

/// The data action of the record that says records are missing.
pub const GAP_ACTION: &str = "p11vault/audit/gap";

/// The data action of the record that says the log could not be written for a while.
pub const OUTAGE_ACTION: &str = "p11vault/audit/outage";

impl Appender {
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        file.lock()?;
        let tail = read_tail(&file);
        file.unlock()?;
        let tail = tail?;
        Ok(Self {
            file,
            known_seq: tail.seq,
            tail,
            head_behind: false,
        })
    }

    /// Takes the head the database recorded into account: if the file ends before it, the
    /// next append first writes a record saying which records are missing, so the loss stays
    /// in the chain for `verify` to report, whatever is written after it.
    pub fn expect_head(&mut self, recorded: Option<(u64, String)>) {
        if let Some((seq, _)) = recorded {
            self.known_seq = self.known_seq.max(seq);
        }
    }

    /// Appends events as one write. With `store`, also syncs the file and then records the new
    /// head in the database, before the lock is released; without, the records reach the disk
    /// with the next sync. Returns the new head. On an error nothing of the batch stays in the
    /// file (a partial write is cut off), so the batch can be written again later whole.
    ///
    /// A head the database cannot take (it is full too) is not an error: the records are in
    /// the file, and the head is recorded by a later sync ([`Appender::head_behind`]).
    pub fn append(&mut self, events: &[Event], store: Option<&Store>) -> io::Result<(u64, String)> {
        self.file.lock()?;
        let result = self.append_and_sync(events, store);
        self.file.unlock()?;
        result
    }

    fn append_and_sync(
        &mut self,
        events: &[Event],
        store: Option<&Store>,
    ) -> io::Result<(u64, String)> {
        // Another process (the admin CLI) may have appended since this one last did.
        if self.file.metadata()?.len() != self.tail.len {
            self.tail = read_tail(&self.file)?;
        }
        let before = (self.tail.clone(), self.known_seq);
        let result = self.append_locked(events).and_then(|head| {
            if let Some(store) = store {
                self.file.sync_data()?;
                self.record_head(store, &head);
            }
            Ok(head)
        });
        if result.is_err() {
            // Whatever part of the batch reached the file is cut off: its requests are told it
            // was not written, and it is written again, after an outage record, once it can be.
            let (tail, known) = before;
            if let Err(e) = self.file.set_len(tail.len) {
                tracing::error!(error = %e, "cannot cut a failed audit write off the log");
            }
            self.tail = tail;
            self.known_seq = known;
        }
        result
    }

    /// Records the head in the database if it can; notes when it cannot.
    fn record_head(&mut self, store: &Store, head: &(u64, String)) {
        match record_head(store, head) {
            Ok(()) => self.head_behind = false,
            Err(e) => {
                if !self.head_behind {
                    tracing::warn!(error = %e, "cannot record the audit chain head in the database; retrying with every sync");
                }
                self.head_behind = true;
            }
        }
    }

    /// Whether the database holds an older head than the file has synced.
    pub fn head_behind(&self) -> bool {
        self.head_behind
    }

    fn append_locked(&mut self, events: &[Event]) -> io::Result<(u64, String)> {
        let gap =
            (self.tail.seq < self.known_seq).then(|| gap_event(self.tail.seq, self.known_seq));
        let mut out = Vec::with_capacity(events.len() * 400);
        let mut tail = self.tail.clone();
        for event in gap.iter().chain(events) {
            let seq = tail.seq + 1;
            // An outage record names the records that follow it, written late.
            let named;
            let event = match &event.outage {
                Some(o) if o.late > 0 => {
                    let mut e = event.clone();
                    if let Some(o) = e.outage.as_mut() {
                        o.late_seqs = Some((seq + 1, seq + o.late));
                    }
                    named = e;
                    &named
                }
                _ => event,
            };
            let body = serde_json::to_string(&Record {
                seq,
                event,
                prev: &tail.hash,
            })
            .map_err(io::Error::other)?;
            let hash = hex::encode(Sha256::digest(body.as_bytes()));
            out.extend_from_slice(&body.as_bytes()[..body.len() - 1]);
            out.extend_from_slice(format!(",\"hash\":\"{hash}\"}}\n").as_bytes());
            tail.seq = seq;
            tail.hash = hash;
        }
        self.file.write_all(&out)?;
        tail.len += out.len() as u64;
        self.tail = tail;
        self.known_seq = self.tail.seq;
        Ok((self.tail.seq, self.tail.hash.clone()))
    }

    /// Syncs the file and records the current head in the database, under the lock, so a head
    /// written by another process is never replaced by an older one.
    pub fn sync_head(&mut self, store: &Store) -> io::Result<()> {
        self.file.lock()?;
        let result = (|| {
            if self.file.metadata()?.len() != self.tail.len {
                self.tail = read_tail(&self.file)?;
            }
            self.file.sync_data()?;
            let head = self.head();
            self.record_head(store, &head);
            Ok(())
        })();
        self.file.unlock()?;
        result
    }

    /// The head as this appender last saw it.
    pub fn head(&self) -> (u64, String) {
        (self.tail.seq, self.tail.hash.clone())
    }
}

/// A record of records that are missing: the file ended at `last` though `known` was written.
fn gap_event(last: u64, known: u64) -> Event {
    tracing::error!(
        file_ends_at = last,
        written = known,
        "the audit log ends before records known to have been written; recording the gap"
    );
    Event {
        time: Event::now(),
        request_id: uuid::Uuid::new_v4().to_string(),
        client_request_id: None,
        source: None,
        principal: None,
        principal_name: None,
        method: "AUDIT".into(),
        path: format!("records {} to {known} are missing from the log", last + 1),
        action: Some(GAP_ACTION.into()),
        key: None,
        version: None,
        outcome: Outcome::Rejected,
        status: 0,
        answered: None,
        outage: None,
    }
}

/// Records the head in the database; a head is never replaced by an earlier one, so a
/// truncated log cannot make the database forget how far it went.
fn record_head(store: &Store, head: &(u64, String)) -> io::Result<()> {
    store
        .advance_sequenced_meta(HEAD_KEY, head.0, &format!("{}:{}", head.0, head.1))
        .map(drop)
        .map_err(io::Error::other)
}

/// The chain head the database records, if any.
pub fn recorded_head(store: &Store) -> Result<Option<(u64, String)>, crate::store::Error> {
    Ok(store.meta(HEAD_KEY)?.and_then(|v| {
        let (seq, hash) = v.split_once(':')?;
        Some((seq.parse().ok()?, hash.to_owned()))
    }))
}

/// Finds the last complete record. A torn last line (the machine stopped mid-write) is cut
/// off: it was never synced, so no request that waited for it was answered.
fn read_tail(file: &File) -> io::Result<Tail> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(Tail {
            seq: 0,
            hash: GENESIS.to_owned(),
            len: 0,
        });
    }
    let mut reader = file;
    let window = len.min(1 << 20);
    reader.seek(SeekFrom::Start(len - window))?;
    let mut buf = Vec::with_capacity(window as usize);
    reader.take(window).read_to_end(&mut buf)?;
    let complete = match buf.iter().rposition(|&b| b == b'\n') {
        Some(i) => i + 1,
        None => 0,
    };
    if complete < buf.len() {
        let keep = len - (buf.len() - complete) as u64;
        tracing::warn!(
            dropped = buf.len() - complete,
            "the audit log ended in a torn record; cutting it off"
        );
        file.set_len(keep)?;
        file.sync_data()?;
        return read_tail(file);
    }
    if complete == 0 {
        // The file shrank to nothing while it was read.
        return Ok(Tail {
            seq: 0,
            hash: GENESIS.to_owned(),
            len: 0,
        });
    }
    let last_line = buf[..complete - 1]
        .rsplit(|&b| b == b'\n')
        .next()
        .unwrap_or_default();
    let value: serde_json::Value = serde_json::from_slice(last_line)
        .map_err(|e| io::Error::other(format!("the last audit record is not JSON: {e}")))?;
    let seq = value["seq"]
        .as_u64()
        .ok_or_else(|| io::Error::other("the last audit record has no seq"))?;
    let hash = value["hash"]
        .as_str()
        .ok_or_else(|| io::Error::other("the last audit record has no hash"))?
        .to_owned();
    Ok(Tail { seq, hash, len })
}

type Waiter = tokio::sync::oneshot::Sender<()>;

/// Records waiting for the writer, and the requests waiting for theirs to be written (or
/// synced).
#[derive(Default)]
struct Queue {
    events: Vec<Event>,
    /// Told once their records are written to the file.
    written: Vec<Waiter>,
    /// Told once their records are synced and the head recorded.
    synced: Vec<Waiter>,
}

impl Queue {
    fn is_empty(&self) -> bool {
        self.events.is_empty() && self.written.is_empty() && self.synced.is_empty()
    }
}

/// While the file cannot be written: since when, why, and what could not be recorded.
struct Outage {
    from: String,
    reason: String,
    /// Records of requests that were served but answered 503, oldest first.
    backlog: Vec<Event>,
    refused: u64,
    dropped: u64,
}

impl Outage {
    fn keep(&mut self, events: Vec<Event>) {
        for mut event in events {
            if self.backlog.len() >= MAX_BACKLOG {
                self.dropped += 1;
                continue;
            }
            event.answered = Some(503);
            self.backlog.push(event);
        }
    }

    /// The record that opens the first write after the outage.
    fn record(&self) -> Event {
        let until = Event::now();
        let late = self.backlog.len() as u64;
        tracing::warn!(
            from = %self.from, late, refused = self.refused, dropped = self.dropped,
            "the audit log can be written again; recording the outage"
        );
        Event {
            time: until.clone(),
            request_id: uuid::Uuid::new_v4().to_string(),
            client_request_id: None,
            source: None,
            principal: None,
            principal_name: None,
            method: "AUDIT".into(),
            path: format!(
                "the log could not be written from {} to {until} ({}): {late} record(s) follow late, their requests answered 503; {} request(s) refused with 503 before being served; {} record(s) dropped",
                self.from, self.reason, self.refused, self.dropped
            ),
            action: Some(OUTAGE_ACTION.into()),
            key: None,
            version: None,
            outcome: Outcome::Rejected,
            status: 0,
            answered: None,
            outage: Some(OutageSummary {
                from: self.from.clone(),
                until,
                reason: self.reason.clone(),
                late,
                late_seqs: None,
                refused: self.refused,
                dropped: self.dropped,
            }),
        }
    }
}

struct Shared {
    /// Set when the writer thread has ended (it only ends by panicking): nobody waits for it.
    dead: AtomicBool,
    queue: Mutex<Queue>,
    /// Signalled when the queue stops being empty, and when someone starts waiting.
    wake: Condvar,
    /// Cleared while the file cannot be written; read by every request before it is served.
    writable: AtomicBool,
    outage: Mutex<Option<Outage>>,
}

/// The record of a request could not be written: the request must not be answered as a
/// success.
#[derive(Debug)]
pub struct Unwritten;

/// The service's handle on the log: cheap to clone; queues records for the writer thread.
/// Queuing a record takes a lock and, only when the queue was empty, wakes the writer: under
/// load the writer takes everything queued while it wrote the last batch.
#[derive(Clone)]
pub struct AuditLog {
    shared: Arc<Shared>,
}

impl AuditLog {
    /// Opens the log and starts its writer thread.
    pub fn start(path: PathBuf, store: Arc<Store>) -> io::Result<Self> {
        let mut appender = Appender::open(&path)?;
        if let Ok(Some((seq, _))) = recorded_head(&store)
            && seq > appender.head().0
        {
            tracing::error!(
                recorded = seq,
                file = appender.head().0,
                "the audit log ends before the head the database recorded: records were removed; `p11vault audit verify` says more"
            );
        }
        appender.expect_head(recorded_head(&store).ok().flatten());
        let shared = Arc::new(Shared {
            dead: AtomicBool::new(false),
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            writable: AtomicBool::new(true),
            outage: Mutex::new(None),
        });
        let writer = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || {
                let _guard = WriterGone(Arc::clone(&writer));
                write_loop(&mut appender, &writer, &store);
            })?;
        Ok(Self { shared })
    }

    /// Whether a new request may be served: refused (and counted, for the outage record)
    /// while the file cannot be written. The error says why.
    pub fn admit(&self) -> Result<(), String> {
        if self.shared.dead.load(Ordering::Acquire) {
            return Err("the audit writer has stopped".into());
        }
        if self.shared.writable.load(Ordering::Acquire) {
            return Ok(());
        }
        match lock(&self.shared.outage).as_mut() {
            Some(o) => {
                o.refused += 1;
                Err(format!("the audit log cannot be written: {}", o.reason))
            }
            // The outage ended meanwhile.
            None => Ok(()),
        }
    }

    /// `None` while records can be written; otherwise why not, since when, and how many
    /// requests have been refused.
    pub fn health(&self) -> Option<String> {
        if self.shared.dead.load(Ordering::Acquire) {
            return Some("the audit writer has stopped".into());
        }
        if self.shared.writable.load(Ordering::Acquire) {
            return None;
        }
        lock(&self.shared.outage).as_ref().map(|o| {
            format!(
                "the audit log cannot be written since {} ({}); {} request(s) refused, {} record(s) waiting",
                o.from,
                o.reason,
                o.refused,
                o.backlog.len()
            )
        })
    }

    fn push(&self, event: Option<Event>, written: Option<Waiter>, synced: Option<Waiter>) {
        if self.shared.dead.load(Ordering::Acquire) {
            // Dropping the waiters tells the requests their records were not written.
            tracing::error!("the audit writer has stopped; a record was not written");
            return;
        }
        let mut queue = lock(&self.shared.queue);
        let was_idle = queue.is_empty();
        queue.events.extend(event);
        queue.written.extend(written);
        queue.synced.extend(synced);
        drop(queue);
        if was_idle {
            self.shared.wake.notify_one();
        }
    }

    /// Queues a record and waits until it is written to the file (synced within a second).
    pub async fn record(&self, event: Event) -> Result<(), Unwritten> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.push(Some(event), Some(done), None);
        wait.await.map_err(|_| Unwritten)
    }

    /// Queues a record and waits until it is synced to disk.
    pub async fn record_durably(&self, event: Event) -> Result<(), Unwritten> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.push(Some(event), None, Some(done));
        wait.await.map_err(|_| Unwritten)
    }

    /// Waits until everything queued so far is synced and the head is recorded (or the file
    /// cannot be written: then says so).
    pub async fn flush(&self) -> Result<(), Unwritten> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.push(None, None, Some(done));
        wait.await.map_err(|_| Unwritten)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Marks the writer dead when its thread ends, and releases everyone waiting for it.
struct WriterGone(Arc<Shared>);

impl Drop for WriterGone {
    fn drop(&mut self) {
        self.0.dead.store(true, Ordering::Release);
        let mut queue = lock(&self.0.queue);
        queue.written.clear();
        queue.synced.clear();
        tracing::error!("the audit writer stopped");
    }
}

fn write_loop(appender: &mut Appender, shared: &Shared, store: &Store) {
    let mut last_sync = Instant::now();
    let mut unsynced = false;
    loop {
        let mut queue = lock(&shared.queue);
        // Sleep until there is something to write; on the way, sync what was written, or
        // (in an outage) try the file again.
        while queue.is_empty() {
            let outage = !shared.writable.load(Ordering::Acquire);
            let (q, timeout) = shared
                .wake
                .wait_timeout(queue, if outage { RETRY_EVERY } else { SYNC_EVERY })
                .unwrap_or_else(|p| p.into_inner());
            queue = q;
            if timeout.timed_out() && queue.is_empty() {
                drop(queue);
                if outage {
                    let _ = recover(appender, shared, store, Vec::new());
                } else if unsynced || appender.head_behind() {
                    match appender.sync_head(store) {
                        Ok(()) => {
                            unsynced = false;
                            last_sync = Instant::now();
                        }
                        Err(e) => begin_outage(shared, &e, Vec::new()),
                    }
                }
                queue = lock(&shared.queue);
            }
        }
        let Queue {
            events,
            written,
            synced,
        } = std::mem::take(&mut *queue);
        drop(queue);
        let ok = if !shared.writable.load(Ordering::Acquire) {
            recover(appender, shared, store, events).is_ok()
        } else {
            // A request waiting for its record to be synced, or a second gone by, syncs the
            // file and moves the head; otherwise the records are written and wait for the
            // next sync.
            let sync_now = !synced.is_empty() || last_sync.elapsed() >= SYNC_EVERY;
            let result = match (events.is_empty(), sync_now) {
                (true, true) if unsynced => appender.sync_head(store),
                (true, _) => Ok(()),
                (false, true) => appender.append(&events, Some(store)).map(drop),
                (false, false) => appender.append(&events, None).map(drop),
            };
            match result {
                Ok(()) => {
                    if sync_now {
                        unsynced = false;
                        last_sync = Instant::now();
                    } else if !events.is_empty() {
                        unsynced = true;
                    }
                    true
                }
                Err(e) => {
                    begin_outage(shared, &e, events);
                    false
                }
            }
        };
        if ok {
            for w in written.into_iter().chain(synced) {
                let _ = w.send(());
            }
        }
        // Otherwise the waiters' senders drop here, and their requests are answered 503.
    }
}

/// The file refused a write or a sync: from now on every request is refused until a write
/// succeeds, and the records of this batch are kept to be written late.
fn begin_outage(shared: &Shared, error: &io::Error, events: Vec<Event>) {
    let mut outage = lock(&shared.outage);
    let o = outage.get_or_insert_with(|| {
        tracing::error!(error = %error, "cannot write the audit log; refusing requests until it can be written");
        Outage {
            from: Event::now(),
            reason: error.to_string(),
            backlog: Vec::new(),
            refused: 0,
            dropped: 0,
        }
    });
    o.keep(events);
    shared.writable.store(false, Ordering::Release);
}

/// One try at ending an outage: the outage record, the records kept since, and `events`, in
/// one write, synced. The outage lock is held throughout, so no refusal goes uncounted.
fn recover(
    appender: &mut Appender,
    shared: &Shared,
    store: &Store,
    events: Vec<Event>,
) -> Result<(), ()> {
    let mut outage = lock(&shared.outage);
    let Some(o) = outage.as_mut() else {
        drop(outage);
        shared.writable.store(true, Ordering::Release);
        return appender
            .append(&events, Some(store))
            .map(drop)
            .map_err(drop);
    };
    let mut batch = Vec::with_capacity(1 + o.backlog.len() + events.len());
    batch.push(o.record());
    batch.extend(o.backlog.iter().cloned());
    batch.extend(events.iter().cloned());
    match appender.append(&batch, Some(store)) {
        Ok(_) => {
            *outage = None;
            shared.writable.store(true, Ordering::Release);
            Ok(())
        }
        Err(e) => {
            tracing::debug!(error = %e, "the audit log still cannot be written");
            o.keep(events);
            Err(())
        }
    }
}

/// Which records `show` returns.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Records at or after this time (RFC 3339, as the records spell it).
    pub since: Option<String>,
    /// Records before this time.
    pub until: Option<String>,
    pub principal: Option<String>,
    pub key: Option<String>,
    /// A case-insensitive part of the data action.
    pub action: Option<String>,
    pub outcome: Option<String>,
    /// Records with a larger sequence number (for paging).
    pub after_seq: Option<u64>,
}

impl Filter {
    fn matches(&self, record: &serde_json::Value) -> bool {
        let text = |field: &str| record[field].as_str().unwrap_or_default();
        let eq = |want: &Option<String>, field: &str| {
            want.as_ref()
                .is_none_or(|w| text(field).eq_ignore_ascii_case(w))
        };
        self.since
            .as_ref()
            .is_none_or(|s| text("time") >= s.as_str())
            && self
                .until
                .as_ref()
                .is_none_or(|u| text("time") < u.as_str())
            && eq(&self.principal, "principal")
            && eq(&self.key, "key")
            && eq(&self.outcome, "outcome")
            && self.action.as_ref().is_none_or(|a| {
                text("action")
                    .to_ascii_lowercase()
                    .contains(&a.to_ascii_lowercase())
            })
            && self
                .after_seq
                .is_none_or(|after| record["seq"].as_u64().is_some_and(|s| s > after))
    }
}

/// The records that match, oldest first, at most `limit` of them, as the JSON lines stored.
pub fn read(path: &Path, filter: &Filter, limit: usize) -> io::Result<Vec<String>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line?;
        // A record still being written has no newline yet and fails to parse: skip it.
        let Ok(record) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if filter.matches(&record) {
            out.push(line);
            if out.len() >= limit {
                break;
            }
        }
    }
    Ok(out)
}

/// What a verification found when the chain is whole.
#[derive(Debug, PartialEq, Eq)]
pub struct Verified {
    pub records: u64,
    pub head: (u64, String),
    /// The outage records in the chain, as `record N: what it says`: times when the log
    /// could not be written, requests were refused, and records were written late. Nothing
    /// of a served request is missing (that fails verification), but the caller must show
    /// them.
    pub outages: Vec<String>,
}

/// Where and why the chain is broken.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct Broken {
    /// 1-based line in the file (0: the file as a whole).
    pub line: u64,
    pub reason: String,
}

/// Checks every record's hash, sequence number and link to the one before, and the end of the
/// file against the head the database recorded.
pub fn verify(path: &Path, recorded: Option<(u64, String)>) -> Result<Verified, Broken> {
    let file = File::open(path).map_err(|e| Broken {
        line: 0,
        reason: format!("cannot open {}: {e}", path.display()),
    })?;
    // Writers hold the lock exclusively while they append: no half-written batch is read.
    file.lock_shared().map_err(|e| Broken {
        line: 0,
        reason: format!("cannot lock {}: {e}", path.display()),
    })?;
    let mut prev = GENESIS.to_owned();
    let mut seq = 0u64;
    let mut line_no = 0u64;
    let mut hashes_at_head = None;
    let mut outages = Vec::new();
    for line in BufReader::new(file).split(b'\n') {
        line_no += 1;
        let broken = |reason: String| Broken {
            line: line_no,
            reason,
        };
        let line = line.map_err(|e| broken(format!("cannot read: {e}")))?;
        let text = std::str::from_utf8(&line).map_err(|_| broken("not UTF-8".into()))?;
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| broken(format!("not a JSON record: {e}")))?;
        let stated = value["hash"]
            .as_str()
            .ok_or_else(|| broken("no hash".into()))?
            .to_owned();
        let suffix = format!(",\"hash\":\"{stated}\"}}");
        let body = text
            .strip_suffix(&suffix)
            .map(|b| format!("{b}}}"))
            .ok_or_else(|| broken("the hash is not the record's last field".into()))?;
        let record_seq = value["seq"]
            .as_u64()
            .ok_or_else(|| broken("no sequence number".into()))?;
        if record_seq != seq + 1 {
            return Err(broken(format!(
                "sequence number {record_seq} follows {seq}: records {} to {} are missing or out of order",
                seq + 1,
                record_seq.saturating_sub(1).max(seq + 1)
            )));
        }
        if value["prev"].as_str() != Some(prev.as_str()) {
            return Err(broken(format!(
                "record {record_seq} does not link to record {seq}: a record before it was removed or replaced"
            )));
        }
        if hex::encode(Sha256::digest(body.as_bytes())) != stated {
            return Err(broken(format!(
                "record {record_seq} does not match its hash: it was edited"
            )));
        }
        if value["action"].as_str() == Some(GAP_ACTION) {
            return Err(broken(format!(
                "record {record_seq} says {}: the log was cut short and written on",
                value["path"].as_str().unwrap_or("records are missing")
            )));
        }
        if value["action"].as_str() == Some(OUTAGE_ACTION) {
            let says = value["path"]
                .as_str()
                .unwrap_or("the log could not be written");
            // Records of requests that were served and then dropped are a loss, like a cut.
            if value["outage"]["dropped"].as_u64() != Some(0) {
                return Err(broken(format!(
                    "record {record_seq} says {says}: records of served requests are missing"
                )));
            }
            outages.push(format!("record {record_seq}: {says}"));
        }
        seq = record_seq;
        prev = stated;
        if recorded.as_ref().is_some_and(|(s, _)| *s == seq) {
            hashes_at_head = Some(prev.clone());
        }
    }
    if let Some((head_seq, head_hash)) = recorded {
        if head_seq > seq {
            return Err(Broken {
                line: line_no + 1,
                reason: format!(
                    "the log ends at record {seq} but the database recorded record {head_seq}: the last {} record(s) were removed",
                    head_seq - seq
                ),
            });
        }
        if head_seq > 0 && hashes_at_head.as_deref() != Some(head_hash.as_str()) {
            return Err(Broken {
                line: head_seq,
                reason: format!(
                    "record {head_seq} is not the one the database recorded as the chain head: the log was rewritten"
                ),
            });
        }
    }
    Ok(Verified {
        records: seq,
        head: (seq, prev),
        outages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u32) -> Event {
        Event {
            time: format!("2026-11-21T10:00:{n:02}.000Z"),
            request_id: format!("r{n}"),
            client_request_id: None,
            source: Some("127.0.0.1:1".into()),
            principal: Some(if n.is_multiple_of(2) { "alice" } else { "bob" }.into()),
            principal_name: None,
            method: "POST".into(),
            path: format!("/keys/k{n}/create"),
            action: Some("Microsoft.KeyVault/managedHsm/keys/create".into()),
            key: Some(format!("k{n}")),
            version: None,
            outcome: Outcome::Allowed,
            status: 200,
            answered: None,
            outage: None,
        }
    }

    fn write_log(dir: &Path, n: u32) -> (PathBuf, (u64, String)) {
        let path = dir.join(FILE_NAME);
        let mut a = Appender::open(&path).expect("open");
        a.append(&(1..=n).map(event).collect::<Vec<_>>(), None)
            .expect("append");
        let head = a.head();
        (path, head)
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .expect("read")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn rewrite(path: &Path, lines: &[String]) {
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(path, text).expect("write");
    }

    #[test]
    fn a_whole_chain_verifies_and_appending_continues_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, head) = write_log(dir.path(), 5);
        assert_eq!(head.0, 5);
        let mut again = Appender::open(&path).expect("reopen");
        again.append(&[event(6)], None).expect("append");
        let verified = verify(&path, Some(head)).expect("verifies");
        assert_eq!(verified.records, 6);
        assert_eq!(verified.head, again.head());
    }

    #[test]
    fn every_kind_of_tampering_is_found_at_the_right_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, head) = write_log(dir.path(), 6);
        let original = lines(&path);

        let mut edited = original.clone();
        edited[2] = edited[2].replace("\"status\":200", "\"status\":403");
        rewrite(&path, &edited);
        let e = verify(&path, Some(head.clone())).expect_err("edit");
        assert_eq!(e.line, 3, "{e}");
        assert!(e.reason.contains("edited"), "{e}");

        let mut removed = original.clone();
        removed.remove(3);
        rewrite(&path, &removed);
        let e = verify(&path, Some(head.clone())).expect_err("removal");
        assert_eq!(e.line, 4, "{e}");
        assert!(e.reason.contains("missing"), "{e}");

        rewrite(&path, &original[..4]);
        let e = verify(&path, Some(head.clone())).expect_err("truncation");
        assert!(e.reason.contains("last 2 record(s) were removed"), "{e}");

        // A record re-hashed after editing still breaks the link of the next one.
        let mut rehashed = original.clone();
        let body = rehashed[1].split(",\"hash\":").next().expect("hash field");
        let body = body.replace("\"status\":200", "\"status\":201");
        let hash = hex::encode(Sha256::digest(format!("{body}}}").as_bytes()));
        rehashed[1] = format!("{body},\"hash\":\"{hash}\"}}");
        rewrite(&path, &rehashed);
        let e = verify(&path, Some(head.clone())).expect_err("re-hash");
        assert_eq!(e.line, 3, "{e}");

        rewrite(&path, &original);
        assert!(verify(&path, Some(head)).is_ok());
    }

    #[test]
    fn a_log_cut_short_and_written_on_says_so_in_the_chain() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, head) = write_log(dir.path(), 5);
        let kept: Vec<String> = lines(&path).into_iter().take(3).collect();
        rewrite(&path, &kept);
        let mut a = Appender::open(&path).expect("reopen");
        a.expect_head(Some(head.clone()));
        a.append(&[event(6), event(7), event(8)], None)
            .expect("append");
        // The file now holds records 1 to 7 again, a valid chain, but record 4 is the gap.
        let e = verify(&path, None).expect_err("the gap is reported");
        assert_eq!(e.line, 4, "{e}");
        assert!(e.reason.contains("records 4 to 5 are missing"), "{e}");
    }

    fn outage(late: u64, dropped: u64) -> Event {
        Outage {
            from: "2026-11-21T10:01:00.000Z".into(),
            reason: "No space left on device (os error 28)".into(),
            backlog: (0..late as u32).map(event).collect(),
            refused: 7,
            dropped,
        }
        .record()
    }

    #[test]
    fn an_outage_record_names_the_late_records_and_verify_reports_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, _) = write_log(dir.path(), 3);
        let mut a = Appender::open(&path).expect("reopen");
        a.append(&[outage(2, 0), event(10), event(11), event(12)], None)
            .expect("append");
        let records = lines(&path);
        let record: serde_json::Value = serde_json::from_str(&records[3]).expect("JSON");
        assert_eq!(record["action"], OUTAGE_ACTION);
        assert_eq!(record["outage"]["late"], 2);
        assert_eq!(record["outage"]["lateSeqs"], serde_json::json!([5, 6]));
        assert_eq!(record["outage"]["refused"], 7);
        // A whole chain with a recorded outage verifies, but not silently.
        let verified = verify(&path, None).expect("the chain is whole");
        assert_eq!(verified.records, 7);
        assert_eq!(verified.outages.len(), 1, "{verified:?}");
        assert!(
            verified.outages[0].starts_with("record 4: "),
            "{verified:?}"
        );
        assert!(verified.outages[0].contains("7 request(s) refused"));
    }

    #[test]
    fn an_outage_that_dropped_records_fails_verification() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, _) = write_log(dir.path(), 2);
        let mut a = Appender::open(&path).expect("reopen");
        a.append(&[outage(0, 3)], None).expect("append");
        let e = verify(&path, None).expect_err("a loss");
        assert_eq!(e.line, 3, "{e}");
        assert!(e.reason.contains("3 record(s) dropped"), "{e}");
    }

    #[test]
    fn a_torn_last_record_is_cut_off_on_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, head) = write_log(dir.path(), 3);
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(b"{\"seq\":4,\"time\":\"20")
            .expect("torn write");
        drop(f);
        let mut a = Appender::open(&path).expect("reopen");
        assert_eq!(a.head(), head);
        a.append(&[event(4)], None).expect("append");
        assert_eq!(verify(&path, None).expect("verifies").records, 4);
    }

    #[test]
    fn filters_select_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, _) = write_log(dir.path(), 6);
        let by_alice = Filter {
            principal: Some("alice".into()),
            ..Filter::default()
        };
        assert_eq!(read(&path, &by_alice, 100).expect("read").len(), 3);
        let window = Filter {
            since: Some("2026-11-21T10:00:02.000Z".into()),
            until: Some("2026-11-21T10:00:05.000Z".into()),
            ..Filter::default()
        };
        assert_eq!(read(&path, &window, 100).expect("read").len(), 3);
        let key = Filter {
            key: Some("K4".into()),
            action: Some("keys/CREATE".into()),
            ..Filter::default()
        };
        assert_eq!(read(&path, &key, 100).expect("read").len(), 1);
        assert_eq!(read(&path, &Filter::default(), 2).expect("read").len(), 2);
    }
}
