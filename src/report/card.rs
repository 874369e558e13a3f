//! Optional summary card: a Secondary Capture image with the findings table burned in, for
//! viewers that render neither SR nor KOS. Off by default (`ReportConfig::summary_card`).
//!
//! The text is drawn with Noto Sans Mono, pre-rasterised with anti-aliasing by the
//! `noto-sans-mono-bitmap` crate (no font files or rendering libraries to install on a
//! PACS-side node, and the same pixels on every machine): the heading in bold, the table in
//! regular weight, mixed case, one monospaced column grid.

use super::codes;
use super::header::{base_header, put_pixels_8bit, secondary_capture_image, to_part10};
use super::{Context, ReportError, CARD_SERIES_NUMBER, SECONDARY_CAPTURE};

pub const CARD_SERIES_DESCRIPTION: &str = "Prima AI summary — NOT FOR DIAGNOSIS";

use noto_sans_mono_bitmap::{get_raster, get_raster_width, FontWeight, RasterHeight};

const HEAD: (FontWeight, RasterHeight) = (FontWeight::Bold, RasterHeight::Size24);
const BODY: (FontWeight, RasterHeight) = (FontWeight::Regular, RasterHeight::Size20);
/// Space between lines, below each glyph box.
const LEADING: usize = 6;
const MARGIN: usize = 24;
const WIDTH: usize = 1024;
const CHARS_PER_LINE: usize = (WIDTH - 2 * MARGIN) / get_raster_width(BODY.0, BODY.1);
// The table's columns (name + 30) need room for the findings' names.
const _: () = assert!(CHARS_PER_LINE >= 80);

/// The style of line `i`: the first (the warning) is the heading.
fn style(i: usize) -> (FontWeight, RasterHeight) {
    if i == 0 {
        HEAD
    } else {
        BODY
    }
}

/// The glyph drawn for `c`: its own, a plain-ASCII stand-in for typographic dashes, or '?'.
pub(super) fn glyph(
    c: char,
    (w, h): (FontWeight, RasterHeight),
) -> Option<noto_sans_mono_bitmap::RasterizedChar> {
    let c = match c {
        '—' | '–' => '-',
        c => c,
    };
    get_raster(c, w, h).or_else(|| get_raster('?', w, h))
}

/// The text lines of the card.
pub(crate) fn lines(ctx: &Context) -> Vec<String> {
    let input = ctx.input;
    let mut v = vec!["Not for diagnosis - AI-generated, not verified by a physician".to_string()];
    if input.model.demo {
        v.push("DEMO MODEL - NOT FOR CLINICAL USE".to_string());
    }
    v.push(format!(
        "Model: {} {}    Priority: {}",
        input.model.name,
        input.model.version,
        ctx.summary
            .priority
            .as_deref()
            .unwrap_or("n/a")
            .to_ascii_uppercase()
    ));
    if input.failed {
        v.push("The model could not process this study.".to_string());
    }
    if !ctx.summary.referrals.is_empty() {
        let refs: Vec<String> = ctx
            .summary
            .referrals
            .iter()
            .map(|(l, _)| codes::humanize_label(l).1)
            .collect();
        v.push(format!("Refer: {}", refs.join(", ")));
    }
    if ctx.partial {
        v.push("Partial study: not all series were analysed.".to_string());
    }
    v.push(String::new());
    let name_w = CHARS_PER_LINE - 30;
    v.push(format!(
        "{:<name_w$} {:>9} {:>9}  {}",
        "Finding", "Margin", "Threshold", "Result"
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
    v.push("Margin = model score minus threshold; not a probability.".to_string());
    v
}

/// 8-bit MONOCHROME2 raster of `lines`, white anti-aliased text on black.
pub(crate) fn render(lines: &[String]) -> (usize, usize, Vec<u8>) {
    let line_h = |i: usize| style(i).1.val() + LEADING;
    let text_h: usize = (0..lines.len()).map(line_h).sum();
    let height = (2 * MARGIN + text_h).max(128).next_multiple_of(2);
    let mut px = vec![0u8; WIDTH * height];
    let mut y0 = MARGIN;
    for (li, line) in lines.iter().enumerate() {
        let st = style(li);
        let advance = get_raster_width(st.0, st.1);
        for (ci, c) in line.chars().enumerate() {
            let x0 = MARGIN + ci * advance;
            if x0 + advance > WIDTH - MARGIN {
                break;
            }
            let Some(g) = glyph(c, st) else { continue };
            for (ry, row) in g.rows().enumerate() {
                let at = (y0 + ry) * WIDTH + x0;
                for (rx, v) in row.iter().enumerate() {
                    px[at + rx] = px[at + rx].max(*v);
                }
            }
        }
        y0 += line_h(li);
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
    secondary_capture_image(&mut o);
    let (w, h, px) = render(&lines(ctx));
    put_pixels_8bit(&mut o, (w, h), false, px);
    to_part10(o, SECONDARY_CAPTURE, &ctx.card_uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_font_covers_what_the_card_writes() {
        let text = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-:+()/_,=?%; ";
        for st in [HEAD, BODY] {
            for c in text.chars() {
                assert!(get_raster(c, st.0, st.1).is_some(), "{c}");
            }
            // A typographic dash and anything else outside the font are still drawn.
            assert!(glyph('—', st).is_some() && glyph('字', st).is_some());
        }
    }

    #[test]
    fn render_draws_anti_aliased_pixels_within_the_image() {
        let (w, h, px) = render(&["Heading".to_string(), "body text 0.123".to_string()]);
        assert_eq!(px.len(), w * h);
        assert!(px.iter().filter(|p| **p == 255).count() > 20);
        assert!(
            px.iter().any(|p| (1..255).contains(p)),
            "no intermediate grey levels"
        );
        // A line longer than the image is cut at the margin, not wrapped or overflowed.
        let (_, _, long) = render(&["x".repeat(500)]);
        let row = |y: usize| &long[y * WIDTH..(y + 1) * WIDTH];
        assert!((0..long.len() / WIDTH).all(|y| row(y)[WIDTH - MARGIN..].iter().all(|p| *p == 0)));
    }
}
