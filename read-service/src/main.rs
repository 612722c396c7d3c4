//! read-service's entry point: telemetry, config, build, run until SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use read_service::{config::Config, startup::Application};

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    let _telemetry = match shared::telemetry::init("read-service", env!("CARGO_PKG_VERSION")) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("read-service: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = match Application::build(config).await {
        Ok(app) => app.run_until_stopped(shared::shutdown::signal()).await,
        Err(error) => Err(error),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "read-service failed");
            ExitCode::FAILURE
        }
    }
}
