use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, JsonSchema)]
struct Booked {
    patient_id: String,
}

#[derive(annals::Event)]
enum VisitEvent {
    #[event(subjct = patient_id)]
    Booked(Booked),
}

fn main() {}
