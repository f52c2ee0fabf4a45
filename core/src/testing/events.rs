//! Event types used by the conformance suite (and handy in tests).
#![allow(missing_docs)]

use serde::{Deserialize, Serialize};

use crate::event::UpcastError;

/// A lead entered the funnel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Created {
    pub name: String,
    #[serde(default)]
    pub email: Option<String>,
}

/// The current version (3) of `test.scored`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Scored {
    #[schemars(range(min = 0, max = 100))]
    pub score: u8,
    pub confidence: f64,
    pub model: String,
}

/// Version 2 of `test.scored`: no model yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ScoredV2 {
    pub score: u8,
    pub confidence: f64,
}

impl From<ScoredV2> for Scored {
    fn from(v: ScoredV2) -> Self {
        Scored {
            score: v.score,
            confidence: v.confidence,
            model: "unknown".to_owned(),
        }
    }
}

/// Version 1 of `test.scored` called the score `points` and had no
/// confidence: a JSON-level upcaster renames it and adds the default.
pub fn scored_v1_to_v2(mut v: serde_json::Value) -> Result<serde_json::Value, UpcastError> {
    let obj = v
        .as_object_mut()
        .ok_or_else(|| UpcastError::new("expected an object"))?;
    let points = obj
        .remove("points")
        .ok_or_else(|| UpcastError::new("missing `points`"))?;
    obj.insert("score".to_owned(), points);
    obj.insert("confidence".to_owned(), serde_json::json!(0.5));
    Ok(v)
}

/// The conformance suite's event enum.
#[derive(Debug, Clone, PartialEq, annals_macros::Event)]
#[event(crate = "crate", prefix = "test")]
pub enum TestEvent {
    Created(Created),
    #[event(version = 3, history(1 = json(scored_v1_to_v2), 2 = ScoredV2))]
    Scored(Scored),
    #[event(name = "test.note")]
    Note(String),
}
