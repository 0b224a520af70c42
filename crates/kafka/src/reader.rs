//! Reading a partition from an offset outside any consumer group: an assigned consumer that
//! never commits, for tools that browse or tail a topic.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::{Offset, TopicPartitionList};
use shopflow_bus::{Record, Result, TopicPartition};

use crate::client::Inner;
use crate::consumer::record;
use crate::error::{join_err, kerr};

/// Up to `max` records of `tp` from `from` on (from the start if `from` is older).
pub(crate) async fn read(
    inner: Arc<Inner>,
    tp: &TopicPartition,
    from: u64,
    max: usize,
) -> Result<Vec<Record>> {
    inner.check_open()?;
    let (start, end) = inner.watermarks(tp).await?;
    let from = from.max(start);
    if from >= end || max == 0 {
        return Ok(Vec::new());
    }
    let want = usize::try_from(end - from).unwrap_or(usize::MAX).min(max);
    let tp = tp.clone();
    tokio::task::spawn_blocking(move || {
        // Assigned, not subscribed: the group id is never joined and nothing is committed.
        let consumer: BaseConsumer = inner
            .config
            .client()
            .set("group.id", inner.ns("shopflow-reader"))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .create()
            .map_err(kerr)?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(
            &inner.ns(&tp.topic),
            tp.partition as i32,
            Offset::Offset(from as i64),
        )
        .map_err(kerr)?;
        consumer.assign(&tpl).map_err(kerr)?;
        let mut out = Vec::with_capacity(want);
        let mut topics = HashMap::new();
        let deadline = Instant::now() + inner.config.request_timeout;
        while out.len() < want && Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => out.push(record(&m, &mut topics, &inner.config.namespace)),
                Some(Err(e)) => return Err(kerr(e)),
                None => {}
            }
        }
        Ok(out)
    })
    .await
    .map_err(join_err)?
}
