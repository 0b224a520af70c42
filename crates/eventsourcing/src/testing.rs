//! Given / when / then for any [`Aggregate`]: given the events of its past, when a command comes,
//! then it decides these events, or this error — and, if asked, the state afterwards is this.
//!
//! ```
//! # use shopflow_eventsourcing::{Aggregate, Applied, DomainEvent};
//! # use shopflow_eventsourcing::testing::TestFramework;
//! # #[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
//! # struct Counter { n: u32 }
//! # #[derive(Clone, Debug, PartialEq)] struct Added(u32);
//! # impl DomainEvent for Added {
//! #     fn from_envelope(e: &shopflow_envelope::Envelope) -> shopflow_envelope::Result<Self> { Ok(Added(e.data()["n"].as_u64().unwrap_or(0) as u32)) }
//! #     fn to_envelope(&self, m: shopflow_envelope::Meta) -> shopflow_envelope::Result<shopflow_envelope::Envelope> {
//! #         shopflow_envelope::Envelope::from_parts("Added", 1, shopflow_envelope::Kind::Domain, serde_json::json!({"n": self.0}), m) }
//! #     fn topic(&self) -> Option<String> { None }
//! # }
//! # #[derive(Debug, thiserror::Error, PartialEq)] #[error("too big")] struct TooBig;
//! # impl Aggregate for Counter {
//! #     type Command = u32; type Event = Added; type Error = TooBig;
//! #     fn handle(&self, add: u32) -> Result<Vec<Added>, TooBig> { if self.n + add > 10 { Err(TooBig) } else { Ok(vec![Added(add)]) } }
//! #     fn apply(&mut self, e: &Added, _: Applied) { self.n += e.0 }
//! # }
//! TestFramework::<Counter>::given(vec![Added(4)])
//!     .when(3)
//!     .then_expect_events(vec![Added(3)])
//!     .and_state(|c| assert_eq!(c.n, 7));
//! TestFramework::<Counter>::given(vec![Added(9)]).when(3).then_expect_error(TooBig);
//! ```

use chrono::{DateTime, TimeZone, Utc};

use crate::aggregate::{Aggregate, Applied};

/// The fixture: a past, applied with versions 1, 2, … at a fixed instant.
#[derive(Debug)]
pub struct TestFramework<A: Aggregate> {
    state: A,
    version: u64,
}

/// The instant the given events are applied at.
pub fn given_at() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .expect("a valid instant")
}

impl<A: Aggregate> TestFramework<A> {
    /// An aggregate whose stream holds `events`.
    pub fn given(events: Vec<A::Event>) -> Self {
        let mut f = Self {
            state: A::default(),
            version: 0,
        };
        f.apply_all(&events);
        f
    }

    /// An aggregate that does not exist yet.
    pub fn given_no_previous_events() -> Self {
        Self::given(Vec::new())
    }

    fn apply_all(&mut self, events: &[A::Event]) {
        for e in events {
            self.version += 1;
            self.state.apply(
                e,
                Applied {
                    version: self.version,
                    at: given_at(),
                },
            );
        }
    }

    /// The state the given events lead to.
    pub fn state(&self) -> &A {
        &self.state
    }

    /// Lets the aggregate decide `command`.
    pub fn when(self, command: A::Command) -> Decided<A> {
        let result = self.state.handle(command);
        Decided {
            before: self,
            result,
        }
    }
}

/// What the aggregate decided, to check.
#[derive(Debug)]
pub struct Decided<A: Aggregate> {
    before: TestFramework<A>,
    result: Result<Vec<A::Event>, A::Error>,
}

impl<A: Aggregate> Decided<A> {
    /// It decided exactly `expected`; returns the state after applying them.
    #[track_caller]
    pub fn then_expect_events(self, expected: Vec<A::Event>) -> Then<A> {
        match self.result {
            Ok(events) => {
                assert_eq!(events, expected, "the aggregate decided other events");
                let mut after = self.before;
                after.apply_all(&events);
                Then { state: after.state }
            }
            Err(e) => panic!("expected events {expected:?}, the command was rejected: {e}"),
        }
    }

    /// It decided nothing (a late, repeated or irrelevant command).
    #[track_caller]
    pub fn then_expect_no_events(self) -> Then<A> {
        self.then_expect_events(Vec::new())
    }

    /// It rejected the command with `expected`.
    #[track_caller]
    pub fn then_expect_error(self, expected: A::Error)
    where
        A::Error: PartialEq,
    {
        match self.result {
            Err(e) => assert_eq!(e, expected, "the command was rejected for another reason"),
            Ok(events) => panic!("expected the error {expected:?}, it decided {events:?}"),
        }
    }

    /// The raw decision, for checks the helpers above do not cover.
    pub fn result(self) -> Result<Vec<A::Event>, A::Error> {
        self.result
    }
}

/// The state after the decided events.
#[derive(Debug)]
pub struct Then<A> {
    state: A,
}

impl<A> Then<A> {
    /// Checks the state after the decided events.
    pub fn and_state(self, check: impl FnOnce(&A)) -> A {
        check(&self.state);
        self.state
    }

    pub fn state(&self) -> &A {
        &self.state
    }
}
