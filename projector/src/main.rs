//! projector's entry point: `projector [run]` or `projector rebuild`.

use std::process::ExitCode;

use clap::Parser;
use projector::{
    app::Projector,
    config::{Cli, Command},
    error::ProjectorError,
    rebuild::rebuild,
    startup::{Application, try_connect_event_log},
};
use read_model::{Projection, ReadStore};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let _telemetry = match shared::telemetry::init("projector", env!("CARGO_PKG_VERSION")) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("projector: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => match Application::build(cli.config).await {
            Ok(app) => app.run_until_stopped(shared::shutdown::signal()).await,
            Err(error) => Err(error),
        },
        Command::Rebuild { projection, repartition } => run_rebuild(cli.config, projection, repartition).await,
        Command::Migrate => match ReadStore::connect(cli.config.read_store_url.expose(), 1).await {
            Ok(store) => {
                println!("the read store's schema is up to date");
                store.close().await;
                Ok(())
            }
            Err(error) => Err(error.into()),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "projector failed");
            eprintln!("projector: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run_rebuild(
    config: projector::config::Config,
    projection: Option<Projection>,
    repartition: bool,
) -> Result<(), ProjectorError> {
    let projections = projection.map_or_else(|| Projection::ALL.to_vec(), |p| vec![p]);
    let stream = try_connect_event_log(&config).await?;
    let store = config.read_store(2).await?;
    let partitions = config.partitions.get();
    let laid_out = store.progress().await?.partitions();
    if laid_out != partitions {
        if !repartition || projection.is_some() {
            return Err(ProjectorError::Settings(format!(
                "the read model is projected in {laid_out} partition(s), PROJECTOR_PARTITIONS is {partitions}: to \
                 re-lay it out, stop the projectors and run `projector rebuild --repartition` (every projection \
                 is rebuilt; no --projection)"
            )));
        }
        println!("laying the read model out in {partitions} partition(s) (was {laid_out})");
        store.repartition(partitions).await?;
    }
    let projector = Projector::for_replay(store, stream.clone(), config.event_log.clone(), partitions);
    let report = rebuild(
        &projector,
        &stream,
        config.event_log.all_accounts_subject(),
        &projections,
        config.batch_size.get(),
        true,
    )
    .await?;
    let names: Vec<&str> = report.projections.iter().map(|p| p.name()).collect();
    println!(
        "rebuilt {}: {} events in {:.2} s ({:.0} events/s, {} transactions)",
        names.join(", "),
        report.events,
        report.elapsed.as_secs_f64(),
        report.events_per_second(),
        report.batches
    );
    projector.store().close().await;
    Ok(())
}
