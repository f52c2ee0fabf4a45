//! `migrate up|status|down`: annals' own migrations.

use std::io::Write;

use serde::Serialize;

use crate::cli::MigrateCommand;
use crate::output::{time, Out, Table};
use crate::{Admin, AdminError, Exit};

#[derive(Debug, Serialize)]
struct Migration {
    version: i64,
    description: String,
    applied_at: Option<chrono::DateTime<chrono::Utc>>,
}

async fn states(admin: &Admin) -> Result<Vec<Migration>, AdminError> {
    Ok(annals_postgres::migration_status(admin.store.pool())
        .await?
        .into_iter()
        .map(|m| Migration {
            version: m.version,
            description: m.description,
            applied_at: m.applied_at,
        })
        .collect())
}

fn table(w: &mut dyn Write, migrations: &[Migration]) -> std::io::Result<()> {
    let mut table = Table::new(&["VERSION", "DESCRIPTION", "APPLIED AT"]);
    for m in migrations {
        table.row(vec![
            m.version.to_string(),
            m.description.clone(),
            m.applied_at
                .map_or_else(|| "pending".to_owned(), |t| time(Some(t))),
        ]);
    }
    table.write(w)
}

pub(crate) async fn run(
    admin: &Admin,
    command: &MigrateCommand,
    out: &mut Out<'_>,
) -> Result<Exit, AdminError> {
    let pool = admin.store.pool();
    match command {
        MigrateCommand::Up => {
            annals_postgres::migrate(pool).await?;
            let migrations = states(admin).await?;
            out.emit(&migrations, |w| {
                writeln!(w, "annals migrations applied")?;
                table(w, &migrations)
            })?;
            Ok(Exit::Ok)
        }
        MigrateCommand::Status => {
            let migrations = states(admin).await?;
            out.emit(&migrations, |w| table(w, &migrations))?;
            let pending = migrations.iter().any(|m| m.applied_at.is_none());
            Ok(if pending { Exit::Unhealthy } else { Exit::Ok })
        }
        MigrateCommand::Down { yes } => {
            if !yes {
                return Err(AdminError::NotConfirmed);
            }
            annals_postgres::migrate_down(pool).await?;
            let migrations = states(admin).await?;
            out.emit(&migrations, |w| {
                writeln!(w, "annals migrations reverted")?;
                table(w, &migrations)
            })?;
            Ok(Exit::Ok)
        }
    }
}
