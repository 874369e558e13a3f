//! `[explain]`: LIME explanations of the top finding (restart-only: the worker reads it at
//! start).

use serde::{Deserialize, Serialize};

use super::default_true;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExplainSection {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "default_explain_samples")]
    pub samples: usize,
    #[serde(default = "default_explain_top_tokens")]
    pub top_tokens: usize,
    #[serde(default = "default_explain_findings")]
    pub findings: usize,
    #[serde(default)]
    pub seed: u32,
    /// Perturbed inputs per model call.
    #[serde(default = "default_explain_batch")]
    pub batch: usize,
    /// Labels under float16 autocast on CUDA, as upstream (no effect on the CPU).
    #[serde(default = "default_true")]
    pub autocast: bool,
    /// Explain also when the model runs on the CPU (off: there it costs minutes per study
    /// with the full-size model; see docs/performance.md).
    #[serde(default)]
    pub on_cpu: bool,
    /// A derived key-image series (Secondary Capture) with the regions drawn on the source
    /// images, besides the SR's regions and the KOS: for viewers that draw neither.
    #[serde(default = "default_true")]
    pub key_images: bool,
}

fn default_explain_samples() -> usize {
    1000
}
fn default_explain_top_tokens() -> usize {
    3
}
fn default_explain_findings() -> usize {
    1
}
fn default_explain_batch() -> usize {
    crate::explain::ExplainOptions::default().batch
}

impl Default for ExplainSection {
    fn default() -> Self {
        ExplainSection {
            enabled: false,
            samples: default_explain_samples(),
            top_tokens: default_explain_top_tokens(),
            findings: default_explain_findings(),
            seed: 0,
            batch: default_explain_batch(),
            autocast: true,
            on_cpu: false,
            key_images: true,
        }
    }
}

impl ExplainSection {
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.samples < 2 {
            p.push(format!(
                "[explain] samples: {} must be at least 2",
                self.samples
            ));
        }
        if self.top_tokens == 0 || self.findings == 0 || self.batch == 0 {
            p.push("[explain] top_tokens, findings and batch: at least 1".into());
        }
        p
    }

    /// The explanation's options when enabled.
    pub fn options(&self) -> Option<crate::explain::ExplainOptions> {
        self.enabled.then_some(crate::explain::ExplainOptions {
            samples: self.samples,
            top_tokens: self.top_tokens,
            findings: self.findings,
            seed: self.seed,
            batch: self.batch,
            autocast: self.autocast,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_section_is_the_default_and_passes() {
        let x: ExplainSection = toml::from_str("").unwrap();
        assert_eq!(x, ExplainSection::default());
        assert_eq!(x.problems(), Vec::<String>::new());
        assert!(x.options().is_none(), "off unless enabled");
    }

    #[test]
    fn each_bad_value_is_named() {
        let x: ExplainSection = toml::from_str("samples = 1").unwrap();
        assert_eq!(
            x.problems(),
            vec!["[explain] samples: 1 must be at least 2"]
        );
        for zero in ["top_tokens = 0", "findings = 0", "batch = 0"] {
            let x: ExplainSection = toml::from_str(zero).unwrap();
            assert_eq!(
                x.problems(),
                vec!["[explain] top_tokens, findings and batch: at least 1"],
                "{zero}"
            );
        }
    }
}
