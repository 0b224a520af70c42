//! The default delivery: an append-only mbox spool per channel and day, synced once per batch.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};

use crate::{Mailer, Outbound};

/// The default delivery: a mail spool on disk, in a format mail tools read (mbox: mboxrd quoting
/// plus a `Content-Length` header, so a torn append can be told from a whole message).
///
/// E-mail goes to `<dir>/mail/<UTC date>.mbox`, SMS to `<dir>/sms/<UTC date>.mbox` (the text with
/// a `To:` header), one append-only file per channel and day. A delivery appends the message and
/// returns; [`Mailer::sync`] makes every message appended so far durable (one fdatasync per file
/// that changed). The notification handler calls it once per transaction, right before the
/// commit that records the messages as sent, so a batch of messages costs one sync, not one
/// each, and no message is recorded as sent before it is on disk.
///
/// A message is spooled once per id: the `Message-ID` of each message in today's file is kept in
/// memory (read back from the file when it is opened), and a second delivery of an id — the
/// handler redelivered after a crash between spooling and its commit — returns the first one's
/// location instead of appending again.
#[derive(Debug, Clone)]
pub struct Spool {
    inner: Arc<SpoolInner>,
}

#[derive(Debug)]
struct SpoolInner {
    dir: PathBuf,
    from: String,
    /// Open files by (channel directory, day); a new day closes the older ones.
    files: Mutex<HashMap<(&'static str, String), Arc<SpoolFile>>>,
}

/// One append-only mbox file.
#[derive(Debug)]
struct SpoolFile {
    path: PathBuf,
    /// The appending handle, the file's length, and where each message id starts.
    writer: Mutex<SpoolWriter>,
    /// A second handle to sync with (so appends go on meanwhile), and how far the file is durable.
    synced: Mutex<(std::fs::File, u64)>,
}

#[derive(Debug)]
struct SpoolWriter {
    file: std::fs::File,
    len: u64,
    ids: Ids,
}

/// Where each message id of a file starts, by a 128-bit hash of the id rather than the id
/// itself: a day of a busy shop holds hundreds of thousands of messages, and their ids as
/// strings were most of what this spool kept in memory. Two independent SipHash keys, drawn per
/// process (the map is rebuilt from the file when it is opened); a collision of both is as
/// unlikely as a UUID's.
#[derive(Debug, Default)]
struct Ids {
    keys: (std::hash::RandomState, std::hash::RandomState),
    at: HashMap<u128, u64>,
}

impl Ids {
    fn key(&self, id: &str) -> u128 {
        use std::hash::BuildHasher;
        (u128::from(self.keys.0.hash_one(id)) << 64) | u128::from(self.keys.1.hash_one(id))
    }

    fn get(&self, id: &str) -> Option<u64> {
        self.at.get(&self.key(id)).copied()
    }

    fn insert(&mut self, id: &str, at: u64) {
        let k = self.key(id);
        self.at.insert(k, at);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing panics while holding these locks; a poisoned one still guards consistent data.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads a spool file: every whole message's id and start, and where the whole messages end.
/// Each message is a `From ` line, headers with `Message-ID` and `Content-Length`, a blank line,
/// `Content-Length` bytes of body and a blank line. An incomplete last message is a torn append
/// (the length returned stops before it); anything else that does not parse is `Err(offset)`.
fn parse_spool(text: &[u8]) -> Result<(u64, Ids), usize> {
    let mut ids = Ids::default();
    let mut pos = 0;
    while pos < text.len() {
        let rest = &text[pos..];
        let torn_or_corrupt = |pos: usize| {
            // Another message after this one means the damage is not a torn tail.
            if rest.windows(6).skip(1).any(|w| w == b"\nFrom ") {
                Err(pos)
            } else {
                Ok(())
            }
        };
        let parsed = (|| {
            if !rest.starts_with(b"From ") {
                return None;
            }
            let head_end = rest.windows(2).position(|w| w == b"\n\n")? + 1;
            let head = std::str::from_utf8(&rest[..head_end]).ok()?;
            let mut id = None;
            let mut len = None;
            for line in head.lines() {
                if let Some(v) = line.strip_prefix("Message-ID: <") {
                    id = v.strip_suffix('>');
                } else if let Some(v) = line.strip_prefix("Content-Length: ") {
                    len = v.parse::<usize>().ok();
                }
            }
            let end = head_end + 1 + len? + 1;
            (rest.len() >= end && rest[end - 1] == b'\n').then_some((id?, end))
        })();
        match parsed {
            Some((id, end)) => {
                ids.insert(id, pos as u64);
                pos += end;
            }
            None => {
                torn_or_corrupt(pos)?;
                break;
            }
        }
    }
    Ok((pos as u64, ids))
}

impl SpoolFile {
    fn open(path: PathBuf) -> std::io::Result<Self> {
        let dir = path.parent().unwrap_or(FsPath::new("."));
        std::fs::create_dir_all(dir)?;
        let existed = path.exists();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)?;
        if !existed {
            // The new file's directory entry must be durable before anything is acknowledged.
            std::fs::File::open(dir)?.sync_all()?;
        }
        let mut text = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut text)?;
        let (whole, ids) = parse_spool(&text).map_err(|at| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{} is corrupt at byte {at} (not a message this spool wrote); move it aside",
                    path.display()
                ),
            )
        })?;
        if whole < text.len() as u64 {
            // A torn tail (a crash mid-append; never acknowledged) is cut back.
            file.set_len(whole)?;
        }
        let sync = file.try_clone()?;
        Ok(Self {
            path,
            writer: Mutex::new(SpoolWriter {
                file,
                len: whole,
                ids,
            }),
            synced: Mutex::new((sync, whole)),
        })
    }

    /// Appends one message (unless its id is here already) and returns where it starts. It is
    /// durable once [`SpoolFile::sync`] has run after this.
    fn append(&self, id: &str, message: &[u8]) -> std::io::Result<u64> {
        let mut w = lock(&self.writer);
        if let Some(at) = w.ids.get(id) {
            return Ok(at);
        }
        let at = w.len;
        if let Err(e) = w.file.write_all(message) {
            // Leave no torn message behind for the next append to follow.
            let _ = w.file.set_len(at);
            return Err(e);
        }
        w.len += message.len() as u64;
        w.ids.insert(id, at);
        Ok(at)
    }

    /// Makes everything appended so far durable (nothing to do when it is already).
    fn sync(&self) -> std::io::Result<()> {
        let mut synced = lock(&self.synced);
        let upto = lock(&self.writer).len;
        if synced.1 < upto {
            // Everything appended until now rides on this sync, whoever appended it.
            synced.0.sync_data()?;
            synced.1 = upto;
        }
        Ok(())
    }
}

impl Spool {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            inner: Arc::new(SpoolInner {
                dir: dir.into(),
                from: "shopflow <no-reply@shopflow.invalid>".into(),
                files: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn file(&self, channel: &'static str, day: String) -> std::io::Result<Arc<SpoolFile>> {
        let mut files = lock(&self.inner.files);
        if let Some(f) = files.get(&(channel, day.clone())) {
            return Ok(f.clone());
        }
        let path = self.inner.dir.join(channel).join(format!("{day}.mbox"));
        let f = Arc::new(SpoolFile::open(path)?);
        // Yesterday's file of this channel is closed, after what was appended to it is durable.
        for ((c, _), old) in files.iter() {
            if *c == channel {
                old.sync()?;
            }
        }
        files.retain(|(c, _), _| *c != channel);
        files.insert((channel, day), f.clone());
        Ok(f)
    }

    /// Every open file, to sync.
    fn open_files(&self) -> Vec<Arc<SpoolFile>> {
        lock(&self.inner.files).values().cloned().collect()
    }
}

/// Quotes body lines for mboxrd (`From ` → `>From `, `>From ` → `>>From `), with `\n` endings.
fn mbox_body(body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 16);
    for line in body.lines() {
        if line.trim_start_matches('>').starts_with("From ") {
            out.push('>');
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// A header value on one line, whatever the input held.
fn one_line(v: &str) -> String {
    v.replace(['\r', '\n'], " ")
}

impl Mailer for Spool {
    fn deliver(&self, m: &Outbound) -> std::io::Result<String> {
        let now = chrono::Utc::now();
        let (to, subject) = (one_line(&m.to), one_line(&m.subject));
        // Outbound ids are `<event id>:<channel>`; the Message-ID is the same as over SMTP.
        let id = format!("{}@shopflow.invalid", m.id.replace(':', "."));
        let mut text = format!(
            "From MAILER-DAEMON {}\n",
            now.format("%a %b %e %H:%M:%S %Y")
        );
        let channel = if m.channel == "sms" {
            text.push_str(&format!(
                "To: {to}\nDate: {}\nMessage-ID: <{id}>\n",
                now.to_rfc2822()
            ));
            "sms"
        } else {
            text.push_str(&format!(
                "From: {}\nTo: {to}\nSubject: {subject}\nDate: {}\nMessage-ID: <{id}>\nMIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n",
                self.inner.from,
                now.to_rfc2822()
            ));
            "mail"
        };
        let body = mbox_body(&m.body);
        text.push_str(&format!("Content-Length: {}\n\n{body}\n", body.len()));
        let file = self.file(channel, now.format("%Y-%m-%d").to_string())?;
        let at = file.append(&id, text.as_bytes())?;
        Ok(format!("{}#{at}", file.path.display()))
    }

    fn sync(&self) -> std::io::Result<()> {
        for f in self.open_files() {
            f.sync()?;
        }
        Ok(())
    }

    /// An append to a file: no longer than a page-cache write.
    fn blocks(&self) -> bool {
        false
    }
}

/// Reads back the message a [`Spool`] delivery returned the location of (`<file>#<offset>`):
/// its headers and body, with the mbox quoting undone.
pub fn read_spooled(location: &str) -> std::io::Result<String> {
    let bad = || std::io::Error::other(format!("`{location}` is not a spool location"));
    let (path, at) = location.rsplit_once('#').ok_or_else(bad)?;
    let at: usize = at.parse().map_err(|_| bad())?;
    let text = std::fs::read_to_string(path)?;
    let rest = text.get(at..).ok_or_else(bad)?;
    let mut lines = rest.split_inclusive('\n');
    if !lines.next().is_some_and(|l| l.starts_with("From ")) {
        return Err(bad());
    }
    let mut out = String::new();
    for line in lines {
        if line.starts_with("From ") {
            break;
        }
        match line.strip_prefix('>') {
            Some(q) if q.trim_start_matches('>').starts_with("From ") => out.push_str(q),
            _ => out.push_str(line),
        }
    }
    // The blank line that separates messages is not part of this one.
    if out.ends_with("\n\n") {
        out.pop();
    }
    Ok(out)
}
