//! The small value checks several sections share.

/// An AE title per PS3.5: 1–16 characters of the default repertoire, no backslash or
/// control characters, not only spaces.
pub(super) fn ae_title_problem(what: &str, ae: &str) -> Option<String> {
    if ae.trim().is_empty() {
        return Some(format!("{what}: AE title is empty"));
    }
    if ae.len() > 16 {
        return Some(format!(
            "{what}: AE title {ae:?} is {} characters long (maximum 16)",
            ae.len()
        ));
    }
    if ae.chars().any(|c| !(' '..='~').contains(&c) || c == '\\') {
        return Some(format!(
            "{what}: AE title {ae:?} contains a character outside printable ASCII or a backslash"
        ));
    }
    None
}

pub(super) fn is_uid(s: &str) -> bool {
    crate::uid::is_valid(s)
}

pub(super) fn finite_nonneg(v: f64) -> bool {
    v.is_finite() && v >= 0.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ae_titles() {
        assert_eq!(ae_title_problem("k", "PACS"), None);
        assert_eq!(ae_title_problem("k", "SIXTEEN_CHARS_AE"), None);
        assert_eq!(
            ae_title_problem("k", "  ").as_deref(),
            Some("k: AE title is empty")
        );
        assert_eq!(
            ae_title_problem("k", "SEVENTEEN_CHARS_A").as_deref(),
            Some("k: AE title \"SEVENTEEN_CHARS_A\" is 17 characters long (maximum 16)")
        );
        assert_eq!(
            ae_title_problem("k", "A\\B").as_deref(),
            Some("k: AE title \"A\\\\B\" contains a character outside printable ASCII or a backslash")
        );
        assert!(ae_title_problem("k", "A\tB").is_some());
        assert!(ae_title_problem("k", "É").is_some());
    }

    #[test]
    fn uids() {
        assert!(is_uid("1.2.840.10008.5.1.4.1.1.4"));
        assert!(!is_uid(""));
        assert!(!is_uid("1..2"));
        assert!(!is_uid("1.2a"));
        assert!(!is_uid(&"1".repeat(65)));
    }

    #[test]
    fn finite_nonnegative_numbers() {
        assert!(finite_nonneg(0.0));
        assert!(finite_nonneg(3.5));
        assert!(!finite_nonneg(-0.1));
        assert!(!finite_nonneg(f64::NAN));
        assert!(!finite_nonneg(f64::INFINITY));
    }
}
