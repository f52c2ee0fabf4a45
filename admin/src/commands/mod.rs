//! The commands, one module per noun.

use crate::cli::AdminCommand;
use crate::output::Out;
use crate::{Admin, AdminError, Exit};

pub(crate) mod dead_letters;
mod migrate;
pub(crate) mod projections;
pub(crate) mod sagas;
mod schemas;
pub(crate) mod status;
pub(crate) mod streams;

pub(crate) async fn run(
    admin: &Admin,
    command: &AdminCommand,
    out: &mut Out<'_>,
) -> Result<Exit, AdminError> {
    match command {
        AdminCommand::Status => status::status(admin, out).await,
        AdminCommand::Projections(c) => projections::run(admin, c, out).await,
        AdminCommand::DeadLetters(c) => dead_letters::run(admin, c, out).await,
        AdminCommand::Sagas(c) => sagas::run(admin, c, out).await,
        AdminCommand::Streams(c) => streams::run(admin, c, out).await,
        AdminCommand::Schemas(c) => schemas::run(admin, c, out).await,
        AdminCommand::Migrate(c) => migrate::run(admin, c, out).await,
    }
}
