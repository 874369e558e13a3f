//! `chartovec` (docs/prima-inference-spec.md §9.4): series names and the study description
//! as character ids for the name encoders.

const ALPHABET: &str = "abcdefghijklmnopqrstuvwxyz_+-0123456789.*(),";
/// Id of any character outside the alphabet.
pub const UNKNOWN_ID: i64 = 45;
/// End token appended to every sequence; the name encoder reads its output there.
pub const END_ID: i64 = 46;

pub fn chartovec(s: &str) -> Vec<i64> {
    let lower = s.to_lowercase();
    let mut out: Vec<i64> = lower
        .chars()
        .map(|c| match ALPHABET.chars().position(|a| a == c) {
            Some(p) => p as i64 + 1,
            None => UNKNOWN_ID,
        })
        .collect();
    out.push(END_ID);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_example() {
        assert_eq!(
            chartovec("MRI BRAIN"),
            vec![13, 18, 9, 45, 2, 18, 1, 9, 14, 46]
        );
        assert_eq!(chartovec(""), vec![46]);
        assert_eq!(chartovec("a/Ü,"), vec![1, 45, 45, 44, 46]);
    }
}
