//! SQLite backend: one writer connection (SQLite has one writer at a time anyway) and a small pool
//! of reader connections, in WAL mode with `synchronous=FULL`: a commit is fsynced before it
//! returns.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use foldhash::{HashMap, HashMapExt};
use rusqlite::Connection;
use tokio::sync::{Notify, OwnedMutexGuard};

use shopflow_bus::Message;

use super::EventRow;
use crate::{Result, Row, Value};

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) path: PathBuf,
    writer: Arc<tokio::sync::Mutex<Connection>>,
    readers: Mutex<Vec<Connection>>,
    /// Signalled after a commit that wrote outbox rows: the relay's wake-up.
    pub(crate) outbox_signal: Arc<Notify>,
    /// Counts commits, for in-process followers (projections) that want to wake on them.
    pub(crate) commits: tokio::sync::watch::Sender<u64>,
    /// `shopflow_db_commits_total` of this file, durable and relaxed.
    committed: [metrics::Counter; 2],
}

/// A SQLite database file.
#[derive(Clone, Debug)]
pub struct SqliteDb {
    pub(crate) inner: Arc<Inner>,
}

/// Page cache of the writer connection, in KiB (SQLite's default is 2 MiB). The process-wide
/// budget ([`set_memory_budget`]) bounds the sum over every connection.
const WRITER_CACHE_KIB: i64 = 16 * 1024;
/// Page cache of each reader connection, in KiB: readers are many and read recent rows.
const READER_CACHE_KIB: i64 = 2 * 1024;

/// SQLite's memory budget for the whole process, in bytes (0: none).
static MEMORY_BUDGET: std::sync::atomic::AtomicI64 =
    std::sync::atomic::AtomicI64::new(DEFAULT_MEMORY_BUDGET);

/// The default of [`set_memory_budget`]: 96 MiB.
pub const DEFAULT_MEMORY_BUDGET: i64 = 96 * 1024 * 1024;

/// Bounds what SQLite holds in memory across every database and connection of this process
/// (`bytes`; 0 lifts the bound), from the next connection opened on.
///
/// SQLite is built with memory management, so all page caches share one pool of pages with one
/// least-recently-used list: once the process's SQLite memory reaches the budget, a page a
/// connection needs replaces the page that every cache has used least recently, instead of
/// growing the total. Each connection's own `cache_size` still caps its share. Without a shared
/// bound the caches of a shop's databases (seven, embedded) filled one by one as their files
/// grew, and resident memory grew with history.
pub fn set_memory_budget(bytes: i64) {
    MEMORY_BUDGET.store(bytes.max(0), std::sync::atomic::Ordering::Relaxed);
}

/// The budget in force: see [`set_memory_budget`].
pub fn memory_budget() -> i64 {
    MEMORY_BUDGET.load(std::sync::atomic::Ordering::Relaxed)
}

fn configure(conn: &Connection, cache_kib: i64) -> Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // A bounded page cache per connection: the writer's is larger (batched appends touch many
    // index pages, and re-reading them dominated a profile with the 2 MiB default), but not so
    // large that memory grows with the files: 64 MiB per connection took a 200,000-order run
    // to 870 MiB of resident memory. Pages beyond it come from the OS page cache.
    conn.pragma_update(None, "cache_size", -cache_kib)?;
    // The process-wide bound over all of them (a process-wide setting, set again per open so a
    // change of the budget takes effect).
    conn.pragma_update(None, "soft_heap_limit", memory_budget())?;
    // Savepoint and statement journals in memory rather than in temporary files: every handled
    // event runs in a savepoint.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.set_prepared_statement_cache_capacity(256);
    // One plan per statement whatever its parameters: without it SQLite marks a statement with
    // `LIMIT $n` (the store's reads, the relay's) as depending on that value, and re-prepares
    // it at every execution — 10 % of the shop's CPU in a profile.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

impl SqliteDb {
    pub(crate) fn open(path: &Path) -> Result<Self> {
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(|e| crate::Error::Unavailable {
                reason: format!("create {}: {e}", parent.display()),
            })?;
        }
        let conn = Connection::open(path)?;
        configure(&conn, WRITER_CACHE_KIB)?;
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                writer: Arc::new(tokio::sync::Mutex::new(conn)),
                readers: Mutex::new(Vec::new()),
                outbox_signal: Arc::new(Notify::new()),
                commits: tokio::sync::watch::Sender::new(0),
                committed: {
                    let db = path
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    ["durable", "relaxed"].map(|sync| {
                        metrics::counter!("shopflow_db_commits_total", "db" => db.clone(), "sync" => sync)
                    })
                },
            }),
        })
    }

    pub(crate) async fn begin(&self, relaxed: bool) -> Result<SqliteTx> {
        let conn = self.inner.writer.clone().lock_owned().await;
        if relaxed {
            // WAL + NORMAL: the commit is atomic and ordered before every later commit, but not
            // fsynced until the next FULL commit or checkpoint.
            conn.execute_batch("PRAGMA synchronous = NORMAL")?;
        }
        // Prepared once per connection, not parsed per transaction (pragmas above must be
        // parsed: they take effect when compiled).
        let began = conn
            .prepare_cached("BEGIN IMMEDIATE")
            .and_then(|mut s| s.execute([]));
        let tx = SqliteTx {
            conn,
            db: self.inner.clone(),
            done: false,
            wrote_outbox: false,
            relaxed,
            before_commit: Vec::new(),
            pending: Default::default(),
        };
        began?;
        Ok(tx)
    }

    /// Runs a read on a reader connection (WAL: readers never block the writer).
    pub(crate) fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = match self.inner.readers.lock().expect("readers lock").pop() {
            Some(c) => c,
            None => {
                let c = Connection::open(&self.inner.path)?;
                configure(&c, READER_CACHE_KIB)?;
                c
            }
        };
        let result = f(&conn);
        let mut readers = self.inner.readers.lock().expect("readers lock");
        if readers.len() < 8 {
            readers.push(conn);
        }
        result
    }

    pub(crate) fn query(&self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        self.read(|c| query(c, sql, params))
    }
}

/// `$1` placeholders (PostgreSQL's) to `?1` (SQLite's), so one SQL text serves both. Runs on
/// every statement: it finds `$` with `match_indices` and copies the runs between placeholders,
/// allocating only for a text that has one.
pub(crate) fn translate(sql: &str) -> std::borrow::Cow<'_, str> {
    let mut out: Option<String> = None;
    let mut from = 0;
    for (i, _) in sql.match_indices('$') {
        if sql.as_bytes().get(i + 1).is_some_and(u8::is_ascii_digit) {
            // `$` and `?` are both one byte, so every cut is on a character boundary.
            let o = out.get_or_insert_with(|| String::with_capacity(sql.len()));
            o.push_str(&sql[from..i]);
            o.push('?');
            from = i + 1;
        }
    }
    match out {
        None => sql.into(),
        Some(mut o) => {
            o.push_str(&sql[from..]);
            o.into()
        }
    }
}

/// How many statements' translations a thread keeps ([`translated`]). The shop's statements are a
/// few hundred texts; a map that outgrows this (statements built with ever new texts) starts over.
const TRANSLATED_CAPACITY: usize = 1024;

thread_local! {
    /// See [`translated`].
    static TRANSLATED: RefCell<HashMap<Box<str>, Rc<str>>> = RefCell::new(HashMap::new());
}

/// [`translate`], remembered per thread by the statement's text: every statement runs through
/// here, and translating it again at each execution (a scan, an allocation and a copy) was ~2 % of
/// the shop's instructions (issue 14's callgrind profile).
pub(crate) fn translated(sql: &str) -> Rc<str> {
    TRANSLATED.with(|cell| {
        let mut map = cell.borrow_mut();
        if let Some(t) = map.get(sql) {
            return t.clone();
        }
        if map.len() >= TRANSLATED_CAPACITY {
            map.clear();
        }
        let t: Rc<str> = Rc::from(translate(sql).as_ref());
        map.insert(sql.into(), t.clone());
        t
    })
}

pub(crate) fn query(conn: &Connection, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
    let mut stmt = conn.prepare_cached(&translated(sql))?;
    let columns = stmt.column_count();
    let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(Row::from_sqlite(r, columns)?);
    }
    Ok(out)
}

pub(crate) fn execute(conn: &Connection, sql: &str, params: &[Value]) -> Result<u64> {
    let mut stmt = conn.prepare_cached(&translated(sql))?;
    Ok(stmt.execute(rusqlite::params_from_iter(params))? as u64)
}

pub(crate) fn stream_versions(conn: &Connection, streams: &[&str]) -> Result<Vec<(String, u64)>> {
    let mut stmt = conn.prepare_cached("SELECT version FROM streams WHERE stream_id = ?1")?;
    let mut out = Vec::with_capacity(streams.len());
    for s in streams {
        let v: Option<i64> = stmt
            .query_row([s], |r| r.get(0))
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })?;
        if let Some(v) = v {
            out.push(((*s).to_owned(), v as u64));
        }
    }
    Ok(out)
}

pub(crate) fn insert_events(
    conn: &Connection,
    rows: &[EventRow],
    versions: &[(&str, u64)],
) -> Result<()> {
    let mut ins = conn.prepare_cached(
        "INSERT INTO events (stream_id, version, event_id, event_type, event_version, recorded_at, envelope)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for r in rows {
        ins.execute(rusqlite::params![
            r.stream,
            r.version,
            r.event_id,
            r.event_type,
            r.event_version,
            r.recorded_at,
            r.envelope
        ])?;
    }
    let mut up = conn.prepare_cached(
        "INSERT INTO streams (stream_id, version) VALUES (?1, ?2)
         ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version",
    )?;
    for (s, v) in versions {
        up.execute(rusqlite::params![s, *v as i64])?;
    }
    Ok(())
}

pub(crate) fn insert_outbox(conn: &Connection, messages: &[Message], now_us: i64) -> Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO outbox (topic, msg_key, payload, headers, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for m in messages {
        stmt.execute(rusqlite::params![
            m.topic,
            m.key.as_deref(),
            &m.value[..],
            crate::headers::encode(&m.headers),
            now_us
        ])?;
    }
    Ok(())
}

pub(crate) fn delete_outbox(conn: &Connection, ids: &[i64]) -> Result<()> {
    // A relay's batch is usually a run of consecutive ids: one range delete instead of a
    // statement per row (exactly the same rows, as the run has no gaps).
    if let (Some(&first), Some(&last)) = (ids.first(), ids.last())
        && ids.windows(2).all(|w| w[1] == w[0] + 1)
    {
        let mut stmt = conn.prepare_cached("DELETE FROM outbox WHERE id BETWEEN ?1 AND ?2")?;
        stmt.execute([first, last])?;
        return Ok(());
    }
    let mut stmt = conn.prepare_cached("DELETE FROM outbox WHERE id = ?1")?;
    for id in ids {
        stmt.execute([id])?;
    }
    Ok(())
}

/// A write transaction holding the writer connection.
pub struct SqliteTx {
    conn: OwnedMutexGuard<Connection>,
    db: Arc<Inner>,
    done: bool,
    pub(crate) wrote_outbox: bool,
    relaxed: bool,
    pub(crate) before_commit: super::Hooks,
    /// What the transaction publishes, written to the outbox when it commits.
    pub(crate) pending: crate::outbox::Pending,
}

impl std::fmt::Debug for SqliteTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteTx")
            .field("path", &self.db.path)
            .field("relaxed", &self.relaxed)
            .field("before_commit", &self.before_commit.len())
            .finish()
    }
}

impl SqliteTx {
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    pub(crate) fn commit(mut self) -> Result<()> {
        // The fsync of the WAL happens here, on this thread: handing the worker to another
        // thread for it (`block_in_place`) cost more CPU than the sync blocks (issue 14's
        // profile: a thread wake-up and a task spawn per commit), at the same throughput.
        super::run_before_commit(std::mem::take(&mut self.before_commit))?;
        self.conn
            .prepare_cached("COMMIT")
            .and_then(|mut s| s.execute([]))?;
        self.done = true;
        self.db.committed[usize::from(self.relaxed)].increment(1);
        if self.wrote_outbox {
            self.db.outbox_signal.notify_one();
        }
        self.db.commits.send_modify(|c| *c = c.wrapping_add(1));
        Ok(())
    }

    pub(crate) fn rollback(mut self) -> Result<()> {
        self.done = true;
        self.conn.execute_batch("ROLLBACK")?;
        Ok(())
    }
}

impl Drop for SqliteTx {
    fn drop(&mut self) {
        if !self.done {
            // Dropped without commit (an error, a cancelled future): nothing of it may stay.
            if let Err(e) = self.conn.execute_batch("ROLLBACK") {
                tracing::error!(error = %e, "rollback of an abandoned SQLite transaction failed");
            }
        }
        // Outside any transaction now: SQLite ignores `synchronous` changes inside one.
        if self.relaxed
            && let Err(e) = self.conn.execute_batch("PRAGMA synchronous = FULL")
        {
            tracing::error!(error = %e, "restoring synchronous=FULL failed");
        }
    }
}

/// Runs blocking work in place, telling a multi-threaded runtime to move other tasks away.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn deletes_exactly_the_outbox_rows_given_in_a_run_or_with_gaps() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE outbox (id INTEGER PRIMARY KEY);
             INSERT INTO outbox (id) VALUES (1), (2), (3), (4), (5), (6), (7);",
        )
        .unwrap();
        let left = || -> Vec<i64> {
            let mut s = conn.prepare("SELECT id FROM outbox ORDER BY id").unwrap();
            s.query_map([], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        super::delete_outbox(&conn, &[2, 3, 4]).unwrap();
        assert_eq!(left(), [1, 5, 6, 7]);
        super::delete_outbox(&conn, &[1, 6]).unwrap();
        assert_eq!(left(), [5, 7]);
        super::delete_outbox(&conn, &[]).unwrap();
        assert_eq!(left(), [5, 7]);
    }

    #[test]
    fn every_connection_carries_the_process_memory_budget() {
        let dir = tempfile::tempdir().unwrap();
        let db = super::SqliteDb::open(&dir.path().join("budget.db")).unwrap();
        let limit = |c: &rusqlite::Connection| -> i64 {
            c.query_row("PRAGMA soft_heap_limit", [], |r| r.get(0))
                .unwrap()
        };
        // The budget is process-wide (other tests in this binary open databases meanwhile):
        // what a connection reads back is the budget in force, the default unless changed.
        assert_eq!(super::memory_budget(), super::DEFAULT_MEMORY_BUDGET);
        let read = db.read(|c| Ok(limit(c))).unwrap();
        assert_eq!(read, super::DEFAULT_MEMORY_BUDGET);
        let cache: i64 = db
            .read(|c| Ok(c.query_row("PRAGMA cache_size", [], |r| r.get(0)).unwrap()))
            .unwrap();
        assert_eq!(cache, -super::READER_CACHE_KIB);
    }

    #[test]
    fn translates_placeholders() {
        assert_eq!(super::translate("a = $1 AND b = $12"), "a = ?1 AND b = ?12");
        assert_eq!(super::translate("no params"), "no params");
        assert_eq!(super::translate("$ 1, $x, a$1é$2"), "$ 1, $x, a?1é?2");
        assert_eq!(super::translate("ü = $1"), "ü = ?1");
        assert_eq!(super::translate("$"), "$");
    }

    #[test]
    fn remembered_translations_are_the_translations_and_the_map_stays_bounded() {
        for sql in ["a = $1 AND b = $12", "no params", "$ 1, $x, a$1é$2"] {
            assert_eq!(&*super::translated(sql), super::translate(sql));
            // The second time from the map: the same text.
            assert_eq!(&*super::translated(sql), super::translate(sql));
        }
        // Ever new texts: the map starts over rather than growing, and answers stay right.
        for i in 0..(super::TRANSLATED_CAPACITY * 2 + 7) {
            let sql = format!("SELECT {i} WHERE x = $1");
            assert_eq!(
                &*super::translated(&sql),
                format!("SELECT {i} WHERE x = ?1")
            );
        }
        super::TRANSLATED.with(|m| assert!(m.borrow().len() <= super::TRANSLATED_CAPACITY));
    }
}
