use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use prima_node::config::ConfigError;
use prima_node::imaging::series::SliceOrder;
use prima_node::model::demo::{write_demo_model, DemoSize};
use prima_node::model::import::{import_model, ImportSources};
use prima_node::model::prima::parse_device;
use prima_node::model::ModelOptions;
use prima_node::process::{self, prepare::prepare_folder, InferOptions};

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
    /// The worker process `serve` starts to run the model (not for use by hand).
    #[command(hide = true)]
    Worker {
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
    /// Write a synthetic multi-series brain MR study (head phantom, no patient data).
    SynthStudy {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Instead of the 4-series brain protocol: this many single-frame axial instances
        /// (the benchmarks' study), shaped by --series, --rows and --cols.
        #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
        instances: Option<usize>,
        #[arg(long, default_value_t = 4, requires = "instances",
              value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
        series: usize,
        #[arg(long, default_value_t = 512, requires = "instances",
              value_parser = clap::value_parser!(u16).range(1..))]
        rows: u16,
        #[arg(long, default_value_t = 512, requires = "instances",
              value_parser = clap::value_parser!(u16).range(1..))]
        cols: u16,
        /// Instead: vendor-like series of real scanners (diffusion, SWI, 4D, mosaics,
        /// Enhanced MR, localizer, mixed matrix) in one study, at least this many instances.
        #[arg(long, conflicts_with = "instances",
              value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
        vendor: Option<usize>,
    },
    /// Run Prima on one study folder: writes `<name>_predictions.json` (upstream's format)
    /// and `<name>_run.json` (series used/skipped, timings) into `--out`.
    Infer(InferArgs),
    /// Model files.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// Decode a study folder and select Prima's input tokens, without running the model
    /// (a dry run of the imaging path; prints one line per series).
    Prepare {
        #[arg(long, value_enum, default_value_t = SliceOrderArg::Position)]
        slice_order: SliceOrderArg,
        study_dir: PathBuf,
    },
}

#[derive(clap::Args)]
struct InferArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value_t = SliceOrderArg::Position)]
    slice_order: SliceOrderArg,
    /// Defaults to the DICOM StudyDescription (0008,1030).
    #[arg(long)]
    study_description: Option<String>,
    /// auto, cpu, cuda or cuda:N
    #[arg(long, default_value = "auto")]
    device: String,
    /// f32 (reference numerics), f16 or bf16 (GPU)
    #[arg(long, default_value = "f32")]
    precision: String,
    /// libtorch intra-op threads (default: libtorch's choice)
    #[arg(long)]
    threads: Option<i32>,
    /// Tokens per VQ-VAE call.
    #[arg(long, default_value_t = 400)]
    vqvae_chunk: usize,
    /// Also write the findings SR and the priority KOS next to the JSON.
    #[arg(long)]
    dicom: bool,
    /// Explain the top finding with LIME (into the run record), as `[explain]` does.
    #[arg(long)]
    explain: bool,
    /// LIME samples (upstream: 1000).
    #[arg(long, default_value_t = 1000)]
    explain_samples: usize,
    /// Tokens reported per finding.
    #[arg(long, default_value_t = 3)]
    explain_top_tokens: usize,
    /// Findings explained.
    #[arg(long, default_value_t = 1)]
    explain_findings: usize,
    /// Seed of LIME's masks (upstream: 0).
    #[arg(long, default_value_t = 0)]
    explain_seed: u32,
    /// Perturbed inputs per model call.
    #[arg(long, default_value_t = prima_node::explain::ExplainOptions::default().batch)]
    explain_batch: usize,
    /// Compute LIME's labels in float32 on CUDA too (default: float16 autocast, as
    /// upstream).
    #[arg(long)]
    explain_no_autocast: bool,
    study_dir: PathBuf,
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Write a deterministic random-weight demo model (NOT for clinical use).
    Demo {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_enum, default_value_t = DemoSizeArg::Small)]
        size: DemoSizeArg,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Convert the upstream checkpoints into a model directory, without executing anything
    /// from them (the shipped converter, run by python3 with numpy), and check that it
    /// loads. `--out` must be new or empty; nothing is written to it on failure.
    /// Environment: PRIMA_NODE_CONVERTER (converter path), PRIMA_NODE_PYTHON (interpreter).
    Import {
        /// The full model checkpoint (upstream's `.pt`).
        #[arg(long)]
        prima: PathBuf,
        /// The VQ-VAE tokenizer's state dict (`.pth`).
        #[arg(long)]
        tokenizer: PathBuf,
        /// The tokenizer's configuration (JSON).
        #[arg(long)]
        tokenizer_config: PathBuf,
        /// The model directory to write (new or empty), e.g. /var/lib/prima-node/model.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DemoSizeArg {
    Small,
    Full,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SliceOrderArg {
    Position,
    Filename,
}

impl From<SliceOrderArg> for SliceOrder {
    fn from(a: SliceOrderArg) -> Self {
        match a {
            SliceOrderArg::Position => SliceOrder::Position,
            SliceOrderArg::Filename => SliceOrder::FileName,
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
        // dicom-rs warns on every parse of a file whose first (0008,0005) value it does not
        // know (an empty one, as Japanese data sets have): imaging::charset decodes those.
        .add_directive(
            "dicom_parser::stateful::decode=error"
                .parse()
                .expect("directive"),
        );
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => {
            init_logging();
            let factory = prima_node::model_process::factory(&config);
            match prima_node::app::serve(&config, factory) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "prima-node failed");
                    eprintln!("prima-node: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Worker { config } => {
            init_logging();
            let _span = tracing::info_span!("worker", pid = std::process::id()).entered();
            match prima_node::app::serve_model_process(&config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "prima-node worker failed");
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig { file } => match prima_node::app::check_config(&file) {
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
        Command::Status { config } => match prima_node::app::status_report(&config) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("prima-node status: {e}");
                ExitCode::FAILURE
            }
        },
        other => match run(other) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("prima-node: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::SynthStudy {
            out,
            seed,
            instances,
            series,
            rows,
            cols,
            vendor,
        } => {
            if let Some(n) = vendor {
                let files = prima_node::synth::vendor::write_study(&out, seed, n)
                    .with_context(|| format!("writing study to {}", out.display()))?;
                eprintln!("wrote {} instances under {}", files.len(), out.display());
                return Ok(());
            }
            let study = match instances {
                Some(n) => prima_node::synth::SynthStudy::bench(seed, n, series, rows, cols),
                None => prima_node::synth::SynthStudy::brain(seed),
            };
            let files = prima_node::synth::write_study(&study, &out)
                .with_context(|| format!("writing study to {}", out.display()))?;
            eprintln!("wrote {} instances under {}", files.len(), out.display());
            Ok(())
        }
        Command::Infer(args) => infer(args),
        Command::Model {
            command: ModelCommand::Demo { out, size, seed },
        } => {
            let size = match size {
                DemoSizeArg::Small => DemoSize::Small,
                DemoSizeArg::Full => DemoSize::Full,
            };
            write_demo_model(&out, size, seed)?;
            eprintln!(
                "wrote demo model ({}) to {} — NOT FOR CLINICAL USE",
                size.as_str(),
                out.display()
            );
            Ok(())
        }
        Command::Model {
            command:
                ModelCommand::Import {
                    prima,
                    tokenizer,
                    tokenizer_config,
                    out,
                },
        } => {
            let m = import_model(
                &ImportSources {
                    prima,
                    tokenizer,
                    tokenizer_config,
                },
                &out,
            )?;
            println!(
                "imported {} {} into {}",
                m.model_name,
                m.model_version,
                out.display()
            );
            println!(
                "  checkpoint sha256 {}",
                m.checkpoint_sha256().unwrap_or("none")
            );
            println!(
                "  weights sha256    {}",
                m.weights_sha256().unwrap_or("none")
            );
            println!(
                "  {} diagnosis heads, {} referral heads, priority {}",
                m.diagnosis_heads.len(),
                m.referral_heads.len(),
                m.priority_classes.join("/")
            );
            Ok(())
        }
        Command::Prepare {
            slice_order,
            study_dir,
        } => {
            let study = prepare_folder(&study_dir, slice_order.into())?;
            let secs = study.scan_s + study.prepare_s;
            for p in &study.prepared {
                println!(
                    "series {:<50} images {:>4} patches {:>5} kept {:>5} at {}%",
                    p.name,
                    p.slices.len(),
                    p.tokenized.n_patches(),
                    p.selection.ids.len(),
                    p.selection.percent
                );
            }
            for s in &study.skipped {
                println!("skipped {}: {}", s.key, s.reason);
            }
            println!("prepare_seconds {secs:.4}");
            Ok(())
        }
        Command::Serve { .. }
        | Command::Worker { .. }
        | Command::CheckConfig { .. }
        | Command::Status { .. } => {
            unreachable!("handled in main")
        }
    }
}

/// `prima-node infer`.
fn infer(a: InferArgs) -> Result<()> {
    // A measurement asked for on the GPU must not quietly run on the CPU (the node falls
    // back; `infer` is the tool that measures).
    let requested = parse_device(&a.device)?;
    if let (_, Some(why)) = prima_node::model::usable_device(requested) {
        anyhow::bail!("--device {}: {why}", a.device);
    }
    let explain = a.explain.then_some(prima_node::explain::ExplainOptions {
        samples: a.explain_samples,
        top_tokens: a.explain_top_tokens,
        findings: a.explain_findings,
        seed: a.explain_seed,
        batch: a.explain_batch,
        autocast: !a.explain_no_autocast,
    });
    Ok(process::infer_folder(
        &InferOptions {
            model_dir: a.model,
            model: ModelOptions {
                device: requested,
                precision: a.precision.parse()?,
                vqvae_chunk: a.vqvae_chunk,
            },
            threads: a.threads,
            study_dir: a.study_dir,
            slice_order: a.slice_order.into(),
            study_description: a.study_description,
            out: a.out,
            dicom: a.dicom,
            explain,
        },
        |msg| eprintln!("[prima-node infer] {msg}"),
    )?)
}
