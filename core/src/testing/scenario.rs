//! A given/when/then test kit for aggregates, for the application's own tests.

use std::fmt::Debug;

use crate::Aggregate;

/// Starts a scenario: the aggregate after these events.
///
/// ```
/// # use annals::{testing::given, Aggregate};
/// # #[derive(Debug, Clone, PartialEq, annals::Event)]
/// # enum DoorEvent { Opened(u8), Closed(u8) }
/// # #[derive(Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema, annals::Aggregate)]
/// # #[aggregate(event = DoorEvent)]
/// # struct Door { open: bool }
/// #[derive(Debug, PartialEq, thiserror::Error)]
/// #[error("already open")]
/// struct AlreadyOpen;
/// # impl Aggregate for Door {
/// #     type Command = (); type Error = AlreadyOpen;
/// #     fn handle(&self, _: &()) -> Result<Vec<DoorEvent>, AlreadyOpen> {
/// #         if self.open { Err(AlreadyOpen) } else { Ok(vec![DoorEvent::Opened(1)]) } }
/// #     fn apply(&mut self, e: &DoorEvent) { self.open = matches!(e, DoorEvent::Opened(_)) }
/// # }
/// given::<Door>([]).when(()).then_expect([DoorEvent::Opened(1)]);
/// given::<Door>([DoorEvent::Opened(1)]).when(()).then_error(AlreadyOpen);
/// ```
pub fn given<A: Aggregate>(events: impl IntoIterator<Item = A::Event>) -> Scenario<A> {
    let mut state = A::default();
    for e in events {
        state.apply(&e);
    }
    Scenario { state }
}

/// An aggregate built from past events, waiting for a command.
#[derive(Debug)]
pub struct Scenario<A> {
    state: A,
}

impl<A: Aggregate> Scenario<A> {
    /// Handles a command against the state.
    pub fn when(self, command: A::Command) -> ScenarioWhen<A> {
        let result = self.state.handle(&command);
        ScenarioWhen {
            state: self.state,
            result,
        }
    }

    /// The state after the given events.
    pub fn state(&self) -> &A {
        &self.state
    }
}

/// The outcome of a scenario's command, to be checked.
#[derive(Debug)]
pub struct ScenarioWhen<A: Aggregate> {
    state: A,
    result: Result<Vec<A::Event>, A::Error>,
}

impl<A: Aggregate> ScenarioWhen<A> {
    /// Asserts the command produced exactly these events; returns the state
    /// after applying them.
    #[track_caller]
    pub fn then_expect(self, expected: impl IntoIterator<Item = A::Event>) -> A
    where
        A::Event: PartialEq + Debug,
    {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        match self.result {
            Ok(events) => {
                assert_eq!(events, expected, "the command produced other events");
                let mut state = self.state;
                for e in &events {
                    state.apply(e);
                }
                state
            }
            Err(e) => panic!("expected events {expected:?}, but the command was rejected: {e}"),
        }
    }

    /// Asserts the command was rejected with this error.
    #[track_caller]
    pub fn then_error(self, expected: A::Error)
    where
        A::Error: PartialEq,
        A::Event: Debug,
    {
        match self.result {
            Err(e) => assert!(e == expected, "expected error `{expected}`, got `{e}`"),
            Ok(events) => {
                panic!("expected error `{expected}`, but the command produced {events:?}")
            }
        }
    }

    /// Asserts the command was rejected with an error matching `check`.
    #[track_caller]
    pub fn then_error_matches(self, check: impl FnOnce(&A::Error) -> bool)
    where
        A::Event: Debug,
    {
        match self.result {
            Err(e) => assert!(check(&e), "the rejection `{e}` does not match"),
            Ok(events) => panic!("expected a rejection, but the command produced {events:?}"),
        }
    }

    /// The raw result, for checks of one's own.
    pub fn result(self) -> Result<Vec<A::Event>, A::Error> {
        self.result
    }
}
