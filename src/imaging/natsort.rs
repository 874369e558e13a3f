//! natsort 8.4 `natsorted` default key (docs/prima-inference-spec.md §1.2). Upstream stacks
//! slices in this order of their file paths; we keep it for parity runs on folders
//! (`SliceOrder::FileName`).
use std::cmp::Ordering;
use unicode_normalization::UnicodeNormalization;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    /// Digit run without leading zeros: numeric comparison without overflow for the
    /// 39-digit integers inside `2.25.` UIDs used as file names.
    Num(String),
}

/// The natural-sort key of `s`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatKey(Vec<Piece>);

pub fn key(s: &str) -> NatKey {
    let norm: String = s.nfd().collect();
    let mut pieces = Vec::new();
    let mut cur = String::new();
    let mut in_digits = false;
    for ch in norm.chars() {
        let d = ch.is_ascii_digit();
        if d != in_digits && !cur.is_empty() {
            pieces.push(make_piece(std::mem::take(&mut cur), in_digits));
        }
        in_digits = d;
        cur.push(ch);
    }
    if !cur.is_empty() {
        pieces.push(make_piece(cur, in_digits));
    }
    if matches!(pieces.first(), Some(Piece::Num(_))) {
        pieces.insert(0, Piece::Text(String::new()));
    }
    NatKey(pieces)
}

fn make_piece(s: String, digits: bool) -> Piece {
    if digits {
        let t = s.trim_start_matches('0');
        Piece::Num(if t.is_empty() { "0".into() } else { t.into() })
    } else {
        Piece::Text(s)
    }
}

impl Ord for Piece {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Piece::Num(a), Piece::Num(b)) => a.len().cmp(&b.len()).then_with(|| a.cmp(b)),
            // Python compares str by code point, which is UTF-8 byte order.
            (Piece::Text(a), Piece::Text(b)) => a.cmp(b),
            // Positions alternate text/number in both keys, so this only happens for
            // malformed input; order numbers first like natsort's type-safe wrapper.
            (Piece::Num(_), Piece::Text(_)) => Ordering::Less,
            (Piece::Text(_), Piece::Num(_)) => Ordering::Greater,
        }
    }
}
impl PartialOrd for Piece {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for NatKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.cmp(&other.0)
    }
}
impl PartialOrd for NatKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Stable natural sort of strings (equal keys keep their input order, like Python).
pub fn sort_by_key<T>(items: &mut [T], f: impl Fn(&T) -> String) {
    items.sort_by_cached_key(|t| key(&f(t)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(v: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        sort_by_key(&mut v, |s| s.clone());
        v
    }

    #[test]
    fn numbers_compare_numerically() {
        assert_eq!(sorted(&["IM10", "IM2", "IM1"]), ["IM1", "IM2", "IM10"]);
        assert_eq!(sorted(&["2.25.100", "2.25.99"]), ["2.25.99", "2.25.100"]);
        assert_eq!(
            sorted(&["10.dcm", "9.dcm", "1.dcm", "a.dcm"]),
            ["1.dcm", "9.dcm", "10.dcm", "a.dcm"]
        );
    }

    #[test]
    fn equal_keys_keep_input_order() {
        assert_eq!(sorted(&["IM01", "IM1"]), ["IM01", "IM1"]);
        assert_eq!(sorted(&["IM1", "IM01"]), ["IM1", "IM01"]);
    }

    #[test]
    fn huge_digit_runs_and_prefixes() {
        assert_eq!(
            sorted(&[
                "x/2.25.12229632976327137224904332048790317777.dcm",
                "x/2.25.8756642777952605494009647794467198737.dcm"
            ]),
            [
                "x/2.25.8756642777952605494009647794467198737.dcm",
                "x/2.25.12229632976327137224904332048790317777.dcm"
            ]
        );
        assert_eq!(sorted(&["ab", "a"]), ["a", "ab"]);
        assert_eq!(sorted(&["B", "a"]), ["B", "a"]);
    }
}
