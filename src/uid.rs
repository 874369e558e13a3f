//! DICOM UIDs: what counts as one, the UIDs the node derives, and its implementation identity.
//!
//! Every UID the node creates is `2.25.` + the decimal form of a UUIDv5 (ITU-T X.667 §6.3 /
//! PS3.5 B.2), so the same inputs always give the same UID: dicom-rs has no UID generator,
//! and random UIDs would turn a resend after a crash into a duplicate object in PACS.

use uuid::Uuid;

/// True when `uid` has the shape of a DICOM UID (PS3.5 §9.1): 1–64 characters, components
/// of digits separated by '.', no empty component.
///
/// A UID is attacker-controlled text wherever it comes from a peer; what passes here holds
/// nothing but digits and dots, so it cannot name a path or break a log line. A leading zero
/// in a component (which §9.1 also forbids) is accepted: some modalities send them, and
/// refusing their images would lose a study over a cosmetic fault. The UIDs we derive never
/// have one (see the test below).
pub fn is_valid(uid: &str) -> bool {
    !uid.is_empty()
        && uid.len() <= 64
        && uid
            .split('.')
            .all(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()))
}

/// `2.25.<decimal>` of the UUIDv5 of `name` in `namespace`. Callers own their namespace, so
/// two derivations that happen to hash the same text still give different UIDs.
pub fn from_name(namespace: &Uuid, name: &str) -> String {
    format!(
        "2.25.{}",
        Uuid::new_v5(namespace, name.as_bytes()).as_u128()
    )
}

/// Root of every name the output derivations hash. A fixed, project-specific namespace keeps
/// our UUIDv5s from colliding with anyone else's that happen to hash the same text under a
/// standard namespace.
fn output_namespace() -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_OID, b"prima-node/report/v1")
}

/// [`from_name`] in the output namespace over `parts`, joined with NUL so that no two
/// different part lists can produce the same hashed text.
fn from_parts(parts: &[&str]) -> String {
    from_name(&output_namespace(), &parts.join("\0"))
}

/// UID of an output object or series.
///
/// `kind` names the object ("sr", "kos", "card") or its series ("sr-series", …);
/// `content_key` hashes what else shapes it (the input instance set, the software, the
/// explanation, the report settings: `report::content_key`). Changing any of them, the
/// study or the model version gives a different UID; repeating the call gives the same one.
pub fn output_uid(
    study_uid: &str,
    content_key: &[u8; 32],
    model_version: &str,
    kind: &str,
) -> String {
    let hash = hex::encode(content_key);
    from_parts(&["output", study_uid, &hash, model_version, kind])
}

/// Device Observer UID (TID 1004) for a node. Stable for one node (AE title + serial), so a
/// viewer can tell which installation produced a report.
pub fn device_observer_uid(ae_title: &str, serial_number: &str) -> String {
    from_parts(&["device-observer", ae_title, serial_number])
}

/// Tracking Unique Identifier of one diagnosis within one study. Deliberately independent of
/// the input set and model version: a re-issued report tracks the same finding.
pub fn tracking_uid(study_uid: &str, label: &str) -> String {
    from_parts(&["tracking", study_uid, label])
}

/// Our Implementation Class UID, in the file meta of everything we write (the outputs sent
/// to PACS, the spool's copies of received instances): the output derivation of
/// `["implementation", "prima-node"]`.
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.151313738374517985548982068591310969365";

/// Our Implementation Version Name: the crate version, so a PACS log shows which release
/// produced an object.
pub const IMPLEMENTATION_VERSION_NAME: &str = concat!("PRIMANODE_", env!("CARGO_PKG_VERSION"));

// PS3.7 limits an Implementation Version Name to 16 characters.
const _: () = assert!(IMPLEMENTATION_VERSION_NAME.len() <= 16);

#[cfg(test)]
mod tests {
    use super::*;

    const STUDY: &str = "2.25.277125960841318044602012861601092510198";

    #[test]
    fn output_uids_are_valid_and_deterministic() {
        let h = [7u8; 32];
        let a = output_uid(STUDY, &h, "v1", "sr");
        assert!(is_valid(&a), "{a}");
        assert!(a.starts_with("2.25."));
        assert_eq!(a, output_uid(STUDY, &h, "v1", "sr"));
    }

    /// Values computed by the derivations as they were in `report/uid.rs` before they moved
    /// here: a UID that changes makes PACS see a re-send as a second report.
    #[test]
    fn derived_uids_are_the_ones_earlier_versions_derived() {
        let h: [u8; 32] = std::array::from_fn(|i| i as u8);
        assert_eq!(
            output_uid(STUDY, &h, "prima-1.0.7", "sr"),
            "2.25.333160270274538861761871006196596984702"
        );
        assert_eq!(
            output_uid(STUDY, &h, "prima-1.0.7", "kos-series"),
            "2.25.237420462672588884188185535925482009778"
        );
        assert_eq!(
            device_observer_uid("PRIMA", "node-1"),
            "2.25.96080377225281552219481501204696301359"
        );
        assert_eq!(
            tracking_uid(STUDY, "tumor_adult_glioma"),
            "2.25.8155941763173100526442903718241365132"
        );
        assert_eq!(
            from_parts(&["implementation", "prima-node"]),
            IMPLEMENTATION_CLASS_UID
        );
        assert_eq!(IMPLEMENTATION_VERSION_NAME, "PRIMANODE_0.1.0");
        assert_eq!(
            from_name(
                &Uuid::from_u128(0x5a0c_31c6_6f0e_4f6e_9a53_7c1b_9d2e_0b41),
                "fake-sr|1.2.3|abc"
            ),
            "2.25.33682494776678847280755081013600149185"
        );
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
            assert!(is_valid(&v), "{v}");
            assert_ne!(v, base);
        }
    }

    #[test]
    fn part_boundaries_matter() {
        assert_ne!(from_parts(&["ab", "c"]), from_parts(&["a", "bc"]));
    }

    /// §9.1 in full: [`is_valid`] and no leading zero in a multi-digit component.
    fn conformant(u: &str) -> bool {
        is_valid(u) && u.split('.').all(|c| c == "0" || !c.starts_with('0'))
    }

    #[test]
    fn many_uids_have_no_leading_zero_and_fit() {
        for i in 0..2000u32 {
            let mut h = [0u8; 32];
            h[..4].copy_from_slice(&i.to_le_bytes());
            for kind in ["sr", "kos", "card"] {
                let u = output_uid(STUDY, &h, "m", kind);
                assert!(conformant(&u), "{u}");
            }
        }
        assert!(conformant(&device_observer_uid("PRIMA", "node-1")));
        assert!(conformant(&tracking_uid(STUDY, "tumor_adult_glioma")));
        assert!(conformant(IMPLEMENTATION_CLASS_UID));
    }

    #[test]
    fn validity_checker_rejects_bad_uids() {
        assert!(is_valid("1.2.840.10008.5.1.4.1.1.4"));
        assert!(is_valid("1.0.3"));
        assert!(is_valid(&"1".repeat(64)));
        assert!(!is_valid(""));
        assert!(
            is_valid("1.02.3"),
            "leading zeros are accepted, as received"
        );
        assert!(!is_valid("1..3"));
        assert!(!is_valid(".1.3"));
        assert!(!is_valid("1.3."));
        assert!(!is_valid("1.a"));
        assert!(!is_valid("1.2/../3"));
        assert!(!is_valid("1.2\0"));
        assert!(!is_valid(&"1".repeat(65)));
        assert!(!is_valid(&format!("1.{}", "1".repeat(70))));
    }
}
