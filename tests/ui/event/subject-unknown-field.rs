use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, JsonSchema)]
struct Booked {
    patient_id: String,
    slot: u32,
}

#[derive(annals::Event)]
enum VisitEvent {
    #[event(subject = patient)]
    Booked(Booked),
}

fn main() {}
