//! Siemens CSA image header ((0029,1010), "SIEMENS CSA HEADER"): the b-value, gradient
//! direction, number of images in a mosaic and slice normal that Siemens keeps only there.
//!
//! The format is not published by the vendor; its layout is documented by the projects that
//! read it (nibabel's `csareader`, dcm2niix's `nii_dicom.cpp`, GDCM's `CSAHeader`). Two
//! variants: CSA2 starts with "SV10" and four bytes; CSA1 starts directly with the tag count.
//! Every count and length here comes from a peer's bytes, so each is bounded before use.

use std::collections::BTreeMap;

/// A header names about a hundred tags; far more is not a CSA header.
const MAX_TAGS: u32 = 1024;
/// Items per tag: six is usual, a few hundred for arrays.
const MAX_ITEMS: u32 = 4096;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CsaError {
    #[error("CSA header ends early at byte {at} of {len}")]
    Truncated { at: usize, len: usize },
    #[error("CSA header claims {0} tags")]
    TagCount(u32),
    #[error("CSA tag claims {0} items")]
    ItemCount(u32),
}

/// The tags of one CSA header: name → the non-empty values of its items, as text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CsaHeader {
    tags: BTreeMap<String, Vec<String>>,
}

impl CsaHeader {
    /// The values of `name` parsed as numbers; `None` when absent or empty.
    pub fn numbers(&self, name: &str) -> Option<Vec<f64>> {
        let v = self.tags.get(name)?;
        let parsed: Vec<f64> = v.iter().filter_map(|s| s.trim().parse().ok()).collect();
        (!parsed.is_empty()).then_some(parsed)
    }

    pub fn number(&self, name: &str) -> Option<f64> {
        self.numbers(name).map(|v| v[0])
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], CsaError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len());
        let end = end.ok_or(CsaError::Truncated {
            at: self.at,
            len: self.b.len(),
        })?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u32(&mut self) -> Result<u32, CsaError> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
}

/// Text up to the first NUL.
fn c_string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).trim().to_string()
}

/// Parse a CSA1 or CSA2 header.
pub fn parse(bytes: &[u8]) -> Result<CsaHeader, CsaError> {
    let mut r = Reader { b: bytes, at: 0 };
    let csa2 = bytes.starts_with(b"SV10");
    if csa2 {
        r.take(8)?;
    }
    let n_tags = r.u32()?;
    r.u32()?; // "unused", 77
    if n_tags == 0 || n_tags > MAX_TAGS {
        return Err(CsaError::TagCount(n_tags));
    }
    let mut out = CsaHeader::default();
    for tag_no in 0..n_tags {
        let name = c_string(r.take(64)?);
        let _vm = r.u32()?;
        let _vr = r.take(4)?;
        let _syngodt = r.u32()?;
        let n_items = r.u32()?;
        r.u32()?; // 77 or 205
        if n_items > MAX_ITEMS {
            return Err(CsaError::ItemCount(n_items));
        }
        let mut values = Vec::new();
        for _ in 0..n_items {
            let x = [r.u32()?, r.u32()?, r.u32()?, r.u32()?];
            // CSA1 stores the length offset by the tag number; CSA2 stores it plainly.
            let len = if csa2 {
                x[1]
            } else {
                x[0].wrapping_sub(tag_no)
            } as usize;
            let v = c_string(r.take(len)?);
            // Items are padded to a multiple of four bytes; the last one may end the buffer.
            let pad = len.next_multiple_of(4) - len;
            r.at = (r.at + pad).min(bytes.len());
            if !v.is_empty() {
                values.push(v);
            }
        }
        out.tags.insert(name, values);
    }
    Ok(out)
}

/// A CSA2 header from (name, values) pairs: the tests' and the synthetic studies' writer.
pub fn write(tags: &[(&str, &[&str])]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"SV10\x04\x03\x02\x01");
    b.extend_from_slice(&(tags.len() as u32).to_le_bytes());
    b.extend_from_slice(&77u32.to_le_bytes());
    for (name, values) in tags {
        let mut n = [0u8; 64];
        n[..name.len().min(63)].copy_from_slice(&name.as_bytes()[..name.len().min(63)]);
        b.extend_from_slice(&n);
        b.extend_from_slice(&(values.len() as u32).to_le_bytes()); // vm
        b.extend_from_slice(b"DS\0\0");
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&(values.len().max(6) as u32).to_le_bytes());
        b.extend_from_slice(&77u32.to_le_bytes());
        for i in 0..values.len().max(6) {
            let v = values.get(i).map_or(Vec::new(), |s| {
                let mut v = s.as_bytes().to_vec();
                v.push(0);
                v
            });
            let len = v.len() as u32;
            for x in [len, len, 77, len] {
                b.extend_from_slice(&x.to_le_bytes());
            }
            b.extend_from_slice(&v);
            b.resize(b.len().next_multiple_of(4), 0);
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_what_it_writes() {
        let b = write(&[
            ("B_value", &["1000"]),
            ("DiffusionGradientDirection", &["0.5", "-0.5", "0.75"]),
            ("NumberOfImagesInMosaic", &["30"]),
            ("Empty", &[]),
        ]);
        let h = parse(&b).unwrap();
        assert_eq!(h.number("B_value"), Some(1000.0));
        assert_eq!(
            h.numbers("DiffusionGradientDirection"),
            Some(vec![0.5, -0.5, 0.75])
        );
        assert_eq!(h.number("NumberOfImagesInMosaic"), Some(30.0));
        assert_eq!(h.number("Empty"), None);
        assert_eq!(h.number("Absent"), None);
    }

    #[test]
    fn hostile_headers_are_errors_not_panics() {
        let good = write(&[("B_value", &["1000"])]);
        for cut in 0..good.len() - 4 {
            let _ = parse(&good[..cut]);
        }
        assert!(parse(&good[..20]).is_err());
        let mut huge = good.clone();
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse(&huge), Err(CsaError::TagCount(u32::MAX)));
        let mut items = good.clone();
        let at = 16 + 64 + 4 + 4 + 4;
        items[at..at + 4].copy_from_slice(&1_000_000u32.to_le_bytes());
        assert_eq!(parse(&items), Err(CsaError::ItemCount(1_000_000)));
        let mut len = good;
        let item = 16 + 64 + 20;
        len[item + 4..item + 8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(parse(&len), Err(CsaError::Truncated { .. })));
        assert!(parse(b"").is_err());
    }
}
