//! The run record and its parts, as every stage after the model reads them.

use serde::{Deserialize, Serialize};

use crate::explain::Explanation;
use crate::imaging::otsu::Attempt;

/// Seconds per stage of one study.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StageTimings {
    pub scan_s: f64,
    pub prepare_s: f64,
    pub vqvae_s: f64,
    pub patchify_s: f64,
    pub prima_s: f64,
    pub total_s: f64,
    /// The node only: every series came prepared from the background (`prepare_s` is then
    /// the time to take them), how many did, and the background seconds behind them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepare_cached: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepare_cached_series: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepare_speculative_s: Option<f64>,
}

impl StageTimings {
    /// (stage, seconds) of each stage of the run, in pipeline order: what the stage metrics
    /// and the status page show. Background seconds are not the run's.
    pub fn stages(&self) -> [(&'static str, f64); 6] {
        [
            ("scan", self.scan_s),
            ("prepare", self.prepare_s),
            ("vqvae", self.vqvae_s),
            ("patchify", self.patchify_s),
            ("prima", self.prima_s),
            ("total", self.total_s),
        ]
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SeriesRecord {
    pub key: String,
    pub series_instance_uid: String,
    /// Which volume of the series ("" when the series is one volume).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub volume: String,
    pub name: String,
    pub instances_used: usize,
    pub images_found: usize,
    pub sop_instance_uids: Vec<String>,
    pub pixel_type: String,
    pub orientation: String,
    pub oriented_shape_zyx: [usize; 3],
    pub tokens_before_selection: usize,
    pub tokens_after_selection: usize,
    pub otsu_percentage: usize,
    pub otsu_attempts: Vec<Attempt>,
    /// A used otsu bin had holes: upstream's pipeline raises for such a series (spec §6.5).
    pub hole_filling_used: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SkipRecord {
    pub key: String,
    pub series_instance_uid: Option<String>,
    /// The volume of the series it is about ("" for the whole series), and its images.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub volume: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub images: usize,
    pub reason: String,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The run record: what one run of the model read, skipped and took, and what it was run
/// with. Written as `run.json` beside the predictions; crosses the model process and cluster
/// boundaries as this type and feeds the status page and the stage metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunRecord {
    pub study: String,
    pub study_instance_uid: Option<String>,
    pub study_description: String,
    pub slice_order: String,
    pub model_name: String,
    pub model_version: String,
    pub demo_model: bool,
    pub device: String,
    pub precision: String,
    pub threads: i32,
    pub series: Vec<SeriesRecord>,
    pub skipped: Vec<SkipRecord>,
    pub tokens_encoded: usize,
    /// VQ-VAE work in GFLOP (convolution multiply-adds × 2), for rates in benchmarks.
    pub vqvae_gflop: f64,
    pub timings: StageTimings,
    pub warnings: Vec<String>,
    /// Why the model did not run on the study (too few usable series after the split and
    /// the skips): the study fails with this reason and nothing is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_analysed: Option<String>,
    /// LIME's explanation (only when asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explanation: Option<ExplanationRecord>,
}

/// The run record's `explanation`: the findings explained, or the error that stopped it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExplanationRecord {
    pub findings: Vec<Explanation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
