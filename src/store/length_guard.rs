//! The length guard: what keeps a received file from making the DICOM parser allocate
//! more than the file holds. [`crate::store::header::read_header`] runs it before it parses
//! a received instance.

use std::fs::File;
use std::io;
use std::path::Path;

use dicom_dictionary_std::uids;

/// Sequences (and the items in them) open at once, at most: 32 nested sequences, far more
/// than any IOD uses (Enhanced MR needs 2), far fewer than it takes to overflow the parser's
/// stack (200,000 undefined-length levels in 4 MB did).
pub const MAX_OPEN: usize = 64;

/// Why a file is not safe to hand to the parser (or could not be read to find out).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UnsafeToParse(pub String);

/// Refuse a file in which any element claims more bytes than the file still holds.
///
/// Why: dicom-parser reserves and zero-fills an element's claimed length before reading
/// it, so a 1 KiB instance whose element claims 4 GiB made the node touch 4 GiB of memory
/// (found by the hostile-input suite). Bounding every length by the bytes actually received
/// bounds what parsing (here and in imaging, which reads the pixel data) can allocate.
/// Sequences and items are entered, not skipped, so nested lengths are checked too; their
/// nesting is bounded ([`MAX_OPEN`]) and the data set must close every one it opens. The
/// file meta group ends where its group length says: a group-0002 element after it (inside
/// the received data set) is refused, so a data set cannot pose as meta information.
/// Big-endian data sets are not scanned (the node does not offer big endian). Deflated
/// ones are refused: a few bytes of deflate inflate to an element claiming 4 GiB, which
/// the parser then allocated (found by fuzzing), and the node no longer offers deflate.
pub fn check_element_lengths(path: &Path) -> Result<(), UnsafeToParse> {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
    use std::io::{BufReader, Read, Seek, SeekFrom};
    let ioe = |e: io::Error| UnsafeToParse(e.to_string());
    let file = File::open(path).map_err(ioe)?;
    let total = file.metadata().map_err(ioe)?.len();
    let mut f = BufReader::new(file);
    if total < 132 {
        return Err(UnsafeToParse(
            "file shorter than the Part-10 preamble".into(),
        ));
    }
    f.seek(SeekFrom::Start(132)).map_err(ioe)?;
    let mut pos: u64 = 132;
    // Where the meta group ends, from (0002,0000) (the spool always writes it).
    let mut meta_end: Option<u64> = None;
    let mut ts = String::new();
    let mut explicit = true;
    let mut in_meta = true;
    let mut in_encap = false;
    let is_sq = |g: u16, e: u16| {
        dicom_dictionary_std::StandardDataDictionary
            .by_tag(dicom_core::Tag(g, e))
            .is_some_and(|d| matches!(d.vr(), VirtualVr::Exact(dicom_core::VR::SQ)))
    };
    // Where each sequence or item we are inside ends (u64::MAX: undefined length). The
    // parser bounds a defined-length item's content by its length; a walk that ignored
    // that could be put out of step by a delimiter inside one (found by fuzzing).
    let mut open: Vec<u64> = Vec::new();
    while pos < total {
        while open.last() == Some(&pos) {
            open.pop();
        }
        if total - pos < 8 {
            return Err(UnsafeToParse(format!(
                "truncated element header at byte {pos}"
            )));
        }
        let mut h = [0u8; 8];
        f.read_exact(&mut h).map_err(ioe)?;
        let g = u16::from_le_bytes([h[0], h[1]]);
        let e = u16::from_le_bytes([h[2], h[3]]);
        let past_meta = !in_meta || meta_end.is_some_and(|end| pos >= end);
        if past_meta && g == 0x0002 {
            return Err(UnsafeToParse(format!(
                "file meta element (0002,{e:04X}) inside the data set at byte {pos}"
            )));
        }
        if in_meta && (g != 0x0002 || past_meta) {
            in_meta = false;
            match ts.trim_end_matches(['\0', ' ']) {
                uids::IMPLICIT_VR_LITTLE_ENDIAN => explicit = false,
                uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN => {
                    return Err(UnsafeToParse("deflated data sets are not accepted".into()))
                }
                // Retired from the standard, hence deprecated in the dictionary.
                #[allow(deprecated)]
                uids::EXPLICIT_VR_BIG_ENDIAN => return Ok(()),
                _ => explicit = true,
            }
        }
        let mut hlen = 8u64;
        let (len, sq) = if g == 0xFFFE {
            // Only item, item delimiter and sequence delimiter exist in this group; the
            // parser reads any other (FFFE,xxxx) as an ordinary element, out of step with
            // this walk (a 4 GiB claim got through that way; found by fuzzing).
            if !matches!(e, 0xE000 | 0xE00D | 0xE0DD) {
                return Err(UnsafeToParse(format!(
                    "invalid tag (FFFE,{e:04X}) at byte {pos}"
                )));
            }
            (u32::from_le_bytes([h[4], h[5], h[6], h[7]]), false)
        } else if explicit {
            let vr = [h[4], h[5]];
            // Which VRs have a 16-bit length exactly as dicom-parser decides it: any other
            // VR, an unknown one included (read as UN), has a 32-bit length. Listing the
            // 32-bit ones instead let "L." pass here with a short length while the parser
            // read a 2 GB one (found by fuzzing).
            if !matches!(
                &vr,
                b"AE"
                    | b"AS"
                    | b"AT"
                    | b"CS"
                    | b"DA"
                    | b"DS"
                    | b"DT"
                    | b"FL"
                    | b"FD"
                    | b"IS"
                    | b"LO"
                    | b"LT"
                    | b"PN"
                    | b"SH"
                    | b"SL"
                    | b"SS"
                    | b"ST"
                    | b"TM"
                    | b"UI"
                    | b"UL"
                    | b"US"
            ) {
                let mut l = [0u8; 4];
                f.read_exact(&mut l).map_err(ioe)?;
                hlen = 12;
                (u32::from_le_bytes(l), &vr == b"SQ")
            } else {
                (u16::from_le_bytes([h[6], h[7]]) as u32, false)
            }
        } else {
            (u32::from_le_bytes([h[4], h[5], h[6], h[7]]), is_sq(g, e))
        };
        pos += hlen;
        let bad = |what: &str| {
            Err(UnsafeToParse(format!(
                "({g:04X},{e:04X}) at byte {pos}: {what}"
            )))
        };
        if len == 0xFFFF_FFFF {
            if (g, e) == (0x7FE0, 0x0010) {
                in_encap = true;
            } else if !in_encap {
                if open.len() >= MAX_OPEN {
                    return bad("sequences nested deeper than 32 levels");
                }
                open.push(u64::MAX);
            }
            continue;
        }
        // A delimiter has no value (PS3.5 §7.5: its length shall be 0). dicom-parser reads
        // the next element right after its header whatever the length says, so a walk
        // that skipped "its value" was put out of step onto a 3.7 GB claim (fuzzing).
        if g == 0xFFFE && e != 0xE000 && len != 0 {
            return bad("delimiter with a non-zero length");
        }
        if g == 0xFFFE && e != 0xE000 && !in_encap {
            // A delimiter closes the undefined-length item or sequence it is in.
            if open.pop() != Some(u64::MAX) {
                return bad("delimiter outside an undefined-length item or sequence");
            }
        }
        if (g, e) == (0xFFFE, 0xE0DD) {
            in_encap = false;
        }
        let end = pos.saturating_add(u64::from(len));
        if open
            .iter()
            .rev()
            .find(|&&x| x != u64::MAX)
            .is_some_and(|&x| end > x)
        {
            return bad("runs past the end of the item or sequence it is in");
        }
        if u64::from(len) > total.saturating_sub(pos) {
            return Err(UnsafeToParse(format!(
                "element ({g:04X},{e:04X}) claims {len} bytes but only {} remain",
                total.saturating_sub(pos)
            )));
        }
        // dicom-parser reads len/size values of a binary VR and leaves the remainder
        // unread, so an odd-length US put the parser off this walk (and onto a 4 GiB
        // "length"; found by fuzzing). Such a value is malformed: refuse it.
        // In implicit VR the parser takes the VR from the dictionary (group lengths are UL),
        // so the same rule applies through it (an odd-length (0000,0000) got through).
        let vr = if g == 0xFFFE {
            None
        } else if explicit {
            Some([h[4], h[5]])
        } else if e == 0x0000 {
            Some(*b"UL")
        } else {
            dicom_dictionary_std::StandardDataDictionary
                .by_tag(dicom_core::Tag(g, e))
                .and_then(|d| match d.vr() {
                    VirtualVr::Exact(v) => Some(v.to_bytes()),
                    _ => None,
                })
        };
        // The 64-bit VRs too: a 10-byte (0008,040C) UV in implicit VR left the parser two
        // bytes short of this walk; it then spent 2 s and 3.7 GB on what followed (found by
        // the 10-minute fuzz run of 2026-12-04).
        let unit = match vr.as_ref() {
            Some(b"US") | Some(b"SS") | Some(b"OW") => 2,
            Some(b"UL") | Some(b"SL") | Some(b"FL") | Some(b"AT") | Some(b"OL") | Some(b"OF") => 4,
            Some(b"FD") | Some(b"UV") | Some(b"SV") | Some(b"OD") | Some(b"OV") => 8,
            _ => 1,
        };
        if len % unit != 0 {
            return Err(UnsafeToParse(format!(
                "element ({g:04X},{e:04X}) length {len} is not a multiple of its value size {unit}"
            )));
        }
        if sq || ((g, e) == (0xFFFE, 0xE000) && !in_encap) {
            if open.len() >= MAX_OPEN {
                return bad("sequences nested deeper than 32 levels");
            }
            open.push(end);
            continue;
        }
        if pos == 140 && (g, e) == (0x0002, 0x0000) && len == 4 {
            let mut v = [0u8; 4];
            f.read_exact(&mut v).map_err(ioe)?;
            meta_end = Some(pos + 4 + u64::from(u32::from_le_bytes(v)));
            pos += 4;
            continue;
        }
        if in_meta && (g, e) == (0x0002, 0x0010) && len <= 128 {
            let mut v = vec![0u8; len as usize];
            f.read_exact(&mut v).map_err(ioe)?;
            ts = String::from_utf8_lossy(&v).into_owned();
        } else {
            f.seek_relative(i64::from(len)).map_err(ioe)?;
        }
        pos += u64::from(len);
    }
    while open.last() == Some(&pos) {
        open.pop();
    }
    if !open.is_empty() {
        return Err(UnsafeToParse(format!(
            "data set ends inside {} open item(s) or sequence(s)",
            open.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use dicom_dictionary_std::uids;

    fn check(body: &[u8]) -> Result<(), super::UnsafeToParse> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.dcm");
        crate::fuzzing::write_part10(&path, uids::EXPLICIT_VR_LITTLE_ENDIAN, body).unwrap();
        super::check_element_lengths(&path)
    }

    /// (0008,1115) SQ of undefined length holding one undefined-length item: 20 bytes.
    fn open_level(b: &mut Vec<u8>) {
        b.extend([
            0x08, 0x00, 0x15, 0x11, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
        ]);
        b.extend([0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
    }

    fn close_level(b: &mut Vec<u8>) {
        b.extend([0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]); // item delimiter
        b.extend([0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]); // sequence delimiter
    }

    fn element(b: &mut Vec<u8>, g: u16, e: u16, vr: &[u8; 2], v: &[u8]) {
        b.extend(g.to_le_bytes());
        b.extend(e.to_le_bytes());
        b.extend(vr);
        b.extend((v.len() as u16).to_le_bytes());
        b.extend(v);
    }

    #[test]
    fn nesting_is_bounded_and_every_level_must_close() {
        // Issue 14: 200,000 such levels in one 4 MB C-STORE overflowed the parser's stack.
        let mut deep = Vec::new();
        for _ in 0..200_000 {
            open_level(&mut deep);
        }
        let e = check(&deep).unwrap_err().to_string();
        assert!(e.contains("nested deeper than 32"), "{e}");
        // 32 levels, closed: what any real IOD stays far below.
        let mut ok = Vec::new();
        element(&mut ok, 0x0008, 0x0060, b"CS", b"MR");
        for _ in 0..32 {
            open_level(&mut ok);
        }
        for _ in 0..32 {
            close_level(&mut ok);
        }
        check(&ok).unwrap();
        // The same levels left open: the data set ends inside them.
        let mut unclosed = Vec::new();
        for _ in 0..3 {
            open_level(&mut unclosed);
        }
        let e = check(&unclosed).unwrap_err().to_string();
        assert!(e.contains("ends inside 6 open"), "{e}");
    }

    #[test]
    fn meta_elements_inside_the_data_set_are_refused() {
        // Issue 14: a data set starting with (0002,0010) naming big endian made the guard
        // take it for meta information and stop; the parser then reserved the 4 GiB that
        // (0010,0010) claims.
        let mut body = Vec::new();
        element(&mut body, 0x0002, 0x0010, b"UI", b"1.2.840.10008.1.2.2\0");
        body.extend([
            0x10, 0x00, 0x10, 0x00, b'U', b'N', 0, 0, 0xF0, 0xFF, 0xFF, 0xFF,
        ]);
        let e = check(&body).unwrap_err().to_string();
        assert!(
            e.contains("file meta element (0002,0010) inside the data set"),
            "{e}"
        );
        // An ordinary data set still passes.
        let mut fine = Vec::new();
        element(&mut fine, 0x0008, 0x0060, b"CS", b"MR");
        check(&fine).unwrap();
    }
}

#[cfg(test)]
mod fuzz_regressions {
    /// The length guard on a fuzz input written as the SCP writes a spool file.
    fn guard(input: &[u8]) -> Result<(), super::UnsafeToParse> {
        let (ts, body) = crate::fuzzing::split_input(input).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.dcm");
        crate::fuzzing::write_part10(&path, ts, body).unwrap();
        super::check_element_lengths(&path)
    }

    /// A fuzzer-found data set with a (FFFE,0DE0) "item" inside a sequence: the guard used
    /// to walk it as an item while dicom-parser read it as an element and reserved 4 GiB.
    #[test]
    fn unknown_item_tag_is_refused_before_parsing() {
        let input = include_bytes!("../../fuzz/regressions/instance_header/ffe-0de0-4gb-claim");
        // Refused (as an unknown (FFFE,xxxx) tag, or earlier by the item bounds check).
        assert!(guard(input).is_err());
    }

    /// A sequence delimiter inside a defined-length item: the parser ends the item at its
    /// length, a walk that did not was put out of step onto a 4 GiB claim.
    #[test]
    fn delimiter_inside_a_defined_length_item_is_refused() {
        let input = include_bytes!("../../fuzz/regressions/imaging_slice/oom-4gb-claim-2");
        let err = guard(input).unwrap_err().to_string();
        assert!(
            err.contains("(FFFE,E0DD)") && err.contains("delimiter"),
            "{err}"
        );
    }

    /// An item delimiter claiming a 164-byte value: the parser reads on after its header,
    /// a walk that skipped the "value" reached a 3.7 GB claim.
    #[test]
    fn delimiter_with_a_length_is_refused() {
        let input =
            include_bytes!("../../fuzz/regressions/instance_header/delimiter-with-length-oom");
        let err = guard(input).unwrap_err().to_string();
        assert!(
            err.contains("(FFFE,E00D)") && err.contains("non-zero length"),
            "{err}"
        );
    }

    /// Implicit VR: a 10-byte (0008,040C) (UV by the dictionary) put the parser out of step;
    /// it touched 3.7 GB before failing (found by fuzzing).
    #[test]
    fn uneven_uv_is_refused_in_implicit_vr() {
        let input = include_bytes!("../../fuzz/regressions/instance_header/uv-10-bytes-3-7gb");
        let err = guard(input).unwrap_err().to_string();
        assert!(err.contains("(0008,040C) length 10"), "{err}");
    }

    /// Implicit VR: a 3-byte (0000,0000) (UL by the dictionary) left the parser one byte
    /// short of this walk and reading a 4 GiB length.
    #[test]
    fn odd_length_dictionary_ul_is_refused_in_implicit_vr() {
        let input = include_bytes!("../../fuzz/regressions/instance_header/implicit-un-4gb-claim");
        assert_eq!(
            crate::fuzzing::split_input(input).unwrap().0,
            dicom_dictionary_std::uids::IMPLICIT_VR_LITTLE_ENDIAN
        );
        let err = guard(input).unwrap_err().to_string();
        assert!(err.contains("(0000,0000) length 3"), "{err}");
    }
}
