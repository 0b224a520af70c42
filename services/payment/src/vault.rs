//! The card vault: the only place a card number exists after the edge. A card is tokenised
//! (`tok_` + 32 hex digits, an HMAC of the number under the vault's token secret, so the same card
//! always gets the same token) and stored encrypted with AES-256-GCM (RustCrypto `aes-gcm`) under
//! the current key; only this service turns a token back into a card, to charge it.
//!
//! Keys come from configuration: the text of a key file (`SHOPFLOW_VAULT_KEYS`, or the file
//! `<data-dir>/payment/vault.keys`, created with mode 0600 on first start):
//!
//! ```text
//! token-secret <base64 of 32 bytes>
//! key k2 <base64 of 32 bytes>     # the first key encrypts
//! key k1 <base64 of 32 bytes>     # every key decrypts
//! ```
//!
//! Rotation: put a new `key` line first, restart, re-encrypt what older keys hold
//! (`POST /admin/vault/rekey`), then drop the old lines.

use std::path::Path;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use shopflow_store::{Db, Tx, params};

/// Why the vault could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("not a card number (12 to 19 digits passing the Luhn check)")]
    NotACard,
    #[error("vault keys: {0}")]
    Keys(String),
    #[error("the vault row of {token} cannot be decrypted: {reason}")]
    Undecryptable { token: String, reason: String },
    #[error(transparent)]
    Store(#[from] shopflow_store::Error),
}

/// The vault's secrets: the token secret, and the encryption keys (the first one encrypts).
#[derive(Clone)]
pub struct VaultKeys {
    token_secret: [u8; 32],
    keys: Vec<(String, [u8; 32])>,
}

impl std::fmt::Debug for VaultKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("VaultKeys")
            .field("keys", &ids)
            .finish_non_exhaustive()
    }
}

fn key32(text: &str, what: &str) -> Result<[u8; 32], VaultError> {
    let bytes = B64
        .decode(text.trim())
        .map_err(|e| VaultError::Keys(format!("{what} is not base64: {e}")))?;
    bytes
        .try_into()
        .map_err(|_| VaultError::Keys(format!("{what} must be 32 bytes")))
}

fn random32() -> [u8; 32] {
    Aes256Gcm::generate_key(&mut OsRng).into()
}

impl VaultKeys {
    /// Parses the text of a key file (see the module docs).
    pub fn parse(text: &str) -> Result<Self, VaultError> {
        let mut token_secret = None;
        let mut keys = Vec::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                [] => {}
                ["token-secret", k] => token_secret = Some(key32(k, "token-secret")?),
                ["key", id, k] => {
                    if keys.iter().any(|(have, _)| have == id) {
                        return Err(VaultError::Keys(format!("key {id} is given twice")));
                    }
                    keys.push(((*id).to_owned(), key32(k, &format!("key {id}"))?));
                }
                _ => {
                    return Err(VaultError::Keys(format!(
                        "`{}…` is neither `token-secret <base64>` nor `key <id> <base64>`",
                        line.chars().take(20).collect::<String>()
                    )));
                }
            }
        }
        let token_secret =
            token_secret.ok_or_else(|| VaultError::Keys("no token-secret line".into()))?;
        if keys.is_empty() {
            return Err(VaultError::Keys("no key line".into()));
        }
        Ok(Self { token_secret, keys })
    }

    /// A new token secret and one key, `k1`, as the text of a key file.
    pub fn generate() -> String {
        format!(
            "# shopflow card vault: the first key encrypts, every key decrypts; keep this file secret\n\
             token-secret {}\nkey k1 {}\n",
            B64.encode(random32()),
            B64.encode(random32())
        )
    }

    /// The keys in `path`, created (mode 0600) with fresh keys when there is none.
    pub fn load_or_create(path: &Path) -> Result<Self, VaultError> {
        let io = |e: std::io::Error| VaultError::Keys(format!("{}: {e}", path.display()));
        if !path.exists() {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            write_private(path, Self::generate().as_bytes()).map_err(io)?;
            tracing::warn!(path = %path.display(), "card vault keys generated; back them up, or orders in flight cannot be charged");
        }
        Self::parse(&std::fs::read_to_string(path).map_err(io)?)
    }

    fn current(&self) -> &(String, [u8; 32]) {
        &self.keys[0]
    }

    fn key(&self, id: &str) -> Option<&[u8; 32]> {
        self.keys.iter().find(|(k, _)| k == id).map(|(_, k)| k)
    }
}

/// Writes a file only its owner can read (mode 0600), replacing nothing.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let mut f = o.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// The digits of a card number as typed (spaces and dashes allowed), if it is one.
pub fn card_digits(card: &str) -> Option<String> {
    let digits: String = card.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
    (digits.bytes().all(|b| b.is_ascii_digit())
        && (12..=19).contains(&digits.len())
        && shopflow_contracts::luhn_valid(&digits))
    .then_some(digits)
}

/// What a client gets for a card: the token and the last four digits.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tokenized {
    #[schema(
        pattern = "^tok_[0-9a-f]{32}$",
        example = "tok_0123456789abcdef0123456789abcdef"
    )]
    pub token: String,
    #[schema(pattern = "^[0-9]{4}$", example = "4242")]
    pub last4: String,
}

/// The card vault of the payment service.
#[derive(Clone, Debug)]
pub struct Vault {
    keys: std::sync::Arc<VaultKeys>,
    /// Sealed cards waiting to be written, and the right to write them (group commit).
    pending: std::sync::Arc<std::sync::Mutex<Vec<Pending>>>,
    writing: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// A sealed card waiting for the next vault transaction.
struct Pending {
    db: Db,
    row: [shopflow_store::Value; 6],
    done: tokio::sync::oneshot::Sender<Result<(), String>>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pending")
    }
}

impl Vault {
    pub fn new(keys: VaultKeys) -> Self {
        Self {
            keys: std::sync::Arc::new(keys),
            pending: Default::default(),
            writing: Default::default(),
        }
    }

    /// Writes a sealed card durably. Cards sealed at the same time share one transaction (and
    /// one fsync): whoever gets the right to write takes every card waiting for the same
    /// database, the others wait for its commit.
    async fn store(&self, db: &Db, row: [shopflow_store::Value; 6]) -> Result<(), VaultError> {
        let (done, mut stored) = tokio::sync::oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Pending {
                db: db.clone(),
                row,
                done,
            });
        loop {
            tokio::select! {
                biased;
                r = &mut stored => {
                    return match r {
                        Ok(r) => r.map_err(|reason| VaultError::Store(shopflow_store::Error::Unavailable { reason })),
                        Err(_) => Err(VaultError::Store(shopflow_store::Error::Unavailable {
                            reason: "the vault's write was abandoned".into(),
                        })),
                    };
                }
                _writing = self.writing.lock() => {
                    let batch: Vec<Pending> = {
                        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                        let (mine, others) = std::mem::take(&mut *pending)
                            .into_iter()
                            .partition(|p| p.db.same(db));
                        *pending = others;
                        mine
                    };
                    if batch.is_empty() {
                        // An earlier writer took this card: its answer is on the way.
                        continue;
                    }
                    // In a task of its own: the cards of others are in this batch, and a
                    // request that goes away must not take their write with it.
                    let db = db.clone();
                    let _ = tokio::spawn(async move {
                        let result = Self::write(&db, &batch).await.map_err(|e| e.to_string());
                        for p in batch {
                            let _ = p.done.send(result.clone());
                        }
                    })
                    .await;
                }
            }
        }
    }

    async fn write(db: &Db, batch: &[Pending]) -> shopflow_store::Result<()> {
        let mut tx = db.begin().await?;
        for p in batch {
            tx.execute(
                "INSERT INTO vault (token, last4, key_id, nonce, ciphertext, created_at) VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (token) DO NOTHING",
                &p.row,
            )
            .await?;
        }
        tx.commit().await
    }

    /// The token of a card: the same card, the same token.
    fn token_of(&self, digits: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.keys.token_secret)
            .expect("HMAC takes a key of any length");
        mac.update(b"shopflow card token v1\0");
        mac.update(digits.as_bytes());
        let tag = mac.finalize().into_bytes();
        let hex: String = tag[..16].iter().map(|b| format!("{b:02x}")).collect();
        format!("tok_{hex}")
    }

    fn seal(&self, token: &str, digits: &str) -> Result<(String, Vec<u8>, Vec<u8>), VaultError> {
        let (id, key) = self.keys.current();
        let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key));
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let sealed = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: digits.as_bytes(),
                    aad: token.as_bytes(),
                },
            )
            .map_err(|_| VaultError::Keys("encryption failed".into()))?;
        Ok((id.clone(), nonce.to_vec(), sealed))
    }

    fn open(
        &self,
        token: &str,
        key_id: &str,
        nonce: &[u8],
        sealed: &[u8],
    ) -> Result<String, VaultError> {
        let bad = |reason: &str| VaultError::Undecryptable {
            token: token.to_owned(),
            reason: reason.to_owned(),
        };
        let key = self
            .keys
            .key(key_id)
            .ok_or_else(|| bad(&format!("its key {key_id} is not configured")))?;
        if nonce.len() != 12 {
            return Err(bad("the nonce is not 12 bytes"));
        }
        let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key));
        let plain = cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: token.as_bytes(),
                },
            )
            .map_err(|_| bad("authentication failed (wrong key, or the row was altered)"))?;
        String::from_utf8(plain).map_err(|_| bad("not text"))
    }

    /// Tokenises a card: stores it (encrypted) unless it is there already, returns its token.
    pub async fn tokenize(&self, db: &Db, card: &str) -> Result<Tokenized, VaultError> {
        let digits = card_digits(card).ok_or(VaultError::NotACard)?;
        let token = self.token_of(&digits);
        let last4 = digits[digits.len() - 4..].to_owned();
        // A card the vault holds already (a returning customer) needs no write: its token is
        // the same every time.
        let known = db
            .query(
                "SELECT 1 FROM vault WHERE token = $1",
                params![token.as_str()],
            )
            .await?;
        if known.is_empty() {
            let (key_id, nonce, sealed) = self.seal(&token, &digits)?;
            let now = chrono::Utc::now().timestamp_millis();
            let row = [
                token.as_str().into(),
                last4.as_str().into(),
                key_id.into(),
                nonce.into(),
                sealed.into(),
                now.into(),
            ];
            self.store(db, row).await?;
        }
        Ok(Tokenized { token, last4 })
    }

    /// The token with its card's last four digits, if it is one of this vault's (the card
    /// itself stays sealed).
    pub async fn lookup(&self, db: &Db, token: &str) -> Result<Option<Tokenized>, VaultError> {
        if !shopflow_contracts::is_payment_token(token) {
            return Ok(None);
        }
        let rows = db
            .query("SELECT last4 FROM vault WHERE token = $1", params![token])
            .await?;
        Ok(match rows.first() {
            Some(r) => Some(Tokenized {
                token: token.to_owned(),
                last4: r.str(0)?.to_owned(),
            }),
            None => None,
        })
    }

    /// The card behind `token`, read in `tx` (`None`: not a token of this vault).
    pub async fn reveal(&self, tx: &mut Tx, token: &str) -> Result<Option<String>, VaultError> {
        let rows = tx
            .query(
                "SELECT key_id, nonce, ciphertext FROM vault WHERE token = $1",
                params![token],
            )
            .await?;
        let Some(r) = rows.first() else {
            return Ok(None);
        };
        self.open(token, r.str(0)?, r.bytes(1)?, r.bytes(2)?)
            .map(Some)
    }

    /// Re-encrypts every card held under an older key with the current one; returns how many.
    pub async fn rekey(&self, db: &Db) -> Result<u64, VaultError> {
        let current = self.keys.current().0.clone();
        let mut done = 0;
        loop {
            let mut tx = db.begin().await?;
            let rows = tx
                .query(
                    "SELECT token, key_id, nonce, ciphertext FROM vault WHERE key_id <> $1 LIMIT 500",
                    params![current.as_str()],
                )
                .await?;
            if rows.is_empty() {
                tx.rollback().await?;
                return Ok(done);
            }
            for r in &rows {
                let token = r.str(0)?;
                let digits = self.open(token, r.str(1)?, r.bytes(2)?, r.bytes(3)?)?;
                let (key_id, nonce, sealed) = self.seal(token, &digits)?;
                tx.execute(
                    "UPDATE vault SET key_id = $2, nonce = $3, ciphertext = $4 WHERE token = $1",
                    params![token, key_id, nonce, sealed],
                )
                .await?;
                done += 1;
            }
            tx.commit().await?;
        }
    }
}

/// A SQLite database in `dir` with the vault's table (for tests here and in the edge).
#[cfg(test)]
pub(crate) async fn migrated(dir: &Path) -> Db {
    let db = Db::open_sqlite(dir.join("p.db")).unwrap();
    db.migrate(
        "vault",
        &[shopflow_store::Migration::portable(
            1,
            "vault",
            include_str!("../migrations/002_vault.sql"),
        )],
    )
    .await
    .unwrap();
    db
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_parse_and_say_what_is_wrong() {
        let text = VaultKeys::generate();
        let k = VaultKeys::parse(&text).unwrap();
        assert_eq!(k.current().0, "k1");
        assert!(format!("{k:?}").contains("k1") && !format!("{k:?}").contains(&text[40..60]));
        for (bad, says) in [
            ("key k1 AAAA", "32 bytes"),
            ("token-secret ???", "base64"),
            ("nonsense", "neither"),
            (
                "key k1 AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                "token-secret",
            ),
        ] {
            let e = VaultKeys::parse(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    /// A valid card number (Luhn): 15 digits and the check digit that fits them.
    fn card(prefix: u64) -> String {
        (0..10)
            .map(|d| format!("{prefix:015}{d}"))
            .find(|c| shopflow_contracts::luhn_valid(c))
            .expect("one check digit fits")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cards_sealed_at_once_share_transactions_and_all_are_stored() {
        let dir = tempfile::tempdir().unwrap();
        let db = migrated(dir.path()).await;
        let v = Vault::new(VaultKeys::parse(&VaultKeys::generate()).unwrap());
        let commits = db.commits().unwrap();
        let before = *commits.borrow();
        let tasks: Vec<_> = (0..200u64)
            .map(|i| {
                let (v, db) = (v.clone(), db.clone());
                tokio::spawn(async move { v.tokenize(&db, &card(400_000_000_000_000 + i)).await })
            })
            .collect();
        let mut tokens = Vec::new();
        for t in tasks {
            tokens.push(t.await.unwrap().unwrap());
        }
        for t in &tokens {
            assert_eq!(
                v.lookup(&db, &t.token).await.unwrap().as_ref(),
                Some(t),
                "every card answered for is stored"
            );
        }
        let committed = *commits.borrow() - before;
        assert!(
            committed < 100,
            "200 cards sealed at once took {committed} transactions"
        );
        let mut tx = db.begin().await.unwrap();
        assert_eq!(
            v.reveal(&mut tx, &tokens[7].token)
                .await
                .unwrap()
                .as_deref(),
            Some(card(400_000_000_000_007).as_str())
        );
        drop(tx);
        // A card the vault holds is answered from it, not written again.
        let again = v.tokenize(&db, &card(400_000_000_000_003)).await.unwrap();
        assert_eq!(again, tokens[3]);
    }

    #[tokio::test]
    async fn cards_are_stored_encrypted_revealed_by_token_and_rekeyed() {
        let dir = tempfile::tempdir().unwrap();
        let db = migrated(dir.path()).await;
        let old = VaultKeys::parse(&VaultKeys::generate()).unwrap();
        let v = Vault::new(old.clone());
        let t = v.tokenize(&db, "4242 4242 4242 4242").await.unwrap();
        assert_eq!(t.last4, "4242");
        assert!(
            t.token.starts_with("tok_") && t.token.len() == 36,
            "{}",
            t.token
        );
        assert_eq!(
            v.tokenize(&db, "4242424242424242").await.unwrap(),
            t,
            "same card, same token"
        );
        assert!(matches!(
            v.tokenize(&db, "4242424242424241").await,
            Err(VaultError::NotACard)
        ));
        let raw = std::fs::read(dir.path().join("p.db")).unwrap();
        assert!(
            !raw.windows(16).any(|w| w == b"4242424242424242"),
            "stored in clear"
        );
        let mut tx = db.begin().await.unwrap();
        assert_eq!(
            v.reveal(&mut tx, &t.token).await.unwrap().as_deref(),
            Some("4242424242424242")
        );
        assert_eq!(v.reveal(&mut tx, "tok_nope").await.unwrap(), None);
        tx.rollback().await.unwrap();

        // Rotation: a new first key encrypts; the old one still decrypts until the rekey.
        let rotated = VaultKeys {
            token_secret: old.token_secret,
            keys: vec![("k2".into(), random32()), old.keys[0].clone()],
        };
        let v2 = Vault::new(rotated.clone());
        assert_eq!(v2.rekey(&db).await.unwrap(), 1);
        assert_eq!(v2.rekey(&db).await.unwrap(), 0);
        let only_new = Vault::new(VaultKeys {
            token_secret: old.token_secret,
            keys: vec![rotated.keys[0].clone()],
        });
        let mut tx = db.begin().await.unwrap();
        assert_eq!(
            only_new.reveal(&mut tx, &t.token).await.unwrap().as_deref(),
            Some("4242424242424242")
        );
        tx.rollback().await.unwrap();
        // Without the key it was sealed under, a card cannot be read, and says why.
        let mut tx = db.begin().await.unwrap();
        let err = v.reveal(&mut tx, &t.token).await.unwrap_err();
        assert!(
            err.to_string().contains("key k2 is not configured"),
            "{err}"
        );
    }
}
