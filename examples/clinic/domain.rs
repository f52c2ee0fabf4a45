//! The clinic's domain: a lead's events (with a version 1 still in the
//! store), the `Lead` aggregate and its rules.

use annals::personal::Personal;
use annals::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

// The application's events

/// A lead entered the clinic's funnel. The name is the lead's personal
/// data: a `PersonalStore` seals it with the lead's own key, and
/// `forget` erases it (it then reads as `Personal::Forgotten`).
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
pub(crate) struct LeadCreated {
    pub(crate) name: Personal<String>,
    pub(crate) treatment: String,
}

/// The scoring model rated a lead. Version 2 added `confidence`.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
pub(crate) struct LeadScored {
    /// 0 to 100: the JSON Schema forbids anything above.
    #[schemars(range(max = 100))]
    pub(crate) score: u8,
    /// How sure the model was, 0 to 1.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub(crate) confidence: f32,
}

/// Version 1 of `lead.scored`, as events written last year still store it.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
pub(crate) struct LeadScoredV1 {
    #[schemars(range(max = 100))]
    pub(crate) score: u8,
}

/// The upcast from version 1 to version 2, checked by the compiler: the
/// derive below refuses to build without it.
impl From<LeadScoredV1> for LeadScored {
    fn from(v1: LeadScoredV1) -> Self {
        LeadScored {
            score: v1.score,
            confidence: 0.5,
        }
    }
}

/// A receptionist confirmed the lead wants an appointment.
#[derive(Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
pub(crate) struct LeadQualified {
    pub(crate) by: String,
}

/// Every event of a lead. The derive names each variant (`lead.created`,
/// `lead.scored`, `lead.qualified`), gives it a schema version and generates
/// the decoder that upcasts old versions.
/// A lead's personal data is the lead's own: the subject whose key seals
/// it is the lead's stream (`lead-{id}`).
#[derive(Event, Debug, Clone, PartialEq)]
pub(crate) enum LeadEvent {
    #[event(subject = envelope.stream_id)]
    Created(LeadCreated),
    #[event(version = 2, history(1 = LeadScoredV1))]
    Scored(LeadScored),
    Qualified(LeadQualified),
}

/// What `lead.scored` v2 would look like if someone added a field without
/// bumping the version: used to show the breaking-change guard.
#[derive(Event, Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[event(name = "lead.scored", version = 2)]
pub(crate) struct ReshapedLeadScored {
    pub(crate) score: u8,
    pub(crate) confidence: f32,
    pub(crate) model: String,
}

// The Lead aggregate

/// A lead's state, rebuilt from its `LeadEvent`s. The derive names the
/// aggregate (`lead`: its streams are `lead-{id}`), sets the snapshot policy
/// and generates the snapshot codec, fingerprinted from the state's JSON
/// Schema. Every 3 events is far too often for a real application; it lets
/// the tour show a snapshot after a few commands.
#[derive(Aggregate, Default, Serialize, Deserialize, JsonSchema, Debug, Clone, PartialEq)]
#[aggregate(event = LeadEvent, snapshot_every = 3)]
pub(crate) struct Lead {
    pub(crate) name: Option<Personal<String>>,
    pub(crate) treatment: Option<String>,
    pub(crate) score: Option<u8>,
    pub(crate) qualified_by: Option<String>,
}

/// What the clinic's staff and systems ask of a lead.
#[derive(Debug)]
pub(crate) enum LeadCommand {
    Create { name: String, treatment: String },
    Score { score: u8, confidence: f32 },
    Qualify { by: String },
}

/// The lowest score a lead can be qualified with.
pub(crate) const QUALIFYING_SCORE: u8 = 70;

/// Why a lead refuses a command: the application's own error type.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LeadError {
    #[error("the lead already exists")]
    AlreadyExists,
    #[error("there is no such lead")]
    NotFound,
    #[error("a lead needs a score of at least {needed} to qualify; {name}'s is {score}")]
    ScoreTooLow { name: String, score: u8, needed: u8 },
}

/// The domain rules: plain Rust, no I/O, easy to test with
/// `annals::testing::given(events).when(command).then_expect(events)`.
impl Aggregate for Lead {
    type Command = LeadCommand;
    type Error = LeadError;

    fn handle(&self, command: &LeadCommand) -> Result<Vec<LeadEvent>, LeadError> {
        let Some(name) = &self.name else {
            return match command {
                LeadCommand::Create { name, treatment } => {
                    Ok(vec![LeadEvent::Created(LeadCreated {
                        name: Personal::Known(name.clone()),
                        treatment: treatment.clone(),
                    })])
                }
                _ => Err(LeadError::NotFound),
            };
        };
        match command {
            LeadCommand::Create { .. } => Err(LeadError::AlreadyExists),
            LeadCommand::Score { score, confidence } => Ok(vec![LeadEvent::Scored(LeadScored {
                score: *score,
                confidence: *confidence,
            })]),
            // Already qualified: nothing to do, no event.
            LeadCommand::Qualify { .. } if self.qualified_by.is_some() => Ok(vec![]),
            LeadCommand::Qualify { by } => match self.score.unwrap_or(0) {
                score if score >= QUALIFYING_SCORE => {
                    Ok(vec![LeadEvent::Qualified(LeadQualified { by: by.clone() })])
                }
                score => Err(LeadError::ScoreTooLow {
                    name: name.to_string(),
                    score,
                    needed: QUALIFYING_SCORE,
                }),
            },
        }
    }

    fn apply(&mut self, event: &LeadEvent) {
        match event {
            LeadEvent::Created(e) => {
                self.name = Some(e.name.clone());
                self.treatment = Some(e.treatment.clone());
            }
            LeadEvent::Scored(e) => self.score = Some(e.score),
            LeadEvent::Qualified(e) => self.qualified_by = Some(e.by.clone()),
        }
    }
}

// ---------------------------------------------------------------------------
// Output helpers
// ---------------------------------------------------------------------------
