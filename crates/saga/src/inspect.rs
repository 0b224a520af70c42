//! Reading sagas for operators: one with its steps, a list, counts by state.

use std::collections::BTreeMap;

use shopflow_store::{Db, Row, params};

use crate::definition::SagaData;
use crate::engine::{COLUMNS, Orchestrator};
use crate::state::{SagaError, SagaState, SagaView, StepView, rfc3339};

impl Orchestrator {
    fn view(&self, r: &Row) -> Result<SagaView, shopflow_store::Error> {
        let state = SagaState::parse(r.str(1)?).unwrap_or(SagaState::Running);
        let data: Option<SagaData> = serde_json::from_str(r.str(3)?).ok();
        let step = r.i64(2)? as usize;
        Ok(SagaView {
            saga_type: self.def.name.to_owned(),
            saga_id: r.str(0)?.to_owned(),
            state,
            current_step: (!state.is_final())
                .then(|| self.def.steps.get(step).map(|s| s.name.to_owned()))
                .flatten(),
            correlation_id: r.str(4)?.to_owned(),
            failure: data.and_then(|d| d.failure),
            deadline: r.opt_i64(8)?.map(rfc3339),
            created_at: rfc3339(r.i64(9)?),
            updated_at: rfc3339(r.i64(10)?),
            steps: Vec::new(),
        })
    }

    /// One instance with its steps.
    pub async fn get(&self, db: &Db, id: &str) -> Result<Option<SagaView>, SagaError> {
        let rows = db
            .query(
                &format!("SELECT {COLUMNS} FROM sagas WHERE saga_type = $1 AND saga_id = $2"),
                params![self.def.name, id],
            )
            .await?;
        let Some(r) = rows.first() else {
            return Ok(None);
        };
        let mut v = self.view(r)?;
        let steps = db
            .query(
                "SELECT seq, step, kind, command, started_at, ended_at, outcome, detail, sends FROM saga_steps
                 WHERE saga_type = $1 AND saga_id = $2 ORDER BY seq",
                params![self.def.name, id],
            )
            .await?;
        for s in &steps {
            let started = s.i64(4)?;
            let ended = s.opt_i64(5)?;
            v.steps.push(StepView {
                seq: s.i64(0)?,
                step: s.str(1)?.to_owned(),
                kind: s.str(2)?.to_owned(),
                command: s.str(3)?.to_owned(),
                started_at: rfc3339(started),
                ended_at: ended.map(rfc3339),
                duration_ms: ended.map(|e| e - started),
                outcome: s.opt_str(6)?.map(str::to_owned),
                detail: s.opt_str(7)?.map(str::to_owned),
                sends: s.i64(8)?,
            });
        }
        Ok(Some(v))
    }

    /// Instances, most recently changed first, optionally in one state.
    pub async fn list(
        &self,
        db: &Db,
        state: Option<SagaState>,
        limit: u32,
    ) -> Result<Vec<SagaView>, SagaError> {
        let limit = limit.clamp(1, 1000);
        let rows = match state {
            Some(s) => {
                db.query(
                    &format!("SELECT {COLUMNS} FROM sagas WHERE saga_type = $1 AND state = $2 ORDER BY updated_at DESC, saga_id LIMIT {limit}"),
                    params![self.def.name, s.as_str()],
                )
                .await?
            }
            None => {
                db.query(
                    &format!("SELECT {COLUMNS} FROM sagas WHERE saga_type = $1 ORDER BY updated_at DESC, saga_id LIMIT {limit}"),
                    params![self.def.name],
                )
                .await?
            }
        };
        Ok(rows
            .iter()
            .map(|r| self.view(r))
            .collect::<Result<_, _>>()?)
    }

    /// Instances per state.
    pub async fn counts(&self, db: &Db) -> Result<BTreeMap<&'static str, i64>, SagaError> {
        let rows = db
            .query(
                "SELECT state, COUNT(*) FROM sagas WHERE saga_type = $1 GROUP BY state",
                params![self.def.name],
            )
            .await?;
        let mut out: BTreeMap<&'static str, i64> =
            SagaState::ALL.iter().map(|s| (s.as_str(), 0)).collect();
        for r in rows {
            if let Ok(s) = SagaState::parse(r.str(0)?) {
                out.insert(s.as_str(), r.i64(1)?);
            }
        }
        Ok(out)
    }
}
