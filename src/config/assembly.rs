//! `[assembly]`: when a study that is still arriving counts as complete.

use serde::{Deserialize, Serialize};

use super::checks::finite_nonneg;
use super::default_true;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AssemblySection {
    #[serde(default = "default_quiet_period_s")]
    pub quiet_period_s: f64,
    #[serde(default = "default_force_complete_s")]
    pub force_complete_s: f64,
    #[serde(default = "default_min_series")]
    pub min_series: usize,
    #[serde(default = "default_modalities")]
    pub modalities: Vec<String>,
    /// Prepare (decode, resample, tokenise) a study's series in the background while the
    /// study is still arriving, once a series has been idle for a while, so the job after
    /// the quiet period starts at the model. Results are used only when the input files
    /// are exactly those prepared; otherwise the job prepares afresh.
    #[serde(default = "default_true")]
    pub speculative_prepare: bool,
}

fn default_quiet_period_s() -> f64 {
    30.0
}
fn default_force_complete_s() -> f64 {
    900.0
}
fn default_min_series() -> usize {
    2
}
fn default_modalities() -> Vec<String> {
    vec!["MR".into()]
}

impl Default for AssemblySection {
    fn default() -> Self {
        AssemblySection {
            quiet_period_s: default_quiet_period_s(),
            force_complete_s: default_force_complete_s(),
            min_series: default_min_series(),
            modalities: default_modalities(),
            speculative_prepare: true,
        }
    }
}

impl AssemblySection {
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !finite_nonneg(self.quiet_period_s) || self.quiet_period_s <= 0.0 {
            p.push(format!(
                "[assembly] quiet_period_s: {} must be a positive number of seconds",
                self.quiet_period_s
            ));
        }
        if !finite_nonneg(self.force_complete_s) || self.force_complete_s < self.quiet_period_s {
            p.push(format!(
                "[assembly] force_complete_s: {} must be a number of seconds >= quiet_period_s ({})",
                self.force_complete_s, self.quiet_period_s
            ));
        }
        if self.min_series == 0 {
            p.push("[assembly] min_series: must be at least 1".into());
        }
        if self.modalities.is_empty() {
            p.push("[assembly] modalities: empty list (no study would ever qualify)".into());
        }
        for m in &self.modalities {
            if !modality_code_ok(m) {
                p.push(format!(
                    "[assembly] modalities: {m:?} is not a modality code"
                ));
            }
        }
        p
    }
}

/// A DICOM CS value as modality codes are written: 1 to 16 letters and digits.
fn modality_code_ok(m: &str) -> bool {
    !m.is_empty() && m.len() <= 16 && m.chars().all(|c| c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_section_is_the_default_and_passes() {
        let a: AssemblySection = toml::from_str("").unwrap();
        assert_eq!(a, AssemblySection::default());
        assert_eq!(a.problems(), Vec::<String>::new());
    }

    #[test]
    fn each_bad_value_is_named() {
        let a: AssemblySection = toml::from_str(
            "quiet_period_s = 60\nforce_complete_s = 59\nmin_series = 0\nmodalities = [\"MR\", \"M-R\"]\n",
        )
        .unwrap();
        assert_eq!(
            a.problems(),
            vec![
                "[assembly] force_complete_s: 59 must be a number of seconds >= quiet_period_s (60)",
                "[assembly] min_series: must be at least 1",
                "[assembly] modalities: \"M-R\" is not a modality code",
            ]
        );
        let a: AssemblySection = toml::from_str("quiet_period_s = -1\nmodalities = []\n").unwrap();
        assert_eq!(
            a.problems(),
            vec![
                "[assembly] quiet_period_s: -1 must be a positive number of seconds",
                "[assembly] modalities: empty list (no study would ever qualify)",
            ]
        );
    }

    #[test]
    fn modality_codes() {
        assert!(modality_code_ok("MR"));
        assert!(modality_code_ok("OT"));
        assert!(!modality_code_ok(""));
        assert!(!modality_code_ok("M R"));
        assert!(!modality_code_ok(&"M".repeat(17)));
    }
}
