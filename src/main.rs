use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use prima_node::config::{Config, ConfigError};
use prima_node::imaging::series::{scan_study, SliceOrder};
use prima_node::infer::{predictions_json, run_model, RunContext, RunRecord};
use prima_node::model::demo::{write_demo_model, DemoSize};
use prima_node::model::prima::parse_device;
use prima_node::model::{ModelOptions, PrimaModel};
use prima_node::pipeline::prepare_all;
use prima_node::worker::{FakeProcessor, ProcessError, StudyProcessor};
use std::time::Instant;

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
    },
    /// Run Prima on one study folder: writes `<name>_predictions.json` (upstream's format)
    /// and `<name>_run.json` (series used/skipped, timings) into `--out`.
    Infer {
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
        study_dir: PathBuf,
    },
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
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// The study processor `serve` runs. `PRIMA_NODE_FAKE_PROCESSOR=1` selects the model-free
/// stand-in used by the node's integration tests.
fn make_processor(cfg: &Config) -> Result<Box<dyn StudyProcessor>, ProcessError> {
    if std::env::var("PRIMA_NODE_FAKE_PROCESSOR").is_ok_and(|v| v == "1") {
        tracing::warn!(
            "using the FAKE study processor: outputs are placeholders, not model results"
        );
        return Ok(Box::new(FakeProcessor));
    }
    Ok(Box::new(prima_node::processor::PrimaProcessor::new(cfg)?))
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
        } => {
            let study = match instances {
                Some(n) => prima_node::synth::SynthStudy::bench(seed, n, series, rows, cols),
                None => prima_node::synth::SynthStudy::brain(seed),
            };
            let files = prima_node::synth::write_study(&study, &out)
                .with_context(|| format!("writing study to {}", out.display()))?;
            eprintln!("wrote {} instances under {}", files.len(), out.display());
            Ok(())
        }
        Command::Infer {
            model,
            out,
            slice_order,
            study_description,
            device,
            precision,
            threads,
            vqvae_chunk,
            dicom,
            study_dir,
        } => infer(InferArgs {
            dicom,
            model,
            out,
            slice_order,
            study_description,
            device,
            precision,
            threads,
            vqvae_chunk,
            study_dir,
        }),
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
        Command::Prepare {
            slice_order,
            study_dir,
        } => {
            let t0 = Instant::now();
            let scan = scan_study(&study_dir, slice_order.into())?;
            let (prepared, skipped) = prepare_all(&scan);
            let secs = t0.elapsed().as_secs_f64();
            for p in &prepared {
                println!(
                    "series {:<50} images {:>4} patches {:>5} kept {:>5} at {}%",
                    p.name,
                    p.slices.len(),
                    p.tokenized.n_patches(),
                    p.selection.ids.len(),
                    p.selection.percent
                );
            }
            for s in &skipped {
                println!("skipped {}: {}", s.key, s.reason);
            }
            println!("prepare_seconds {secs:.4}");
            Ok(())
        }
        Command::Serve { .. } | Command::CheckConfig { .. } | Command::Status { .. } => {
            unreachable!("handled in main")
        }
    }
}

struct InferArgs {
    model: PathBuf,
    out: PathBuf,
    slice_order: SliceOrderArg,
    study_description: Option<String>,
    device: String,
    precision: String,
    threads: Option<i32>,
    vqvae_chunk: usize,
    dicom: bool,
    study_dir: PathBuf,
}

fn infer(a: InferArgs) -> Result<()> {
    let t_start = Instant::now();
    if let Some(n) = a.threads {
        tch::set_num_threads(n);
    }
    let opts = ModelOptions {
        device: parse_device(&a.device)?,
        precision: a.precision.parse()?,
        vqvae_chunk: a.vqvae_chunk,
    };
    let progress = |msg: &str| eprintln!("[prima-node infer] {msg}");
    let model = PrimaModel::load(&a.model, &opts)
        .with_context(|| format!("loading model {}", a.model.display()))?;
    let m = model.manifest();
    progress(&format!(
        "model {} {}{} on {:?}",
        m.model_name,
        m.model_version,
        if m.demo {
            " (DEMO MODEL — NOT FOR CLINICAL USE)"
        } else {
            ""
        },
        opts.device
    ));
    let t0 = Instant::now();
    let scan = scan_study(&a.study_dir, a.slice_order.into())?;
    let scan_s = t0.elapsed().as_secs_f64();
    progress(&format!(
        "scan: {} series candidates in {scan_s:.2}s",
        scan.series.len()
    ));
    let t1 = Instant::now();
    let (prepared, skipped) = prepare_all(&scan);
    let prepare_s = t1.elapsed().as_secs_f64();
    for p in &prepared {
        progress(&format!(
            "tokens: series {} {} -> {} tokens at {}%",
            p.name,
            p.tokenized.n_patches(),
            p.selection.ids.len(),
            p.selection.percent
        ));
    }
    for s in &skipped {
        progress(&format!("skipped series {}: {}", s.key, s.reason));
    }
    if prepared.is_empty() {
        anyhow::bail!("no usable series in {}", a.study_dir.display());
    }
    let description = a
        .study_description
        .clone()
        .or_else(|| scan.study_description.clone())
        .unwrap_or_default();
    let run = run_model(&model, &prepared, &description, progress)?;
    let name = a
        .study_dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "study".into());
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let pred_path = a.out.join(format!("{name}_predictions.json"));
    std::fs::write(&pred_path, predictions_json(&run.output))?;
    let record = RunRecord::new(RunContext {
        study: name.clone(),
        study_instance_uid: scan.study_instance_uid.clone(),
        study_description: description,
        slice_order: match a.slice_order {
            SliceOrderArg::Position => "position",
            SliceOrderArg::Filename => "filename",
        },
        model: &model,
        prepared: &prepared,
        skipped: &skipped,
        run: &run,
        scan_s,
        prepare_s,
        total_s: t_start.elapsed().as_secs_f64(),
    });
    std::fs::write(
        a.out.join(format!("{name}_run.json")),
        serde_json::to_string_pretty(&record)?,
    )?;
    progress(&format!("wrote {}", pred_path.display()));
    if a.dicom {
        let files: Vec<(String, PathBuf)> = prepared
            .iter()
            .flat_map(|p| {
                p.slices
                    .iter()
                    .map(|s| (s.sop_instance_uid.clone(), s.path.clone()))
            })
            .collect();
        let header = dicom_object::OpenFileOptions::new()
            .read_until(dicom_dictionary_std::tags::PIXEL_DATA)
            .open_file(&files[0].1)?
            .into_inner();
        let node = prima_node::processor::node_identity("PRIMA", "infer");
        let outputs = prima_node::processor::build_reports(&prima_node::processor::ReportArgs {
            prepared: &prepared,
            skipped: &skipped,
            output: &run.output,
            manifest: m,
            header: &header,
            input_set_hash: prima_node::processor::input_set_hash(&files)?,
            predecessors: &[],
            forced_complete: false,
            node: &node,
            config: &prima_node::report::ReportConfig::default(),
        })?;
        for o in outputs {
            let path = a.out.join(format!("{name}_{}.dcm", o.kind.uid_kind()));
            std::fs::write(&path, &o.bytes)?;
            progress(&format!("wrote {}", path.display()));
        }
    }
    Ok(())
}
