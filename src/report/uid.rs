//! Deterministic UIDs for everything the report module creates.
//!
//! dicom-rs has no UID generator, and random UIDs would turn a resend after a crash into a
//! duplicate object in PACS. Every UID here is `2.25.` + the decimal form of a UUIDv5 (ITU-T
//! X.667 §6.3 / PS3.5 B.2), so the same inputs always give the same UID.

use uuid::Uuid;

/// Root of every name we hash. A fixed, project-specific namespace keeps our UUIDv5s from
/// colliding with anyone else's that happen to hash the same text under a standard namespace.
fn namespace() -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_OID, b"prima-node/report/v1")
}

/// `2.25.<decimal>` of a UUIDv5 over `parts`, joined with NUL so that no two different part
/// lists can produce the same hashed text.
pub fn uid_from_parts(parts: &[&str]) -> String {
    let name = parts.join("\0");
    let uuid = Uuid::new_v5(&namespace(), name.as_bytes());
    format!("2.25.{}", uuid.as_u128())
}

/// UID of an output object or series.
///
/// `kind` names the object ("sr", "kos", "card") or its series ("sr-series", …). Changing
/// the study, the input instance set (through its hash), the model version or the kind gives
/// a different UID; repeating the call gives the same one.
pub fn output_uid(
    study_uid: &str,
    input_set_hash: &[u8; 32],
    model_version: &str,
    kind: &str,
) -> String {
    let hash = hex::encode(input_set_hash);
    uid_from_parts(&["output", study_uid, &hash, model_version, kind])
}

/// Device Observer UID (TID 1004) for a node. Stable for one node (AE title + serial), so a
/// viewer can tell which installation produced a report.
pub fn device_observer_uid(ae_title: &str, serial_number: &str) -> String {
    uid_from_parts(&["device-observer", ae_title, serial_number])
}

/// Tracking Unique Identifier of one diagnosis within one study. Deliberately independent of
/// the input set and model version: a re-issued report tracks the same finding.
pub fn tracking_uid(study_uid: &str, label: &str) -> String {
    uid_from_parts(&["tracking", study_uid, label])
}

/// Implementation Class UID written in the file meta group of our Part-10 files.
pub fn implementation_class_uid() -> String {
    uid_from_parts(&["implementation", "prima-node"])
}

/// True when `uid` is a syntactically valid DICOM UID (PS3.5 §9.1).
pub fn is_valid_uid(uid: &str) -> bool {
    !uid.is_empty()
        && uid.len() <= 64
        && uid.split('.').all(|c| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_digit())
                && (c == "0" || !c.starts_with('0'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STUDY: &str = "2.25.277125960841318044602012861601092510198";

    #[test]
    fn output_uids_are_valid_and_deterministic() {
        let h = [7u8; 32];
        let a = output_uid(STUDY, &h, "v1", "sr");
        assert!(is_valid_uid(&a), "{a}");
        assert!(a.starts_with("2.25."));
        assert_eq!(a, output_uid(STUDY, &h, "v1", "sr"));
    }

    #[test]
    fn output_uids_change_with_every_input() {
        let h = [7u8; 32];
        let mut h2 = h;
        h2[31] ^= 1;
        let base = output_uid(STUDY, &h, "v1", "sr");
        let variants = [
            output_uid("1.2.3", &h, "v1", "sr"),
            output_uid(STUDY, &h2, "v1", "sr"),
            output_uid(STUDY, &h, "v2", "sr"),
            output_uid(STUDY, &h, "v1", "kos"),
            output_uid(STUDY, &h, "v1", "sr-series"),
        ];
        for v in variants {
            assert!(is_valid_uid(&v), "{v}");
            assert_ne!(v, base);
        }
    }

    #[test]
    fn part_boundaries_matter() {
        assert_ne!(uid_from_parts(&["ab", "c"]), uid_from_parts(&["a", "bc"]));
    }

    #[test]
    fn many_uids_have_no_leading_zero_and_fit() {
        for i in 0..2000u32 {
            let mut h = [0u8; 32];
            h[..4].copy_from_slice(&i.to_le_bytes());
            for kind in ["sr", "kos", "card"] {
                let u = output_uid(STUDY, &h, "m", kind);
                assert!(is_valid_uid(&u), "{u}");
            }
        }
        assert!(is_valid_uid(&device_observer_uid("PRIMA", "node-1")));
        assert!(is_valid_uid(&tracking_uid(STUDY, "tumor_adult_glioma")));
        assert!(is_valid_uid(&implementation_class_uid()));
    }

    #[test]
    fn validity_checker_rejects_bad_uids() {
        assert!(!is_valid_uid("1.02.3"));
        assert!(!is_valid_uid("1..3"));
        assert!(!is_valid_uid("1.a"));
        assert!(!is_valid_uid(&format!("1.{}", "1".repeat(70))));
        assert!(is_valid_uid("1.0.3"));
    }
}
