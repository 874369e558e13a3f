//! Reading single attributes out of a data set: text, decimal strings, integers. Shared by
//! the header reader and the acquisition facts, so neither reaches into the other.

use dicom_core::Tag;
use dicom_object::InMemDicomObject;

pub(super) fn read_str(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    let e = obj.get(tag)?;
    let s = e.value().to_str().ok()?;
    let s = s.trim_end_matches(['\0', ' ']).trim_start_matches(' ');
    Some(s.to_string())
}

/// Decimal strings parsed with Rust's correctly rounded parser (as ITK reads them).
pub(super) fn read_ds(obj: &InMemDicomObject, tag: Tag) -> Option<Vec<f64>> {
    let e = obj.get(tag)?;
    if let Ok(s) = e.value().to_str() {
        let parsed: Option<Vec<f64>> = s
            .split('\\')
            .map(|p| {
                p.trim_matches(|c: char| c == ' ' || c == '\0')
                    .parse::<f64>()
                    .ok()
            })
            .collect();
        if let Some(v) = parsed {
            if !v.is_empty() {
                return Some(v);
            }
        }
    }
    e.value().to_multi_float64().ok().filter(|v| !v.is_empty())
}

pub(super) fn read_int(obj: &InMemDicomObject, tag: Tag) -> Option<i64> {
    obj.get(tag)?.value().to_int::<i64>().ok()
}
