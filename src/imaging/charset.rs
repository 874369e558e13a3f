//! Text values decoded as their data set's Specific Character Set (0008,0005) says
//! (PS3.5 §6.1, Annexes H, I, J, K): single-byte sets (ISO_IR 100…203), UTF-8, GB18030
//! and GBK, and the ISO 2022 code extensions (JIS X 0201/0208/0212, KS X 1001, GB 2312)
//! switched by escape sequences.
//!
//! dicom-rs 0.10.1 decodes text while parsing, with the first value of (0008,0005) only
//! and after splitting the raw bytes at every 0x5C: Japanese with code extensions comes
//! out as Latin-1 with its escape sequences, and a GB18030/GBK character whose second
//! byte is 0x5C is cut into two values. What it decoded cannot be turned back into the
//! bytes in general (undecodable bytes become `\ooo` text, indistinguishable from a
//! value that says so), so [`open_header`] reads the header a second time with the same
//! parser giving raw bytes ([`ValueReadStrategy::Raw`]) and replaces every text value of
//! the object, in sequence items too, by the decoding here. The object then holds
//! Unicode text and says `ISO_IR 192`, so whatever copies or reads its text (series
//! names, the SR and KOS headers) gets the right characters.
//!
//! The byte tables are encoding_rs's (the WHATWG decoders); the ISO 2022 switching and
//! the value delimiters are decided here, byte by byte, before any table is applied.
use std::collections::BTreeMap;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use dicom_core::value::{PrimitiveValue, Value};
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::transfer_syntax::{Codec, TransferSyntaxIndex};
use dicom_object::{DefaultDicomObject, InMemDicomObject, OpenFileOptions};
use dicom_parser::dataset::read::{DataSetReader, DataSetReaderOptions, ValueReadStrategy};
use dicom_parser::dataset::DataToken;
use encoding_rs::Encoding;

/// Value representations whose text is in the data set's character set (the others use
/// the default repertoire).
fn is_text_vr(vr: VR) -> bool {
    matches!(
        vr,
        VR::PN | VR::LO | VR::SH | VR::ST | VR::LT | VR::UT | VR::UC
    )
}

/// Whether 0x5C separates values (ST, LT and UT are single-valued and may contain it).
fn splits_values(vr: VR) -> bool {
    !matches!(vr, VR::ST | VR::LT | VR::UT)
}

/// A 94- or 96-character set for the right half (G1, bytes 0xA0–0xFF). `None` is ISO 8859-1,
/// which encoding_rs does not have apart from windows-1252.
type UpperHalf = Option<&'static Encoding>;

/// Two-byte sets of the ISO 2022 code extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DoubleByte {
    /// JIS X 0208 (ISO 2022 IR 87), in G0.
    JisX0208,
    /// JIS X 0212 (ISO 2022 IR 159), in G0.
    JisX0212,
    /// KS X 1001 (ISO 2022 IR 149), in G1.
    KsX1001,
    /// GB 2312 (ISO 2022 IR 58), in G1.
    Gb2312,
}

/// What the bytes 0x21–0x7E mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum G0 {
    Ascii,
    /// JIS X 0201 Romaji (ISO-IR 14): ASCII but 0x5C is ¥ and 0x7E is ‾.
    JisRomaji,
    Double(DoubleByte),
    /// An escape sequence named a set this decoder does not know.
    Unknown,
}

/// What the bytes 0xA0–0xFF mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum G1 {
    None,
    Single(UpperHalf),
    /// JIS X 0201 Katakana (ISO-IR 13): half-width katakana at 0xA1–0xDF.
    Katakana,
    Double(DoubleByte),
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Designation {
    g0: G0,
    g1: G1,
}

/// A decoded Specific Character Set (0008,0005).
#[derive(Debug, Clone, PartialEq)]
pub struct CharacterSet {
    mode: Mode,
    /// Defined terms of (0008,0005) that name no character set this decoder knows.
    unknown_terms: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
enum Mode {
    /// A whole value is one byte stream of this encoding (ISO_IR 192, GB18030, GBK): no
    /// code extensions, and 0x5C in the middle of a character is not a delimiter.
    Whole(&'static Encoding),
    /// ISO 2022: `initial` is active at the start of a value and after each delimiter;
    /// escape sequences switch G0 and G1. `declared` lists the sets (0008,0005) names.
    Iso2022 {
        initial: Designation,
        declared: Vec<Designation>,
    },
}

impl Default for CharacterSet {
    /// The default repertoire (no (0008,0005)): ISO-IR 6, nothing in G1.
    fn default() -> Self {
        CharacterSet {
            mode: Mode::Iso2022 {
                initial: ASCII_ONLY,
                declared: Vec::new(),
            },
            unknown_terms: Vec::new(),
        }
    }
}

const ASCII_ONLY: Designation = Designation {
    g0: G0::Ascii,
    g1: G1::None,
};

/// The designation a defined term of (0008,0005) stands for, `None` when unknown. The
/// `ISO_IR` form (no code extensions) and the `ISO 2022 IR` form name the same set.
fn term_designation(term: &str) -> Option<Designation> {
    let ascii_with = |g1| Some(Designation { g0: G0::Ascii, g1 });
    let number = term
        .strip_prefix("ISO_IR ")
        .or_else(|| term.strip_prefix("ISO 2022 IR "))?;
    match number {
        "6" => ascii_with(G1::None),
        "100" => ascii_with(G1::Single(None)),
        "101" => ascii_with(G1::Single(Some(encoding_rs::ISO_8859_2))),
        "109" => ascii_with(G1::Single(Some(encoding_rs::ISO_8859_3))),
        "110" => ascii_with(G1::Single(Some(encoding_rs::ISO_8859_4))),
        "144" => ascii_with(G1::Single(Some(encoding_rs::ISO_8859_5))),
        "127" => ascii_with(G1::Single(Some(encoding_rs::ISO_8859_6))),
        "126" => ascii_with(G1::Single(Some(encoding_rs::ISO_8859_7))),
        "138" => ascii_with(G1::Single(Some(encoding_rs::ISO_8859_8))),
        // ISO 8859-9 and TIS 620 are encoding_rs's windows-1254 and windows-874 in
        // 0xA0–0xFF; the C1 range where they differ is never decoded with a table.
        "148" => ascii_with(G1::Single(Some(encoding_rs::WINDOWS_1254))),
        "166" => ascii_with(G1::Single(Some(encoding_rs::WINDOWS_874))),
        "203" => ascii_with(G1::Single(Some(encoding_rs::ISO_8859_15))),
        "13" => Some(Designation {
            g0: G0::JisRomaji,
            g1: G1::Katakana,
        }),
        "87" if term.starts_with("ISO 2022") => Some(Designation {
            g0: G0::Double(DoubleByte::JisX0208),
            g1: G1::None,
        }),
        "159" if term.starts_with("ISO 2022") => Some(Designation {
            g0: G0::Double(DoubleByte::JisX0212),
            g1: G1::None,
        }),
        "149" if term.starts_with("ISO 2022") => ascii_with(G1::Double(DoubleByte::KsX1001)),
        "58" if term.starts_with("ISO 2022") => ascii_with(G1::Double(DoubleByte::Gb2312)),
        _ => None,
    }
}

impl CharacterSet {
    /// The character set the values of (0008,0005) name. Unknown terms are kept (see
    /// [`CharacterSet::unknown_terms`]); an unknown first value leaves only ASCII
    /// decodable, everything else becomes U+FFFD.
    pub fn from_terms<S: AsRef<str>>(terms: &[S]) -> CharacterSet {
        let terms: Vec<&str> = terms
            .iter()
            .map(|t| t.as_ref().trim_matches([' ', '\0']))
            .collect();
        let mut unknown_terms = Vec::new();
        let whole = match terms.first().copied() {
            Some("ISO_IR 192") => Some(encoding_rs::UTF_8),
            Some("GB18030") => Some(encoding_rs::GB18030),
            Some("GBK") => Some(encoding_rs::GBK),
            _ => None,
        };
        if let Some(enc) = whole {
            unknown_terms.extend(terms[1..].iter().map(|t| t.to_string()));
            return CharacterSet {
                mode: Mode::Whole(enc),
                unknown_terms,
            };
        }
        let mut initial = ASCII_ONLY;
        let mut declared = Vec::new();
        for (i, term) in terms.iter().enumerate() {
            if i == 0 && term.is_empty() {
                continue;
            }
            match term_designation(term) {
                Some(d) => {
                    if i == 0 {
                        // The JIS X 0208/0212 sets may not be the default (their G0
                        // replaces ASCII, PS3.5 §6.1.2.5.3): keep ASCII there.
                        initial = Designation {
                            g0: if matches!(d.g0, G0::Double(_)) {
                                G0::Ascii
                            } else {
                                d.g0
                            },
                            g1: d.g1,
                        };
                    }
                    declared.push(d);
                }
                None => {
                    unknown_terms.push(term.to_string());
                    if i == 0 {
                        initial.g1 = G1::Unknown;
                    }
                }
            }
        }
        CharacterSet {
            mode: Mode::Iso2022 { initial, declared },
            unknown_terms,
        }
    }

    /// The character set of raw (0008,0005) bytes (values separated by 0x5C, ASCII).
    pub fn from_raw(bytes: &[u8]) -> CharacterSet {
        let text = String::from_utf8_lossy(bytes);
        let terms: Vec<&str> = text.split('\\').collect();
        CharacterSet::from_terms(&terms)
    }

    pub fn unknown_terms(&self) -> &[String] {
        &self.unknown_terms
    }

    /// The values of one element of value representation `vr`. Multiplicity is decided
    /// while decoding: 0x5C is a delimiter only where it is a character of its own.
    pub fn decode(&self, bytes: &[u8], vr: VR) -> Decoded {
        match &self.mode {
            Mode::Whole(enc) => decode_whole(enc, bytes, vr),
            Mode::Iso2022 { initial, declared } => {
                Iso2022Decoder::new(*initial, declared, vr).run(bytes)
            }
        }
    }
}

/// One element's decoded values and what was wrong with its bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decoded {
    pub values: Vec<String>,
    pub problems: Problems,
}

/// Counts of what could not be decoded (replaced by U+FFFD), never the text itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Problems {
    /// Byte sequences invalid or incomplete in the active character set.
    pub invalid_sequences: usize,
    /// Escape sequences naming a set this decoder does not know, or cut short.
    pub unknown_escapes: usize,
    /// Escape sequences to a known set that (0008,0005) does not declare (decoded anyway).
    pub undeclared_sets: usize,
}

impl Problems {
    fn add(&mut self, o: Problems) {
        self.invalid_sequences += o.invalid_sequences;
        self.unknown_escapes += o.unknown_escapes;
        self.undeclared_sets += o.undeclared_sets;
    }

    /// Whether some text was replaced (undeclared sets are decoded, so they do not count).
    pub fn lost_text(&self) -> bool {
        self.invalid_sequences > 0 || self.unknown_escapes > 0
    }
}

fn decode_whole(enc: &'static Encoding, bytes: &[u8], vr: VR) -> Decoded {
    let (text, had_errors) = enc.decode_without_bom_handling(bytes);
    let values = if splits_values(vr) {
        text.split('\\').map(str::to_string).collect()
    } else {
        vec![text.into_owned()]
    };
    Decoded {
        values,
        problems: Problems {
            invalid_sequences: usize::from(had_errors),
            ..Problems::default()
        },
    }
}

/// ISO 2022 decoding of one element: G0/G1 designations switched by escape sequences,
/// reset to the initial ones at each delimiter (value `\`, PN `^` and `=`, where those are
/// single-byte characters) and at CR, LF, FF and TAB (PS3.5 §6.1.2.5.3).
struct Iso2022Decoder<'a> {
    initial: Designation,
    declared: &'a [Designation],
    active: Designation,
    split_values: bool,
    person_name: bool,
    values: Vec<String>,
    current: String,
    /// Bytes of two-byte characters not yet decoded (decoded together, so an odd count
    /// shows up as a truncated character).
    pending: Vec<u8>,
    pending_set: Option<DoubleByte>,
    problems: Problems,
}

impl<'a> Iso2022Decoder<'a> {
    fn new(initial: Designation, declared: &'a [Designation], vr: VR) -> Self {
        Iso2022Decoder {
            initial,
            declared,
            active: initial,
            split_values: splits_values(vr),
            person_name: vr == VR::PN,
            values: Vec::new(),
            current: String::new(),
            pending: Vec::new(),
            pending_set: None,
            problems: Problems::default(),
        }
    }

    fn run(mut self, bytes: &[u8]) -> Decoded {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if b == 0x1B {
                self.flush();
                i = self.escape(bytes, i);
                continue;
            }
            if matches!(b, b'\r' | b'\n' | 0x0C | b'\t') {
                self.flush();
                self.current.push(b as char);
                self.active = self.initial;
            } else if b < 0x80 {
                self.gl(b);
            } else {
                self.gr(b);
            }
            i += 1;
        }
        self.flush();
        self.values.push(std::mem::take(&mut self.current));
        Decoded {
            values: self.values,
            problems: self.problems,
        }
    }

    /// A byte of the left half: G0 (or a control character or space).
    fn gl(&mut self, b: u8) {
        let graphic = (0x21..=0x7E).contains(&b);
        match self.active.g0 {
            G0::Ascii | G0::JisRomaji => {
                self.flush();
                if self.split_values && b == b'\\' {
                    self.values.push(std::mem::take(&mut self.current));
                    self.active = self.initial;
                } else if self.person_name && (b == b'^' || b == b'=') {
                    self.current.push(b as char);
                    self.active = self.initial;
                } else if self.active.g0 == G0::JisRomaji && b == 0x5C {
                    self.current.push('\u{A5}');
                } else if self.active.g0 == G0::JisRomaji && b == 0x7E {
                    self.current.push('\u{203E}');
                } else {
                    self.current.push(b as char);
                }
            }
            G0::Double(set) if graphic => self.push_double(set, b),
            G0::Unknown if graphic => {
                self.flush();
                self.replace_invalid();
            }
            G0::Double(_) | G0::Unknown => {
                self.flush();
                self.current.push(b as char);
            }
        }
    }

    /// A byte of the right half: G1.
    fn gr(&mut self, b: u8) {
        match self.active.g1 {
            G1::Single(upper) => {
                self.flush();
                match single_byte(upper, b) {
                    Some(c) => self.current.push(c),
                    None => self.replace_invalid(),
                }
            }
            G1::Katakana if (0xA1..=0xDF).contains(&b) => {
                self.flush();
                self.current
                    .push(char::from_u32(0xFF61 + u32::from(b - 0xA1)).unwrap_or('\u{FFFD}'));
            }
            G1::Double(set) if (0xA1..=0xFE).contains(&b) => self.push_double(set, b),
            G1::None | G1::Katakana | G1::Double(_) | G1::Unknown => {
                self.flush();
                self.replace_invalid();
            }
        }
    }

    fn replace_invalid(&mut self) {
        self.current.push('\u{FFFD}');
        self.problems.invalid_sequences += 1;
    }

    fn push_double(&mut self, set: DoubleByte, b: u8) {
        if self.pending_set != Some(set) {
            self.flush();
            self.pending_set = Some(set);
        }
        self.pending.push(b);
    }

    /// Decode the pending two-byte characters through the EUC form of their set.
    fn flush(&mut self) {
        let Some(set) = self.pending_set.take() else {
            return;
        };
        let bytes = std::mem::take(&mut self.pending);
        let (enc, prefix): (&'static Encoding, &[u8]) = match set {
            DoubleByte::JisX0208 => (encoding_rs::EUC_JP, &[]),
            // EUC-JP reaches JIS X 0212 through single shift 3.
            DoubleByte::JisX0212 => (encoding_rs::EUC_JP, &[0x8F]),
            DoubleByte::KsX1001 => (encoding_rs::EUC_KR, &[]),
            DoubleByte::Gb2312 => (encoding_rs::GBK, &[]),
        };
        let mut euc = Vec::with_capacity(bytes.len() * 3 / 2 + 1);
        let pairs = bytes.chunks_exact(2);
        let odd = !pairs.remainder().is_empty();
        for pair in pairs {
            euc.extend_from_slice(prefix);
            euc.push(pair[0] | 0x80);
            euc.push(pair[1] | 0x80);
        }
        let (text, had_errors) = enc.decode_without_bom_handling(&euc);
        self.current.push_str(&text);
        if had_errors {
            self.problems.invalid_sequences += 1;
        }
        if odd {
            self.replace_invalid();
        }
    }

    /// Apply the escape sequence at `bytes[start]` (ESC); returns the index after it.
    fn escape(&mut self, bytes: &[u8], start: usize) -> usize {
        let mut end = start + 1;
        while end < bytes.len() && (0x20..=0x2F).contains(&bytes[end]) {
            end += 1;
        }
        let intermediates = &bytes[start + 1..end];
        let Some(&fin) = bytes.get(end).filter(|f| (0x30..=0x7E).contains(*f)) else {
            // Cut short: what follows is decoded with the sets in force.
            self.current.push('\u{FFFD}');
            self.problems.unknown_escapes += 1;
            return end;
        };
        let designated = match (intermediates, fin) {
            (b"(", b'B') => Some(Slot::G0(G0::Ascii)),
            (b"(", b'J') => Some(Slot::G0(G0::JisRomaji)),
            (b")", b'I') => Some(Slot::G1(G1::Katakana)),
            (b"$", b'B') => Some(Slot::G0(G0::Double(DoubleByte::JisX0208))),
            (b"$(", b'D') => Some(Slot::G0(G0::Double(DoubleByte::JisX0212))),
            (b"$)", b'C') => Some(Slot::G1(G1::Double(DoubleByte::KsX1001))),
            (b"$)", b'A') => Some(Slot::G1(G1::Double(DoubleByte::Gb2312))),
            (b"-", f) => upper_half_by_final(f).map(|u| Slot::G1(G1::Single(u))),
            _ => None,
        };
        let declares =
            |p: &dyn Fn(&Designation) -> bool| p(&self.initial) || self.declared.iter().any(p);
        match designated {
            Some(Slot::G0(g0)) => {
                if g0 != G0::Ascii && !declares(&|d| d.g0 == g0) {
                    self.problems.undeclared_sets += 1;
                }
                self.active.g0 = g0;
            }
            Some(Slot::G1(g1)) => {
                if !declares(&|d| d.g1 == g1) {
                    self.problems.undeclared_sets += 1;
                }
                self.active.g1 = g1;
            }
            None => {
                self.current.push('\u{FFFD}');
                self.problems.unknown_escapes += 1;
                // Whatever it designated is unreadable until the next delimiter.
                match intermediates {
                    [b'(' | b',', ..] | [b'$'] | [b'$', b'(' | b',', ..] => {
                        self.active.g0 = G0::Unknown
                    }
                    [b')' | b'-' | b'.' | b'/', ..] | [b'$', ..] => self.active.g1 = G1::Unknown,
                    _ => {}
                }
            }
        }
        end + 1
    }
}

/// Which code element an escape sequence designates, and to what.
enum Slot {
    G0(G0),
    G1(G1),
}

/// The ISO 8859 part an `ESC - F` sequence designates to G1 (96-character sets).
fn upper_half_by_final(f: u8) -> Option<UpperHalf> {
    Some(match f {
        b'A' => None,
        b'B' => Some(encoding_rs::ISO_8859_2),
        b'C' => Some(encoding_rs::ISO_8859_3),
        b'D' => Some(encoding_rs::ISO_8859_4),
        b'F' => Some(encoding_rs::ISO_8859_7),
        b'G' => Some(encoding_rs::ISO_8859_6),
        b'H' => Some(encoding_rs::ISO_8859_8),
        b'L' => Some(encoding_rs::ISO_8859_5),
        b'M' => Some(encoding_rs::WINDOWS_1254),
        b'T' => Some(encoding_rs::WINDOWS_874),
        b'b' => Some(encoding_rs::ISO_8859_15),
        _ => return None,
    })
}

/// One byte ≥ 0x80 of a single-byte set; C1 controls (0x80–0x9F) map to themselves as in
/// every ISO 8859 part. `None` where the set has no character.
fn single_byte(upper: UpperHalf, b: u8) -> Option<char> {
    match upper {
        _ if b < 0xA0 => Some(b as char),
        None => Some(b as char),
        Some(enc) => {
            let byte = [b];
            let (text, had_errors) = enc.decode_without_bom_handling(&byte);
            (!had_errors).then(|| text.chars().next()).flatten()
        }
    }
}

/// Why the raw text of a header could not be read again.
#[derive(Debug, thiserror::Error)]
pub enum RawTextError {
    #[error("cannot read the file: {0}")]
    Io(#[from] std::io::Error),
    #[error("no DICM prefix")]
    NotPart10,
    #[error("file meta group: {0}")]
    Meta(#[source] Box<dicom_object::meta::Error>),
    #[error("transfer syntax {0} is not known")]
    UnknownTransferSyntax(String),
    #[error("transfer syntax {0} cannot be read")]
    UnreadableTransferSyntax(String),
    #[error("data set: {0}")]
    Parse(#[source] Box<dicom_parser::dataset::read::Error>),
}

/// Raw bytes of the text values of one data set (root or item).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RawText {
    /// (0008,0005) as written, when this data set has it.
    charset: Option<Vec<u8>>,
    text: BTreeMap<Tag, (VR, Vec<u8>)>,
    sequences: BTreeMap<Tag, Vec<RawText>>,
}

enum Frame {
    Set(RawText),
    Seq(Tag, Vec<RawText>),
    /// Encapsulated pixel data inside an item (an icon image): nothing to keep.
    Pixels,
}

/// The text values of a Part-10 file's header (everything before Pixel Data), as bytes.
pub fn read_raw_text(path: &Path) -> Result<RawText, RawTextError> {
    let mut file = BufReader::new(std::fs::File::open(path)?);
    let mut head = [0u8; 132];
    let n = read_up_to(&mut file, &mut head)?;
    let start = if n == 132 && &head[128..132] == b"DICM" {
        128
    } else if n >= 4 && &head[..4] == b"DICM" {
        0
    } else {
        return Err(RawTextError::NotPart10);
    };
    file.seek(SeekFrom::Start(start))?;
    let meta = dicom_object::FileMetaTable::from_reader(&mut file)
        .map_err(|e| RawTextError::Meta(Box::new(e)))?;
    let uid = meta.transfer_syntax();
    let ts = dicom_transfer_syntax_registry::TransferSyntaxRegistry
        .get(uid)
        .ok_or_else(|| RawTextError::UnknownTransferSyntax(uid.to_string()))?;
    let options = DataSetReaderOptions::default().value_read(ValueReadStrategy::Raw);
    let parse = |e| RawTextError::Parse(Box::new(e));
    match ts.codec() {
        Codec::Dataset(Some(adapter)) => {
            let source = adapter.adapt_reader(Box::new(file));
            collect_raw(DataSetReader::new_with_ts_options(source, ts, options).map_err(parse)?)
        }
        Codec::Dataset(None) => Err(RawTextError::UnreadableTransferSyntax(uid.to_string())),
        _ => collect_raw(DataSetReader::new_with_ts_options(file, ts, options).map_err(parse)?),
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The token stream as a tree of text values, up to Pixel Data of the root (as
/// `read_until(PIXEL_DATA)` reads the object).
fn collect_raw<I>(tokens: I) -> Result<RawText, RawTextError>
where
    I: Iterator<Item = Result<DataToken, dicom_parser::dataset::read::Error>>,
{
    let mut stack = vec![Frame::Set(RawText::default())];
    let mut header = None;
    for token in tokens {
        let token = token.map_err(|e| RawTextError::Parse(Box::new(e)))?;
        let at_root = stack.len() == 1;
        match token {
            DataToken::ElementHeader(h) => {
                if at_root && h.tag >= tags::PIXEL_DATA {
                    break;
                }
                header = Some(h);
            }
            DataToken::PrimitiveValue(v) => {
                let (Some(h), Some(Frame::Set(set))) = (header.take(), stack.last_mut()) else {
                    continue;
                };
                if h.tag == tags::SPECIFIC_CHARACTER_SET {
                    set.charset = Some(v.to_bytes().into_owned());
                } else if is_text_vr(h.vr) {
                    set.text.insert(h.tag, (h.vr, v.to_bytes().into_owned()));
                }
            }
            DataToken::SequenceStart { tag, .. } => {
                if at_root && tag >= tags::PIXEL_DATA {
                    break;
                }
                stack.push(Frame::Seq(tag, Vec::new()));
            }
            DataToken::PixelSequenceStart => {
                if at_root {
                    break;
                }
                stack.push(Frame::Pixels);
            }
            DataToken::ItemStart { .. } => {
                if let Some(Frame::Seq(..)) = stack.last() {
                    stack.push(Frame::Set(RawText::default()));
                }
            }
            DataToken::ItemEnd => {
                if let Some(Frame::Set(_)) = stack.last() {
                    if stack.len() > 1 {
                        if let Some(Frame::Set(item)) = stack.pop() {
                            if let Some(Frame::Seq(_, items)) = stack.last_mut() {
                                items.push(item);
                            }
                        }
                    }
                }
            }
            DataToken::SequenceEnd => match stack.pop() {
                Some(Frame::Seq(tag, items)) => {
                    if let Some(Frame::Set(parent)) = stack.last_mut() {
                        parent.sequences.insert(tag, items);
                    }
                }
                Some(Frame::Pixels) => {}
                Some(other) => stack.push(other),
                None => {}
            },
            DataToken::ItemValue(_) | DataToken::OffsetTable(_) => {}
        }
    }
    // A stream cut short inside a sequence still gives what was read.
    while stack.len() > 1 {
        match stack.pop() {
            Some(Frame::Set(item)) => {
                if let Some(Frame::Seq(_, items)) = stack.last_mut() {
                    items.push(item);
                }
            }
            Some(Frame::Seq(tag, items)) => {
                if let Some(Frame::Set(parent)) = stack.last_mut() {
                    parent.sequences.insert(tag, items);
                }
            }
            _ => {}
        }
    }
    match stack.pop() {
        Some(Frame::Set(root)) => Ok(root),
        _ => Ok(RawText::default()),
    }
}

/// What re-decoding a header found, for one log line per instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Redecoded {
    pub problems: Problems,
    pub unknown_terms: Vec<String>,
}

/// Replace every text value of `obj` (and of its sequence items, which may declare their
/// own (0008,0005)) by the decoding of its raw bytes, and declare `ISO_IR 192` where a
/// character set was declared and at the root: the object then says what it holds.
pub fn redecode(obj: &mut InMemDicomObject, raw: &RawText) -> Redecoded {
    let mut out = Redecoded::default();
    redecode_set(obj, raw, &CharacterSet::default(), &mut out);
    obj.put(DataElement::new(
        tags::SPECIFIC_CHARACTER_SET,
        VR::CS,
        PrimitiveValue::from("ISO_IR 192"),
    ));
    out
}

fn redecode_set(
    obj: &mut InMemDicomObject,
    raw: &RawText,
    inherited: &CharacterSet,
    out: &mut Redecoded,
) {
    let own;
    let cs = match &raw.charset {
        Some(bytes) => {
            own = CharacterSet::from_raw(bytes);
            for t in own.unknown_terms() {
                if !out.unknown_terms.contains(t) {
                    out.unknown_terms.push(t.clone());
                }
            }
            obj.put(DataElement::new(
                tags::SPECIFIC_CHARACTER_SET,
                VR::CS,
                PrimitiveValue::from("ISO_IR 192"),
            ));
            &own
        }
        None => inherited,
    };
    for (tag, (vr, bytes)) in &raw.text {
        // Only where the object has the same element (it was read by the same parser).
        if obj.get(*tag).is_none_or(|e| e.vr() != *vr) {
            continue;
        }
        let decoded = cs.decode(bytes, *vr);
        out.problems.add(decoded.problems);
        obj.put(DataElement::new(
            *tag,
            *vr,
            PrimitiveValue::Strs(decoded.values.into()),
        ));
    }
    for (tag, raw_items) in &raw.sequences {
        obj.update_value(*tag, |v| {
            if let Value::Sequence(seq) = v {
                for (item, raw_item) in seq.items_mut().iter_mut().zip(raw_items) {
                    redecode_set(item, raw_item, cs, out);
                }
            }
        });
    }
}

/// A Part-10 file's header (everything before Pixel Data) with its text decoded as its
/// Specific Character Set says (see the module comment); what could not be decoded is
/// U+FFFD and one warning per call (counts only: text values are patient data).
pub fn open_header(path: &Path) -> Result<DefaultDicomObject, dicom_object::ReadError> {
    let mut obj = OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)?;
    let file = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    match read_raw_text(path) {
        Ok(raw) => {
            let r = redecode(&mut obj, &raw);
            if r.problems.lost_text() || !r.unknown_terms.is_empty() {
                tracing::warn!(
                    file = %file,
                    invalid_sequences = r.problems.invalid_sequences,
                    unknown_escapes = r.problems.unknown_escapes,
                    unknown_character_sets = r.unknown_terms.len(),
                    "text not decodable in its Specific Character Set: replaced by U+FFFD"
                );
                tracing::debug!(file = %file, terms = ?r.unknown_terms, "unknown character set terms");
            }
            if r.problems.undeclared_sets > 0 {
                tracing::debug!(
                    file = %file,
                    escapes = r.problems.undeclared_sets,
                    "escape sequences to character sets (0008,0005) does not declare; decoded"
                );
            }
        }
        Err(e) => {
            // Not expected: the same bytes were just parsed. The values stay as dicom-rs
            // decoded them.
            tracing::warn!(file = %file, error = %e, "text values could not be re-read");
        }
    }
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cs(terms: &[&str]) -> CharacterSet {
        CharacterSet::from_terms(terms)
    }

    fn pn(set: &CharacterSet, bytes: &[u8]) -> Vec<String> {
        let d = set.decode(bytes, VR::PN);
        assert_eq!(d.problems, Problems::default(), "{:?}", d.values);
        d.values
    }

    /// PS3.5 Annex H.3.1: ISO 2022 IR 87 in the 2nd and 3rd component groups, switched
    /// back to ASCII before every delimiter.
    #[test]
    fn japanese_person_name_switches_back_and_forth() {
        let bytes =
            b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B";
        let set = cs(&["", "ISO 2022 IR 87"]);
        assert_eq!(pn(&set, bytes), ["Yamada^Tarou=山田^太郎=やまだ^たろう"]);
    }

    /// PS3.5 Annex H.3.2: half-width katakana (ISO 2022 IR 13 as the default set) and
    /// JIS X 0208 returning to JIS X 0201 Romaji.
    #[test]
    fn japanese_katakana_default_with_kanji() {
        let bytes = b"\xd4\xcf\xc0\xde^\xc0\xdb\xb3=\x1b$B;3ED\x1b(J^\x1b$BB@O:\x1b(J=\x1b$B$d$^$@\x1b(J^\x1b$B$?$m$&\x1b(J";
        let set = cs(&["ISO 2022 IR 13", "ISO 2022 IR 87"]);
        assert_eq!(pn(&set, bytes), ["ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう"]);
    }

    #[test]
    fn delimiters_are_single_byte_characters_and_reset_the_sets() {
        // 0x5E and 0x5C inside JIS X 0208 are halves of characters (0x245E ま, 0x305C 移),
        // not PN or value delimiters.
        let set = cs(&["", "ISO 2022 IR 87"]);
        assert_eq!(pn(&set, b"\x1b$B$^0\\\x1b(B^ab"), ["ま移^ab"]);
        // After a delimiter the initial sets are active again: KS X 1001 must be
        // designated anew (PS3.5 Annex I does so in every component).
        let set = cs(&["", "ISO 2022 IR 149"]);
        let d = set.decode(b"\x1b$)C\xc8\xab^\xc8\xab", VR::PN);
        assert_eq!(d.values, ["홍^\u{FFFD}\u{FFFD}"]);
        assert_eq!(d.problems.invalid_sequences, 2);
    }

    #[test]
    fn jis_x0212_supplementary_kanji() {
        // JIS X 0212 0x3021 is 丂 (U+4E02).
        let set = cs(&["", "ISO 2022 IR 159"]);
        assert_eq!(pn(&set, b"\x1b$(D0!\x1b(B"), ["丂"]);
    }

    /// PS3.5 Annex I.2: Korean, KS X 1001 designated to G1 in each component.
    #[test]
    fn korean_person_name() {
        let bytes = b"Hong^Gildong=\x1b$)C\xfb\xf3^\x1b$)C\xd1\xce\xd4\xd7=\x1b$)C\xc8\xab^\x1b$)C\xb1\xe6\xb5\xbf";
        let set = cs(&["", "ISO 2022 IR 149"]);
        assert_eq!(pn(&set, bytes), ["Hong^Gildong=洪^吉洞=홍^길동"]);
    }

    /// PS3.5 Annex K: ISO 2022 IR 58 (GB 2312 in G1).
    #[test]
    fn chinese_gb2312_code_extension() {
        let bytes = b"Zhang^XiaoDong=\x1b$)A\xd5\xc5^\x1b$)A\xd0\xa1\xb6\xab=";
        let set = cs(&["", "ISO 2022 IR 58"]);
        assert_eq!(pn(&set, bytes), ["Zhang^XiaoDong=张^小东="]);
    }

    /// 淺 is 0x9C 0x5C in GBK and GB18030: one value, not two.
    #[test]
    fn gb18030_second_byte_0x5c_is_not_a_delimiter() {
        for term in ["GB18030", "GBK"] {
            let set = cs(&[term]);
            let d = set.decode(b"\x9c\x5c T1\\b", VR::LO);
            assert_eq!(d.values, ["淺 T1", "b"], "{term}");
            assert_eq!(d.problems, Problems::default());
        }
        // PS3.5 Annex J.3.
        let set = cs(&["GB18030"]);
        assert_eq!(
            pn(&set, b"Wang^XiaoDong=\xcd\xf5^\xd0\xa1\xb6\xab="),
            ["Wang^XiaoDong=王^小东="]
        );
        // A four-byte GB18030 sequence: U+20087 𠂇.
        assert_eq!(pn(&set, b"\x95\x32\x90\x31"), ["\u{20087}"]);
    }

    #[test]
    fn single_byte_sets() {
        let cases: &[(&str, &[u8], &str)] = &[
            ("ISO_IR 100", b"M\xfcller^J\xf6rg", "Müller^Jörg"),
            ("ISO_IR 101", b"Dvo\xf8\xe1k", "Dvořák"),
            ("ISO_IR 144", b"\xb8\xd2\xd0\xdd\xde\xd2", "Иванов"),
            (
                "ISO_IR 126",
                b"\xc4\xe9\xef\xed\xf5\xf3\xe9\xef\xf2",
                "Διονυσιος",
            ),
            ("ISO_IR 127", b"\xe2\xc8\xc7\xe6\xea", "قباني"),
            ("ISO_IR 138", b"\xf9\xf8\xe5\xef", "שרון"),
            ("ISO_IR 148", b"\xdeahin", "Şahin"),
            ("ISO_IR 166", b"\xca\xc1\xaa\xd2\xc2", "สมชาย"),
            ("ISO_IR 203", b"\xa4uro", "€uro"),
            ("ISO_IR 13", b"\xd4\xcf\xc0\xde", "ﾔﾏﾀﾞ"),
            (
                "ISO_IR 192",
                "Ærøskøbing 山田".as_bytes(),
                "Ærøskøbing 山田",
            ),
        ];
        for (term, bytes, want) in cases {
            let d = cs(&[term]).decode(bytes, VR::LO);
            assert_eq!(d.values, [*want], "{term}");
            assert_eq!(d.problems, Problems::default(), "{term}");
        }
    }

    #[test]
    fn code_extensions_between_single_byte_sets() {
        // Latin-1 default, Greek switched in and back out.
        let set = cs(&["ISO 2022 IR 100", "ISO 2022 IR 126"]);
        let d = set.decode(b"\xe9t\xe9 \x1b-F\xe1\xe2\x1b-A\xe9", VR::LO);
        assert_eq!(d.values, ["été αβé"]);
        assert_eq!(d.problems, Problems::default());
    }

    #[test]
    fn values_and_text_vrs() {
        let set = cs(&["ISO_IR 100"]);
        assert_eq!(set.decode(b"a\\b\\", VR::SH).values, ["a", "b", ""]);
        // ST, LT, UT: a backslash is text.
        assert_eq!(set.decode(b"a\\b", VR::LT).values, ["a\\b"]);
        assert_eq!(set.decode(b"", VR::LO).values, [""]);
        // Line breaks in LT reset to the default set.
        let set = cs(&["", "ISO 2022 IR 87"]);
        let d = set.decode(b"\x1b$B;3\r\nED\x1b(B", VR::LT);
        assert_eq!(d.values, ["山\r\nED"]);
        assert_eq!(d.problems, Problems::default());
    }

    #[test]
    fn bad_input_is_replaced_not_fatal() {
        // Unknown term: ASCII still decodes, the rest is replaced.
        let set = cs(&["ISO_IR 999"]);
        assert_eq!(set.unknown_terms(), ["ISO_IR 999"]);
        let d = set.decode(b"Ab\xe9", VR::LO);
        assert_eq!(d.values, ["Ab\u{FFFD}"]);
        assert_eq!(d.problems.invalid_sequences, 1);
        // Truncated multi-byte sequences.
        let d = cs(&["GB18030"]).decode(b"ab\x9c", VR::LO);
        assert_eq!(d.values, ["ab\u{FFFD}"]);
        assert_eq!(d.problems.invalid_sequences, 1);
        let d = cs(&["ISO_IR 192"]).decode(b"\xe5\xb1", VR::LO);
        assert_eq!(d.values, ["\u{FFFD}"]);
        let d = cs(&["", "ISO 2022 IR 87"]).decode(b"\x1b$B;3E\x1b(Bx", VR::LO);
        assert_eq!(d.values, ["山\u{FFFD}x"]);
        assert_eq!(d.problems.invalid_sequences, 1);
        // An escape to an unknown set: replaced, and its bytes until the next delimiter.
        let d = cs(&["", "ISO 2022 IR 87"]).decode(b"a\x1b$)Z\xb1\xb1\\b", VR::LO);
        assert_eq!(d.values, ["a\u{FFFD}\u{FFFD}\u{FFFD}", "b"]);
        assert_eq!(d.problems.unknown_escapes, 1);
        // An escape cut short at the end of the value.
        let d = cs(&["", "ISO 2022 IR 87"]).decode(b"a\x1b$", VR::LO);
        assert_eq!(d.values, ["a\u{FFFD}"]);
        assert_eq!(d.problems.unknown_escapes, 1);
        // Bytes >= 0x80 with nothing in G1.
        let d = cs(&[]).decode(b"\xff", VR::PN);
        assert_eq!(d.values, ["\u{FFFD}"]);
        // A known but undeclared set is decoded, and counted.
        let d = cs(&["", "ISO 2022 IR 149"]).decode(b"\x1b$B;3\x1b(B", VR::LO);
        assert_eq!(d.values, ["山"]);
        assert_eq!(d.problems.undeclared_sets, 1);
        assert!(!d.problems.lost_text());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // Every byte, and every pair after each escape prefix, in every mode.
        let sets = [
            cs(&[]),
            cs(&["ISO_IR 192"]),
            cs(&["GB18030"]),
            cs(&["ISO 2022 IR 13", "ISO 2022 IR 87", "ISO 2022 IR 159"]),
            cs(&["", "ISO 2022 IR 149", "ISO 2022 IR 58", "ISO 2022 IR 126"]),
        ];
        let mut seed = 0x2545F4914F6CDD1Du64;
        for set in &sets {
            for _ in 0..2000 {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                let len = (seed >> 59) as usize + (seed >> 62) as usize;
                let mut bytes = Vec::with_capacity(len);
                for _ in 0..len {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let b = (seed >> 24) as u8;
                    bytes.push(if b.is_multiple_of(5) { 0x1B } else { b });
                }
                for vr in [VR::PN, VR::LO, VR::UT] {
                    let d = set.decode(&bytes, vr);
                    assert!(!d.values.is_empty());
                }
            }
        }
    }

    #[test]
    fn scs_values_are_read_from_raw_bytes() {
        let set = CharacterSet::from_raw(b"\\ISO 2022 IR 87 ");
        assert!(set.unknown_terms().is_empty());
        assert_eq!(pn(&set, b"\x1b$B;3\x1b(B"), ["山"]);
    }
}
