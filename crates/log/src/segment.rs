//! One segment file of a partition: its sparse index, its durable size, recovery scan and reads.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};

use crate::record::{self, Decoded, Invalid, SEGMENT_HEADER_LEN};
use crate::{Error, Result, io_err};

/// Distance in bytes between two entries of the sparse index.
pub(crate) const INDEX_INTERVAL: u64 = 4096;

#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) base: u64,
    pub(crate) path: PathBuf,
    pub(crate) file: File,
    /// Bytes of the file that are durable and may be read (header included).
    pub(crate) size: AtomicU64,
    /// Offset after the last durable record of this segment.
    pub(crate) next_offset: AtomicU64,
    /// Newest record timestamp in this segment, for retention by age.
    pub(crate) max_timestamp: AtomicI64,
    /// (offset, file position) pairs, ascending; the first is the first record.
    index: RwLock<Vec<(u64, u64)>>,
}

/// What the recovery scan of a segment found.
#[derive(Debug)]
pub(crate) struct Scan {
    /// Where the valid records end.
    pub(crate) valid_len: u64,
    /// The file length before any truncation.
    pub(crate) file_len: u64,
    /// Why the scan stopped before the end of the file, if it did.
    pub(crate) stopped: Option<&'static str>,
}

pub(crate) fn file_name(base: u64) -> String {
    format!("{base:020}.log")
}

impl Segment {
    /// Creates a new, empty, durable segment file.
    pub(crate) fn create(dir: &Path, base: u64) -> Result<Self> {
        let path = dir.join(file_name(base));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err("create", &path))?;
        file.write_all_at(&record::segment_header(base), 0)
            .map_err(io_err("write", &path))?;
        file.sync_data().map_err(io_err("fsync", &path))?;
        Ok(Self {
            base,
            path,
            file,
            size: AtomicU64::new(SEGMENT_HEADER_LEN),
            next_offset: AtomicU64::new(base),
            max_timestamp: AtomicI64::new(i64::MIN),
            index: RwLock::new(Vec::new()),
        })
    }

    /// Opens an existing segment and scans it, building the index. Records are accepted while
    /// they are valid and their offsets continue `base, base+1, …`; the scan stops at the first
    /// record that is not.
    pub(crate) fn open(path: PathBuf, base: u64) -> Result<(Self, Scan)> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err("open", &path))?;
        let file_len = file.metadata().map_err(io_err("stat", &path))?.len();
        let mut header = [0u8; SEGMENT_HEADER_LEN as usize];
        let header_ok = file_len >= SEGMENT_HEADER_LEN
            && file.read_exact_at(&mut header, 0).is_ok()
            && record::parse_segment_header(&header) == Some(base);
        let seg = Self {
            base,
            path,
            file,
            size: AtomicU64::new(SEGMENT_HEADER_LEN),
            next_offset: AtomicU64::new(base),
            max_timestamp: AtomicI64::new(i64::MIN),
            index: RwLock::new(Vec::new()),
        };
        if !header_ok {
            return Ok((
                seg,
                Scan {
                    valid_len: 0,
                    file_len,
                    stopped: Some("missing or wrong segment header"),
                },
            ));
        }
        let mut pos = SEGMENT_HEADER_LEN;
        let mut next = base;
        let mut last_indexed: Option<u64> = None;
        let mut max_ts = i64::MIN;
        let mut stopped = None;
        let mut index = Vec::new();
        const CHUNK: usize = 1 << 20;
        'outer: while pos < file_len {
            let want = (file_len - pos).min(CHUNK as u64) as usize;
            let buf = read_at(&seg.file, &seg.path, pos, want)?;
            let mut at = 0usize;
            loop {
                if at == buf.len() {
                    break;
                }
                match record::decode(&buf.slice(at..)) {
                    Ok((rec, n)) => {
                        if rec.offset != next {
                            stopped = Some("record offset out of sequence");
                            break 'outer;
                        }
                        let rpos = pos + at as u64;
                        if last_indexed.is_none_or(|l| rpos - l >= INDEX_INTERVAL) {
                            index.push((rec.offset, rpos));
                            last_indexed = Some(rpos);
                        }
                        max_ts = max_ts.max(rec.timestamp_ms);
                        next += 1;
                        at += n;
                    }
                    Err(Invalid::Incomplete { needed }) => {
                        if pos + at as u64 + needed as u64 > file_len {
                            stopped = Some("torn record at the end of the file");
                            pos += at as u64;
                            break 'outer;
                        }
                        if at == 0 {
                            // A record larger than the chunk: read it whole.
                            let big = read_at(&seg.file, &seg.path, pos, needed)?;
                            match record::decode(&big) {
                                Ok((rec, n)) if rec.offset == next => {
                                    if last_indexed.is_none_or(|l| pos - l >= INDEX_INTERVAL) {
                                        index.push((rec.offset, pos));
                                        last_indexed = Some(pos);
                                    }
                                    max_ts = max_ts.max(rec.timestamp_ms);
                                    next += 1;
                                    pos += n as u64;
                                    continue 'outer;
                                }
                                Ok(_) => stopped = Some("record offset out of sequence"),
                                Err(_) => stopped = Some("corrupt record"),
                            }
                            break 'outer;
                        }
                        break;
                    }
                    Err(Invalid::Corrupt(why)) => {
                        stopped = Some(why);
                        pos += at as u64;
                        break 'outer;
                    }
                }
            }
            pos += at as u64;
        }
        if stopped.is_none() && pos < file_len {
            stopped = Some("unreadable tail");
        }
        seg.size.store(pos, Ordering::Release);
        seg.next_offset.store(next, Ordering::Release);
        seg.max_timestamp.store(max_ts, Ordering::Release);
        *seg.index.write().expect("index lock") = index;
        Ok((
            seg,
            Scan {
                valid_len: pos,
                file_len,
                stopped,
            },
        ))
    }

    /// Cuts the file back to `len` bytes and makes that durable.
    pub(crate) fn truncate(&self, len: u64) -> Result<()> {
        self.file
            .set_len(len)
            .map_err(io_err("truncate", &self.path))?;
        self.file.sync_all().map_err(io_err("fsync", &self.path))
    }

    /// Records appended (and made durable) by the writer: extends the index and the visible size.
    pub(crate) fn publish(
        &self,
        new_size: u64,
        next_offset: u64,
        max_ts: i64,
        index: &[(u64, u64)],
    ) {
        if !index.is_empty() {
            self.index
                .write()
                .expect("index lock")
                .extend_from_slice(index);
        }
        self.max_timestamp.fetch_max(max_ts, Ordering::AcqRel);
        self.size.store(new_size, Ordering::Release);
        self.next_offset.store(next_offset, Ordering::Release);
    }

    /// The last index entry, if any (the writer continues the sparse spacing from it).
    pub(crate) fn last_index_pos(&self) -> Option<u64> {
        self.index.read().expect("index lock").last().map(|e| e.1)
    }

    /// Reads durable records with offsets `>= from`, up to `max_records` and about `max_bytes`.
    pub(crate) fn read(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Decoded>, ReadError> {
        let next = self.next_offset.load(Ordering::Acquire);
        let size = self.size.load(Ordering::Acquire);
        if from >= next {
            return Ok(Vec::new());
        }
        let mut pos = {
            let index = self.index.read().expect("index lock");
            let i = index.partition_point(|e| e.0 <= from);
            if i == 0 {
                SEGMENT_HEADER_LEN
            } else {
                index[i - 1].1
            }
        };
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while pos < size && out.len() < max_records && bytes < max_bytes {
            let want = ((size - pos) as usize).min(max_bytes.max(64 * 1024));
            let buf = read_at(&self.file, &self.path, pos, want).map_err(ReadError::Io)?;
            let mut at = 0usize;
            while at < buf.len() && out.len() < max_records {
                match record::decode(&buf.slice(at..)) {
                    Ok((rec, n)) => {
                        at += n;
                        if rec.offset >= next {
                            return Ok(out);
                        }
                        if rec.offset >= from {
                            bytes += n;
                            out.push(rec);
                            if bytes >= max_bytes {
                                break;
                            }
                        }
                    }
                    Err(Invalid::Incomplete { needed }) => {
                        if pos + (at + needed) as u64 > size {
                            return Err(ReadError::Corrupt {
                                offset: out.last().map_or(from, |r| r.offset + 1),
                                reason: "record crosses the durable end of the segment".into(),
                            });
                        }
                        if at == 0 {
                            let big = read_at(&self.file, &self.path, pos, needed)
                                .map_err(ReadError::Io)?;
                            let (rec, n) =
                                record::decode(&big).map_err(|e| ReadError::Corrupt {
                                    offset: out.last().map_or(from, |r| r.offset + 1),
                                    reason: format!("{e:?}"),
                                })?;
                            if rec.offset >= from && rec.offset < next {
                                bytes += n;
                                out.push(rec);
                            }
                            at = n;
                        }
                        break;
                    }
                    Err(Invalid::Corrupt(why)) => {
                        return Err(ReadError::Corrupt {
                            offset: out.last().map_or(from, |r| r.offset + 1),
                            reason: why.into(),
                        });
                    }
                }
            }
            pos += at as u64;
        }
        Ok(out)
    }
}

#[derive(Debug)]
pub(crate) enum ReadError {
    Io(Error),
    Corrupt { offset: u64, reason: String },
}

fn read_at(file: &File, path: &Path, pos: u64, len: usize) -> Result<Bytes> {
    let mut buf = BytesMut::zeroed(len);
    let mut done = 0;
    while done < len {
        let n = file
            .read_at(&mut buf[done..], pos + done as u64)
            .map_err(io_err("read", path))?;
        if n == 0 {
            buf.truncate(done);
            break;
        }
        done += n;
    }
    Ok(buf.freeze())
}
