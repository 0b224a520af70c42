#![doc = include_str!("../README.md")]

mod definition;
mod engine;
mod inspect;
mod state;

pub use definition::{CommandDef, SagaData, SagaDef, Step};
pub use engine::{Orchestrator, SagaHandler};
pub use state::{
    Clock, Failure, FailureKind, ManualClock, SagaError, SagaState, SagaView, StepView, SystemClock,
};

use shopflow_store::Migration;

/// The saga tables (one text for both databases: SQLite gives `BIGINT` integer affinity),
/// applied to the owning service's database as component `saga`.
const SAGA_TABLES: &str = "CREATE TABLE sagas (
        saga_type      TEXT    NOT NULL,
        saga_id        TEXT    NOT NULL,
        state          TEXT    NOT NULL,
        current_step   BIGINT  NOT NULL,
        data           TEXT    NOT NULL,
        correlation_id TEXT    NOT NULL,
        failure        TEXT,
        deadline_ms    BIGINT,
        next_seq       BIGINT  NOT NULL,
        awaiting_seq   BIGINT,
        version        BIGINT  NOT NULL,
        created_at     BIGINT  NOT NULL,
        updated_at     BIGINT  NOT NULL,
        PRIMARY KEY (saga_type, saga_id)
    );
    CREATE INDEX sagas_deadline ON sagas (deadline_ms) WHERE deadline_ms IS NOT NULL;
    CREATE INDEX sagas_state ON sagas (saga_type, state, updated_at);
    CREATE TABLE saga_steps (
        saga_type  TEXT    NOT NULL,
        saga_id    TEXT    NOT NULL,
        seq        BIGINT  NOT NULL,
        step       TEXT    NOT NULL,
        kind       TEXT    NOT NULL,
        command    TEXT    NOT NULL,
        started_at BIGINT  NOT NULL,
        ended_at   BIGINT,
        outcome    TEXT,
        detail     TEXT,
        sends      BIGINT  NOT NULL,
        PRIMARY KEY (saga_type, saga_id, seq)
    );";

pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "sagas",
    sqlite: SAGA_TABLES,
    postgres: SAGA_TABLES,
}];
