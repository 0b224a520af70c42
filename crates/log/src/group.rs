//! In-process consumer groups: membership, partition assignment and rebalancing.
//!
//! Assignment is round-robin over the sorted partitions of the subscribed topics, skipping members
//! that do not subscribe to a partition's topic (Kafka's round-robin assignor). Every join and
//! leave starts a new generation; members see it at their next `poll` or `commit`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use shopflow_bus::TopicPartition;
use tokio::sync::Notify;

#[derive(Debug, Default)]
pub(crate) struct Group {
    pub(crate) generation: u64,
    pub(crate) members: BTreeMap<u64, Member>,
}

#[derive(Debug)]
pub(crate) struct Member {
    pub(crate) topics: Vec<String>,
    pub(crate) notify: Arc<Notify>,
    pub(crate) assignment: Vec<TopicPartition>,
}

impl Group {
    /// Recomputes every member's assignment. `partitions` gives the partition count of a topic.
    pub(crate) fn rebalance(&mut self, partitions: impl Fn(&str) -> u32) {
        self.generation += 1;
        let topics: BTreeSet<&String> = self.members.values().flat_map(|m| &m.topics).collect();
        let mut all = Vec::new();
        for t in topics {
            for p in 0..partitions(t) {
                all.push(TopicPartition::new(t.as_str(), p));
            }
        }
        let ids: Vec<u64> = self.members.keys().copied().collect();
        let mut assigned: BTreeMap<u64, Vec<TopicPartition>> =
            ids.iter().map(|id| (*id, Vec::new())).collect();
        let mut cursor = 0usize;
        for tp in all {
            for step in 0..ids.len() {
                let id = ids[(cursor + step) % ids.len()];
                if self.members[&id].topics.iter().any(|t| **t == *tp.topic) {
                    assigned.get_mut(&id).expect("member").push(tp);
                    cursor = (cursor + step + 1) % ids.len();
                    break;
                }
            }
        }
        for (id, parts) in assigned {
            let m = self.members.get_mut(&id).expect("member");
            m.assignment = parts;
            m.notify.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(topics: &[&str]) -> Member {
        Member {
            topics: topics.iter().map(|t| t.to_string()).collect(),
            notify: Arc::new(Notify::new()),
            assignment: Vec::new(),
        }
    }

    #[test]
    fn splits_evenly_and_respects_subscriptions() {
        let mut g = Group::default();
        g.members.insert(1, member(&["a", "b"]));
        g.members.insert(2, member(&["a", "b"]));
        g.members.insert(3, member(&["b"]));
        g.rebalance(|_| 3);
        let total: usize = g.members.values().map(|m| m.assignment.len()).sum();
        assert_eq!(total, 6);
        assert!(g.members[&3].assignment.iter().all(|tp| &*tp.topic == "b"));
        for m in g.members.values() {
            assert!(!m.assignment.is_empty());
        }
        let mut seen = BTreeSet::new();
        for m in g.members.values() {
            for tp in &m.assignment {
                assert!(seen.insert(tp.clone()));
            }
        }
    }

    #[test]
    fn single_partition_topics_spread_over_members() {
        let mut g = Group::default();
        g.members.insert(1, member(&["a", "b", "c", "d"]));
        g.members.insert(2, member(&["a", "b", "c", "d"]));
        g.rebalance(|_| 1);
        assert_eq!(g.members[&1].assignment.len(), 2);
        assert_eq!(g.members[&2].assignment.len(), 2);
        assert_eq!(g.generation, 1);
    }
}
