//! The aggregate of the durable and growth benchmarks: a lead's scores,
//! with the decision and the fold the hand-written baselines share.

use annals::Aggregate;
use serde::{Deserialize, Serialize};

use super::{LeadEvent, LeadScored};

/// A lead's scores, folded from `lead.scored` events.
#[derive(
    Debug,
    Clone,
    Default,
    PartialEq,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
    annals::Aggregate,
)]
#[aggregate(event = LeadEvent)]
pub(crate) struct Lead {
    pub(crate) scores: u64,
    pub(crate) total: u64,
}

/// Record a score.
pub(crate) struct Score(pub(crate) LeadScored);

/// A score above 100.
#[derive(Debug)]
pub(crate) struct Invalid;

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a score is at most 100")
    }
}

impl std::error::Error for Invalid {}

/// The decision, shared by annals and the baselines.
pub(crate) fn decide(_: &Lead, command: &Score) -> Result<LeadScored, Invalid> {
    if command.0.score > 100 {
        return Err(Invalid);
    }
    Ok(command.0.clone())
}

/// The fold, shared by annals and the baselines.
pub(crate) fn fold(state: &mut Lead, s: &LeadScored) {
    state.scores += 1;
    state.total += u64::from(s.score);
}

impl Aggregate for Lead {
    type Command = Score;
    type Error = Invalid;

    fn handle(&self, command: &Score) -> Result<Vec<LeadEvent>, Invalid> {
        Ok(vec![LeadEvent::Scored(decide(self, command)?)])
    }

    fn apply(&mut self, event: &LeadEvent) {
        if let LeadEvent::Scored(s) = event {
            fold(self, s)
        }
    }
}
