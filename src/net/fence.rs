//! Delivery fenced by the claim: a cluster ingest node's sender sends a claimed result's
//! objects only while the node's claim on the result is valid (the cluster grants, the
//! sender obeys: the fence sits below both).
//!
//! The claim is a lease in the result record (`lease_until_ms`), renewed by the node's
//! cluster pass. A node cut off from NATS cannot renew it, and after the lease another
//! node claims the result and delivers it; the first must then not send what it still has
//! queued, even if its path to the PACS comes back while NATS does not. A PACS checks no
//! token, so the fence is on the sending side: the cluster pass grants each claimed
//! object a deadline a margin before the lease ends, and the sender sends an object only
//! before its deadline. The margin covers clock skew between the nodes (the lease is in
//! wall-clock time) and an association under way when the deadline passes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The longest margin: an association of a few objects takes seconds.
const MAX_MARGIN_MS: i64 = 30_000;

/// Until when the holder of a claim that lasts until `lease_until_ms` may send: a quarter
/// of the lease before it ends (at most [`MAX_MARGIN_MS`]). The pass renews a lease with
/// half of it left, so a connected node never reaches its deadline.
pub fn send_until(lease_until_ms: i64, lease_ms: i64) -> i64 {
    lease_until_ms - (lease_ms / 4).min(MAX_MARGIN_MS)
}

/// The objects this node may send now, by SOP Instance UID, with their deadlines (ms).
#[derive(Clone, Default)]
pub struct Fence(Arc<Mutex<HashMap<String, i64>>>);

impl Fence {
    pub fn grant(&self, sop_uids: &[String], until_ms: i64) {
        if let Ok(mut m) = self.0.lock() {
            for s in sop_uids {
                m.insert(s.clone(), until_ms);
            }
        }
    }

    pub fn revoke(&self, sop_uids: &[String]) {
        if let Ok(mut m) = self.0.lock() {
            for s in sop_uids {
                m.remove(s);
            }
        }
    }

    /// Whether the object may be sent at `now` (ms).
    pub fn allows(&self, sop_uid: &str, now: i64) -> bool {
        self.0
            .lock()
            .map(|m| m.get(sop_uid).is_some_and(|&until| now < until))
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_is_sent_only_before_its_claims_deadline() {
        assert_eq!(send_until(100_000, 10_000), 97_500);
        assert_eq!(send_until(1_000_000, 600_000), 970_000);
        let f = Fence::default();
        let sops = vec!["1.2".to_string()];
        assert!(!f.allows("1.2", 0), "nothing granted: nothing sent");
        f.grant(&sops, send_until(100_000, 10_000));
        assert!(f.allows("1.2", 97_499));
        assert!(!f.allows("1.2", 97_500));
        f.grant(&sops, send_until(110_000, 10_000));
        assert!(f.allows("1.2", 100_000), "a renewal extends it");
        f.revoke(&sops);
        assert!(!f.allows("1.2", 100_000));
    }
}
