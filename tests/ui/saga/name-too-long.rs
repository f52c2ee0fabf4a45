use annals::{Issue, SagaData};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
struct LeadRef {
    lead_id: Uuid,
}

#[derive(Debug, Clone, annals::Event)]
enum ClinicEvent {
    Qualified(LeadRef),
    SlotReserved(LeadRef),
    ConfirmationSent(LeadRef),
}

#[derive(Debug, Serialize, Deserialize)]
enum ClinicCommand {
    ReserveSlot(Uuid),
    ReleaseSlot(Uuid),
}

#[derive(Default, Serialize, Deserialize)]
struct Booking {
    lead_id: Uuid,
}

impl SagaData for Booking {
    type Event = ClinicEvent;
    fn apply(&mut self, _: &ClinicEvent) {}
}

impl Issue<Uuid> for Booking {
    fn issue(&self) -> Uuid {
        self.lead_id
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, annals::Saga)]
#[saga(name = "booking_booking_booking_booking_booking_booking_booking_booking_booking_booking_booking_booking_booking_booking_booking_booking_booking_booking_booking_booking_booking_booking_booking_booking_booking_booking_booking_booking_booking_booking_booking_booking_", event = ClinicEvent, command = ClinicCommand, data = Booking, correlation = Uuid, correlate = lead_id)]
enum BookingSaga {
    #[saga(start = Qualified, issue = ReserveSlot, compensate = ReleaseSlot, on(SlotReserved => Confirming), timeout("1m" => fail))]
    Reserving,
    #[saga(on(ConfirmationSent => Booked), timeout = "1h")]
    Confirming,
    #[saga(terminal)]
    Booked,
}

fn main() {}
