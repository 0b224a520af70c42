//! `shopflow migrate`: the growth path from an embedded deployment to Kafka + PostgreSQL.
//!
//! With the embedded shop stopped, it copies
//! 1. every service's database (event store, snapshots, outbox, inbox, the service's own tables,
//!    sagas, dead letters) from its SQLite file into the service's PostgreSQL schema, created and
//!    migrated first; sequences continue after the copied rows;
//! 2. every topic's records, partition by partition in offset order, into the Kafka topic of the
//!    same name (same key, value, headers and timestamp; the same partitioner puts a key on the
//!    same partition), so Kafka offset = embedded offset − the partition's start;
//! 3. every consumer group's committed offsets, mapped the same way.
//!
//! Targets must be empty (fresh schemas, fresh topics or a fresh namespace): a second run over a
//! migrated deployment is refused instead of duplicating anything. The inboxes travel with the
//! databases, so a record delivered again after the move changes nothing.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};
use shopflow_bus::{Bus, Message, TopicPartition, TopicSpec};
use shopflow_kafka::{KafkaBus, KafkaConfig};
use shopflow_log::Log;
use shopflow_store::Db;

use crate::services;
use shopflow_store::DbUrl as DbConfig;

/// What was moved.
#[derive(Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Moved {
    /// Rows per `<schema>.<table>`.
    pub rows: BTreeMap<String, u64>,
    /// Records per topic.
    pub records: BTreeMap<String, u64>,
    /// Partitions whose committed offset was carried over, per group.
    pub groups: BTreeMap<String, usize>,
}

/// Creates and migrates a database's schema, as `shopflow up` would.
async fn prepare(name: &str, db: &Db) -> anyhow::Result<()> {
    match services::find(name) {
        Some(service) => service.migrate(db).await?,
        None if name == services::OPS => {
            db.migrate_service(services::OPS, shopflow_runtime::dlq::MIGRATIONS)
                .await?
        }
        None => bail!("unknown database {name}"),
    }
    Ok(())
}

/// Moves the embedded deployment in `data_dir` to Kafka and PostgreSQL.
pub async fn migrate(data_dir: &Path, kafka: KafkaConfig, db: &DbConfig) -> anyhow::Result<Moved> {
    let DbConfig::Postgres { schema_prefix, .. } = db else {
        bail!("--db must be postgres://…: migrate moves an embedded deployment to PostgreSQL");
    };
    let mut moved = Moved::default();
    let log =
        Log::open(data_dir.join("log"), shopflow_log::Config::default()).with_context(|| {
            format!(
                "opening the event log in {} (is the shop stopped?)",
                data_dir.join("log").display()
            )
        })?;

    // 1. Databases.
    for name in services::databases() {
        let from = DbConfig::Sqlite.open_existing(data_dir, name).await?;
        let schema = format!("{schema_prefix}{name}");
        let to = db.open(data_dir, name).await?;
        prepare(name, &to).await?;
        let copied = shopflow_store::copy_tables(&from, &to)
            .await
            .with_context(|| format!("copying the {name} database into {schema}"))?;
        for (table, rows) in copied {
            moved.rows.insert(format!("{schema}.{table}"), rows);
        }
        tracing::info!(schema, "database copied");
    }

    // 2. Topics.
    let kafka = KafkaBus::connect(kafka)?;
    let mut starts: BTreeMap<TopicPartition, u64> = BTreeMap::new();
    for topic in log.topics().await? {
        kafka
            .create_topic(&topic.name, &TopicSpec::new(topic.partitions))
            .await
            .with_context(|| format!("creating topic {} on Kafka", topic.name))?;
        let mut copied = 0u64;
        for p in 0..topic.partitions {
            let tp = TopicPartition::new(topic.name.as_str(), p);
            let (start, end) = log.watermarks(&tp).await?;
            let (_, kafka_end) = kafka.watermarks(&tp).await?;
            if kafka_end > 0 && end > start {
                bail!(
                    "Kafka topic {tp} is not empty: migrate only into fresh topics (or a fresh namespace)"
                );
            }
            starts.insert(tp.clone(), start);
            let mut from = start;
            while from < end {
                let recs = log.read(&tp, from, 1000)?;
                let Some(last) = recs.last() else { break };
                from = last.offset + 1;
                let offsets: Vec<u64> = recs.iter().map(|r| r.offset).collect();
                let batch: Vec<Message> = recs
                    .into_iter()
                    .map(|r| Message {
                        topic: r.topic.to_string(),
                        key: r.key,
                        value: r.value,
                        headers: r.headers,
                        timestamp_ms: Some(r.timestamp_ms),
                    })
                    .collect();
                copied += batch.len() as u64;
                let acks = kafka.publish(batch).await?;
                // Offsets must map one to one, or the consumer positions would not.
                for (ack, offset) in acks.iter().zip(offsets) {
                    if ack.partition != p || ack.offset != offset - start {
                        bail!(
                            "record {tp}@{offset} landed on {}@{} in Kafka; expected {p}@{}",
                            ack.partition,
                            ack.offset,
                            offset - start
                        );
                    }
                }
            }
        }
        moved.records.insert(topic.name.clone(), copied);
    }

    // 3. Consumer positions.
    for group in services::groups() {
        let committed = log.committed(group).await?;
        if committed.is_empty() {
            continue;
        }
        let mapped: Vec<(TopicPartition, u64)> = committed
            .into_iter()
            .map(|(tp, o)| {
                let start = starts.get(&tp).copied().unwrap_or(0);
                (tp, o.saturating_sub(start))
            })
            .collect();
        kafka
            .commit_group(group, &mapped)
            .await
            .with_context(|| format!("carrying over the offsets of group {group}"))?;
        moved.groups.insert(group.to_owned(), mapped.len());
    }
    kafka.close().await?;
    log.close().await?;
    Ok(moved)
}
