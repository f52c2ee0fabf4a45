//! Section P: forgetting a lead (the right to erasure), by crypto-shredding.

use annals::personal::{Personal, PersonalStore, SubjectKeys};
use annals::prelude::*;

use super::{say, why, BoxError, Lead, LeadCommand};

/// Creates a lead through a `PersonalStore` over `store`, shows what is
/// stored, forgets the lead and loads it again.
pub(crate) async fn tour<S, K>(store: &S, keys: K, run: &str) -> Result<(), BoxError>
where
    S: EventStore + Clone,
    K: SubjectKeys,
{
    println!();
    println!("P. Forgetting a lead: personal data sealed per lead, erased with one call");
    let personal = PersonalStore::new(store.clone(), keys);
    let leads: Repository<Lead, _> = Repository::new(personal.clone());
    let id = format!("{run}erin-p");
    let create = LeadCommand::Create {
        name: "Erin Lima".into(),
        treatment: "implant".into(),
    };
    leads.execute(&id, &create, &Metadata::new()).await?;
    let stream = Lead::stream_id(&id);
    say("`LeadCreated.name` is a `Personal<String>`, and `LeadEvent::Created` says whose it is:");
    say("`#[event(subject = envelope.stream_id)]`: the lead's own stream. Through a `PersonalStore`,");
    say("the name is validated in plaintext, then sealed with the lead's data key (AES-256-GCM):");
    let stored = store.read_stream(&stream, ..).await?;
    let raw = stored
        .first()
        .map(|e| e.payload.get().to_owned())
        .unwrap_or_default();
    say(&format!("  stored: {}", shorten(&raw)));
    let loaded = leads.load(&id).await?;
    say(&format!(
        "  loaded through the PersonalStore: name = {:?}",
        loaded.state.name.as_ref().and_then(Personal::known)
    ));
    personal.forget(&stream).await?;
    say(&format!(
        "`personal.forget(\"{stream}\")` deleted the lead's key and left a tombstone;"
    ));
    say("a `subject.forgotten` event tells read models to erase their own copies.");
    let loaded = leads.load(&id).await?;
    say(&format!(
        "  loaded again: name = {}, treatment = {:?}, version {}",
        loaded
            .state
            .name
            .as_ref()
            .map_or("none".to_owned(), |n| n.to_string()),
        loaded.state.treatment.as_deref().unwrap_or_default(),
        loaded.version
    ));
    let again = leads.execute(&id, &create, &Metadata::new()).await;
    say(&format!(
        "  creating it again is refused by the aggregate (it exists): {}",
        again.is_err()
    ));
    why("events are never rewritten, yet a patient has the right to be forgotten: with the key gone, every copy of the name (the log, snapshots, backups) is unreadable at once, and the aggregate still loads.");
    Ok(())
}

/// The first 110 characters of a stored payload.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(110) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}
