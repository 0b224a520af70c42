//! What a saga is and how it shows: its states, failures, clock and errors, and the views
//! operators read.

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use shopflow_runtime::HandlerError;

/// Where the orchestrator gets the time from (injected in tests).
pub trait Clock: Send + Sync + fmt::Debug {
    fn now(&self) -> DateTime<Utc>;
}

/// The machine's UTC clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        // The system's clock, or the simulator's in a simulation.
        shopflow_envelope::sim::now()
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        Self(Mutex::new(start))
    }

    pub fn advance(&self, by: Duration) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *t += chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Where a saga instance is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SagaState {
    /// Working through its steps.
    Running,
    /// Undoing the completed steps, last first.
    Compensating,
    /// Every step completed.
    Completed,
    /// A step failed (or timed out, or an operator cancelled it) and every completed step was
    /// compensated.
    Compensated,
}

impl SagaState {
    pub fn as_str(self) -> &'static str {
        match self {
            SagaState::Running => "running",
            SagaState::Compensating => "compensating",
            SagaState::Completed => "completed",
            SagaState::Compensated => "compensated",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "running" => SagaState::Running,
            "compensating" => SagaState::Compensating,
            "completed" => SagaState::Completed,
            "compensated" => SagaState::Compensated,
            other => {
                return Err(format!(
                    "unknown saga state `{other}` (running, compensating, completed, compensated)"
                ));
            }
        })
    }

    pub fn is_final(self) -> bool {
        matches!(self, SagaState::Completed | SagaState::Compensated)
    }

    pub const ALL: [SagaState; 4] = [
        SagaState::Running,
        SagaState::Compensating,
        SagaState::Completed,
        SagaState::Compensated,
    ];
}

/// Why a saga gave up on its steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// A step's failure reply.
    Reply,
    /// A step's reply did not come in time.
    Timeout,
    /// An operator cancelled the saga.
    Cancelled,
}

/// The failure that made a saga compensate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    pub step: String,
    pub kind: FailureKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    pub reason: String,
}

/// Errors of the operator's actions.
#[derive(Debug, thiserror::Error)]
pub enum SagaError {
    #[error(transparent)]
    Store(#[from] shopflow_store::Error),
    #[error("no saga `{0}`")]
    NotFound(String),
    #[error("saga `{id}` is {state}, not running")]
    NotRunning { id: String, state: &'static str },
    #[error("{0}")]
    Failed(String),
}

impl From<HandlerError> for SagaError {
    fn from(e: HandlerError) -> Self {
        SagaError::Failed(e.to_string())
    }
}

/// One step of an instance, as recorded.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepView {
    pub seq: i64,
    pub step: String,
    /// `action`, `compensation` or `notify`.
    pub kind: String,
    pub command: String,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub duration_ms: Option<i64>,
    /// `completed`, `failed`, `timed-out`, `cancelled`, `compensated`, `sent`, or none while
    /// awaited.
    pub outcome: Option<String>,
    pub detail: Option<String>,
    /// How often the command was sent (compensations are resent until confirmed).
    pub sends: i64,
}

/// A saga instance.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SagaView {
    pub saga_type: String,
    pub saga_id: String,
    pub state: SagaState,
    /// The step being worked on or compensated (none once finished).
    pub current_step: Option<String>,
    pub correlation_id: String,
    pub failure: Option<Failure>,
    pub deadline: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepView>,
}

pub(crate) fn rfc3339(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}
