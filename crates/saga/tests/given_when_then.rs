//! The saga runtime in given/when/then form on a three-step saga (a → b → c; a and b can be
//! undone), with an injected clock: given these replies, when this one arrives (or this much
//! time passes, or an operator cancels), then these commands are sent and the saga is here.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shopflow_envelope::{Envelope, Event, Kind, Meta};
use shopflow_runtime::Outgoing;
use shopflow_saga::{
    CommandDef, FailureKind, ManualClock, Orchestrator, SagaDef, SagaError, SagaState, Step,
};
use shopflow_store::Db;

macro_rules! message {
    ($name:ident, $kind:expr) => {
        #[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
        struct $name {
            id: String,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            reason: Option<String>,
        }
        impl Event for $name {
            const TYPE: &'static str = stringify!($name);
            const VERSION: u32 = 1;
            const KIND: Kind = $kind;
            const DOMAIN: &'static str = "test";
        }
    };
}

message!(Started, Kind::Integration);
message!(AOk, Kind::Integration);
message!(AUndone, Kind::Integration);
message!(BOk, Kind::Integration);
message!(BFailed, Kind::Integration);
message!(BUndone, Kind::Integration);
message!(COk, Kind::Integration);
message!(CFailed, Kind::Integration);
message!(DoA, Kind::Command);
message!(UndoA, Kind::Command);
message!(DoB, Kind::Command);
message!(UndoB, Kind::Command);
message!(DoC, Kind::Command);
message!(Finish, Kind::Command);
message!(Abort, Kind::Command);

fn id_of(d: &shopflow_saga::SagaData) -> Result<String, String> {
    Ok(d.trigger::<Started>()?.id)
}

macro_rules! cmd {
    ($name:ident) => {
        CommandDef::of(|d| {
            Ok($name {
                id: id_of(d)?,
                reason: None,
            })
        })
    };
}

fn definition() -> SagaDef {
    SagaDef::new("test-saga", "tester")
        .started_by::<Started>()
        .keyed_by("id")
        .step(
            Step::new("a", cmd!(DoA))
                .completes_on::<AOk>()
                .timeout(Duration::from_secs(5))
                .compensate_with::<AUndone>(cmd!(UndoA)),
        )
        .step(
            Step::new("b", cmd!(DoB))
                .completes_on::<BOk>()
                .fails_on::<BFailed>()
                .timeout(Duration::from_secs(10))
                .compensate_with::<BUndone>(cmd!(UndoB)),
        )
        .step(
            Step::new("c", cmd!(DoC))
                .completes_on::<COk>()
                .fails_on::<CFailed>()
                .timeout(Duration::from_secs(10)),
        )
        .on_completed(cmd!(Finish))
        .on_compensated(CommandDef::of(|d| {
            let f = d.failure.clone().ok_or("no failure")?;
            Ok(Abort {
                id: id_of(d)?,
                reason: Some(format!("{}: {}", f.step, f.reason)),
            })
        }))
        .resend_compensation_after(Duration::from_secs(3))
}

struct Given {
    _dir: tempfile::TempDir,
    db: Db,
    clock: Arc<ManualClock>,
    saga: Orchestrator,
}

async fn given() -> Given {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_sqlite(dir.path().join("owner.db")).unwrap();
    db.migrate_building_blocks().await.unwrap();
    db.migrate("saga", shopflow_saga::MIGRATIONS).await.unwrap();
    let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let saga = Orchestrator::new(definition(), clock.clone());
    Given {
        _dir: dir,
        db,
        clock,
        saga,
    }
}

fn msg<E: Event + Serialize>(e: &E) -> Envelope {
    Envelope::new(e, Meta::new("test", "x", 1)).unwrap()
}

macro_rules! ev {
    ($name:ident, $id:expr) => {
        msg(&$name {
            id: $id.to_string(),
            reason: None,
        })
    };
    ($name:ident, $id:expr, $reason:expr) => {
        msg(&$name {
            id: $id.to_string(),
            reason: Some($reason.to_string()),
        })
    };
}

impl Given {
    /// When `env` arrives: the commands it causes.
    async fn when(&self, env: Envelope) -> Vec<String> {
        let mut tx = self.db.begin().await.unwrap();
        let out = self.saga.handle(&mut tx, &env).await.unwrap();
        tx.commit().await.unwrap();
        types(&out)
    }

    async fn replies(&self, envs: Vec<Envelope>) {
        for e in envs {
            self.when(e).await;
        }
    }

    async fn state(&self, id: &str) -> (SagaState, Option<String>) {
        let v = self.saga.get(&self.db, id).await.unwrap().unwrap();
        (v.state, v.current_step)
    }

    /// The commands in the outbox, oldest first (timeouts and cancels write there directly).
    async fn outbox(&self) -> Vec<String> {
        shopflow_store::outbox::pending(&self.db, 10_000)
            .await
            .unwrap()
            .iter()
            .map(|m| {
                let v: serde_json::Value = serde_json::from_slice(&m.value).unwrap();
                v["eventType"].as_str().unwrap().to_owned()
            })
            .collect()
    }
}

fn types(out: &[Outgoing]) -> Vec<String> {
    out.iter()
        .map(|o| {
            assert_eq!(o.envelope.kind(), Kind::Command, "sagas send commands");
            o.envelope.event_type().to_owned()
        })
        .collect()
}

#[tokio::test]
async fn happy_path_sends_each_command_once_and_completes() {
    let g = given().await;
    assert_eq!(g.when(ev!(Started, "s1")).await, ["DoA"]);
    assert_eq!(g.state("s1").await, (SagaState::Running, Some("a".into())));
    assert_eq!(g.when(ev!(AOk, "s1")).await, ["DoB"]);
    assert_eq!(g.when(ev!(BOk, "s1")).await, ["DoC"]);
    assert_eq!(g.when(ev!(COk, "s1")).await, ["Finish"]);
    let v = g.saga.get(&g.db, "s1").await.unwrap().unwrap();
    assert_eq!(v.state, SagaState::Completed);
    assert_eq!(v.current_step, None);
    assert_eq!(v.deadline, None);
    let steps: Vec<(&str, &str, Option<&str>)> = v
        .steps
        .iter()
        .map(|s| (s.step.as_str(), s.kind.as_str(), s.outcome.as_deref()))
        .collect();
    assert_eq!(
        steps,
        [
            ("a", "action", Some("completed")),
            ("b", "action", Some("completed")),
            ("c", "action", Some("completed")),
            ("completed", "notify", Some("sent")),
        ]
    );
    assert!(v.steps.iter().all(|s| s.ended_at.is_some()));
}

#[tokio::test]
async fn a_failed_step_compensates_the_steps_before_it_in_reverse() {
    let g = given().await;
    g.replies(vec![ev!(Started, "s2"), ev!(AOk, "s2")]).await;
    // b fails: b did nothing, a is undone.
    assert_eq!(g.when(ev!(BFailed, "s2", "no stock")).await, ["UndoA"]);
    assert_eq!(
        g.state("s2").await,
        (SagaState::Compensating, Some("a".into()))
    );
    assert_eq!(g.when(ev!(AUndone, "s2")).await, ["Abort"]);
    let v = g.saga.get(&g.db, "s2").await.unwrap().unwrap();
    assert_eq!(v.state, SagaState::Compensated);
    let f = v.failure.unwrap();
    assert_eq!((f.step.as_str(), f.kind), ("b", FailureKind::Reply));
    assert_eq!(f.reason, "no stock");
    assert_eq!(f.event_type.as_deref(), Some("BFailed"));
}

#[tokio::test]
async fn compensation_after_the_last_step_undoes_everything_last_first() {
    let g = given().await;
    g.replies(vec![ev!(Started, "s3"), ev!(AOk, "s3"), ev!(BOk, "s3")])
        .await;
    assert_eq!(g.when(ev!(CFailed, "s3", "bad address")).await, ["UndoB"]);
    // The confirmation of a compensation not yet asked for changes nothing.
    assert!(g.when(ev!(AUndone, "s3")).await.is_empty());
    assert_eq!(g.when(ev!(BUndone, "s3")).await, ["UndoA"]);
    assert_eq!(g.when(ev!(AUndone, "s3")).await, ["Abort"]);
    assert_eq!(g.state("s3").await.0, SagaState::Compensated);
    let v = g.saga.get(&g.db, "s3").await.unwrap().unwrap();
    let kinds: Vec<String> = v
        .steps
        .iter()
        .map(|s| {
            format!(
                "{}:{}:{}",
                s.step,
                s.kind,
                s.outcome.clone().unwrap_or_default()
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "a:action:completed",
            "b:action:completed",
            "c:action:failed",
            "b:compensation:compensated",
            "a:compensation:compensated",
            "compensated:notify:sent",
        ]
    );
}

#[tokio::test]
async fn a_timeout_compensates_the_current_step_too_and_compensations_are_resent() {
    let g = given().await;
    g.replies(vec![ev!(Started, "s4"), ev!(AOk, "s4")]).await;
    // Not due yet.
    g.clock.advance(Duration::from_secs(9));
    assert_eq!(g.saga.fire_due(&g.db, 10).await.unwrap(), 0);
    // b's reply does not come within 10 s: b (which may have happened) and a are undone.
    g.clock.advance(Duration::from_secs(2));
    let before = g.outbox().await.len();
    assert_eq!(g.saga.fire_due(&g.db, 10).await.unwrap(), 1);
    assert_eq!(g.outbox().await[before..], ["UndoB"]);
    assert_eq!(
        g.state("s4").await,
        (SagaState::Compensating, Some("b".into()))
    );
    // The late reply of the step given up on changes nothing.
    assert!(g.when(ev!(BOk, "s4")).await.is_empty());
    // An unconfirmed compensation is sent again.
    g.clock.advance(Duration::from_secs(4));
    assert_eq!(g.saga.fire_due(&g.db, 10).await.unwrap(), 1);
    assert_eq!(g.outbox().await[before..], ["UndoB", "UndoB"]);
    assert_eq!(g.when(ev!(BUndone, "s4")).await, ["UndoA"]);
    assert_eq!(g.when(ev!(AUndone, "s4")).await, ["Abort"]);
    let v = g.saga.get(&g.db, "s4").await.unwrap().unwrap();
    assert_eq!(v.state, SagaState::Compensated);
    assert_eq!(v.failure.unwrap().kind, FailureKind::Timeout);
    let b_undo = v
        .steps
        .iter()
        .find(|s| s.step == "b" && s.kind == "compensation")
        .unwrap();
    assert_eq!(b_undo.sends, 2);
    let b = v
        .steps
        .iter()
        .find(|s| s.step == "b" && s.kind == "action")
        .unwrap();
    assert_eq!(b.outcome.as_deref(), Some("timed-out"));
}

#[tokio::test]
async fn timeouts_survive_a_restart() {
    let g = given().await;
    g.replies(vec![ev!(Started, "s5")]).await;
    // The process dies; a new orchestrator on the same database, later.
    let clock = Arc::new(ManualClock::new(
        shopflow_saga::Clock::now(&*g.clock) + chrono::Duration::seconds(6),
    ));
    let after_restart = Orchestrator::new(definition(), clock);
    assert_eq!(after_restart.fire_due(&g.db, 10).await.unwrap(), 1);
    // a timed out and is compensated itself.
    assert_eq!(
        g.state("s5").await,
        (SagaState::Compensating, Some("a".into()))
    );
    // (`when` hands its commands to the runtime; timers write theirs to the outbox.)
    assert_eq!(g.outbox().await, ["UndoA"]);
}

#[tokio::test]
async fn duplicates_unknown_and_finished_sagas_change_nothing() {
    let g = given().await;
    g.replies(vec![ev!(Started, "s6")]).await;
    // The same trigger again (another event id): no second saga, no command.
    assert!(g.when(ev!(Started, "s6")).await.is_empty());
    assert_eq!(g.when(ev!(AOk, "s6")).await, ["DoB"]);
    // A duplicate reply (a redelivery under a new id, or a repeated answer).
    assert!(g.when(ev!(AOk, "s6")).await.is_empty());
    // A reply for a saga that does not exist.
    assert!(g.when(ev!(BOk, "nobody")).await.is_empty());
    assert!(g.saga.get(&g.db, "nobody").await.unwrap().is_none());
    // A reply of a step not current yet.
    assert!(g.when(ev!(COk, "s6")).await.is_empty());
    g.replies(vec![ev!(BOk, "s6"), ev!(COk, "s6")]).await;
    assert_eq!(g.state("s6").await.0, SagaState::Completed);
    // Anything for a finished saga.
    for e in [
        ev!(COk, "s6"),
        ev!(CFailed, "s6", "late"),
        ev!(AUndone, "s6"),
    ] {
        assert!(g.when(e).await.is_empty());
    }
    assert_eq!(g.state("s6").await.0, SagaState::Completed);
    assert_eq!(g.saga.fire_due(&g.db, 10).await.unwrap(), 0);
}

#[tokio::test]
async fn an_operator_cancels_a_stuck_saga_which_compensates() {
    let g = given().await;
    g.replies(vec![ev!(Started, "s7"), ev!(AOk, "s7"), ev!(BOk, "s7")])
        .await;
    let before = g.outbox().await.len();
    let v = g
        .saga
        .cancel(&g.db, "s7", "carrier lost the parcel")
        .await
        .unwrap();
    assert_eq!(v.state, SagaState::Compensating);
    // c was current: it has no compensation, so b is undone first.
    assert_eq!(g.outbox().await[before..], ["UndoB"]);
    assert!(matches!(
        g.saga.cancel(&g.db, "s7", "again").await,
        Err(SagaError::NotRunning { .. })
    ));
    assert!(matches!(
        g.saga.cancel(&g.db, "nobody", "x").await,
        Err(SagaError::NotFound(_))
    ));
    g.replies(vec![ev!(BUndone, "s7"), ev!(AUndone, "s7")])
        .await;
    let v = g.saga.get(&g.db, "s7").await.unwrap().unwrap();
    assert_eq!(v.state, SagaState::Compensated);
    let f = v.failure.unwrap();
    assert_eq!(f.kind, FailureKind::Cancelled);
    assert_eq!(f.reason, "carrier lost the parcel");
    let counts = g.saga.counts(&g.db).await.unwrap();
    assert_eq!(counts["compensated"], 1);
    assert_eq!(
        g.saga
            .list(&g.db, Some(SagaState::Compensated), 10)
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn commands_carry_the_correlation_and_the_cause() {
    let g = given().await;
    let start = ev!(Started, "s8");
    let mut tx = g.db.begin().await.unwrap();
    let out = g.saga.handle(&mut tx, &start).await.unwrap();
    tx.commit().await.unwrap();
    let cmd = &out[0].envelope;
    assert_eq!(cmd.correlation_id(), start.correlation_id());
    assert_eq!(
        cmd.causation_id().map(|c| c.to_string()),
        Some(start.event_id().to_string())
    );
    assert_eq!(cmd.aggregate_id(), "s8");
    assert_eq!(out[0].topic, "test.do-a");
}
