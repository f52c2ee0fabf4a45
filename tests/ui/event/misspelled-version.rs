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

// one error, at `verison`: not also "history version 1 must be older than
// the current version 1" (the version the typo left at its default)
#[derive(Event)]
enum LeadEvent {
    #[event(verison = 2, history(1 = ScoredV1))]
    Scored(Scored),
}

fn main() {
    // the rest of the crate still sees an `Event`
    let _ = <LeadEvent as Event>::TYPES;
}
