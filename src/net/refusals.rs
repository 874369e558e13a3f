//! Connections refused before anything is read (an address no `[[sources]]` entry allows,
//! no association slot free), counted per address and reason.
//!
//! Each refusal used to write a WARN line and an audit row: one client reconnecting in a
//! loop wrote thousands a second, growing the log and the database until the disk filled
//! and every C-STORE was refused. Now the first refusal of an address for a reason is
//! logged and audited at once (the first occurrence is what an administrator looks for),
//! and the rest of that minute becomes one line and one row with their count when the
//! minute ends, or when the node stops.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long the refusals after a first one are counted before they are reported.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Addresses tracked at once; beyond it the oldest windows are reported early, so a
/// spoofed-address flood cannot grow memory.
const MAX_TRACKED: usize = 4096;

struct Window {
    started: Instant,
    more: u64,
    detail: String,
}

/// Refusals counted since the first of a window: reported as one line and one row.
#[derive(Debug, Clone, PartialEq)]
pub struct Counted {
    pub peer: IpAddr,
    pub reason: &'static str,
    pub detail: String,
    pub more: u64,
}

#[derive(Default)]
pub struct Refusals {
    open: Mutex<HashMap<(IpAddr, &'static str), Window>>,
}

impl Refusals {
    /// Count a refusal; true when it is the first of its window (log and audit it now).
    pub fn note(&self, peer: IpAddr, reason: &'static str, detail: &str, now: Instant) -> bool {
        let Ok(mut open) = self.open.lock() else {
            return true;
        };
        if let Some(w) = open.get_mut(&(peer, reason)) {
            if now.duration_since(w.started) < WINDOW {
                w.more += 1;
                return false;
            }
        }
        open.insert(
            (peer, reason),
            Window {
                started: now,
                more: 0,
                detail: detail.to_string(),
            },
        );
        true
    }

    /// The windows that ended by `now` (all of them with `all`), with the refusals counted
    /// after their first; windows without any are forgotten silently.
    pub fn ended(&self, now: Instant, all: bool) -> Vec<Counted> {
        let Ok(mut open) = self.open.lock() else {
            return Vec::new();
        };
        let crowded = open.len() > MAX_TRACKED;
        let mut out = Vec::new();
        open.retain(|(peer, reason), w| {
            let over = all || crowded || now.duration_since(w.started) >= WINDOW;
            if over && w.more > 0 {
                out.push(Counted {
                    peer: *peer,
                    reason,
                    detail: std::mem::take(&mut w.detail),
                    more: w.more,
                });
            }
            !over
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_refusal_is_reported_at_once_and_the_rest_of_the_minute_as_one_count() {
        let r = Refusals::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        assert!(r.note(a, "address", "not allowed", t0));
        for i in 1..=500 {
            assert!(!r.note(a, "address", "not allowed", t0 + Duration::from_millis(i)));
        }
        assert!(
            r.note(b, "address", "not allowed", t0),
            "another address: its own first"
        );
        assert!(
            r.note(a, "limit", "busy", t0),
            "another reason: its own first"
        );
        assert_eq!(r.ended(t0 + Duration::from_secs(30), false), vec![]);
        let ended = r.ended(t0 + WINDOW, false);
        assert_eq!(
            ended,
            vec![Counted {
                peer: a,
                reason: "address",
                detail: "not allowed".into(),
                more: 500
            }],
            "b and the limit window had nothing after their first: nothing more to say"
        );
        // A new window starts with a first occurrence again.
        assert!(r.note(a, "address", "not allowed", t0 + WINDOW));
        assert!(!r.note(a, "address", "not allowed", t0 + WINDOW));
        let at_stop = r.ended(t0 + WINDOW, true);
        assert_eq!(at_stop.len(), 1);
        assert_eq!(at_stop[0].more, 1);
    }
}
