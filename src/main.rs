use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use prima_node::imaging::series::{scan_study, SliceOrder};
use prima_node::pipeline::prepare_all;
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
    /// Write a synthetic multi-series brain MR study (head phantom, no patient data).
    SynthStudy {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Decode a study folder and select Prima's input tokens, without running the model
    /// (a dry run of the imaging path; prints one line per series).
    Prepare {
        #[arg(long, value_enum, default_value_t = SliceOrderArg::Position)]
        slice_order: SliceOrderArg,
        study_dir: PathBuf,
    },
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

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::SynthStudy { out, seed } => {
            let files =
                prima_node::synth::write_study(&prima_node::synth::SynthStudy::brain(seed), &out)
                    .with_context(|| format!("writing study to {}", out.display()))?;
            eprintln!("wrote {} instances under {}", files.len(), out.display());
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
    }
}
