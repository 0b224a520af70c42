//! A saga written down as data: named steps, each with the command it sends, the replies that
//! complete or fail it, a timeout and the compensating command.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use shopflow_envelope::Event;

use crate::state::Failure;

/// What a saga instance knows: the event that started it, the last reply of each type, and why
/// it failed (once it did).
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct SagaData {
    pub trigger: Value,
    #[serde(default)]
    pub replies: serde_json::Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
}

impl SagaData {
    /// The starting event's data as its type.
    pub fn trigger<T: DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_value(self.trigger.clone()).map_err(|e| format!("saga trigger: {e}"))
    }

    /// The last reply of type `E`, if one arrived.
    pub fn reply<E: Event>(&self) -> Result<Option<E>, String> {
        self.replies
            .get(E::TYPE)
            .map(|v| {
                serde_json::from_value(v.clone()).map_err(|e| format!("reply {}: {e}", E::TYPE))
            })
            .transpose()
    }

    /// The last reply of type `E`; an error when none arrived.
    pub fn required<E: Event>(&self) -> Result<E, String> {
        self.reply::<E>()?
            .ok_or_else(|| format!("no {} reply recorded", E::TYPE))
    }
}

type Build = Arc<dyn Fn(&SagaData) -> Result<Value, String> + Send + Sync>;

/// A command the saga sends: its type, its topic and how its data is made from the saga's data.
#[derive(Clone)]
pub struct CommandDef {
    pub command: &'static str,
    pub topic: String,
    build: Build,
}

impl fmt::Debug for CommandDef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandDef")
            .field("command", &self.command)
            .field("topic", &self.topic)
            .finish()
    }
}

impl CommandDef {
    /// A typed command `C`, on its own topic, built from the saga's data.
    pub fn of<C: Event + Serialize + 'static>(
        build: impl Fn(&SagaData) -> Result<C, String> + Send + Sync + 'static,
    ) -> Self {
        Self {
            command: C::TYPE,
            topic: C::topic(),
            build: Arc::new(move |d| {
                serde_json::to_value(build(d)?).map_err(|e| format!("{}: {e}", C::TYPE))
            }),
        }
    }

    /// The command's data for this saga instance.
    pub fn build(&self, data: &SagaData) -> Result<Value, String> {
        (self.build)(data)
    }
}

/// One step of a saga.
#[derive(Clone, Debug)]
pub struct Step {
    pub name: &'static str,
    pub action: CommandDef,
    /// Reply types (and their topics) that complete the step.
    pub completes_on: Vec<(&'static str, String)>,
    /// Reply types (and their topics) that fail it: compensation of the steps before it begins.
    pub fails_on: Vec<(&'static str, String)>,
    /// How long to wait for a reply; then the step counts as failed and is compensated too (its
    /// command may have taken effect).
    pub timeout: Duration,
    /// The command that undoes the step, and the replies that confirm it did.
    pub compensation: Option<(CommandDef, Vec<(&'static str, String)>)>,
    /// A command sent (no reply awaited) when the step completes.
    pub then: Option<CommandDef>,
}

impl Step {
    pub fn new(name: &'static str, action: CommandDef) -> Self {
        Self {
            name,
            action,
            completes_on: Vec::new(),
            fails_on: Vec::new(),
            timeout: Duration::from_secs(30),
            compensation: None,
            then: None,
        }
    }

    pub fn completes_on<E: Event>(mut self) -> Self {
        self.completes_on.push((E::TYPE, E::topic()));
        self
    }

    pub fn fails_on<E: Event>(mut self) -> Self {
        self.fails_on.push((E::TYPE, E::topic()));
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Undo with `command`; the compensation is done when a reply of type `E` arrives.
    pub fn compensate_with<E: Event>(mut self, command: CommandDef) -> Self {
        self.compensation = Some((command, vec![(E::TYPE, E::topic())]));
        self
    }

    /// Another reply type that confirms the compensation.
    pub fn or_compensated_on<E: Event>(mut self) -> Self {
        if let Some((_, done)) = &mut self.compensation {
            done.push((E::TYPE, E::topic()));
        }
        self
    }

    /// Send `command` (without waiting for a reply) once the step completes.
    pub fn then_send(mut self, command: CommandDef) -> Self {
        self.then = Some(command);
        self
    }
}

/// A saga: what starts it, its steps in order, and the commands that close it.
#[derive(Clone, Debug)]
pub struct SagaDef {
    /// The saga type; also the consumer group and inbox name of its orchestrator.
    pub name: &'static str,
    /// The `source` of the commands it sends.
    pub source: &'static str,
    pub trigger: (&'static str, String),
    /// The data field that names the saga instance in the trigger and in every reply.
    pub key_field: &'static str,
    pub steps: Vec<Step>,
    /// Sent when every step completed.
    pub on_completed: Option<CommandDef>,
    /// Sent when the compensation finished.
    pub on_compensated: Option<CommandDef>,
    /// A compensation not confirmed within this time is sent again (compensations are
    /// idempotent and must eventually succeed).
    pub resend_compensation_after: Duration,
    /// The producers (envelope `source`) whose every event for a saga's key reaches the
    /// orchestrator: a skipped sequence number of theirs is a gap.
    pub participants: Vec<&'static str>,
}

impl SagaDef {
    pub fn new(name: &'static str, source: &'static str) -> Self {
        Self {
            name,
            source,
            trigger: ("", String::new()),
            key_field: "id",
            steps: Vec::new(),
            on_completed: None,
            on_compensated: None,
            resend_compensation_after: Duration::from_secs(10),
            participants: Vec::new(),
        }
    }

    pub fn started_by<E: Event>(mut self) -> Self {
        self.trigger = (E::TYPE, E::topic());
        self
    }

    /// Names the producers that answer the saga (see [`SagaDef::participants`]).
    pub fn answered_by(mut self, participants: &[&'static str]) -> Self {
        self.participants = participants.to_vec();
        self
    }

    pub fn keyed_by(mut self, field: &'static str) -> Self {
        self.key_field = field;
        self
    }

    pub fn step(mut self, step: Step) -> Self {
        self.steps.push(step);
        self
    }

    pub fn on_completed(mut self, command: CommandDef) -> Self {
        self.on_completed = Some(command);
        self
    }

    pub fn on_compensated(mut self, command: CommandDef) -> Self {
        self.on_compensated = Some(command);
        self
    }

    pub fn resend_compensation_after(mut self, d: Duration) -> Self {
        self.resend_compensation_after = d;
        self
    }

    /// Every topic the orchestrator consumes: the trigger's and every reply's.
    pub fn topics(&self) -> Vec<String> {
        let mut t = vec![self.trigger.1.clone()];
        for s in &self.steps {
            t.extend(s.completes_on.iter().map(|(_, topic)| topic.clone()));
            t.extend(s.fails_on.iter().map(|(_, topic)| topic.clone()));
            if let Some((_, done)) = &s.compensation {
                t.extend(done.iter().map(|(_, topic)| topic.clone()));
            }
        }
        t.sort();
        t.dedup();
        t
    }

    /// Whether `event_type` is something this saga listens to.
    pub fn listens_to(&self, event_type: &str) -> bool {
        self.trigger.0 == event_type
            || self.steps.iter().any(|s| {
                s.completes_on.iter().any(|(t, _)| *t == event_type)
                    || s.fails_on.iter().any(|(t, _)| *t == event_type)
                    || s.compensation
                        .as_ref()
                        .is_some_and(|(_, d)| d.iter().any(|(t, _)| *t == event_type))
            })
    }
}
