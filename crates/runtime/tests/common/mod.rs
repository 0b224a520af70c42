//! What the runtime's integration tests share.

use shopflow_store::Db;

/// A service's SQLite database at `path`, with the building blocks' tables and the table
/// `ddl` creates (the one the test's handler writes).
pub(crate) async fn service_db(path: &std::path::Path, ddl: &str) -> Db {
    let db = Db::open_sqlite(path).unwrap();
    db.migrate_building_blocks().await.unwrap();
    let mut tx = db.begin().await.unwrap();
    tx.batch(ddl).await.unwrap();
    tx.commit().await.unwrap();
    db
}
