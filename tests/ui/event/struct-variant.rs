use annals::Event;

#[derive(Event)]
enum LeadEvent {
    Scored { score: u8 },
}

fn main() {}
