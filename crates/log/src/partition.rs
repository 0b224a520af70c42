//! A partition: its segments, start and end offsets, recovery, reads and retention.

use std::fs;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::record::{Decoded, SEGMENT_HEADER_LEN};
use crate::segment::{ReadError, Scan, Segment};
use crate::{Error, Result, io_err, sync_dir};

#[derive(Debug)]
pub(crate) struct Partition {
    pub(crate) topic: Arc<str>,
    pub(crate) id: u32,
    pub(crate) dir: PathBuf,
    segments: RwLock<Vec<Arc<Segment>>>,
    start: AtomicU64,
    /// Offset after the last durable record: consumers read `start..end`.
    end: AtomicU64,
    /// Offsets recovery found unreadable in sealed segments; reads there are refused.
    corrupt: RwLock<Vec<Range<u64>>>,
    /// The writer thread's state; no one else locks it.
    pub(crate) w: Mutex<WriterState>,
}

#[derive(Debug)]
pub(crate) struct WriterState {
    pub(crate) next_offset: u64,
    pub(crate) active: Arc<Segment>,
    pub(crate) write_pos: u64,
    pub(crate) last_index_pos: Option<u64>,
    /// Records of the group being committed, not yet written.
    pub(crate) buf: Vec<u8>,
    pub(crate) pending_index: Vec<(u64, u64)>,
    pub(crate) pending_max_ts: i64,
}

impl Partition {
    /// Opens (or creates) a partition directory, recovering its segments.
    pub(crate) fn open(topic: Arc<str>, id: u32, dir: PathBuf) -> Result<Self> {
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let mut bases = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("list", &dir))? {
            let entry = entry.map_err(io_err("list", &dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(stem) = name.strip_suffix(".log")
                && let Ok(base) = stem.parse::<u64>()
            {
                bases.push(base);
            }
        }
        bases.sort_unstable();

        let mut segments: Vec<Arc<Segment>> = Vec::new();
        let mut corrupt = Vec::new();
        let count = bases.len();
        for (i, base) in bases.iter().copied().enumerate() {
            let path = dir.join(crate::segment::file_name(base));
            let (seg, scan) = Segment::open(path.clone(), base)?;
            let last = i + 1 == count;
            if last {
                recover_tail(&topic, id, &seg, &scan)?;
                if scan.valid_len == 0 {
                    // A roll that crashed before its header was durable: nothing was ever
                    // acknowledged in this file.
                    fs::remove_file(&path).map_err(io_err("remove", &path))?;
                    sync_dir(&dir)?;
                    continue;
                }
            } else if let Some(why) = scan.stopped {
                let next_base = bases[i + 1];
                let from = seg.next_offset.load(Ordering::Acquire);
                tracing::error!(topic = %topic, partition = id, segment = %path.display(), from, to = next_base, why,
                    "corrupt records in a sealed segment; reads of these offsets will fail");
                if from < next_base {
                    corrupt.push(from..next_base);
                }
            }
            if let Some(prev) = segments.last() {
                let prev_next = prev.next_offset.load(Ordering::Acquire);
                if prev_next > base {
                    return Err(Error::Corrupt {
                        topic: topic.to_string(),
                        partition: id,
                        offset: base,
                        reason: format!("segment {} overlaps the one before it", path.display()),
                    });
                }
                if prev_next < base && !corrupt.iter().any(|r: &Range<u64>| r.start == prev_next) {
                    corrupt.push(prev_next..base);
                }
            }
            segments.push(Arc::new(seg));
        }
        if segments.is_empty() {
            let base = bases.first().copied().unwrap_or(0);
            segments.push(Arc::new(Segment::create(&dir, base)?));
            sync_dir(&dir)?;
        }
        let active = segments.last().expect("at least one segment").clone();
        let start = segments[0].base;
        let end = active.next_offset.load(Ordering::Acquire);
        let w = WriterState {
            next_offset: end,
            write_pos: active.size.load(Ordering::Acquire),
            last_index_pos: active.last_index_pos(),
            active,
            buf: Vec::new(),
            pending_index: Vec::new(),
            pending_max_ts: i64::MIN,
        };
        Ok(Self {
            topic,
            id,
            dir,
            segments: RwLock::new(segments),
            start: AtomicU64::new(start),
            end: AtomicU64::new(end),
            corrupt: RwLock::new(corrupt),
            w: Mutex::new(w),
        })
    }

    pub(crate) fn start(&self) -> u64 {
        self.start.load(Ordering::Acquire)
    }

    pub(crate) fn end(&self) -> u64 {
        self.end.load(Ordering::Acquire)
    }

    pub(crate) fn set_end(&self, end: u64) {
        self.end.store(end, Ordering::Release);
    }

    /// Total bytes on disk.
    pub(crate) fn size_bytes(&self) -> u64 {
        self.segments
            .read()
            .expect("segments lock")
            .iter()
            .map(|s| s.size.load(Ordering::Acquire))
            .sum()
    }

    /// Starts a new segment at `base` (called by the writer with nothing pending).
    pub(crate) fn roll(&self, w: &mut WriterState) -> Result<()> {
        let seg = Arc::new(Segment::create(&self.dir, w.next_offset)?);
        sync_dir(&self.dir)?;
        self.segments
            .write()
            .expect("segments lock")
            .push(seg.clone());
        w.active = seg;
        w.write_pos = SEGMENT_HEADER_LEN;
        w.last_index_pos = None;
        Ok(())
    }

    /// Reads durable records from `from` on. A `from` below the start reads from the start.
    pub(crate) fn read(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Decoded>> {
        let end = self.end();
        let mut from = from.max(self.start());
        let mut out = Vec::new();
        while from < end && out.len() < max_records {
            if let Some(r) = self
                .corrupt
                .read()
                .expect("corrupt lock")
                .iter()
                .find(|r| r.contains(&from))
            {
                if out.is_empty() {
                    return Err(Error::Corrupt {
                        topic: self.topic.to_string(),
                        partition: self.id,
                        offset: from,
                        reason: format!("offsets {}..{} were lost to corruption", r.start, r.end),
                    });
                }
                break;
            }
            let seg = {
                let segs = self.segments.read().expect("segments lock");
                let i = segs.partition_point(|s| s.base <= from);
                if i == 0 {
                    // Retention removed it meanwhile.
                    from = segs.first().map_or(end, |s| s.base);
                    continue;
                }
                segs[i - 1].clone()
            };
            let got = seg
                .read(from, max_records - out.len(), max_bytes)
                .map_err(|e| match e {
                    ReadError::Io(e) => e,
                    ReadError::Corrupt { offset, reason } => Error::Corrupt {
                        topic: self.topic.to_string(),
                        partition: self.id,
                        offset,
                        reason,
                    },
                })?;
            match got.last() {
                Some(last) => {
                    from = last.offset + 1;
                    out.extend(got);
                    if out.len() >= max_records {
                        break;
                    }
                    // The segment may have more; only move on when it is exhausted.
                    if from < seg.next_offset.load(Ordering::Acquire) {
                        break;
                    }
                }
                None => {
                    let seg_next = seg.next_offset.load(Ordering::Acquire);
                    if from >= seg_next && seg_next < end {
                        from = seg_next; // sealed segment exhausted: continue in the next one
                        continue;
                    }
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Deletes sealed segments beyond the retention limits. Returns the bytes freed.
    pub(crate) fn apply_retention(
        &self,
        max_bytes: Option<u64>,
        max_age_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<u64> {
        let mut freed = 0;
        loop {
            let victim = {
                let segs = self.segments.read().expect("segments lock");
                if segs.len() < 2 {
                    break;
                }
                let total: u64 = segs.iter().map(|s| s.size.load(Ordering::Acquire)).sum();
                let oldest = &segs[0];
                let too_big = max_bytes.is_some_and(|m| total > m);
                let too_old = max_age_ms.is_some_and(|age| {
                    let ts = oldest.max_timestamp.load(Ordering::Acquire);
                    ts != i64::MIN && ts < now_ms - age
                });
                if !(too_big || too_old) {
                    break;
                }
                oldest.clone()
            };
            self.delete_oldest(&victim)?;
            freed += victim.size.load(Ordering::Acquire);
        }
        Ok(freed)
    }

    /// Deletes every segment with a base below `offset` (the offsets topic's compaction).
    pub(crate) fn delete_before(&self, offset: u64) -> Result<()> {
        loop {
            let victim = {
                let segs = self.segments.read().expect("segments lock");
                match segs.first() {
                    Some(s) if segs.len() > 1 && segs[1].base <= offset => s.clone(),
                    _ => break,
                }
            };
            self.delete_oldest(&victim)?;
        }
        Ok(())
    }

    fn delete_oldest(&self, victim: &Arc<Segment>) -> Result<()> {
        {
            let mut segs = self.segments.write().expect("segments lock");
            segs.remove(0);
            self.start.store(segs[0].base, Ordering::Release);
        }
        self.corrupt
            .write()
            .expect("corrupt lock")
            .retain(|r| r.end > self.start());
        fs::remove_file(&victim.path).map_err(io_err("remove", &victim.path))?;
        tracing::debug!(topic = %self.topic, partition = self.id, segment = %victim.path.display(), "segment deleted");
        Ok(())
    }
}

fn recover_tail(topic: &str, partition: u32, seg: &Segment, scan: &Scan) -> Result<()> {
    if let Some(why) = scan.stopped {
        tracing::warn!(
            topic, partition, segment = %seg.path.display(),
            kept = scan.valid_len, dropped = scan.file_len - scan.valid_len.max(SEGMENT_HEADER_LEN.min(scan.file_len)),
            why, "truncating the unacknowledged tail of the active segment"
        );
        if scan.valid_len > 0 {
            seg.truncate(scan.valid_len)?;
        }
    }
    Ok(())
}
