//! Deferred notifications on PostgreSQL with two instances: an event deferred for a recipient in
//! one transaction, while another transaction registers that recipient, is still sent (exactly
//! once). PostgreSQL's address comes from `SHOPFLOW_TEST_POSTGRES`; without it the test is skipped
//! with a printed reason, except under `CI=true`, where that is a failure.

mod common;

use std::sync::Arc;
use std::time::Duration;

use shopflow_contracts::{OrderId, UserId};
use shopflow_notification::{Notifications, Spool};
use shopflow_runtime::Handler;
use shopflow_store::{Db, params};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_deferred_while_its_recipient_registers_is_still_sent() {
    let Some(url) = shopflow_store::test_postgres_url("the PostgreSQL notification test") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let schema = format!("t_notify_{}", std::process::id());
    let db_a = Db::connect_postgres(&url, &schema).await.unwrap();
    let db_b = Db::connect_postgres(&url, &schema).await.unwrap();
    let spool = Arc::new(Spool::new(dir.path()));
    let a = Notifications::open(db_a.clone(), spool.clone())
        .await
        .unwrap();
    let b = Arc::new(Notifications::open(db_b.clone(), spool).await.unwrap());

    let user = UserId::generate();
    let order = OrderId::generate();
    let created = common::order_created(&order, &user);
    let registered = common::registered(&user, "ada@example.com");

    // Instance A: the order arrives first; its recipient is unknown, so it is deferred (not
    // committed yet).
    let mut tx_a = db_a.begin().await.unwrap();
    a.handle(&mut tx_a, &created).await.unwrap();
    // Instance B registers the recipient meanwhile.
    let registering = {
        let (b, db_b, registered) = (b.clone(), db_b.clone(), registered.clone());
        tokio::spawn(async move {
            let mut tx = db_b.begin().await.unwrap();
            b.handle(&mut tx, &registered).await.unwrap();
            tx.commit().await.unwrap();
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    tx_a.commit().await.unwrap();
    registering.await.unwrap();

    let sent = db_a
        .query(
            "SELECT event_type FROM notifications WHERE user_id = $1 ORDER BY event_type",
            params![user.as_str()],
        )
        .await
        .unwrap();
    let sent: Vec<String> = sent.iter().map(|r| r.str(0).unwrap().to_owned()).collect();
    assert_eq!(sent, ["OrderCreated", "UserRegistered"]);
    let waiting = db_a
        .query("SELECT event_id FROM deferred", &[])
        .await
        .unwrap();
    assert!(
        waiting.is_empty(),
        "an event still waits for a recipient that is known"
    );

    let mut tx = db_a.begin().await.unwrap();
    tx.batch(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
    tx.commit().await.unwrap();
}
