//! The `prima-node` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use prima_node::config::{Config, ConfigError};
use prima_node::worker::{FakeProcessor, ProcessError, StudyProcessor};

#[derive(Parser)]
#[command(
    name = "prima-node",
    version,
    about = "DICOM node running the Prima brain-MRI model"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the DICOM node (the daemon).
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate a configuration file.
    CheckConfig { file: PathBuf },
    /// Print studies by state and the outbox.
    Status {
        #[arg(long)]
        config: PathBuf,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// The study processor `serve` runs. `PRIMA_NODE_FAKE_PROCESSOR=1` selects the model-free
/// stand-in used by the node's integration tests.
fn make_processor(_cfg: &Config) -> Result<Box<dyn StudyProcessor>, ProcessError> {
    if std::env::var("PRIMA_NODE_FAKE_PROCESSOR").is_ok_and(|v| v == "1") {
        tracing::warn!(
            "using the FAKE study processor: outputs are placeholders, not model results"
        );
        return Ok(Box::new(FakeProcessor));
    }
    Err(ProcessError::Load(
        "the model processor is not wired into this build yet (PRIMA_NODE_FAKE_PROCESSOR=1 runs the fake one)"
            .into(),
    ))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => {
            init_logging();
            match prima_node::node::serve(&config, Box::new(make_processor)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "prima-node failed");
                    eprintln!("prima-node: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig { file } => match prima_node::node::check_config(&file) {
            Ok((cfg, notes)) => {
                println!(
                    "{}: OK (AE {} on {}, {} source(s), {} destination(s))",
                    file.display(),
                    cfg.node.ae_title,
                    cfg.node.listen,
                    cfg.sources.len(),
                    cfg.destinations.len()
                );
                for n in notes {
                    println!("{n}");
                }
                ExitCode::SUCCESS
            }
            Err(ConfigError::Invalid { path, problems }) => {
                eprintln!("{}: {} problem(s):", path.display(), problems.len());
                for p in problems {
                    eprintln!("  - {p}");
                }
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Status { config } => match prima_node::node::status_report(&config) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("prima-node status: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
