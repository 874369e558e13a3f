//! Optional summary card: a Secondary Capture image with the findings table burned in, for
//! viewers that render neither SR nor KOS. Off by default (`ReportConfig::summary_card`).
//!
//! The text is drawn with a built-in 5×7 bitmap font (upper case, digits, a little
//! punctuation) scaled ×2: no font files or rendering libraries to install on a PACS-side node.

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;

use super::codes;
use super::header::{base_header, to_part10};
use super::items::{put_empty, put_str, put_strs};
use super::{Context, ReportError, CARD_SERIES_NUMBER, SECONDARY_CAPTURE};

pub const CARD_SERIES_DESCRIPTION: &str = "Prima AI summary — NOT FOR DIAGNOSIS";

const SCALE: usize = 2;
const GLYPH_W: usize = 5;
const GLYPH_H: usize = 7;
const ADVANCE: usize = (GLYPH_W + 1) * SCALE;
const LINE_H: usize = (GLYPH_H + 3) * SCALE;
const MARGIN: usize = 16;
const WIDTH: usize = 1024;
const CHARS_PER_LINE: usize = (WIDTH - 2 * MARGIN) / ADVANCE;

/// Glyph rows, most significant of the low 5 bits = leftmost pixel.
#[rustfmt::skip]
const FONT: &[(char, [u8; 7])] = &[
    ('A', [0b01110, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001]),
    ('B', [0b11110, 0b10001, 0b10001, 0b11110, 0b10001, 0b10001, 0b11110]),
    ('C', [0b01110, 0b10001, 0b10000, 0b10000, 0b10000, 0b10001, 0b01110]),
    ('D', [0b11110, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b11110]),
    ('E', [0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b11111]),
    ('F', [0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b10000]),
    ('G', [0b01110, 0b10001, 0b10000, 0b10111, 0b10001, 0b10001, 0b01111]),
    ('H', [0b10001, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001]),
    ('I', [0b01110, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110]),
    ('J', [0b00111, 0b00010, 0b00010, 0b00010, 0b00010, 0b10010, 0b01100]),
    ('K', [0b10001, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010, 0b10001]),
    ('L', [0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b11111]),
    ('M', [0b10001, 0b11011, 0b10101, 0b10101, 0b10001, 0b10001, 0b10001]),
    ('N', [0b10001, 0b10001, 0b11001, 0b10101, 0b10011, 0b10001, 0b10001]),
    ('O', [0b01110, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110]),
    ('P', [0b11110, 0b10001, 0b10001, 0b11110, 0b10000, 0b10000, 0b10000]),
    ('Q', [0b01110, 0b10001, 0b10001, 0b10001, 0b10101, 0b10010, 0b01101]),
    ('R', [0b11110, 0b10001, 0b10001, 0b11110, 0b10100, 0b10010, 0b10001]),
    ('S', [0b01111, 0b10000, 0b10000, 0b01110, 0b00001, 0b00001, 0b11110]),
    ('T', [0b11111, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100]),
    ('U', [0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110]),
    ('V', [0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100]),
    ('W', [0b10001, 0b10001, 0b10001, 0b10101, 0b10101, 0b10101, 0b01010]),
    ('X', [0b10001, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001, 0b10001]),
    ('Y', [0b10001, 0b10001, 0b01010, 0b00100, 0b00100, 0b00100, 0b00100]),
    ('Z', [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b11111]),
    ('0', [0b01110, 0b10001, 0b10011, 0b10101, 0b11001, 0b10001, 0b01110]),
    ('1', [0b00100, 0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110]),
    ('2', [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b01000, 0b11111]),
    ('3', [0b11111, 0b00010, 0b00100, 0b00010, 0b00001, 0b10001, 0b01110]),
    ('4', [0b00010, 0b00110, 0b01010, 0b10010, 0b11111, 0b00010, 0b00010]),
    ('5', [0b11111, 0b10000, 0b11110, 0b00001, 0b00001, 0b10001, 0b01110]),
    ('6', [0b00110, 0b01000, 0b10000, 0b11110, 0b10001, 0b10001, 0b01110]),
    ('7', [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b01000, 0b01000]),
    ('8', [0b01110, 0b10001, 0b10001, 0b01110, 0b10001, 0b10001, 0b01110]),
    ('9', [0b01110, 0b10001, 0b10001, 0b01111, 0b00001, 0b00010, 0b01100]),
    ('.', [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b01100]),
    ('-', [0b00000, 0b00000, 0b00000, 0b11111, 0b00000, 0b00000, 0b00000]),
    (':', [0b00000, 0b01100, 0b01100, 0b00000, 0b01100, 0b01100, 0b00000]),
    ('+', [0b00000, 0b00100, 0b00100, 0b11111, 0b00100, 0b00100, 0b00000]),
    ('(', [0b00010, 0b00100, 0b01000, 0b01000, 0b01000, 0b00100, 0b00010]),
    (')', [0b01000, 0b00100, 0b00010, 0b00010, 0b00010, 0b00100, 0b01000]),
    ('/', [0b00000, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b00000]),
    ('_', [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b11111]),
    (',', [0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b00100, 0b01000]),
    ('=', [0b00000, 0b00000, 0b11111, 0b00000, 0b11111, 0b00000, 0b00000]),
    ('?', [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b00000, 0b00100]),
    ('%', [0b11000, 0b11001, 0b00010, 0b00100, 0b01000, 0b10011, 0b00011]),
    (';', [0b00000, 0b01100, 0b01100, 0b00000, 0b01100, 0b00100, 0b01000]),
];

fn glyph(c: char) -> Option<[u8; 7]> {
    let c = match c.to_ascii_uppercase() {
        '[' | '{' => '(',
        ']' | '}' => ')',
        '—' | '–' => '-',
        c => c,
    };
    if c == ' ' {
        return None;
    }
    FONT.iter()
        .find(|(g, _)| *g == c)
        .map(|(_, rows)| *rows)
        .or_else(|| FONT.iter().find(|(g, _)| *g == '?').map(|(_, r)| *r))
}

/// The text lines of the card.
pub(crate) fn lines(ctx: &Context) -> Vec<String> {
    let input = ctx.input;
    let mut v = vec!["NOT FOR DIAGNOSIS - AI GENERATED, NOT VERIFIED BY A PHYSICIAN".to_string()];
    if input.model.demo {
        v.push("DEMO MODEL - NOT FOR CLINICAL USE".to_string());
    }
    v.push(format!(
        "MODEL: {} {}   PRIORITY: {}",
        input.model.name,
        input.model.version,
        ctx.summary
            .priority
            .as_deref()
            .unwrap_or("n/a")
            .to_ascii_uppercase()
    ));
    if input.failed {
        v.push("THE MODEL COULD NOT PROCESS THIS STUDY".to_string());
    }
    if !ctx.summary.referrals.is_empty() {
        let refs: Vec<String> = ctx
            .summary
            .referrals
            .iter()
            .map(|(l, _)| codes::humanize_label(l).1)
            .collect();
        v.push(format!("REFER: {}", refs.join(", ")));
    }
    if ctx.partial {
        v.push("PARTIAL STUDY: NOT ALL SERIES WERE ANALYSED".to_string());
    }
    v.push(String::new());
    let name_w = CHARS_PER_LINE - 30;
    v.push(format!(
        "{:<name_w$} {:>9} {:>9}  {}",
        "FINDING", "MARGIN", "THRESHOLD", "RESULT"
    ));
    for f in &ctx.summary.findings {
        let name = codes::truncate_chars(&codes::humanize_label(&f.label).0, name_w);
        v.push(format!(
            "{:<name_w$} {:>+9.3} {:>+9.3}  {}",
            name,
            f.margin,
            f.threshold,
            if f.present { "PRESENT" } else { "absent" }
        ));
    }
    v.push(String::new());
    v.push("MARGIN = MODEL SCORE MINUS THRESHOLD; NOT A PROBABILITY".to_string());
    v
}

/// 8-bit MONOCHROME2 raster of `lines`, white text on black.
pub(crate) fn render(lines: &[String]) -> (usize, usize, Vec<u8>) {
    let height = (2 * MARGIN + lines.len() * LINE_H)
        .max(128)
        .next_multiple_of(2);
    let mut px = vec![0u8; WIDTH * height];
    for (li, line) in lines.iter().enumerate() {
        let y0 = MARGIN + li * LINE_H;
        for (ci, c) in line.chars().take(CHARS_PER_LINE).enumerate() {
            let Some(rows) = glyph(c) else { continue };
            let x0 = MARGIN + ci * ADVANCE;
            for (ry, bits) in rows.iter().enumerate() {
                for rx in 0..GLYPH_W {
                    if bits & (1 << (GLYPH_W - 1 - rx)) == 0 {
                        continue;
                    }
                    for dy in 0..SCALE {
                        let row = (y0 + ry * SCALE + dy) * WIDTH;
                        for dx in 0..SCALE {
                            px[row + x0 + rx * SCALE + dx] = 255;
                        }
                    }
                }
            }
        }
    }
    (WIDTH, height, px)
}

pub(crate) fn build(ctx: &Context) -> Result<Vec<u8>, ReportError> {
    let mut o = base_header(
        ctx,
        SECONDARY_CAPTURE,
        &ctx.card_uid,
        "OT",
        &ctx.card_series_uid,
        CARD_SERIES_NUMBER,
        CARD_SERIES_DESCRIPTION,
    );
    // General Series (not an SR series): the PPS reference is Type 3 here and may not be
    // empty; Laterality is Type 2C and a whole-brain summary has none.
    o.remove_element(tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE);
    put_empty(&mut o, tags::LATERALITY, VR::CS);
    // SC Equipment: produced on a workstation.
    put_str(&mut o, tags::CONVERSION_TYPE, VR::CS, "WSD");
    // General Image
    put_strs(
        &mut o,
        tags::IMAGE_TYPE,
        VR::CS,
        &["DERIVED".to_string(), "SECONDARY".to_string()],
    );
    put_empty(&mut o, tags::PATIENT_ORIENTATION, VR::CS);
    put_str(&mut o, tags::BURNED_IN_ANNOTATION, VR::CS, "YES");
    put_str(&mut o, tags::IMAGE_COMMENTS, VR::LT, "NOT FOR DIAGNOSIS");
    // Image Pixel
    let (w, h, px) = render(&lines(ctx));
    let us = |v: usize| PrimitiveValue::from(v as u16);
    o.put(DataElement::new(tags::SAMPLES_PER_PIXEL, VR::US, us(1)));
    put_str(
        &mut o,
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        "MONOCHROME2",
    );
    o.put(DataElement::new(tags::ROWS, VR::US, us(h)));
    o.put(DataElement::new(tags::COLUMNS, VR::US, us(w)));
    o.put(DataElement::new(tags::BITS_ALLOCATED, VR::US, us(8)));
    o.put(DataElement::new(tags::BITS_STORED, VR::US, us(8)));
    o.put(DataElement::new(tags::HIGH_BIT, VR::US, us(7)));
    o.put(DataElement::new(tags::PIXEL_REPRESENTATION, VR::US, us(0)));
    o.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::U8(px.into()),
    ));
    to_part10(o, SECONDARY_CAPTURE, &ctx.card_uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn font_covers_what_the_card_writes() {
        for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:+()/_,=?%;".chars() {
            assert!(FONT.iter().any(|(g, _)| *g == c), "{c}");
        }
        for (_, rows) in FONT {
            assert!(rows.iter().all(|r| *r < 32));
        }
    }

    #[test]
    fn render_draws_pixels() {
        let (w, h, px) = render(&["A".to_string()]);
        assert_eq!(px.len(), w * h);
        assert!(px.iter().filter(|p| **p == 255).count() > 10);
    }
}
