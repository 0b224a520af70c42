#![doc = include_str!("../README.md")]

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::get;
use serde::Serialize;
use shopflow_contracts::{OrderCancelled, OrderCreated, OrderShipped, UserRegistered};
use shopflow_envelope::{Envelope, Event, Registry};
use shopflow_http::{ApiError, Json};
use shopflow_runtime::{BreakerConfig, CircuitBreaker, Handler, HandlerError, Outgoing};
use shopflow_store::{Db, Migration, Tx, params};

pub const NAME: &str = "notification";

/// Advisory-lock class of deferring and releasing notifications (PostgreSQL; key:
/// `hashtext(<what the event waits for>)`).
const DEFER_LOCK_CLASS: i32 = 0x5346_4e44; // "SFND"

pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "notifications",
    sqlite: include_str!("../migrations/001_notifications.sql"),
    postgres: include_str!("../migrations/001_notifications.sql"),
}];

/// A message to deliver.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub id: String,
    pub channel: &'static str,
    pub to: String,
    pub subject: String,
    pub body: String,
}

/// Delivers messages; returns where it put one (a file, a message id).
pub trait Mailer: Send + Sync + 'static {
    fn deliver(&self, m: &Outbound) -> std::io::Result<String>;
}

/// The default delivery: a mail spool on disk, in a format mail tools read (mbox: mboxrd quoting
/// plus a `Content-Length` header, so a torn append can be told from a whole message).
///
/// E-mail goes to `<dir>/mail/<UTC date>.mbox`, SMS to `<dir>/sms/<UTC date>.mbox` (the text with
/// a `To:` header), one append-only file per channel and day. A delivery returns once the message
/// is on disk (fdatasync); deliveries that come at the same time share one sync (group commit),
/// so the spool costs neither a file creation nor a sync per message.
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
    ids: HashMap<String, u64>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing panics while holding these locks; a poisoned one still guards consistent data.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads a spool file: every whole message's id and start, and where the whole messages end.
/// Each message is a `From ` line, headers with `Message-ID` and `Content-Length`, a blank line,
/// `Content-Length` bytes of body and a blank line. An incomplete last message is a torn append
/// (the length returned stops before it); anything else that does not parse is `Err(offset)`.
fn parse_spool(text: &[u8]) -> Result<(u64, HashMap<String, u64>), usize> {
    let mut ids = HashMap::new();
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
            (rest.len() >= end && rest[end - 1] == b'\n').then_some((id?.to_owned(), end))
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

    /// Appends one message (unless its id is here already) and returns where it starts, once it
    /// is durable.
    fn append(&self, id: &str, message: &[u8]) -> std::io::Result<u64> {
        let (at, end) = {
            let mut w = lock(&self.writer);
            if let Some(at) = w.ids.get(id) {
                (*at, w.len)
            } else {
                let at = w.len;
                if let Err(e) = w.file.write_all(message) {
                    // Leave no torn message behind for the next append to follow.
                    let _ = w.file.set_len(at);
                    return Err(e);
                }
                w.len += message.len() as u64;
                w.ids.insert(id.to_owned(), at);
                (at, w.len)
            }
        };
        let mut synced = lock(&self.synced);
        if synced.1 < end {
            // Everything appended so far rides on this sync, not only this message.
            let upto = lock(&self.writer).len;
            synced.0.sync_data()?;
            synced.1 = upto;
        }
        Ok(at)
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
        files.retain(|(c, _), _| *c != channel);
        files.insert((channel, day), f.clone());
        Ok(f)
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

/// Sends e-mail over SMTP (plain, to a local relay or smarthost; no TLS) and SMS to the spool,
/// there being no SMS gateway to speak to.
#[derive(Clone)]
pub struct Smtp {
    transport: lettre::SmtpTransport,
    from: lettre::message::Mailbox,
    sms: Spool,
}

impl std::fmt::Debug for Smtp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Smtp")
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

impl Smtp {
    /// `url` is `smtp://host[:port]` (port 25 by default).
    pub fn new(url: &str, sms_dir: impl Into<PathBuf>) -> Result<Self, String> {
        let rest = url
            .strip_prefix("smtp://")
            .ok_or_else(|| format!("`{url}` is not an smtp:// URL"))?;
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("bad port in `{url}`"))?,
            ),
            None => (rest, 25),
        };
        if host.is_empty() {
            return Err(format!("no host in `{url}`"));
        }
        let transport = lettre::SmtpTransport::builder_dangerous(host)
            .port(port)
            .timeout(Some(std::time::Duration::from_secs(10)))
            .build();
        let from = "shopflow <no-reply@shopflow.invalid>"
            .parse()
            .map_err(|e| format!("{e}"))?;
        Ok(Self {
            transport,
            from,
            sms: Spool::new(sms_dir),
        })
    }
}

impl Mailer for Smtp {
    fn deliver(&self, m: &Outbound) -> std::io::Result<String> {
        use lettre::Transport;
        if m.channel == "sms" {
            return self.sms.deliver(m);
        }
        let io = |e: String| std::io::Error::other(e);
        let to: lettre::message::Mailbox =
            m.to.parse()
                .map_err(|e| io(format!("recipient {}: {e}", m.to)))?;
        let message = lettre::Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(m.subject.clone())
            .message_id(Some(format!(
                "<{}@shopflow.invalid>",
                m.id.replace(':', ".")
            )))
            .header(lettre::message::header::ContentType::TEXT_PLAIN)
            .body(m.body.clone())
            .map_err(|e| io(e.to_string()))?;
        let resp = self
            .transport
            .send(&message)
            .map_err(|e| io(e.to_string()))?;
        Ok(format!(
            "smtp: {}",
            resp.message().collect::<Vec<_>>().join(" ")
        ))
    }
}

/// Where notifications go: the closed set of delivery backends.
#[derive(Debug, Clone)]
pub enum Delivery {
    Spool(Spool),
    Smtp(Smtp),
}

impl Mailer for Delivery {
    fn deliver(&self, m: &Outbound) -> std::io::Result<String> {
        match self {
            Delivery::Spool(s) => s.deliver(m),
            Delivery::Smtp(s) => s.deliver(m),
        }
    }
}

/// The notification service.
#[derive(Debug)]
pub struct Notifications<M: Mailer> {
    db: Db,
    mailer: Arc<M>,
    registry: Arc<Registry>,
    /// Guards every delivery (the handler declares it to the runtime): while the mail server is
    /// down the consumer pauses.
    breaker: Arc<CircuitBreaker>,
}

impl<M: Mailer> Clone for Notifications<M> {
    fn clone(&self) -> Self {
        Self {
            db: self.db.clone(),
            mailer: self.mailer.clone(),
            registry: self.registry.clone(),
            breaker: self.breaker.clone(),
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationView {
    pub id: String,
    pub event_type: String,
    pub channel: String,
    pub recipient: String,
    pub subject: String,
    pub location: String,
}

struct Recipient {
    user_id: String,
    email: String,
    name: String,
    phone: Option<String>,
}

fn money(minor: i64, currency: &str) -> String {
    format!("{}.{:02} {currency}", minor / 100, (minor % 100).abs())
}

impl<M: Mailer> Notifications<M> {
    pub async fn open(db: Db, mailer: Arc<M>) -> shopflow_store::Result<Self> {
        db.migrate_service(NAME, MIGRATIONS).await?;
        Ok(Self {
            db,
            mailer,
            registry: Arc::new(shopflow_contracts::registry()),
            breaker: Arc::new(CircuitBreaker::new("delivery", BreakerConfig::default())),
        })
    }

    /// Replaces the delivery circuit breaker's settings.
    pub fn with_breaker(mut self, config: BreakerConfig) -> Self {
        self.breaker = Arc::new(CircuitBreaker::new("delivery", config));
        self
    }

    /// The delivery circuit breaker.
    pub fn breaker(&self) -> &Arc<CircuitBreaker> {
        &self.breaker
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/orders/{id}/notifications", get(list::<M>))
            .with_state(Arc::new(self.clone()))
    }

    pub async fn for_order(&self, order_id: &str) -> Result<Vec<NotificationView>, ApiError> {
        let rows = self
            .db
            .query(
                "SELECT id, event_type, channel, recipient, subject, location FROM notifications WHERE order_id = $1 ORDER BY created_at, id",
                params![order_id],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(NotificationView {
                    id: r.str(0)?.to_owned(),
                    event_type: r.str(1)?.to_owned(),
                    channel: r.str(2)?.to_owned(),
                    recipient: r.str(3)?.to_owned(),
                    subject: r.str(4)?.to_owned(),
                    location: r.str(5)?.to_owned(),
                })
            })
            .collect()
    }

    async fn recipient(tx: &mut Tx, user_id: &str) -> Result<Option<Recipient>, HandlerError> {
        let rows = tx
            .query(
                "SELECT user_id, email, name, phone FROM recipients WHERE user_id = $1",
                params![user_id],
            )
            .await?;
        Ok(match rows.first() {
            Some(r) => Some(Recipient {
                user_id: r.str(0)?.to_owned(),
                email: r.str(1)?.to_owned(),
                name: r.str(2)?.to_owned(),
                phone: r.opt_str(3)?.map(str::to_owned),
            }),
            None => None,
        })
    }

    /// Whether what `key` waits for (`user:<id>`, `order:<id>`) is known now.
    async fn arrived(tx: &mut Tx, key: &str) -> Result<bool, HandlerError> {
        let rows = if let Some(user) = key.strip_prefix("user:") {
            tx.query("SELECT 1 FROM recipients WHERE user_id = $1", params![user])
                .await?
        } else if let Some(order) = key.strip_prefix("order:") {
            tx.query(
                "SELECT 1 FROM order_customers WHERE order_id = $1",
                params![order],
            )
            .await?
        } else {
            Vec::new()
        };
        Ok(!rows.is_empty())
    }

    /// Defers `env` until `waits_for` arrives — unless it arrived while this transaction ran, in
    /// which case the event is handled now.
    async fn defer(
        &self,
        tx: &mut Tx,
        env: &Envelope,
        waits_for: String,
    ) -> Result<(), HandlerError> {
        // Deferring and releasing one key run one after another: else a deferral could commit
        // after a release that did not see it, and wait forever.
        tx.lock(DEFER_LOCK_CLASS, &waits_for).await?;
        if Self::arrived(tx, &waits_for).await? {
            return Box::pin(self.notify(tx, env)).await;
        }
        tx.execute(
            "INSERT INTO deferred (event_id, waits_for, envelope, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (event_id) DO NOTHING",
            params![env.event_id().to_string(), waits_for, env.encode()?, chrono::Utc::now().timestamp_millis()],
        )
        .await?;
        Ok(())
    }

    /// Sends what the event calls for, or defers it until its recipient is known.
    async fn notify(&self, tx: &mut Tx, env: &Envelope) -> Result<(), HandlerError> {
        let (order_id, user_id, subject, body): (Option<String>, String, String, String) =
            if env.is::<OrderCreated>() {
                let e: OrderCreated = env.data_as()?;
                tx.execute(
                "INSERT INTO order_customers (order_id, customer_id) VALUES ($1, $2) ON CONFLICT (order_id) DO NOTHING",
                params![e.order_id.as_str(), e.customer_id.as_str()],
            )
            .await?;
                self.release(tx, &format!("order:{}", e.order_id)).await?;
                let lines: Vec<String> = e
                    .items
                    .iter()
                    .map(|i| {
                        format!(
                            "  {} × {}  {}",
                            i.quantity,
                            i.sku,
                            money(i.unit_price_minor, &e.currency)
                        )
                    })
                    .collect();
                (
                    Some(e.order_id.to_string()),
                    e.customer_id.to_string(),
                    format!("Your order {} is confirmed", e.order_id),
                    format!(
                        "Thank you for your order {}.\n\n{}\n\nTotal: {}\n",
                        e.order_id,
                        lines.join("\n"),
                        money(e.total_minor, &e.currency)
                    ),
                )
            } else if env.is::<OrderShipped>() {
                let e: OrderShipped = env.data_as()?;
                let rows = tx
                    .query(
                        "SELECT customer_id FROM order_customers WHERE order_id = $1",
                        params![e.order_id.as_str()],
                    )
                    .await?;
                let Some(r) = rows.first() else {
                    return self.defer(tx, env, format!("order:{}", e.order_id)).await;
                };
                (
                    Some(e.order_id.to_string()),
                    r.str(0)?.to_owned(),
                    format!("Your order {} has shipped", e.order_id),
                    format!(
                        "Your order {} is on its way with {}.\nTracking number: {}\n",
                        e.order_id, e.carrier, e.tracking_number
                    ),
                )
            } else if env.is::<OrderCancelled>() {
                let e: OrderCancelled = env.data_as()?;
                (
                    Some(e.order_id.to_string()),
                    e.customer_id.to_string(),
                    format!("Your order {} was cancelled", e.order_id),
                    format!(
                        "We are sorry: your order {} was cancelled ({}).\nAny payment has been refunded.\n",
                        e.order_id, e.reason
                    ),
                )
            } else if env.is::<UserRegistered>() {
                let e: UserRegistered = env.data_as()?;
                tx.execute(
                "INSERT INTO recipients (user_id, email, name, phone) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (user_id) DO UPDATE SET email = excluded.email, name = excluded.name, phone = excluded.phone",
                params![e.user_id.as_str(), e.email.as_str(), e.name.as_str(), e.phone.clone()],
            )
            .await?;
                self.release(tx, &format!("user:{}", e.user_id)).await?;
                (
                    None,
                    e.user_id.to_string(),
                    "Welcome to shopflow".into(),
                    "Your shopflow account is ready.\n".to_owned(),
                )
            } else {
                return Ok(());
            };
        let Some(to) = Self::recipient(tx, &user_id).await? else {
            return self.defer(tx, env, format!("user:{user_id}")).await;
        };
        let body = format!("Hello {},\n\n{body}", to.name);
        let mut channels = vec![("email", to.email.clone())];
        if let Some(p) = &to.phone {
            channels.push(("sms", p.clone()));
        }
        for (channel, address) in channels {
            let id = format!("{}:{channel}", env.event_id());
            let m = Outbound {
                id: id.clone(),
                channel,
                to: address.clone(),
                subject: subject.clone(),
                body: body.clone(),
            };
            let inserted = tx
                .execute(
                    "INSERT INTO notifications (id, event_id, event_type, order_id, user_id, channel, recipient, subject, location, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, '', $9) ON CONFLICT (id) DO NOTHING",
                    params![id.as_str(), env.event_id().to_string(), env.event_type(), order_id.clone(), to.user_id.as_str(), channel, address.as_str(), subject.as_str(), chrono::Utc::now().timestamp_millis()],
                )
                .await?;
            if inserted == 0 {
                continue; // sent already
            }
            // A file sync or an SMTP session: other tasks move to another worker meanwhile.
            let location = shopflow_store::blocking(|| self.mailer.deliver(&m)).map_err(|e| {
                HandlerError::dependency(&self.breaker, format!("delivery failed: {e}"))
            })?;
            tx.execute(
                "UPDATE notifications SET location = $2 WHERE id = $1",
                params![id.as_str(), location],
            )
            .await?;
        }
        Ok(())
    }

    /// Handles the events that waited for `key`.
    async fn release(&self, tx: &mut Tx, key: &str) -> Result<(), HandlerError> {
        tx.lock(DEFER_LOCK_CLASS, key).await?;
        let rows = tx
            .query(
                "SELECT event_id, envelope FROM deferred WHERE waits_for = $1 ORDER BY created_at",
                params![key],
            )
            .await?;
        for r in rows {
            let id = r.str(0)?.to_owned();
            let env = self.registry.decode(r.bytes(1)?)?;
            tx.execute("DELETE FROM deferred WHERE event_id = $1", params![id])
                .await?;
            Box::pin(self.notify(tx, &env)).await?;
        }
        Ok(())
    }
}

async fn list<M: Mailer>(
    State(s): State<Arc<Notifications<M>>>,
    Path(id): Path<String>,
) -> Result<Json<Vec<NotificationView>>, ApiError> {
    s.for_order(&id).await.map(Json)
}

impl<M: Mailer> Handler for Notifications<M> {
    fn name(&self) -> &'static str {
        NAME
    }

    fn breakers(&self) -> Vec<Arc<CircuitBreaker>> {
        vec![self.breaker.clone()]
    }

    fn topics(&self) -> Vec<String> {
        vec![
            UserRegistered::topic(),
            OrderCreated::topic(),
            OrderShipped::topic(),
            OrderCancelled::topic(),
        ]
    }

    async fn handle(&self, tx: &mut Tx, env: &Envelope) -> Result<Vec<Outgoing>, HandlerError> {
        self.notify(tx, env).await?;
        Ok(vec![])
    }
}
