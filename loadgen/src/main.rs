//! loadgen's entry point: telemetry, config, run, report.

use std::process::ExitCode;

use clap::Parser;
use loadgen::{config::Config, driver};

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    let _telemetry = match shared::telemetry::init("loadgen", env!("CARGO_PKG_VERSION")) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("loadgen: {error}");
            return ExitCode::FAILURE;
        }
    };
    match driver::run(&config).await {
        Ok(report) if config.json => {
            println!("{}", report.json());
            ExitCode::SUCCESS
        }
        Ok(report) => {
            println!("{}", report.table());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("loadgen: {error}");
            ExitCode::FAILURE
        }
    }
}
