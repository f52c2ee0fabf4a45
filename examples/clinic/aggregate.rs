//! Tour sections 8 and 9: the `Lead` aggregate driven by commands through a
//! repository, then loaded from a snapshot, and an outdated snapshot ignored
//! and replaced.

use annals::prelude::*;
use annals::snapshot::{Snapshot, SnapshotStore};
use uuid::Uuid;

use super::{say, section, why, BoxError, Lead, LeadCommand, LeadEvent};

/// Runs sections 8 and 9 on `store` and `snapshots`. Aggregate ids start
/// with `run`.
pub(crate) async fn tour<S: EventStore + Clone, N: SnapshotStore<S>>(
    store: &S,
    snapshots: N,
    run: &str,
) -> Result<(), BoxError> {
    section(8, "An aggregate decides, the repository records");
    say("#[derive(Aggregate)] on `Lead` named it `lead` (its streams are `lead-{id}`), set a snapshot every 3 events");
    say("and generated its snapshot codec; `impl Aggregate for Lead` holds the rules: `handle` decides events, `apply` folds them.");
    let repo = Repository::of::<Lead>(store.clone())
        .with_snapshots(snapshots.clone())
        .max_retries(5)
        // Write each snapshot before `execute` returns, so this tour's output
        // is the same every run. Without it (the default), snapshots are
        // written on a background task and add nothing to a command's latency.
        .inline_snapshots();
    let diego = format!("{run}diego");
    let intake = Uuid::now_v7();
    commands(store, &repo, &diego, intake).await?;
    snapshots_and_replay(&repo, &snapshots, &diego, intake).await
}

/// Section 8: five commands for one lead, one of them rejected.
async fn commands<S: EventStore + Clone, N: SnapshotStore<S>>(
    store: &S,
    repo: &Repository<Lead, S, N>,
    diego: &str,
    intake: Uuid,
) -> Result<(), BoxError> {
    let stream = Lead::stream_id(diego);
    say(&format!(
        "`repo.execute(\"{diego}\", &command, &metadata)` for five commands (the metadata's user in brackets):"
    ));
    let commands = [
        (
            LeadCommand::Create {
                name: "Diego".into(),
                treatment: "veneers".into(),
            },
            "web-form",
        ),
        (
            LeadCommand::Score {
                score: 45,
                confidence: 0.8,
            },
            "scoring-model",
        ),
        (LeadCommand::Qualify { by: "Marta".into() }, "marta"),
        (
            LeadCommand::Score {
                score: 78,
                confidence: 0.9,
            },
            "scoring-model",
        ),
        (LeadCommand::Qualify { by: "Marta".into() }, "marta"),
    ];
    let mut rejected = 0;
    for (command, user) in &commands {
        let metadata = Metadata::new().with_correlation_id(intake).with_user(*user);
        let outcome = match repo.execute(diego, command, &metadata).await {
            Ok(done) => done
                .events
                .iter()
                .map(|e| format!("v{} {}", e.stream_version, e.event_type))
                .collect::<Vec<_>>()
                .join(", "),
            Err(CommandError::Rejected(e)) => {
                rejected += 1;
                format!("CommandError::Rejected: {e}")
            }
            Err(other) => return Err(other.into()),
        };
        say(&format!(
            "  {:<46} {:<16} -> {outcome}",
            format!("{command:?}"),
            format!("[{user}]")
        ));
    }
    if rejected != 1 {
        return Err("the low-score qualification was not rejected".into());
    }
    say("Each call loaded the lead, let it decide, and appended with the loaded version as the expected one;");
    say("on a version conflict the repository reloads and decides again (here up to 5 times: `.max_retries(5)`).");
    let recorded = store.read_stream_as::<LeadEvent>(&stream, ..).await?;
    if recorded.len() != 4
        || recorded
            .iter()
            .any(|e| e.metadata.correlation_id != Some(intake))
    {
        return Err("the aggregate's events or their metadata are not as expected".into());
    }
    say(&format!(
        "The rejected command wrote nothing: `{stream}` holds {} events. Read back, each carries its command's user",
        recorded.len()
    ));
    say(&format!(
        "and the correlation id of Diego's intake, {intake}:"
    ));
    for e in &recorded {
        say(&format!(
            "  v{} {:<14} user {}",
            e.stream_version,
            e.event_type,
            e.metadata.user.as_deref().unwrap_or("-"),
        ));
    }
    why("the business rules are one plain function, tested without a database (`given(events).when(command).then_expect(events)`); loading, concurrency, retries and metadata are the repository's job.");

    Ok(())
}

/// Section 9: a load from the newest snapshot, and a snapshot of another
/// shape of the state ignored and replaced.
async fn snapshots_and_replay<S: EventStore + Clone, N: SnapshotStore<S>>(
    repo: &Repository<Lead, S, N>,
    snapshots: &N,
    diego: &str,
    intake: Uuid,
) -> Result<(), BoxError> {
    let store = repo.store();
    let stream = Lead::stream_id(diego);
    section(9, "Snapshots: load = newest snapshot + the events after it");
    let loaded = repo.load(diego).await?;
    say(&format!(
        "`repo.load(\"{diego}\")` -> version {}, from the snapshot at version {} + {} event(s) replayed:",
        loaded.version,
        loaded
            .snapshot_version
            .map_or_else(|| "-".to_owned(), |v| v.to_string()),
        loaded.events_replayed
    ));
    say(&format!("  {:?}", loaded.state));
    let full = Repository::of::<Lead>(store.clone()).load(diego).await?;
    if full.state != loaded.state || loaded.snapshot_version != Some(3) {
        return Err("the snapshot did not give the replayed state".into());
    }
    say(&format!(
        "A repository without snapshots replays all {} events and reaches the same state.",
        full.events_replayed
    ));
    // What a build whose `Lead` had other fields would have left behind.
    snapshots
        .save(
            store.tenant_id(),
            Snapshot {
                aggregate_type: Lead::TYPE.to_owned(),
                aggregate_id: stream.clone(),
                version: loaded.version,
                state: serde_json::value::to_raw_value(
                    &serde_json::json!({ "name": "Diego", "stage": "hot" }),
                )?,
                fingerprint: "sha256:an-older-shape-of-lead".to_owned(),
                codec_version: 1,
            },
        )
        .await?;
    say("Now an older build, whose `Lead` had other fields, left a snapshot at version 4. The next load:");
    let reloaded = repo.load(diego).await?;
    if !reloaded.snapshot_invalidated || reloaded.state != loaded.state {
        return Err("the outdated snapshot was used".into());
    }
    say(&format!(
        "  ignored it (its shape fingerprint is not the code's), replayed all {} events, same state;",
        reloaded.events_replayed
    ));
    say("  annals emitted a `tracing` warning and counted it in the `annals_snapshot_invalidations_total` metric.");
    repo.execute(
        diego,
        &LeadCommand::Score {
            score: 85,
            confidence: 0.95,
        },
        &Metadata::new()
            .with_correlation_id(intake)
            .with_user("scoring-model"),
    )
    .await?;
    let healed = repo.load(diego).await?;
    say(&format!(
        "The next command (a new score, v5) wrote a fresh snapshot: load -> snapshot at version {}, {} event(s) replayed.",
        healed
            .snapshot_version
            .map_or_else(|| "-".to_owned(), |v| v.to_string()),
        healed.events_replayed
    ));
    why("an aggregate with years of events loads in one snapshot read plus a few events; a snapshot from another shape of the state is never fatal and never a wrong state.");

    Ok(())
}
