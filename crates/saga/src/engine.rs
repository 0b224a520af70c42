//! The orchestrator: saga instances in the owning service's database, advanced by replies,
//! timeouts and operators, each in one transaction with the inbox record (when run by the
//! consumer runtime) and the outbox rows of the commands it sends.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use shopflow_envelope::{CorrelationId, Envelope, Kind, Meta};
use shopflow_runtime::{Handler, HandlerError, Outgoing, Shutdown};
use shopflow_store::emit;
use shopflow_store::{Db, Row, Tx, params};

use crate::definition::{CommandDef, SagaData, SagaDef};
use crate::state::{Clock, Failure, FailureKind, SagaError, SagaState, SagaView};

/// An instance being advanced.
#[derive(Debug)]
struct Instance {
    id: String,
    state: SagaState,
    step: usize,
    data: SagaData,
    correlation: String,
    version: i64,
    next_seq: i64,
    awaiting: Option<i64>,
    deadline: Option<i64>,
    new: bool,
}

#[derive(Debug)]
enum RowOp {
    Insert {
        seq: i64,
        step: &'static str,
        kind: &'static str,
        command: &'static str,
        outcome: Option<&'static str>,
    },
    Close {
        seq: i64,
        outcome: &'static str,
        detail: Option<String>,
    },
    Resent {
        seq: i64,
    },
}

/// One transition in the making: the instance, the step rows to write, the commands to send.
struct Change<'a> {
    def: &'a SagaDef,
    now: i64,
    cause: Option<&'a Envelope>,
    inst: Instance,
    rows: Vec<RowOp>,
    out: Vec<Outgoing>,
}

impl Change<'_> {
    fn send(
        &mut self,
        cmd: &CommandDef,
        step: &'static str,
        kind: &'static str,
        awaited: bool,
    ) -> Result<(), HandlerError> {
        let data = cmd
            .build(&self.inst.data)
            .map_err(|e| HandlerError::Permanent(format!("saga {}: {e}", self.def.name)))?;
        let seq = self.inst.next_seq;
        self.inst.next_seq += 1;
        self.rows.push(RowOp::Insert {
            seq,
            step,
            kind,
            command: cmd.command,
            outcome: (!awaited).then_some("sent"),
        });
        if awaited {
            self.inst.awaiting = Some(seq);
        }
        self.emit(cmd.command, &cmd.topic, data, seq)
    }

    fn emit(
        &mut self,
        command: &str,
        topic: &str,
        data: Value,
        seq: i64,
    ) -> Result<(), HandlerError> {
        let seq = seq.max(0) as u64 + 1;
        let meta = match self.cause {
            Some(env) => Meta::caused_by(env, self.def.source, self.inst.id.as_str(), seq),
            None => Meta::new(self.def.source, self.inst.id.as_str(), seq)
                .with_correlation(CorrelationId::new(self.inst.correlation.clone())),
        };
        let envelope = Envelope::from_parts(command, 1, Kind::Command, data, meta)?;
        self.out.push(Outgoing {
            topic: topic.to_owned(),
            envelope,
        });
        Ok(())
    }

    fn close_awaited(&mut self, outcome: &'static str, detail: Option<String>) {
        if let Some(seq) = self.inst.awaiting.take() {
            self.rows.push(RowOp::Close {
                seq,
                outcome,
                detail,
            });
        }
    }

    fn start_step(&mut self, i: usize) -> Result<(), HandlerError> {
        let def = self.def;
        let step = &def.steps[i];
        self.inst.state = SagaState::Running;
        self.inst.step = i;
        self.send(&step.action, step.name, "action", true)?;
        self.inst.deadline = Some(self.now + step.timeout.as_millis() as i64);
        Ok(())
    }

    fn after_completed(&mut self, i: usize) -> Result<(), HandlerError> {
        let def = self.def;
        if let Some(then) = &def.steps[i].then {
            self.send(then, def.steps[i].name, "notify", false)?;
        }
        if i + 1 < def.steps.len() {
            return self.start_step(i + 1);
        }
        self.inst.state = SagaState::Completed;
        self.inst.deadline = None;
        if let Some(done) = &def.on_completed {
            self.send(done, "completed", "notify", false)?;
        }
        Ok(())
    }

    /// Compensates steps `..=from`, last first: sends the first compensation found, or closes
    /// the saga when nothing is left to undo.
    fn compensate_from(&mut self, from: Option<usize>) -> Result<(), HandlerError> {
        let def = self.def;
        if let Some(from) = from {
            for k in (0..=from).rev() {
                if let Some((cmd, _)) = &def.steps[k].compensation {
                    self.inst.state = SagaState::Compensating;
                    self.inst.step = k;
                    self.send(cmd, def.steps[k].name, "compensation", true)?;
                    self.inst.deadline =
                        Some(self.now + def.resend_compensation_after.as_millis() as i64);
                    return Ok(());
                }
            }
        }
        self.inst.state = SagaState::Compensated;
        self.inst.deadline = None;
        if let Some(done) = &def.on_compensated {
            self.send(done, "compensated", "notify", false)?;
        }
        Ok(())
    }

    fn fail(&mut self, kind: FailureKind, event_type: Option<String>, reason: String) {
        self.inst.data.failure = Some(Failure {
            step: self.def.steps[self.inst.step].name.to_owned(),
            kind,
            event_type,
            reason,
        });
    }
}

/// Runs one saga type: starts instances on the trigger, advances them on replies, timeouts and
/// cancellations.
#[derive(Debug)]
pub struct Orchestrator {
    pub(crate) def: SagaDef,
    clock: Arc<dyn Clock>,
}

pub(crate) const COLUMNS: &str = "saga_id, state, current_step, data, correlation_id, version, next_seq, awaiting_seq, deadline_ms, created_at, updated_at";

impl Orchestrator {
    pub fn new(def: SagaDef, clock: Arc<dyn Clock>) -> Self {
        Self { def, clock }
    }

    pub fn def(&self) -> &SagaDef {
        &self.def
    }

    fn now_ms(&self) -> i64 {
        self.clock.now().timestamp_millis()
    }

    async fn load(&self, tx: &mut Tx, id: &str) -> Result<Option<Instance>, HandlerError> {
        let rows = tx
            .query(
                &format!("SELECT {COLUMNS} FROM sagas WHERE saga_type = $1 AND saga_id = $2"),
                params![self.def.name, id],
            )
            .await?;
        rows.first().map(instance).transpose()
    }

    async fn persist(&self, tx: &mut Tx, c: &Change<'_>) -> Result<(), HandlerError> {
        let i = &c.inst;
        let data = serde_json::to_string(&i.data)
            .map_err(|e| HandlerError::Permanent(format!("saga data: {e}")))?;
        let failure = i
            .data
            .failure
            .as_ref()
            .map(|f| serde_json::to_string(f).unwrap_or_default());
        if i.new {
            tx.execute(
                "INSERT INTO sagas (saga_type, saga_id, state, current_step, data, correlation_id, failure, deadline_ms, next_seq, awaiting_seq, version, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 1, $11, $11)",
                params![self.def.name, i.id.as_str(), i.state.as_str(), i.step as i64, data, i.correlation.as_str(), failure, i.deadline, i.next_seq, i.awaiting, c.now],
            )
            .await?;
        } else {
            let n = tx
                .execute(
                    "UPDATE sagas SET state = $3, current_step = $4, data = $5, failure = $6, deadline_ms = $7, next_seq = $8, awaiting_seq = $9, version = version + 1, updated_at = $10
                     WHERE saga_type = $1 AND saga_id = $2 AND version = $11",
                    params![self.def.name, i.id.as_str(), i.state.as_str(), i.step as i64, data, failure, i.deadline, i.next_seq, i.awaiting, c.now, i.version],
                )
                .await?;
            if n != 1 {
                return Err(HandlerError::Transient(format!(
                    "saga {} changed concurrently",
                    i.id
                )));
            }
        }
        for op in &c.rows {
            match op {
                RowOp::Insert {
                    seq,
                    step,
                    kind,
                    command,
                    outcome,
                } => {
                    let ended = outcome.map(|_| c.now);
                    tx.execute(
                        "INSERT INTO saga_steps (saga_type, saga_id, seq, step, kind, command, started_at, ended_at, outcome, sends)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 1)",
                        params![self.def.name, i.id.as_str(), *seq, *step, *kind, *command, c.now, ended, *outcome],
                    )
                    .await?;
                }
                RowOp::Close {
                    seq,
                    outcome,
                    detail,
                } => {
                    tx.execute(
                        "UPDATE saga_steps SET ended_at = $4, outcome = $5, detail = $6 WHERE saga_type = $1 AND saga_id = $2 AND seq = $3",
                        params![self.def.name, i.id.as_str(), *seq, c.now, *outcome, detail.clone()],
                    )
                    .await?;
                }
                RowOp::Resent { seq } => {
                    tx.execute(
                        "UPDATE saga_steps SET sends = sends + 1 WHERE saga_type = $1 AND saga_id = $2 AND seq = $3",
                        params![self.def.name, i.id.as_str(), *seq],
                    )
                    .await?;
                }
            }
        }
        Ok(())
    }

    /// Handles an event inside the caller's transaction: the trigger starts an instance (once),
    /// a reply the current step awaits advances it; anything else — a duplicate, a reply for an
    /// unknown or finished saga, a late reply of a step given up on — changes nothing.
    pub async fn handle(&self, tx: &mut Tx, env: &Envelope) -> Result<Vec<Outgoing>, HandlerError> {
        let def = &self.def;
        let ty = env.event_type();
        if !def.listens_to(ty) {
            return Ok(vec![]);
        }
        // Parsed once: the key, the reason and the saga's copy all come from it.
        let data = env.data();
        let id = data
            .get(def.key_field)
            .and_then(Value::as_str)
            .ok_or_else(|| {
                HandlerError::Permanent(format!("{ty} has no `{}` to name a saga", def.key_field))
            })?
            .to_owned();
        let existing = self.load(tx, &id).await?;
        let now = self.now_ms();
        if ty == def.trigger.0 {
            if existing.is_some() || def.steps.is_empty() {
                return Ok(vec![]); // started already
            }
            let inst = Instance {
                id,
                state: SagaState::Running,
                step: 0,
                data: SagaData {
                    trigger: data,
                    replies: Default::default(),
                    failure: None,
                },
                correlation: env.correlation_id().to_string(),
                version: 0,
                next_seq: 0,
                awaiting: None,
                deadline: None,
                new: true,
            };
            let mut c = self.change(now, Some(env), inst);
            c.start_step(0)?;
            return self.finish(tx, c).await;
        }
        let Some(inst) = existing else {
            tracing::debug!(saga = def.name, id, ty, "reply for an unknown saga ignored");
            return Ok(vec![]);
        };
        let step = &def.steps[inst.step.min(def.steps.len() - 1)];
        let reason = data
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or(ty)
            .to_owned();
        let mut c = self.change(now, Some(env), inst);
        match c.inst.state {
            SagaState::Running if step.completes_on.iter().any(|(t, _)| *t == ty) => {
                c.inst.data.replies.insert(ty.to_owned(), data);
                c.close_awaited("completed", None);
                c.after_completed(c.inst.step)?;
            }
            SagaState::Running if step.fails_on.iter().any(|(t, _)| *t == ty) => {
                c.inst.data.replies.insert(ty.to_owned(), data);
                c.close_awaited("failed", Some(reason.clone()));
                c.fail(FailureKind::Reply, Some(ty.to_owned()), reason);
                let before = c.inst.step.checked_sub(1);
                c.compensate_from(before)?;
            }
            SagaState::Compensating
                if step
                    .compensation
                    .as_ref()
                    .is_some_and(|(_, done)| done.iter().any(|(t, _)| *t == ty)) =>
            {
                c.inst.data.replies.insert(ty.to_owned(), data);
                c.close_awaited("compensated", None);
                let before = c.inst.step.checked_sub(1);
                c.compensate_from(before)?;
            }
            state => {
                tracing::debug!(
                    saga = def.name,
                    id = c.inst.id,
                    ty,
                    state = state.as_str(),
                    "reply not awaited; ignored"
                );
                return Ok(vec![]);
            }
        }
        self.finish(tx, c).await
    }

    fn change<'a>(&'a self, now: i64, cause: Option<&'a Envelope>, inst: Instance) -> Change<'a> {
        Change {
            def: &self.def,
            now,
            cause,
            inst,
            rows: Vec::new(),
            out: Vec::new(),
        }
    }

    async fn finish(&self, tx: &mut Tx, c: Change<'_>) -> Result<Vec<Outgoing>, HandlerError> {
        self.persist(tx, &c).await?;
        if c.inst.state.is_final() {
            tracing::info!(
                saga = self.def.name,
                id = c.inst.id,
                state = c.inst.state.as_str(),
                correlation_id = c.inst.correlation,
                "saga finished"
            );
        }
        Ok(c.out)
    }

    /// Applies the timeout of one instance whose deadline passed: a running step is given up
    /// (and compensated, with the steps before it); an unconfirmed compensation is sent again.
    async fn time_out(&self, tx: &mut Tx, inst: Instance) -> Result<Vec<Outgoing>, HandlerError> {
        let now = self.now_ms();
        let mut c = self.change(now, None, inst);
        match c.inst.state {
            SagaState::Running => {
                let step = c.def.steps[c.inst.step].name;
                c.close_awaited(
                    "timed-out",
                    Some(format!(
                        "no reply within {:?}",
                        c.def.steps[c.inst.step].timeout
                    )),
                );
                c.fail(FailureKind::Timeout, None, format!("{step} step timed out"));
                let from = Some(c.inst.step);
                c.compensate_from(from)?;
            }
            SagaState::Compensating => {
                let def = c.def;
                let Some((cmd, _)) = &def.steps[c.inst.step].compensation else {
                    return Ok(vec![]);
                };
                let data = cmd
                    .build(&c.inst.data)
                    .map_err(|e| HandlerError::Permanent(format!("saga {}: {e}", def.name)))?;
                let seq = c.inst.awaiting.unwrap_or(c.inst.next_seq - 1);
                c.rows.push(RowOp::Resent { seq });
                c.emit(cmd.command, &cmd.topic, data, seq)?;
                c.inst.deadline = Some(now + def.resend_compensation_after.as_millis() as i64);
            }
            _ => {
                c.inst.deadline = None;
            }
        }
        self.finish(tx, c).await
    }

    /// Fires every timeout that is due (at most `limit`), in one transaction with the outbox
    /// rows of the commands it sends. Returns how many instances it advanced.
    pub async fn fire_due(&self, db: &Db, limit: usize) -> Result<usize, HandlerError> {
        let now = self.now_ms();
        let mut tx = db.begin().await?;
        let rows = tx
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM sagas WHERE saga_type = $1 AND deadline_ms IS NOT NULL AND deadline_ms <= $2 ORDER BY deadline_ms LIMIT {}",
                    limit.max(1)
                ),
                params![self.def.name, now],
            )
            .await?;
        let due: Vec<Instance> = rows.iter().map(instance).collect::<Result<_, _>>()?;
        let n = due.len();
        let mut out = Vec::new();
        for inst in due {
            let id = inst.id.clone();
            tracing::warn!(
                saga = self.def.name,
                id,
                state = inst.state.as_str(),
                "saga timeout"
            );
            out.extend(self.time_out(&mut tx, inst).await?);
        }
        emit(&mut tx, out).await?;
        tx.commit().await?;
        Ok(n)
    }

    /// Fires due timeouts every `every` until shutdown. Deadlines live in the database, so a
    /// restart forgets none.
    pub async fn run_timers(self: Arc<Self>, db: Db, every: Duration, shutdown: Shutdown) {
        let stop = shutdown.wait();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = &mut stop => return,
            }
            loop {
                match self.fire_due(&db, 100).await {
                    Ok(100) => continue,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(saga = self.def.name, error = %e, "firing saga timeouts failed; retrying");
                        break;
                    }
                }
            }
        }
    }

    /// An operator gives up on a running saga: its current step and every completed one are
    /// compensated, last first.
    pub async fn cancel(&self, db: &Db, id: &str, reason: &str) -> Result<SagaView, SagaError> {
        let mut tx = db.begin().await?;
        let inst = self
            .load(&mut tx, id)
            .await?
            .ok_or_else(|| SagaError::NotFound(id.to_owned()))?;
        if inst.state != SagaState::Running {
            return Err(SagaError::NotRunning {
                id: id.to_owned(),
                state: inst.state.as_str(),
            });
        }
        let mut c = self.change(self.now_ms(), None, inst);
        c.close_awaited("cancelled", Some(reason.to_owned()));
        c.fail(FailureKind::Cancelled, None, reason.to_owned());
        let from = Some(c.inst.step);
        c.compensate_from(from)?;
        let out = self.finish(&mut tx, c).await?;
        emit(&mut tx, out).await?;
        tx.commit().await?;
        tracing::warn!(
            saga = self.def.name,
            id,
            reason,
            "saga cancelled by an operator"
        );
        self.get(db, id)
            .await?
            .ok_or_else(|| SagaError::NotFound(id.to_owned()))
    }
}

fn instance(r: &Row) -> Result<Instance, HandlerError> {
    let data: SagaData = serde_json::from_str(r.str(3)?)
        .map_err(|e| HandlerError::Permanent(format!("saga data: {e}")))?;
    Ok(Instance {
        id: r.str(0)?.to_owned(),
        state: SagaState::parse(r.str(1)?).map_err(HandlerError::Permanent)?,
        step: r.i64(2)?.max(0) as usize,
        data,
        correlation: r.str(4)?.to_owned(),
        version: r.i64(5)?,
        next_seq: r.i64(6)?,
        awaiting: r.opt_i64(7)?,
        deadline: r.opt_i64(8)?,
        new: false,
    })
}

/// The orchestrator as a consumer of the consumer runtime: its group is the saga's name, and
/// every reply is handled in one transaction with its inbox record and the outbox rows of the
/// commands it causes.
#[derive(Debug, Clone)]
pub struct SagaHandler(pub Arc<Orchestrator>);

impl Handler for SagaHandler {
    fn name(&self) -> &'static str {
        self.0.def.name
    }
    /// A saga instance and its steps are the record's own order's rows: lanes may overlap.
    fn lanes(&self) -> usize {
        usize::MAX
    }

    /// The replies: the saga reads every topic its participants number events on for an order
    /// (what a participant publishes for other aggregates never reaches it).
    fn complete_sources(&self) -> Vec<&'static str> {
        self.0.def.participants.clone()
    }

    fn topics(&self) -> Vec<String> {
        self.0.def.topics()
    }
    /// Its effects are rows of its own database: a batch may run without savepoints.
    fn only_database_effects(&self) -> bool {
        true
    }

    async fn handle(&self, tx: &mut Tx, env: &Envelope) -> Result<Vec<Outgoing>, HandlerError> {
        self.0.handle(tx, env).await
    }
}
