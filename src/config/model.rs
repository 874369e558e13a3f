//! `[model]`: where the model is, the device it runs on, and the worker process's limits.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    pub dir: PathBuf,
    #[serde(default = "default_device")]
    pub device: String,
    /// Crashes of the worker process on one study before the study is marked failed.
    #[serde(default = "default_max_crashes")]
    pub max_crashes: u32,
    /// Data memory the worker process may use (RLIMIT_DATA), so that one study cannot
    /// take the host's memory: beyond it the worker fails its allocation and ends, as under
    /// the OOM killer, and the node carries on. None: no limit of ours.
    #[serde(default)]
    pub worker_memory_mb: Option<u64>,
    /// Longest one job may take in the worker process, whatever its size (seconds). A job's
    /// own deadline is derived from its size and this machine's measured speed, up to this.
    #[serde(default = "default_job_timeout_s")]
    pub job_timeout_s: f64,
    /// The worker process says it is alive every few seconds; silent this long (stopped,
    /// wedged in the kernel or a driver), it is killed and the job tried again like after a
    /// crash (seconds).
    #[serde(default = "default_heartbeat_timeout_s")]
    pub heartbeat_timeout_s: f64,
}

fn default_device() -> String {
    "cpu".into()
}
fn default_max_crashes() -> u32 {
    2
}
fn default_job_timeout_s() -> f64 {
    3600.0
}
fn default_heartbeat_timeout_s() -> f64 {
    30.0
}

/// How often the worker process says it is alive (seconds); `heartbeat_timeout_s` must
/// leave room for a few of them.
pub const HEARTBEAT_EVERY_S: f64 = 1.0;

impl ModelSection {
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.dir.as_os_str().is_empty() {
            p.push("[model] dir: empty path".into());
        }
        if self.max_crashes == 0 {
            p.push("[model] max_crashes: must be at least 1".into());
        }
        if self.worker_memory_mb.is_some_and(|m| m < 256) {
            p.push(
                "[model] worker_memory_mb: at least 256 (the model and libtorch need it)".into(),
            );
        }
        if !(self.job_timeout_s.is_finite() && self.job_timeout_s >= 10.0) {
            p.push("[model] job_timeout_s: at least 10 seconds".into());
        }
        if !(self.heartbeat_timeout_s.is_finite()
            && self.heartbeat_timeout_s >= 3.0 * HEARTBEAT_EVERY_S)
        {
            p.push(format!(
                "[model] heartbeat_timeout_s: at least {} seconds (heartbeats come every {} s)",
                3.0 * HEARTBEAT_EVERY_S,
                HEARTBEAT_EVERY_S
            ));
        }
        if !device_ok(&self.device) {
            p.push(format!(
                "[model] device: {:?} is not \"cpu\", \"cuda\" or \"cuda:N\"",
                self.device
            ));
        }
        p
    }
}

fn device_ok(dev: &str) -> bool {
    dev == "cpu"
        || dev == "cuda"
        || dev
            .strip_prefix("cuda:")
            .is_some_and(|n| n.parse::<u32>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_pass() {
        let m: ModelSection = toml::from_str("dir = \"/m\"").unwrap();
        assert_eq!((m.device.as_str(), m.max_crashes), ("cpu", 2));
        assert_eq!(m.worker_memory_mb, None);
        assert_eq!(m.problems(), Vec::<String>::new());
    }

    #[test]
    fn each_bad_value_is_named() {
        let m: ModelSection = toml::from_str(
            "dir = \"\"\ndevice = \"gpu\"\nmax_crashes = 0\nworker_memory_mb = 255\n\
             job_timeout_s = 5\nheartbeat_timeout_s = 1\n",
        )
        .unwrap();
        assert_eq!(
            m.problems(),
            vec![
                "[model] dir: empty path",
                "[model] max_crashes: must be at least 1",
                "[model] worker_memory_mb: at least 256 (the model and libtorch need it)",
                "[model] job_timeout_s: at least 10 seconds",
                "[model] heartbeat_timeout_s: at least 3 seconds (heartbeats come every 1 s)",
                "[model] device: \"gpu\" is not \"cpu\", \"cuda\" or \"cuda:N\"",
            ]
        );
    }

    #[test]
    fn devices() {
        for ok in ["cpu", "cuda", "cuda:0", "cuda:12"] {
            assert!(device_ok(ok), "{ok}");
        }
        for bad in ["", "CPU", "cuda:", "cuda:x", "cuda:-1", "mps"] {
            assert!(!device_ok(bad), "{bad}");
        }
    }
}
