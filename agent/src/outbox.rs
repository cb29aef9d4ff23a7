//! The durable event outbox: every `JobStarted` / `JobFinished` is committed to a redb
//! file before anybody is told about it, and stays there until the coordinator
//! acknowledges it.
//!
//! * Sequence numbers start at 1 and grow strictly across restarts: `next_seq` is
//!   persisted in the same transaction as the events it numbers.
//! * **Group commit.** One writer thread owns all write transactions. It takes the
//!   first queued request, then everything else already queued (up to
//!   [`BATCH_MAX`]), and commits them in one transaction (one fsync). A hundred jobs
//!   finishing together cost a handful of fsyncs, not a hundred.
//! * `append` returns only after the commit, so a caller that got a sequence number
//!   knows the event survives a crash.
//! * **Lazy events** (`enqueue_lazy`: a job's `started`) are numbered at once and
//!   written and made durable with the next durable commit — a later event's, most
//!   often the same job's `finished` — or at the latest [`LAZY_MAX`] later. An event
//!   is sent and counted durable only then; a crash before loses it and its
//!   sequence number is used again, which is safe because nobody saw it. Under load
//!   this halves the fsyncs per job.
//! * **Nothing is written without an fsync.** A batch of lazy events and
//!   acknowledgements only is kept in memory (the events numbered, the
//!   acknowledgement applied to the mirror) and written with the next durable
//!   commit: a redb transaction costs as much CPU as the fsync it would have
//!   spared (about 180,000 instructions, most of them page copies), and what it
//!   would have written without an fsync was not safe from a crash anyway. A lost
//!   acknowledgement makes its events be sent again (the coordinator drops them as
//!   duplicates); a lost lazy event was never sent. Closing writes what is pending,
//!   and so does a backlog of [`BATCH_MAX`] lazy events.
//! * An in-memory mirror of the unacknowledged events serves the sender without disk
//!   reads; a `watch` channel carries the highest durable sequence to wake it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use baton_proto::{AgentEvent, agent_event};
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::AgentError;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
const META_OUTBOX_ID: &str = "outbox_id";
const META_NEXT_SEQ: &str = "next_seq";

/// Most requests committed in one write transaction.
pub const BATCH_MAX: usize = 1_024;
/// Capacity of the queue in front of the writer; appenders wait when it is full.
const QUEUE_CAPACITY: usize = 4_096;
/// Longest a lazy event waits for a durable commit to carry it.
pub const LAZY_MAX: std::time::Duration = std::time::Duration::from_millis(20);

type Reply = oneshot::Sender<Result<u64, AgentError>>;

enum Request {
    Append {
        event: Box<AgentEvent>,
        reply: Reply,
        /// Durable with the next durable commit, not necessarily its own.
        lazy: bool,
    },
    Ack {
        upto: u64,
        reply: oneshot::Sender<Result<(), AgentError>>,
    },
}

type Mirror = Arc<Mutex<BTreeMap<u64, AgentEvent>>>;

/// Handle to the outbox. Cheap to share behind an `Arc`; dropping the last handle stops
/// the writer thread and closes the file.
pub struct Outbox {
    outbox_id: String,
    mirror: Mirror,
    durable: watch::Receiver<u64>,
    tx: Option<mpsc::Sender<Request>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Outbox {
    /// Opens (or creates) the outbox file, loads the unacknowledged events and starts
    /// the writer thread.
    pub fn open(path: &Path) -> Result<Outbox, AgentError> {
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| AgentError::io(format!("creating {}", dir.display()), e))?;
        }
        // redb initialises an empty file: made here so that it is born 0600 (it
        // holds the jobs' outputs and reasons, masked but private all the same).
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| AgentError::io(format!("creating {}", path.display()), e))?;
        let db = Database::create(path).map_err(|e| store_err("opening outbox", e))?;
        let (outbox_id, next_seq) = init_meta(&db)?;
        let loaded = load_events(&db)?;
        let mirror: Mirror = Arc::new(Mutex::new(loaded));
        let (durable_tx, durable) = watch::channel(next_seq - 1);
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let writer = Writer {
            db,
            next_seq,
            mirror: mirror.clone(),
            durable: durable_tx,
            lazy: Vec::new(),
            pending_ack: None,
        };
        let writer = std::thread::Builder::new()
            .name("baton-outbox".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| AgentError::io("starting outbox writer thread", e))?;
        Ok(Outbox {
            outbox_id,
            mirror,
            durable,
            tx: Some(tx),
            writer: Some(writer),
        })
    }

    /// Random id of this outbox (one per data directory).
    pub fn outbox_id(&self) -> &str {
        &self.outbox_id
    }

    /// Durably appends an event and returns its sequence number.
    pub async fn append(&self, body: agent_event::Body) -> Result<u64, AgentError> {
        self.enqueue(body).await?.await
    }

    /// Queues an event (its place in the sequence is taken now: an event queued
    /// later gets a higher number) and returns what becomes ready once it is
    /// durable, so the caller may go on meanwhile.
    pub async fn enqueue(
        &self,
        body: agent_event::Body,
    ) -> Result<impl Future<Output = Result<u64, AgentError>> + use<>, AgentError> {
        self.enqueue_with(body, false).await
    }

    /// As [`Outbox::enqueue`], but the event needs no fsync of its own: it is
    /// durable (and sent) with the next durable commit, at most [`LAZY_MAX`] later.
    pub async fn enqueue_lazy(
        &self,
        body: agent_event::Body,
    ) -> Result<impl Future<Output = Result<u64, AgentError>> + use<>, AgentError> {
        self.enqueue_with(body, true).await
    }

    async fn enqueue_with(
        &self,
        body: agent_event::Body,
        lazy: bool,
    ) -> Result<impl Future<Output = Result<u64, AgentError>> + use<>, AgentError> {
        let (reply, rx) = oneshot::channel();
        let event = Box::new(AgentEvent {
            seq: 0,
            at_unix_ms: now_unix_ms(),
            body: Some(body),
        });
        self.send(Request::Append { event, reply, lazy }).await?;
        Ok(async move { rx.await.map_err(|_| writer_gone())? })
    }

    /// Deletes every event with a sequence number `<= upto` (cumulative acknowledgement).
    pub async fn ack(&self, upto: u64) -> Result<(), AgentError> {
        if self.first_unacked().is_none_or(|first| first > upto) {
            return Ok(());
        }
        let (reply, rx) = oneshot::channel();
        self.send(Request::Ack { upto, reply }).await?;
        rx.await.map_err(|_| writer_gone())?
    }

    /// The unacknowledged events with a sequence number `> after`, in order.
    pub fn unacked_from(&self, after: u64) -> Vec<AgentEvent> {
        let mirror = self.mirror.lock().unwrap();
        mirror
            .range(after.saturating_add(1)..)
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// At most `max` unacknowledged events with a sequence number `> after`, in order.
    pub fn unacked_batch(&self, after: u64, max: usize) -> Vec<AgentEvent> {
        let mirror = self.mirror.lock().unwrap();
        mirror
            .range(after.saturating_add(1)..)
            .take(max)
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// Number of unacknowledged events.
    pub fn unacked_len(&self) -> usize {
        self.mirror.lock().unwrap().len()
    }

    /// A receiver of the highest durable sequence number; changes on every commit.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.durable.clone()
    }

    fn first_unacked(&self) -> Option<u64> {
        self.mirror.lock().unwrap().keys().next().copied()
    }

    async fn send(&self, req: Request) -> Result<(), AgentError> {
        let tx = self.tx.as_ref().ok_or_else(writer_gone)?;
        tx.send(req).await.map_err(|_| writer_gone())
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        // Closing the queue ends the writer after its current batch; joining it releases
        // the file lock, so the same path can be opened again right away.
        self.tx = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

struct Writer {
    db: Database,
    next_seq: u64,
    mirror: Mirror,
    durable: watch::Sender<u64>,
    /// Lazy events numbered but not written yet, in sequence order, waiting
    /// for a durable commit (they are always the last ones numbered).
    lazy: Vec<(Box<AgentEvent>, Reply)>,
    /// An acknowledgement applied to the mirror, not written yet.
    pending_ack: Option<u64>,
}

/// What the writer does next.
enum Next {
    Batch(Request),
    /// A lazy event has waited [`LAZY_MAX`]: make it durable.
    Flush,
    Closed,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        // A small runtime of its own, only to wait for requests with a deadline.
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "outbox writer cannot start; events are refused");
                return;
            }
        };
        let mut batch = Vec::with_capacity(BATCH_MAX);
        let mut lazy_since = None::<tokio::time::Instant>;
        loop {
            let next = rt.block_on(async {
                let recv = rx.recv();
                match lazy_since {
                    None => recv.await.map_or(Next::Closed, Next::Batch),
                    Some(since) => match tokio::time::timeout_at(since + LAZY_MAX, recv).await {
                        Ok(r) => r.map_or(Next::Closed, Next::Batch),
                        Err(_) => Next::Flush,
                    },
                }
            });
            let first = match next {
                Next::Batch(r) => r,
                Next::Flush => {
                    // Durable now, or their callers hear why not: none is left.
                    self.commit(&mut batch, true);
                    lazy_since = None;
                    continue;
                }
                Next::Closed => break,
            };
            batch.push(first);
            while batch.len() < BATCH_MAX {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            self.commit(&mut batch, false);
            lazy_since = match (self.lazy.is_empty(), lazy_since) {
                (true, _) => None,
                (false, None) => Some(tokio::time::Instant::now()),
                (false, since) => since,
            };
            // A steady stream of lazy events and acks never leaves the queue
            // empty for the timer: LAZY_MAX holds here too.
            if lazy_since.is_some_and(|since| since.elapsed() >= LAZY_MAX) {
                self.commit(&mut batch, true);
                lazy_since = None;
            }
        }
        // Closing: what is still lazy or unwritten becomes durable before the
        // file closes.
        if !self.lazy.is_empty() || self.pending_ack.is_some() {
            self.commit(&mut batch, true);
        }
    }

    /// Answers every request of one batch. When the batch has an event that is
    /// not lazy, or when `force`, everything pending (lazy events kept from
    /// earlier batches, an unwritten acknowledgement) and the batch are
    /// committed in one durable transaction; otherwise nothing is written: the
    /// batch's lazy events wait for the next durable commit and its
    /// acknowledgement is applied to the mirror only (see the module doc).
    fn commit(&mut self, batch: &mut Vec<Request>, force: bool) {
        let mut next = self.next_seq;
        let mut ack_upto = self.pending_ack;
        let mut appends = 0usize;
        let mut durable = force;
        for req in batch.iter_mut() {
            match req {
                Request::Append { event, lazy, .. } => {
                    event.seq = next;
                    next += 1;
                    appends += 1;
                    durable |= !*lazy;
                }
                Request::Ack { upto, .. } => {
                    ack_upto = Some(ack_upto.unwrap_or(0).max(*upto));
                }
            }
        }
        // A backlog of a full batch of lazy events is not left to grow: it is
        // written (and made durable) now, which bounds both its memory and the
        // size of the transaction that will carry it.
        durable |= self.lazy.len() + appends >= BATCH_MAX;
        // Never delete what has not been sent yet (lazy events are not).
        let sent_upto = self.next_seq - 1 - self.lazy.len() as u64;
        let ack_upto = ack_upto.map(|u| u.min(sent_upto));
        let sync = durable && (appends > 0 || !self.lazy.is_empty() || ack_upto.is_some());
        let result = if sync {
            // The lazy events kept so far first: they hold the lower numbers.
            let appended: Vec<(u64, Vec<u8>)> = self
                .lazy
                .iter()
                .map(|(event, _)| &**event)
                .chain(batch.iter().filter_map(|r| match r {
                    Request::Append { event, .. } => Some(&**event),
                    Request::Ack { .. } => None,
                }))
                .map(|event| (event.seq, event.encode_to_vec()))
                .collect();
            self.write(&appended, next, ack_upto)
        } else {
            Ok(())
        };
        if result.is_ok() {
            self.next_seq = next;
            self.pending_ack = if sync { None } else { ack_upto };
        }
        let mut made_durable = Vec::new();
        if sync && result.is_err() {
            // The lazy events did not become durable, and retrying would not
            // help (redb refuses writes after a failed commit until it is
            // reopened): their callers hear the error instead of waiting, and
            // their numbers are free again.
            self.next_seq -= self.lazy.len() as u64;
            made_durable = std::mem::take(&mut self.lazy);
        }
        let mut ack_replies = Vec::new();
        for req in batch.drain(..) {
            match req {
                Request::Append { event, reply, .. } if result.is_ok() && !sync => {
                    self.lazy.push((event, reply));
                }
                Request::Append { event, reply, .. } => made_durable.push((event, reply)),
                Request::Ack { reply, .. } => ack_replies.push(reply),
            }
        }
        // The mirror first: whoever hears back reads it as it now is.
        if result.is_ok() {
            let mut mirror = self.mirror.lock().unwrap();
            if sync {
                // Everything written so far is durable now, in sequence order.
                let lazy = std::mem::take(&mut self.lazy);
                made_durable.splice(0..0, lazy);
                for (event, _) in &made_durable {
                    mirror.insert(event.seq, (**event).clone());
                }
            }
            if let Some(upto) = ack_upto {
                let rest = mirror.split_off(&(upto + 1));
                *mirror = rest;
            }
            drop(mirror);
            if sync {
                self.durable.send_replace(self.next_seq - 1);
            }
        }
        for (event, reply) in made_durable {
            let _ = reply.send(match &result {
                Ok(()) => Ok(event.seq),
                Err(e) => Err(AgentError::Store(e.clone())),
            });
        }
        for reply in ack_replies {
            let _ = reply.send(result.clone().map_err(AgentError::Store));
        }
    }

    /// One durable transaction: the events appended, `next_seq`, and the
    /// deletion of the acknowledged ones.
    fn write(
        &self,
        appended: &[(u64, Vec<u8>)],
        next_seq: u64,
        ack_upto: Option<u64>,
    ) -> Result<(), String> {
        let inner = || -> Result<(), redb::Error> {
            let tx = self.db.begin_write()?;
            {
                let mut events = tx.open_table(EVENTS)?;
                for (seq, bytes) in appended {
                    events.insert(*seq, bytes.as_slice())?;
                }
                if let Some(upto) = ack_upto {
                    events.retain_in(..=upto, |_, _| false)?;
                }
                let mut meta = tx.open_table(META)?;
                meta.insert(META_NEXT_SEQ, next_seq.to_le_bytes().as_slice())?;
            }
            tx.commit()?;
            Ok(())
        };
        inner().map_err(|e| e.to_string())
    }
}

/// Reads or creates `outbox_id` and `next_seq`.
fn init_meta(db: &Database) -> Result<(String, u64), AgentError> {
    let inner = || -> Result<(String, u64), redb::Error> {
        let tx = db.begin_write()?;
        let result;
        {
            let mut meta = tx.open_table(META)?;
            let id = meta
                .get(META_OUTBOX_ID)?
                .map(|v| String::from_utf8_lossy(v.value()).into_owned());
            let id = match id {
                Some(id) => id,
                None => {
                    let id = uuid::Uuid::new_v4().to_string();
                    meta.insert(META_OUTBOX_ID, id.as_bytes())?;
                    id
                }
            };
            let next = meta
                .get(META_NEXT_SEQ)?
                .and_then(|v| <[u8; 8]>::try_from(v.value()).ok())
                .map(u64::from_le_bytes)
                .unwrap_or(1)
                .max(1);
            tx.open_table(EVENTS)?;
            result = (id, next);
        }
        tx.commit()?;
        Ok(result)
    };
    inner().map_err(|e| store_err("initialising outbox", e))
}

fn load_events(db: &Database) -> Result<BTreeMap<u64, AgentEvent>, AgentError> {
    let inner = || -> Result<BTreeMap<u64, AgentEvent>, AgentError> {
        let tx = db.begin_read().map_err(redb::Error::from)?;
        let table = tx.open_table(EVENTS).map_err(redb::Error::from)?;
        let mut out = BTreeMap::new();
        for row in table.range(0u64..).map_err(redb::Error::from)? {
            let (k, v) = row.map_err(redb::Error::from)?;
            let event = AgentEvent::decode(v.value()).map_err(|e| {
                AgentError::Store(format!("outbox event {} is corrupt: {e}", k.value()))
            })?;
            out.insert(k.value(), event);
        }
        Ok(out)
    };
    inner()
}

fn store_err(what: &str, e: impl Into<redb::Error>) -> AgentError {
    AgentError::Store(format!("{what}: {}", e.into()))
}

fn writer_gone() -> AgentError {
    AgentError::Store("outbox writer stopped".into())
}

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
#[path = "outbox_tests.rs"]
mod tests;
