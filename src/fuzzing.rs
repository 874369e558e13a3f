//! Fuzz entry points: what the node does with bytes a peer sends, one function per
//! cargo-fuzz target (`fuzz/fuzz_targets/`), also run over the committed corpus plus
//! seeded mutations by `integration-tests/fuzz_corpus.rs`.
//!
//! The fuzz crate compiles this file and the modules it calls (`net::dimse`, `net::pdata`,
//! `store::header`, `store::length_guard`, `uid`, `imaging`) by path instead of depending
//! on the library, so fuzz builds (whose coverage RUSTFLAGS rebuild every dependency) never
//! build libtorch's bindings. Keep this file's imports to those modules.
//!
//! Input layout of the data-set targets: byte 0 picks the presentation context's transfer
//! syntax (modulo [`TRANSFER_SYNTAXES`]), the rest is the data set exactly as it would
//! arrive in P-DATA. The file the code under test reads is built like the SCP builds its
//! spool file: preamble, a meta group made from the command, then the received bytes.

use std::io::Write;
use std::path::{Path, PathBuf};

use dicom_dictionary_std::uids;

use crate::imaging::series;
use crate::net::{dimse, pdata};
use crate::store::header::read_header;
use crate::uid::{IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME};

/// The transfer syntaxes the SCP may negotiate (its candidate list).
pub const TRANSFER_SYNTAXES: [&str; 9] = [
    uids::EXPLICIT_VR_LITTLE_ENDIAN,
    uids::IMPLICIT_VR_LITTLE_ENDIAN,
    uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    uids::JPEG_LOSSLESS_SV1,
    uids::JPEG_LOSSLESS,
    uids::JPEG_BASELINE8_BIT,
    uids::RLE_LOSSLESS,
    uids::JPEG2000_LOSSLESS,
    uids::JPEG2000,
];

const SOP_CLASS: &str = uids::MR_IMAGE_STORAGE;
const SOP_INSTANCE: &str = "1.2.826.0.1.3680043.2.1143.1";

/// A P-DATA-TF PDU as the SCP parses it in place: a parse never reads outside the PDU and
/// its PDVs account for every byte.
pub fn pdata_pdu(data: &[u8]) {
    let Ok(pdvs) = pdata::parse(data) else {
        return;
    };
    let range = data.as_ptr_range();
    let mut covered = 6;
    for pdv in &pdvs {
        let r = pdv.data.as_ptr_range();
        assert!(
            r.start >= range.start && r.end <= range.end,
            "PDV outside the PDU"
        );
        covered += 6 + pdv.data.len();
    }
    assert_eq!(covered, data.len(), "PDVs do not account for the whole PDU");
}

/// DIMSE command decoding, and the responses the SCP builds from a decoded command.
pub fn dimse_command(data: &[u8]) {
    let Ok(cmd) = dimse::decode_command(data) else {
        return;
    };
    // Whatever text the peer put in the UIDs, our answer must be a decodable command set.
    let rsp = dimse::c_store_rsp(
        cmd.message_id,
        &cmd.affected_sop_class_uid,
        &cmd.affected_sop_instance_uid,
        dimse::status::CANNOT_UNDERSTAND,
        cmd.error_comment.as_deref(),
    );
    let back = dimse::decode_command(&rsp).expect("our C-STORE-RSP decodes");
    assert_eq!(back.command_field, dimse::C_STORE_RSP);
    assert_eq!(back.message_id_responded, Some(cmd.message_id));
    let rsp = dimse::unrecognized_rsp(
        cmd.message_id,
        cmd.command_field,
        &cmd.affected_sop_class_uid,
    );
    dimse::decode_command(&rsp).expect("our unrecognized-operation response decodes");
    let _ = cmd.has_data_set();
    let _ = dimse::classify_status(cmd.status.unwrap_or(0));
}

/// What the SCP does with a received data set: length guard, header, UID checks.
pub fn instance_header(data: &[u8]) {
    let Some(path) = spool_like_file(data) else {
        return;
    };
    if let Ok(h) = read_header(&path) {
        // The spool path and the state database rely on these being UIDs.
        for uid in [
            &h.sop_class_uid,
            &h.sop_instance_uid,
            &h.study_instance_uid,
            &h.series_instance_uid,
        ] {
            assert!(crate::uid::is_valid(uid), "read_header returned a non-UID");
        }
    }
    let _ = std::fs::remove_file(&path);
}

/// The imaging path on a stored instance: slice headers, series grouping, pixel decode
/// into a volume. Only data sets the SCP would have stored get here (as in the node).
pub fn imaging_slice(data: &[u8]) {
    let Some(path) = spool_like_file(data) else {
        return;
    };
    receive_and_process(&path);
}

/// What the node does with a spooled file, reception to volume.
fn receive_and_process(path: &Path) {
    if read_header(path).is_ok() {
        if let Ok(slices) = series::read_slice_headers(path) {
            let scan = series::group_by_series_uid(slices);
            for c in &scan.series {
                let _ = c.name.len();
                if let Ok(v) = series::load_volume(c) {
                    assert_eq!(v.data.len(), v.size[0] * v.size[1] * v.size[2]);
                }
            }
        }
    }
    let _ = std::fs::remove_file(path);
}

/// Structure-aware: the input is a small program that builds a data set, so the fuzzer
/// reaches deep or unclosed nesting, group-0002 elements inside the data set, extreme
/// lengths and extreme header values (frame counts, image sizes, bit depths) without having
/// to discover the encoding byte by byte. Byte 0: bit 0 implicit VR, bit 1 no valid MR
/// header first; then 4-byte operations. The data set goes through reception and imaging.
pub fn structured_dataset(data: &[u8]) {
    let Some((&sel, prog)) = data.split_first() else {
        return;
    };
    let explicit = sel & 1 == 0;
    let mut b = Vec::new();
    if sel & 2 == 0 {
        put_mr_header(&mut b, explicit);
    }
    for op in prog.chunks_exact(4) {
        put_op(&mut b, explicit, [op[0], op[1], op[2], op[3]]);
    }
    let ts = if explicit {
        uids::EXPLICIT_VR_LITTLE_ENDIAN
    } else {
        uids::IMPLICIT_VR_LITTLE_ENDIAN
    };
    let path = scratch_path();
    if write_part10(&path, ts, &b).is_ok() {
        receive_and_process(&path);
    }
}

/// Sequences an operation opens: Referenced SOP, shared and per-frame functional groups,
/// Referenced Image.
const OP_SEQUENCES: [u16; 4] = [0x1115, 0x9229, 0x9230, 0x1140];

/// Extreme header values an operation puts: frame counts, image sizes, bit depths,
/// samples, rescale, spacing, orientation, and a group-0002 transfer syntax.
const OP_HEADER_VALUES: [(u16, u16, [u8; 2], &[u8]); 12] = [
    (0x0028, 0x0008, *b"IS", b"2147483647"),
    (0x0028, 0x0008, *b"IS", b"-1"),
    (0x0028, 0x0008, *b"IS", b"65536 "),
    (0x0028, 0x0010, *b"US", &[0xFF, 0xFF]),
    (0x0028, 0x0011, *b"US", &[0, 0]),
    (0x0028, 0x0100, *b"US", &[64, 0]),
    (0x0028, 0x0100, *b"US", &[1, 0]),
    (0x0028, 0x0002, *b"US", &[3, 0]),
    (0x0028, 0x1053, *b"DS", b"1e308 "),
    (0x0028, 0x0030, *b"DS", b"0\\0 "),
    (0x0020, 0x0037, *b"DS", b"0\\0\\0\\0\\0\\0 "),
    (0x0002, 0x0010, *b"UI", b"1.2.840.10008.1.2.2\0"),
];

/// Element and item lengths an operation declares.
const OP_LENGTHS: [u32; 8] = [
    0,
    1,
    7,
    0xFFFF,
    0x7FFF_FFFF,
    0xFFFF_FFFE,
    0xFFFF_FFFF,
    1 << 20,
];

/// A minimal valid MR image header (4×4, 16 bits), so operations start from data the SCP
/// would store.
fn put_mr_header(b: &mut Vec<u8>, explicit: bool) {
    for (g, e, vr, v) in [
        (0x0008, 0x0016, *b"UI", SOP_CLASS.as_bytes()),
        (0x0008, 0x0018, *b"UI", b"1.2.3.4.5\0".as_slice()),
        (0x0008, 0x0060, *b"CS", b"MR"),
        (0x0020, 0x000D, *b"UI", b"1.2.3.4\0"),
        (0x0020, 0x000E, *b"UI", b"1.2.3.6\0"),
        (0x0028, 0x0002, *b"US", &1u16.to_le_bytes()),
        (0x0028, 0x0010, *b"US", &4u16.to_le_bytes()),
        (0x0028, 0x0011, *b"US", &4u16.to_le_bytes()),
        (0x0028, 0x0100, *b"US", &16u16.to_le_bytes()),
    ] {
        put(b, explicit, g, e, vr, v.len() as u32, v);
    }
}

/// One 4-byte operation (kind, x, y, z) of the program.
fn put_op(b: &mut Vec<u8>, explicit: bool, [kind, x, y, z]: [u8; 4]) {
    let small = u32::from(y) * 16 + u32::from(z);
    match kind % 8 {
        0 => {
            let e = OP_SEQUENCES[x as usize % OP_SEQUENCES.len()];
            let g = if e >= 0x9000 { 0x5200 } else { 0x0008 };
            let len = if y & 1 == 0 { u32::MAX } else { small };
            put(b, explicit, g, e, *b"SQ", len, &[]);
        }
        1 => put_raw(b, 0xFFFE, 0xE000, if x & 1 == 0 { u32::MAX } else { small }),
        2 => put_raw(b, 0xFFFE, 0xE00D, 0),
        3 => put_raw(b, 0xFFFE, 0xE0DD, 0),
        4 => {
            let v = [b'1'; 8];
            put(b, explicit, 0x0002, u16::from(x), *b"UI", 8, &v);
        }
        5 => {
            let (g, e, vr, v) = OP_HEADER_VALUES[x as usize % OP_HEADER_VALUES.len()];
            put(b, explicit, g, e, vr, v.len() as u32, v);
        }
        6 => {
            let len = OP_LENGTHS[x as usize % OP_LENGTHS.len()];
            let fill = vec![z; (len as usize).min(64)];
            let vr = [*b"OB", *b"US", *b"UN", *b"LO"][y as usize % 4];
            put(
                b,
                explicit,
                0x0009 + u16::from(y & 0x10),
                0x1000,
                vr,
                len,
                &fill,
            );
        }
        _ => {
            if x & 1 == 0 {
                let v = vec![z; small as usize * 2];
                put(b, explicit, 0x7FE0, 0x0010, *b"OW", v.len() as u32, &v);
            } else {
                put(b, explicit, 0x7FE0, 0x0010, *b"OB", u32::MAX, &[]);
                put_raw(b, 0xFFFE, 0xE000, 0);
                put_raw(b, 0xFFFE, 0xE000, OP_LENGTHS[y as usize % OP_LENGTHS.len()]);
                b.extend(std::iter::repeat_n(z, small as usize));
            }
        }
    }
}

/// One element as the data set encodes it; the value as given (it may be shorter than
/// `len`: that is the point of some inputs).
fn put(b: &mut Vec<u8>, explicit: bool, g: u16, e: u16, vr: [u8; 2], len: u32, v: &[u8]) {
    b.extend(g.to_le_bytes());
    b.extend(e.to_le_bytes());
    if explicit {
        b.extend(vr);
        if matches!(&vr, b"OB" | b"OW" | b"SQ" | b"UN" | b"UT") {
            b.extend([0, 0]);
            b.extend(len.to_le_bytes());
        } else {
            b.extend((len as u16).to_le_bytes());
        }
    } else {
        b.extend(len.to_le_bytes());
    }
    b.extend(v);
}

/// An item or delimiter tag (no VR in either encoding).
fn put_raw(b: &mut Vec<u8>, g: u16, e: u16, len: u32) {
    b.extend(g.to_le_bytes());
    b.extend(e.to_le_bytes());
    b.extend(len.to_le_bytes());
}

/// The fuzz input as a data set received on a context with the selected transfer syntax.
pub fn split_input(data: &[u8]) -> Option<(&'static str, &[u8])> {
    let (sel, body) = data.split_first()?;
    Some((
        TRANSFER_SYNTAXES[*sel as usize % TRANSFER_SYNTAXES.len()],
        body,
    ))
}

/// Write preamble + meta group (as `Spool::begin` builds it) + the received bytes to a
/// scratch file private to this thread.
fn spool_like_file(data: &[u8]) -> Option<PathBuf> {
    let (ts, body) = split_input(data)?;
    let path = scratch_path();
    write_part10(&path, ts, body).expect("scratch file writable");
    Some(path)
}

/// Part-10 file with our meta group around a raw data set.
pub fn write_part10(path: &Path, ts: &str, body: &[u8]) -> std::io::Result<()> {
    let meta = dicom_object::FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(SOP_CLASS)
        .media_storage_sop_instance_uid(SOP_INSTANCE)
        .transfer_syntax(ts)
        .source_application_entity_title("FUZZ")
        .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(IMPLEMENTATION_VERSION_NAME)
        .build()
        .map_err(std::io::Error::other)?;
    let mut head = Vec::with_capacity(512 + body.len());
    head.extend_from_slice(&[0u8; 128]);
    head.extend_from_slice(b"DICM");
    meta.write(&mut head).map_err(std::io::Error::other)?;
    head.extend_from_slice(body);
    let mut f = std::fs::File::create(path)?;
    f.write_all(&head)
}

fn scratch_path() -> PathBuf {
    let dir = std::env::var_os("PRIMA_FUZZ_SCRATCH")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let tid = format!("{:?}", std::thread::current().id());
    let tid: String = tid.chars().filter(|c| c.is_ascii_digit()).collect();
    dir.join(format!("prima-fuzz-{}-{tid}.dcm", std::process::id()))
}

/// Deterministic mutations for the corpus test (xorshift64*; no external crate).
pub struct Mutator(u64);

impl Mutator {
    pub fn new(seed: u64) -> Self {
        Mutator(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// One to four edits of the kinds that break parsers: bit flips, interesting bytes
    /// and lengths, insertions, deletions, truncation, duplicated chunks.
    pub fn mutate(&mut self, input: &[u8]) -> Vec<u8> {
        let mut v = input.to_vec();
        let edits = 1 + self.below(4);
        for _ in 0..edits {
            let len = v.len();
            match self.below(8) {
                0 if len > 0 => {
                    let i = self.below(len);
                    v[i] ^= 1 << self.below(8);
                }
                1 if len > 0 => {
                    let i = self.below(len);
                    v[i] = [0x00, 0xFF, 0x7F, 0x80, 0x01, b'\\', b'.', b' '][self.below(8)];
                }
                2 if len >= 4 => {
                    let i = self.below(len - 3);
                    let x: u32 = [
                        0xFFFF_FFFF,
                        0x7FFF_FFFF,
                        0x8000_0000,
                        0,
                        1,
                        0xFFFF,
                        0x1_0000,
                        len as u32,
                    ][self.below(8)];
                    v[i..i + 4].copy_from_slice(&x.to_le_bytes());
                }
                3 if len >= 2 => {
                    let i = self.below(len - 1);
                    let x: u16 = [0xFFFF, 0x7FFF, 0, 1, 0x8000][self.below(5)];
                    v[i..i + 2].copy_from_slice(&x.to_le_bytes());
                }
                4 => {
                    let i = self.below(len + 1);
                    let n = 1 + self.below(16);
                    let bytes: Vec<u8> = (0..n).map(|_| self.next_u64() as u8).collect();
                    v.splice(i..i, bytes);
                }
                5 if len > 0 => {
                    let i = self.below(len);
                    let n = (1 + self.below(32)).min(len - i);
                    v.drain(i..i + n);
                }
                6 if len > 0 => {
                    v.truncate(self.below(len));
                }
                7 if len > 0 => {
                    let i = self.below(len);
                    let n = (1 + self.below(64)).min(len - i);
                    let chunk = v[i..i + n].to_vec();
                    let j = self.below(len + 1);
                    v.splice(j..j, chunk);
                }
                _ => {}
            }
        }
        v
    }
}
