//! The writer thread: group commit.
//!
//! Every append of the process goes through one thread. It takes the first waiting request, then
//! every other request already queued (up to `max_group_bytes`), assigns offsets, writes each
//! touched partition's records with one positional write, fsyncs all touched files (in parallel),
//! and only then makes the records visible to readers and answers the publishers. Many concurrent
//! publishers therefore share one fsync, and no reader ever sees a record that a crash could take
//! back.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};

use shopflow_bus::{Ack, Message};
use tokio::sync::oneshot;

use crate::partition::Partition;
use crate::record::{self, SEGMENT_HEADER_LEN};
use crate::segment::INDEX_INTERVAL;
use crate::topic::Topic;
use crate::{Error, OFFSETS_TOPIC, Result, Shared, io_err, now_ms};

pub(crate) enum Request {
    Append {
        messages: Vec<Message>,
        /// Internal callers may write internal topics.
        internal: bool,
        reply: oneshot::Sender<Result<Vec<Ack>>>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

struct Pending {
    messages: Vec<Message>,
    targets: Vec<(Arc<Topic>, u32)>,
    reply: oneshot::Sender<Result<Vec<Ack>>>,
}

pub(crate) fn run(shared: Arc<Shared>, rx: Receiver<Request>, lock: std::fs::File) {
    let mut poisoned: Option<String> = None;
    let mut syncers = Syncers::default();
    let tick = shared.config.retention_check_interval;
    loop {
        let first = match rx.recv_timeout(tick) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => {
                if poisoned.is_none() {
                    housekeeping(&shared, &mut syncers);
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut group = Vec::new();
        let mut bytes = 0usize;
        let mut close = None;
        let mut next = Some(first);
        while let Some(req) = next.take() {
            match req {
                Request::Close { reply } => {
                    close = Some(reply);
                    break;
                }
                Request::Append {
                    messages,
                    internal,
                    reply,
                } => {
                    if let Some(why) = &poisoned {
                        let _ = reply.send(Err(Error::Unavailable {
                            reason: format!(
                                "the log writer failed earlier ({why}); reopen the log"
                            ),
                        }));
                    } else {
                        bytes += messages.iter().map(Message::size).sum::<usize>();
                        match resolve(&shared, &messages, internal) {
                            Ok(targets) => group.push(Pending {
                                messages,
                                targets,
                                reply,
                            }),
                            Err(e) => {
                                let _ = reply.send(Err(e));
                            }
                        }
                    }
                }
            }
            if bytes < shared.config.max_group_bytes {
                next = rx.try_recv().ok();
            }
        }
        if !group.is_empty()
            && let Err(e) = commit_group(&shared, group, &mut syncers)
        {
            tracing::error!(error = %e, "log writer failed; refusing further appends until reopened");
            poisoned = Some(e.to_string());
        }
        if let Some(reply) = close {
            drop(lock);
            let _ = reply.send(());
            return;
        }
    }
    drop(lock);
}

/// Checks every message of a request and picks its partition. All or nothing per request.
fn resolve(
    shared: &Shared,
    messages: &[Message],
    internal: bool,
) -> Result<Vec<(Arc<Topic>, u32)>> {
    let mut out = Vec::with_capacity(messages.len());
    let mut last: Option<Arc<Topic>> = None;
    for m in messages {
        let size = m.size();
        if size > shared.config.max_message_bytes {
            return Err(Error::MessageTooLarge {
                size,
                limit: shared.config.max_message_bytes,
            });
        }
        if m.headers.len() > u16::MAX as usize
            || m.headers.iter().any(|(n, _)| n.len() > u16::MAX as usize)
        {
            return Err(Error::MessageTooLarge {
                size,
                limit: shared.config.max_message_bytes,
            });
        }
        let topic = match &last {
            Some(t) if *t.name == *m.topic => t.clone(),
            _ => {
                if !internal && m.topic.starts_with(shopflow_bus::INTERNAL_TOPIC_PREFIX) {
                    return Err(Error::InvalidTopic {
                        topic: m.topic.clone(),
                        reason: "topics starting with `__` are internal",
                    });
                }
                shared.topic_or_create(&m.topic)?
            }
        };
        let partition = match &m.key {
            Some(k) => shopflow_bus::partition_for_key(k, topic.partitions.len() as u32),
            None => topic.next_round_robin(),
        };
        out.push((topic.clone(), partition));
        last = Some(topic);
    }
    Ok(out)
}

fn commit_group(shared: &Shared, group: Vec<Pending>, syncers: &mut Syncers) -> Result<()> {
    let now = now_ms();
    let mut touched: Vec<Arc<Partition>> = Vec::new();
    let mut touched_idx: HashMap<*const Partition, usize> = HashMap::new();
    let mut acks: Vec<Vec<Ack>> = Vec::with_capacity(group.len());

    // 1. Assign offsets and encode, partition by partition.
    for p in &group {
        let mut req_acks = Vec::with_capacity(p.messages.len());
        for (m, (topic, pid)) in p.messages.iter().zip(&p.targets) {
            let part = &topic.partitions[*pid as usize];
            let key = Arc::as_ptr(part);
            let mut w = part.w.lock().expect("writer state");
            if let std::collections::hash_map::Entry::Vacant(e) = touched_idx.entry(key) {
                e.insert(touched.len());
                touched.push(part.clone());
                if w.write_pos >= shared.config.segment_bytes && w.next_offset > w.active.base {
                    part.roll(&mut w)?;
                }
            }
            let offset = w.next_offset;
            w.next_offset += 1;
            let pos = w.write_pos + w.buf.len() as u64;
            if w.last_index_pos.is_none_or(|l| pos - l >= INDEX_INTERVAL) {
                w.pending_index.push((offset, pos));
                w.last_index_pos = Some(pos);
            }
            let ts = m.timestamp_ms.unwrap_or(now);
            w.pending_max_ts = w.pending_max_ts.max(ts);
            let mut buf = std::mem::take(&mut w.buf);
            record::encode(&mut buf, offset, ts, m.key.as_deref(), &m.headers, &m.value);
            w.buf = buf;
            req_acks.push(Ack {
                partition: *pid,
                offset,
            });
        }
        acks.push(req_acks);
    }

    metrics::counter!("shopflow_log_group_commits_total").increment(1);
    metrics::counter!("shopflow_log_records_appended_total")
        .increment(group.iter().map(|p| p.messages.len() as u64).sum());
    metrics::counter!("shopflow_log_fsyncs_total").increment(touched.len() as u64);

    // 2. Write, then make durable: one write and one fsync per touched partition.
    let write_result = (|| -> Result<()> {
        for part in &touched {
            let w = part.w.lock().expect("writer state");
            w.active
                .file
                .write_all_at(&w.buf, w.write_pos)
                .map_err(io_err("write", &w.active.path))?;
        }
        sync_all(&touched, syncers)
    })();
    if let Err(e) = write_result {
        let reason = e.to_string();
        for p in group {
            let _ = p.reply.send(Err(Error::Unavailable {
                reason: reason.clone(),
            }));
        }
        return Err(e);
    }

    // 3. Publish: make the records visible, then wake consumers and answer publishers.
    let mut offsets_changed = false;
    for part in &touched {
        let mut w = part.w.lock().expect("writer state");
        let new_pos = w.write_pos + w.buf.len() as u64;
        let index = std::mem::take(&mut w.pending_index);
        w.active
            .publish(new_pos, w.next_offset, w.pending_max_ts, &index);
        w.write_pos = new_pos;
        w.buf.clear();
        if w.buf.capacity() > 4 * shared.config.max_group_bytes {
            w.buf = Vec::new();
        }
        w.pending_max_ts = i64::MIN;
        part.set_end(w.next_offset);
        if *part.topic == *OFFSETS_TOPIC {
            offsets_changed = true;
        }
    }
    if offsets_changed {
        for p in &group {
            for m in &p.messages {
                if m.topic == OFFSETS_TOPIC {
                    shared.apply_offset_record(m.key.as_deref(), &m.value);
                }
            }
        }
    }
    let mut notified: Vec<*const Topic> = Vec::new();
    for p in &group {
        for (t, _) in &p.targets {
            let ptr = Arc::as_ptr(t);
            if !notified.contains(&ptr) {
                notified.push(ptr);
                t.wake_subscribers();
            }
        }
    }
    for (p, a) in group.into_iter().zip(acks) {
        let _ = p.reply.send(Ok(a));
    }
    Ok(())
}

/// fsyncs the active segment of every touched partition, several at a time: on a real disk the
/// syncs of different files overlap. The writer thread syncs one share itself and hands the
/// others to helper threads that live as long as the writer (spawning threads per group commit
/// was 2 % of the shop's CPU).
fn sync_all(parts: &[Arc<Partition>], syncers: &mut Syncers) -> Result<()> {
    let files: Vec<Arc<crate::segment::Segment>> = parts
        .iter()
        .map(|p| p.w.lock().expect("writer state").active.clone())
        .collect();
    let sync = |s: &crate::segment::Segment| s.file.sync_data().map_err(io_err("fsync", &s.path));
    if files.len() == 1 {
        return sync(&files[0]);
    }
    let shares = files.len().min(MAX_SYNC_THREADS);
    let chunk = files.len().div_ceil(shares);
    let mut chunks = files.chunks(chunk);
    let mine = chunks.next().unwrap_or_default();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let mut handed = 0;
    for (i, c) in chunks.enumerate() {
        if syncers.0.len() <= i {
            syncers.0.push(spawn_helper()?);
        }
        let job = SyncJob {
            files: c.to_vec(),
            done: done_tx.clone(),
        };
        if syncers.0[i].send(job).is_err() {
            return Err(Error::Unavailable {
                reason: "an fsync helper thread is gone".into(),
            });
        }
        handed += 1;
    }
    let mut result = mine.iter().try_for_each(|s| sync(s));
    for _ in 0..handed {
        let r = done_rx.recv().unwrap_or_else(|_| {
            Err(Error::Unavailable {
                reason: "an fsync helper thread is gone".into(),
            })
        });
        if result.is_ok() {
            result = r;
        }
    }
    result
}

/// At most this many files are fsynced at the same time (the writer and its helpers).
const MAX_SYNC_THREADS: usize = 8;

/// Files for a helper thread to fsync, and where to say it is done.
struct SyncJob {
    files: Vec<Arc<crate::segment::Segment>>,
    done: std::sync::mpsc::Sender<Result<()>>,
}

/// The writer thread's fsync helpers, spawned on first need; dropping it (the writer ends) ends
/// them.
#[derive(Default)]
struct Syncers(Vec<std::sync::mpsc::Sender<SyncJob>>);

fn spawn_helper() -> Result<std::sync::mpsc::Sender<SyncJob>> {
    let (tx, rx) = std::sync::mpsc::channel::<SyncJob>();
    std::thread::Builder::new()
        .name("shopflow-log-sync".into())
        .spawn(move || {
            for job in rx {
                let r = job
                    .files
                    .iter()
                    .try_for_each(|s| s.file.sync_data().map_err(io_err("fsync", &s.path)));
                let _ = job.done.send(r);
            }
        })
        .map_err(|e| Error::Unavailable {
            reason: format!("spawn an fsync helper thread: {e}"),
        })?;
    Ok(tx)
}

/// Retention and compaction of the offsets topic, between groups.
fn housekeeping(shared: &Shared, syncers: &mut Syncers) {
    let now = now_ms();
    for topic in shared.all_topics() {
        if *topic.name == *OFFSETS_TOPIC {
            if let Err(e) = compact_offsets(shared, &topic, syncers) {
                tracing::error!(error = %e, "compacting consumer offsets failed");
            }
            continue;
        }
        let bytes = topic.spec.retention_bytes;
        let age = topic.spec.retention.map(|d| d.as_millis() as i64);
        if bytes.is_none() && age.is_none() {
            continue;
        }
        for part in &topic.partitions {
            // Roll an old active segment so that age-based retention can take it later.
            if let Some(age) = age {
                let mut w = part.w.lock().expect("writer state");
                let ts = w.active.max_timestamp.load(Ordering::Acquire);
                let full = w.write_pos > SEGMENT_HEADER_LEN;
                if full
                    && ts != i64::MIN
                    && ts < now - age
                    && let Err(e) = part.roll(&mut w)
                {
                    tracing::error!(error = %e, "rolling segment for retention failed");
                    continue;
                }
            }
            match part.apply_retention(bytes, age, now) {
                Ok(0) => {}
                Ok(freed) => {
                    tracing::info!(topic = %topic.name, partition = part.id, freed, "retention deleted old segments")
                }
                Err(e) => {
                    tracing::error!(topic = %topic.name, partition = part.id, error = %e, "retention failed")
                }
            }
        }
    }
}

/// Rewrites the live offsets into a fresh segment and deletes the older ones, once the offsets
/// log is much larger than what it says.
fn compact_offsets(shared: &Shared, topic: &Topic, syncers: &mut Syncers) -> Result<()> {
    let part = &topic.partitions[0];
    if part.size_bytes() < shared.config.offsets_compact_bytes {
        return Ok(());
    }
    let snapshot = shared.offset_messages();
    {
        let mut w = part.w.lock().expect("writer state");
        part.roll(&mut w)?;
    }
    let base = part.end();
    let (tx, _rx) = oneshot::channel();
    let targets = snapshot
        .iter()
        .map(|_| (shared.topic(OFFSETS_TOPIC).expect("offsets topic"), 0))
        .collect();
    commit_group(
        shared,
        vec![Pending {
            messages: snapshot,
            targets,
            reply: tx,
        }],
        syncers,
    )?;
    part.delete_before(base)?;
    tracing::info!(start = part.start(), "compacted consumer offsets");
    Ok(())
}
