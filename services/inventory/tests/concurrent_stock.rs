//! Stock accounting under concurrent writers on PostgreSQL: `PUT /products/{sku}` from two
//! instances while reservations commit. PostgreSQL's address comes from `SHOPFLOW_TEST_POSTGRES`;
//! without it the test is skipped with a printed reason, except under `CI=true`, where that is a
//! failure.

use shopflow_envelope::CorrelationId;
use shopflow_inventory::{Inventory, PutProduct};
use shopflow_store::{Db, params};

fn stock(n: i64) -> PutProduct {
    PutProduct {
        name: "Mug".into(),
        price_minor: 1250,
        currency: "EUR".into(),
        stock: n,
    }
}

/// stocked = available + reserved + shipped holds however restocks and reservations interleave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restocks_racing_reservations_keep_the_books_balanced() {
    let Some(url) = shopflow_store::test_postgres_url("the PostgreSQL stock test") else {
        return;
    };
    let schema = format!("t_stock_{}", std::process::id());
    let db_a = Db::connect_postgres(&url, &schema).await.unwrap();
    let db_b = Db::connect_postgres(&url, &schema).await.unwrap();
    let a = Inventory::open(db_a.clone()).await.unwrap();
    let b = Inventory::open(db_b.clone()).await.unwrap();
    a.put("MUG", stock(100_000), CorrelationId::generate())
        .await
        .unwrap();

    let restocks: Vec<_> = [a, b]
        .into_iter()
        .map(|inv| {
            tokio::spawn(async move {
                for i in 0..40 {
                    inv.put("MUG", stock(100_000 + i), CorrelationId::generate())
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    // Reservations: the statement the stock handler runs, committed one by one meanwhile.
    let reservations: Vec<_> = (0..4)
        .map(|_| {
            let db = db_a.clone();
            tokio::spawn(async move {
                for _ in 0..60 {
                    let mut tx = db.begin().await.unwrap();
                    tx.execute(
                        "UPDATE products SET available = available - $2, reserved = reserved + $2, updated_at = $3
                         WHERE sku = $1 AND available >= $2",
                        params!["MUG", 1, 0],
                    )
                    .await
                    .unwrap();
                    tx.commit().await.unwrap();
                }
            })
        })
        .collect();
    for t in restocks.into_iter().chain(reservations) {
        t.await.unwrap();
    }

    let rows = db_a
        .query(
            "SELECT available, reserved, shipped, stocked FROM products WHERE sku = 'MUG'",
            &[],
        )
        .await
        .unwrap();
    let r = &rows[0];
    let (available, reserved, shipped, stocked) = (
        r.i64(0).unwrap(),
        r.i64(1).unwrap(),
        r.i64(2).unwrap(),
        r.i64(3).unwrap(),
    );
    assert_eq!(reserved, 240);
    assert_eq!(
        stocked,
        available + reserved + shipped,
        "available {available}, reserved {reserved}, shipped {shipped}"
    );

    let mut tx = db_a.begin().await.unwrap();
    tx.batch(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
    tx.commit().await.unwrap();
}
