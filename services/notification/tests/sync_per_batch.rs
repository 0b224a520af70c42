//! Messages are made durable once per transaction, before the commit that records them as sent:
//! a batch of deliveries costs one sync of the spool, and nothing is recorded as sent while its
//! message could still be lost.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use shopflow_contracts::{OrderId, UserId};
use shopflow_notification::{Mailer, Notifications, Outbound, Spool};
use shopflow_runtime::Handler;
use shopflow_store::Db;

/// The spool, watched: what was delivered, how often it was synced, and how many messages each
/// sync covered.
struct Watched {
    spool: Spool,
    delivered: AtomicUsize,
    syncs: Mutex<Vec<usize>>,
    fail_sync: std::sync::atomic::AtomicBool,
}

impl Mailer for Watched {
    fn deliver(&self, m: &Outbound) -> std::io::Result<String> {
        self.delivered.fetch_add(1, Ordering::SeqCst);
        self.spool.deliver(m)
    }
    fn sync(&self) -> std::io::Result<()> {
        if self.fail_sync.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("disk full"));
        }
        self.syncs
            .lock()
            .unwrap()
            .push(self.delivered.load(Ordering::SeqCst));
        self.spool.sync()
    }
    fn blocks(&self) -> bool {
        false
    }
}

async fn sent(db: &Db) -> i64 {
    db.query("SELECT COUNT(*) FROM notifications", &[])
        .await
        .unwrap()[0]
        .i64(0)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sync_per_transaction_before_its_commit() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_sqlite(dir.path().join("notification.db")).unwrap();
    let mailer = Arc::new(Watched {
        spool: Spool::new(dir.path()),
        delivered: AtomicUsize::new(0),
        syncs: Mutex::new(Vec::new()),
        fail_sync: Default::default(),
    });
    let n = Notifications::open(db.clone(), mailer.clone())
        .await
        .unwrap();

    let users: Vec<UserId> = (0..10).map(|_| UserId::generate()).collect();
    let mut tx = db.begin().await.unwrap();
    for (i, u) in users.iter().enumerate() {
        let welcome = common::registered(u, &format!("user{i}@example.com"));
        n.handle(&mut tx, &welcome).await.unwrap();
        let order = common::order_created(&OrderId::generate(), u);
        n.handle(&mut tx, &order).await.unwrap();
    }
    assert_eq!(mailer.delivered.load(Ordering::SeqCst), 20);
    assert!(
        mailer.syncs.lock().unwrap().is_empty(),
        "synced before the commit was asked for"
    );
    tx.commit().await.unwrap();
    assert_eq!(
        *mailer.syncs.lock().unwrap(),
        [20],
        "one sync covering all 20 messages"
    );
    assert_eq!(sent(&db).await, 20);

    // A sync that fails fails the commit: nothing is recorded as sent, and the events are
    // handled again (the spool appends each message once).
    mailer.fail_sync.store(true, Ordering::SeqCst);
    let late = common::registered(&UserId::generate(), "late@example.com");
    let mut tx = db.begin().await.unwrap();
    n.handle(&mut tx, &late).await.unwrap();
    let err = tx.commit().await.unwrap_err();
    assert!(err.to_string().contains("disk full"), "{err}");
    assert_eq!(
        sent(&db).await,
        20,
        "recorded as sent without being durable"
    );
    mailer.fail_sync.store(false, Ordering::SeqCst);
    let mut tx = db.begin().await.unwrap();
    n.handle(&mut tx, &late).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(sent(&db).await, 21);
    let mail = std::fs::read_dir(dir.path().join("mail"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect::<String>();
    assert_eq!(mail.matches("To: late@example.com").count(), 1);
}
