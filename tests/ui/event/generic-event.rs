use annals::Event;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, JsonSchema)]
struct Scored {
    score: u8,
}

#[derive(Serialize, Deserialize, JsonSchema)]
struct ScoredV1 {
    points: u8,
}

impl From<ScoredV1> for Scored {
    fn from(v: ScoredV1) -> Self {
        Scored { score: v.points }
    }
}

#[derive(Event)]
enum LeadEvent<T> {
    Scored(T),
}

fn main() {}
