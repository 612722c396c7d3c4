//! write-service's entry point: telemetry, config, then serve until
//! SIGTERM (`write-service [serve]`), or back the event log up or restore
//! it (`write-service backup|restore`).

use std::process::ExitCode;

use clap::Parser;
use write_service::{
    backup::{self, BackupError},
    config::{Cli, Command, Config},
    startup::Application,
};

#[tokio::main]
async fn main() -> ExitCode {
    let Cli { config, command } = Cli::parse();
    let _telemetry = match shared::telemetry::init("write-service", env!("CARGO_PKG_VERSION")) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("write-service: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = match command.unwrap_or(Command::Serve) {
        Command::Serve => match Application::build(config).await {
            Ok(app) => app.run_until_stopped(shared::shutdown::signal()).await.map_err(|error| error.to_string()),
            Err(error) => Err(error.to_string()),
        },
        Command::Backup { to_dir, keep } => {
            let keep = usize::try_from(keep).unwrap_or(usize::MAX);
            with_nats(&config, "write-service-backup", async |client, stream| {
                backup::backup(client, stream, &to_dir, keep).await.map(|summary| println!("backed up {summary}"))
            })
            .await
        }
        Command::Restore { from, latest_in } => {
            with_nats(&config, "write-service-restore", async |client, stream| {
                // clap requires one of the two.
                let from = match from {
                    Some(from) => from,
                    None => backup::latest(&latest_in.unwrap_or_default(), stream)?,
                };
                backup::restore(client, stream, &from).await.map(|summary| println!("restored {summary}"))
            })
            .await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "write-service failed");
            eprintln!("write-service: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Connects to NATS as `name` with the service's settings, runs `operation`
/// on the configured stream, and drains the connection.
async fn with_nats(
    config: &Config,
    name: &str,
    operation: impl AsyncFnOnce(&async_nats::Client, &str) -> Result<(), BackupError>,
) -> Result<(), String> {
    let options = config.nats.connect_options(name).await.map_err(|error| error.to_string())?;
    let client =
        options.connect(config.nats.servers()).await.map_err(|error| format!("cannot connect to NATS: {error}"))?;
    let result = operation(&client, &config.event_log.stream).await.map_err(|error| error.to_string());
    let _ = client.drain().await;
    result
}
