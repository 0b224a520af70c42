//! Two order-service instances on one PostgreSQL schema: one projects at a time, and the other
//! takes over when it stops. PostgreSQL's address comes from `SHOPFLOW_TEST_POSTGRES`; without it
//! the test is skipped with a printed reason, except under `CI=true`, where that is a failure.

mod common;

use std::time::Duration;

use shopflow_envelope::CorrelationId;
use shopflow_order::{Orders, PROJECTOR_LOCK_CLASS};
use shopflow_runtime::Shutdown;
use shopflow_store::{Db, params};

async fn sources(orders: &Orders, ids: &[String]) -> Vec<&'static str> {
    let mut out = Vec::new();
    for id in ids {
        out.push(orders.get(id).await.unwrap().source);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_projects_at_a_time_and_another_takes_over() {
    let Some(url) = shopflow_store::test_postgres_url("the PostgreSQL projector test") else {
        return;
    };
    let schema = format!("t_proj_{}", std::process::id());
    let db_a = Db::connect_postgres(&url, &schema).await.unwrap();
    let db_b = Db::connect_postgres(&url, &schema).await.unwrap();
    let a = Orders::open(db_a.clone()).await.unwrap();
    let b = Orders::open(db_b.clone()).await.unwrap();
    // The catalog and the customer, as the order service's copies learn them.
    common::seed(&db_a).await;

    // Somebody else holds the projection (as a busy instance would).
    let mut holder = db_a.begin().await.unwrap();
    holder
        .execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            params![PROJECTOR_LOCK_CLASS, "order_view"],
        )
        .await
        .unwrap();

    let (stop_a, shutdown_a) = Shutdown::new();
    let (stop_b, shutdown_b) = Shutdown::new();
    let pa = {
        let a = a.clone();
        tokio::spawn(async move { a.run_projector(shutdown_a).await })
    };
    let pb = {
        let b = b.clone();
        tokio::spawn(async move { b.run_projector(shutdown_b).await })
    };
    let mut ids = Vec::new();
    for i in 0..10 {
        let (svc, name) = if i % 2 == 0 { (&a, "a") } else { (&b, "b") };
        let (created, id) = svc
            .place(
                common::order(),
                Some(format!("{name}-{i}")),
                CorrelationId::generate(),
            )
            .await
            .unwrap();
        assert!(created);
        ids.push(id.to_string());
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        sources(&a, &ids).await.iter().all(|s| *s == "event-store"),
        "nothing is projected while the projection is held elsewhere"
    );

    // Released: one of the two projects everything.
    holder.rollback().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sources(&b, &ids).await.iter().any(|s| *s != "read-model") {
        assert!(std::time::Instant::now() < deadline, "not projected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // One instance stops; the other carries on alone.
    stop_a.trigger();
    pa.await.unwrap();
    for _ in 0..4 {
        let (_, id) = a
            .place(common::order(), None, CorrelationId::generate())
            .await
            .unwrap();
        ids.push(id.to_string());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sources(&a, &ids).await.iter().any(|s| *s != "read-model") {
        assert!(
            std::time::Instant::now() < deadline,
            "not projected after the takeover"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let freshness = b.get(&ids[13]).await.unwrap().projection.unwrap();
    assert_eq!(freshness.behind_events, 0);
    assert_eq!(freshness.projected_position, freshness.store_position);

    stop_b.trigger();
    pb.await.unwrap();
    let mut tx = db_a.begin().await.unwrap();
    tx.batch(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
    tx.commit().await.unwrap();
}
