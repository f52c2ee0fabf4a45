//! `dead-letters list|show|replay|discard`.

use std::collections::HashSet;
use std::io::Write;

use annals_core::dead_letter::{DeadLetter, DeadLetterQuery, DeadLetterStatus, DeadLetterStore};
use annals_core::projection::ReplayOutcome;
use annals_core::EventStore;
use serde::Serialize;

use super::streams::{decoded, DecodedEvent};
use crate::cli::{DeadLettersCommand, StatusFilter};
use crate::output::{opt, short, time, Out, Table};
use crate::registered::RegisteredProjection;
use crate::{progress, Admin, AdminError, Exit};

#[derive(Debug, Serialize)]
struct Shown {
    dead_letter: DeadLetter,
    /// The parked event (`None`: no longer in the store).
    event: Option<DecodedEvent>,
}

#[derive(Debug, Serialize)]
struct Replayed {
    id: u64,
    handler: String,
    outcome: &'static str,
}

#[derive(Debug, Default, Serialize)]
struct ReplaySummary {
    handler: String,
    resolved: u64,
    failed: u64,
    skipped: u64,
    /// The last error of each entry that failed again, by id.
    errors: Vec<(u64, String)>,
}

#[derive(Debug, Serialize)]
struct Discarded {
    id: u64,
    reason: String,
}

pub(crate) async fn run(
    admin: &Admin,
    command: &DeadLettersCommand,
    out: &mut Out<'_>,
) -> Result<Exit, AdminError> {
    match command {
        DeadLettersCommand::List {
            handler,
            status,
            after,
            limit,
        } => {
            let query = DeadLetterQuery {
                handler: handler.clone(),
                status: match status {
                    StatusFilter::Pending => Some(DeadLetterStatus::Pending),
                    StatusFilter::Resolved => Some(DeadLetterStatus::Resolved),
                    StatusFilter::Discarded => Some(DeadLetterStatus::Discarded),
                    StatusFilter::All => None,
                },
                after_id: *after,
                limit: *limit,
            };
            let letters = admin.projections.list_dead_letters(&query).await?;
            out.emit(&letters, |w| table(&letters).write(w))?;
            Ok(Exit::Ok)
        }
        DeadLettersCommand::Show { id } => {
            let letter = find(admin, *id).await?;
            let event = admin
                .store
                .read_event(letter.event_position)
                .await?
                .map(|event| decoded(admin, event));
            let shown = Shown {
                dead_letter: letter,
                event,
            };
            out.emit(&shown, |w| show(w, &shown))?;
            Ok(Exit::Ok)
        }
        DeadLettersCommand::Replay { id, handler } => match (id, handler) {
            (Some(id), _) => replay_one(admin, *id, out).await,
            (None, Some(handler)) => replay_handler(admin, handler, out).await,
            (None, None) => Err(AdminError::MissingArgument {
                argument: "ID or --handler",
            }),
        },
        DeadLettersCommand::Discard { id, reason } => {
            if !admin.projections.discard_dead_letter(*id, reason).await? {
                let letter = find(admin, *id).await?;
                return Err(AdminError::not_pending(*id, letter.status));
            }
            let discarded = Discarded {
                id: *id,
                reason: reason.clone(),
            };
            out.emit(&discarded, |w| writeln!(w, "dead letter {id} discarded"))?;
            Ok(Exit::Ok)
        }
    }
}

async fn find(admin: &Admin, id: u64) -> Result<DeadLetter, AdminError> {
    admin
        .projections
        .dead_letter(id)
        .await?
        .ok_or(AdminError::DeadLetterNotFound { id })
}

fn table(letters: &[DeadLetter]) -> Table {
    let mut table = Table::new(&[
        "ID",
        "HANDLER",
        "STATUS",
        "POSITION",
        "STREAM",
        "TYPE",
        "ATTEMPTS",
        "LAST FAILED",
        "ERROR",
    ]);
    for l in letters {
        table.row(vec![
            l.id.to_string(),
            l.handler.clone(),
            l.status.as_str().to_owned(),
            l.event_position.to_string(),
            l.stream_id.clone(),
            l.event_type.clone(),
            l.attempts.to_string(),
            time(Some(l.last_failed_at)),
            short(&l.error, 60),
        ]);
    }
    table
}

fn show(w: &mut dyn Write, shown: &Shown) -> std::io::Result<()> {
    let l = &shown.dead_letter;
    writeln!(w, "dead letter {}", l.id)?;
    writeln!(w, "  handler:      {}", l.handler)?;
    writeln!(w, "  status:       {}", l.status.as_str())?;
    writeln!(
        w,
        "  event:        {} (position {}, id {})",
        l.event_type, l.event_position, l.event_id
    )?;
    writeln!(w, "  stream:       {}", l.stream_id)?;
    writeln!(w, "  attempts:     {}", l.attempts)?;
    writeln!(w, "  first failed: {}", time(Some(l.first_failed_at)))?;
    writeln!(w, "  last failed:  {}", time(Some(l.last_failed_at)))?;
    writeln!(w, "  resolved at:  {}", time(l.resolved_at))?;
    writeln!(w, "  discarded:    {}", opt(l.discard_reason.as_deref()))?;
    writeln!(w, "  blocked by:   {}", opt(l.blocked_by))?;
    writeln!(w, "  error:        {}", l.error)?;
    match &shown.event {
        Some(event) => {
            let json = serde_json::to_string_pretty(event).map_err(std::io::Error::from)?;
            writeln!(w, "  stored event:\n{json}")
        }
        None => writeln!(w, "  stored event: (no longer in the event store)"),
    }
}

async fn replay_one(admin: &Admin, id: u64, out: &mut Out<'_>) -> Result<Exit, AdminError> {
    let letter = find(admin, id).await?;
    if letter.status != DeadLetterStatus::Pending {
        return Err(AdminError::not_pending(id, letter.status));
    }
    let runner = admin
        .runner(&letter.handler)
        .ok_or_else(|| AdminError::HandlerNotRegistered {
            id,
            handler: letter.handler.clone(),
        })?;
    let bar = progress::bar(1, "replaying");
    let outcome = runner.replay(id).await;
    bar.finish_and_clear();
    match outcome? {
        ReplayOutcome::Resolved => {
            let replayed = Replayed {
                id,
                handler: letter.handler,
                outcome: "resolved",
            };
            out.emit(&replayed, |w| {
                writeln!(w, "dead letter {id} replayed: resolved")
            })?;
            Ok(Exit::Ok)
        }
        ReplayOutcome::Failed(e) => Err(AdminError::ReplayFailed {
            id,
            error: e.to_string(),
        }),
        // resolved or discarded by someone else meanwhile
        _ => {
            let status = find(admin, id).await?.status;
            Err(AdminError::not_pending(id, status))
        }
    }
}

/// Every pending entry of a handler, stream by stream in log order; within
/// a stream it stops at the first entry that fails again (as
/// `ProjectionRunner::replay_all`, one entry at a time for the progress bar).
async fn replay_handler(
    admin: &Admin,
    handler: &str,
    out: &mut Out<'_>,
) -> Result<Exit, AdminError> {
    let runner: &dyn RegisteredProjection = admin.require_runner(handler)?.as_ref();
    let mut pending = Vec::new();
    let mut query = DeadLetterQuery::pending(handler).limit(500);
    loop {
        let page = admin.projections.list_dead_letters(&query).await?;
        let Some(last) = page.last() else { break };
        query = query.after(last.id);
        pending.extend(page);
    }
    pending.sort_by_key(|l| l.event_position);
    let bar = progress::bar(pending.len() as u64, "replaying");
    let mut summary = ReplaySummary {
        handler: handler.to_owned(),
        ..ReplaySummary::default()
    };
    let mut failed_streams = HashSet::new();
    for letter in pending {
        bar.inc(1);
        if failed_streams.contains(&letter.stream_id) {
            summary.skipped += 1;
            continue;
        }
        match runner.replay(letter.id).await {
            Ok(ReplayOutcome::Resolved) => summary.resolved += 1,
            Ok(ReplayOutcome::Failed(e)) => {
                summary.failed += 1;
                summary.errors.push((letter.id, e.to_string()));
                failed_streams.insert(letter.stream_id);
            }
            Ok(_) => {}
            Err(e) => {
                bar.finish_and_clear();
                return Err(e.into());
            }
        }
    }
    bar.finish_and_clear();
    out.emit(&summary, |w| {
        writeln!(
            w,
            "replayed `{handler}`: {} resolved, {} failed again, {} skipped (behind a failure in their stream)",
            summary.resolved, summary.failed, summary.skipped
        )?;
        for (id, error) in &summary.errors {
            writeln!(w, "  dead letter {id}: {}", short(error, 100))?;
        }
        Ok(())
    })?;
    Ok(if summary.failed == 0 {
        Exit::Ok
    } else {
        Exit::Failed
    })
}
