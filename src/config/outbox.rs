//! `[outbox]`: how deliveries to the destinations are retried.

use serde::{Deserialize, Serialize};

use super::checks::finite_nonneg;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutboxSection {
    #[serde(default = "default_retry_initial_s")]
    pub retry_initial_s: f64,
    #[serde(default = "default_retry_max_s")]
    pub retry_max_s: f64,
    /// Attempts allowed when the destination answers (rejection, failure status); an
    /// unreachable destination is retried without limit.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    #[serde(default = "default_connect_timeout_s")]
    pub connect_timeout_s: f64,
    /// Longest wait for any one answer of a destination: the association's acceptance, each
    /// C-STORE response, each write to it.
    #[serde(default = "default_response_timeout_s")]
    pub response_timeout_s: f64,
    /// Longest one association may take from connect to release, whatever the destination
    /// trickles meanwhile; what is not sent by then is retried later.
    #[serde(default = "default_transfer_timeout_s")]
    pub transfer_timeout_s: f64,
}

fn default_retry_initial_s() -> f64 {
    5.0
}
fn default_retry_max_s() -> f64 {
    600.0
}
fn default_max_attempts() -> u32 {
    8
}
fn default_connect_timeout_s() -> f64 {
    10.0
}
fn default_response_timeout_s() -> f64 {
    30.0
}
fn default_transfer_timeout_s() -> f64 {
    300.0
}

impl Default for OutboxSection {
    fn default() -> Self {
        OutboxSection {
            retry_initial_s: default_retry_initial_s(),
            retry_max_s: default_retry_max_s(),
            max_attempts: default_max_attempts(),
            connect_timeout_s: default_connect_timeout_s(),
            response_timeout_s: default_response_timeout_s(),
            transfer_timeout_s: default_transfer_timeout_s(),
        }
    }
}

impl OutboxSection {
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !finite_nonneg(self.retry_initial_s) || self.retry_initial_s <= 0.0 {
            p.push("[outbox] retry_initial_s: must be a positive number of seconds".into());
        }
        if !finite_nonneg(self.retry_max_s) || self.retry_max_s < self.retry_initial_s {
            p.push("[outbox] retry_max_s: must be >= retry_initial_s".into());
        }
        if self.max_attempts == 0 {
            p.push("[outbox] max_attempts: must be at least 1".into());
        }
        if !finite_nonneg(self.connect_timeout_s) || self.connect_timeout_s <= 0.0 {
            p.push("[outbox] connect_timeout_s: must be a positive number of seconds".into());
        }
        if !finite_nonneg(self.response_timeout_s) || self.response_timeout_s <= 0.0 {
            p.push("[outbox] response_timeout_s: must be a positive number of seconds".into());
        }
        if !finite_nonneg(self.transfer_timeout_s)
            || self.transfer_timeout_s < self.response_timeout_s
        {
            p.push("[outbox] transfer_timeout_s: must be >= response_timeout_s".into());
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_section_is_the_default_and_passes() {
        let o: OutboxSection = toml::from_str("").unwrap();
        assert_eq!(o, OutboxSection::default());
        assert_eq!(o.problems(), Vec::<String>::new());
    }

    #[test]
    fn each_bad_value_is_named() {
        let o: OutboxSection = toml::from_str(
            "retry_initial_s = 10\nretry_max_s = 9\nmax_attempts = 0\nconnect_timeout_s = nan\n",
        )
        .unwrap();
        assert_eq!(
            o.problems(),
            vec![
                "[outbox] retry_max_s: must be >= retry_initial_s",
                "[outbox] max_attempts: must be at least 1",
                "[outbox] connect_timeout_s: must be a positive number of seconds",
            ]
        );
        let o: OutboxSection = toml::from_str("retry_initial_s = 0").unwrap();
        assert_eq!(
            o.problems(),
            vec!["[outbox] retry_initial_s: must be a positive number of seconds"]
        );
    }
}
