//! Key images for any viewer: each source image an explained finding's regions lie on, as a
//! derived Secondary Capture with the regions outlined and a legend burned in.
//!
//! Secondary Capture rather than a Grayscale Softcopy Presentation State: OHIF 3.13 lists a
//! GSPS as a series it cannot display and many PACS viewers ignore one, while every viewer
//! shows an SC image. The cost is a copy of the pixels (windowed to 8 bits, so not for
//! diagnosis) — the SR keeps the exact regions on the original images for viewers that draw
//! them. The seed's own figures (the top tokens outlined on the slices, ranked) are the model.

use dicom_core::VR;
use dicom_dictionary_std::tags;
use noto_sans_mono_bitmap::{get_raster_width, FontWeight, RasterHeight};

use super::card::glyph;
use super::codes::{self, Code};
use super::header::{base_header, put_pixels_8bit, secondary_capture_image, to_part10};
use super::items::{code_item, put_seq, put_str};
use super::sr::importance_percent;
use super::{Context, FindingEvidence, ReportError, SECONDARY_CAPTURE};

pub const KEY_IMAGES_SERIES_NUMBER: i32 = 9004;
pub const KEY_IMAGES_SERIES_DESCRIPTION: &str = "Prima AI key images — NOT FOR DIAGNOSIS";
/// At most this many key images per run: with the default settings (one finding, three
/// regions) there are one to three.
pub const MAX_KEY_IMAGES: usize = 12;

const HEAD: (FontWeight, RasterHeight) = (FontWeight::Bold, RasterHeight::Size20);
const BODY: (FontWeight, RasterHeight) = (FontWeight::Regular, RasterHeight::Size16);
const LEADING: usize = 4;
const MARGIN: usize = 12;
/// Images are enlarged (whole pixels, no interpolation) to at least this width so that the
/// outlines and the legend are readable beside a 256-pixel MR slice.
const MIN_WIDTH: usize = 512;
const LINE: usize = 2;
/// One colour per region rank (1 = most important), as in the seed's figures: red, yellow,
/// cyan, magenta, green, orange; then again.
const COLOURS: [[u8; 3]; 6] = [
    [255, 48, 48],
    [255, 220, 0],
    [0, 220, 255],
    [255, 64, 255],
    [64, 255, 64],
    [255, 150, 0],
];

/// Stored values → 8-bit grey for display: the 0.5th to 99.5th percentile of the image's
/// values spread over 0–255 (an MR image has no fixed window; the extremes are often a few
/// hot pixels). MONOCHROME1 is inverted so that the result is MONOCHROME2.
pub fn window(values: &[f64], monochrome1: bool) -> Vec<u8> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return vec![0; values.len()];
    }
    sorted.sort_by(f64::total_cmp);
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    let (lo, hi) = (at(0.005), at(0.995));
    let span = if hi > lo { hi - lo } else { 1.0 };
    values
        .iter()
        .map(|v| {
            let g = if v.is_finite() {
                ((v - lo) / span * 255.0).clamp(0.0, 255.0).round() as u8
            } else {
                0
            };
            if monochrome1 {
                255 - g
            } else {
                g
            }
        })
        .collect()
}

/// A source image under an explained finding's regions, windowed for display: the caller
/// reads the pixels (the report builder opens no files), [`build`] draws on them.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyImagePixels {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    /// Frame number (1-based) within a multi-frame instance, as [`super::KeyRegion::frame`].
    pub frame: Option<u32>,
    pub series_name: String,
    pub instance_number: Option<i32>,
    pub rows: usize,
    pub cols: usize,
    /// 8-bit grey (MONOCHROME2), row by row: [`window`] of the stored values.
    pub pixels: Vec<u8>,
}

/// One region drawn on a key image.
#[derive(Debug, Clone, PartialEq)]
struct Mark {
    /// [left, top, right, bottom] in source image coordinates.
    rect: [f64; 4],
    colour: [u8; 3],
    /// Drawn at the region's corner: the region's rank, prefixed by the finding's number
    /// when several findings are explained.
    tag: String,
    legend: String,
}

/// The regions of every explained finding that lie on `img`, most important first.
fn marks(ctx: &Context, img: &KeyImagePixels) -> Vec<Mark> {
    let evidence = ctx.input.evidence;
    let several = evidence.len() > 1;
    let mut out = Vec::new();
    for (fi, ev) in evidence.iter().enumerate() {
        let Some(f) = ctx.summary.findings.iter().find(|f| f.label == ev.label) else {
            continue;
        };
        let name = codes::humanize_label(&ev.label).0;
        let verdict = if f.present { "Present" } else { "Absent" };
        let coefficients: Vec<f64> = ev.regions.iter().map(|r| r.coefficient).collect();
        let n = ev.regions.len();
        for (k, (r, pct)) in ev
            .regions
            .iter()
            .zip(importance_percent(&coefficients))
            .enumerate()
        {
            if r.sop_instance_uid != img.sop_instance_uid || r.frame != img.frame {
                continue;
            }
            let tag = if several {
                format!("{}.{}", fi + 1, k + 1)
            } else {
                format!("{}", k + 1)
            };
            out.push(Mark {
                rect: r.rect,
                colour: COLOURS[k % COLOURS.len()],
                legend: format!(
                    "{tag}  {name}: {verdict} (margin {:+.2}), region {}/{n}, importance {pct:.0}%",
                    f.margin,
                    k + 1
                ),
                tag,
            });
        }
    }
    out
}

/// The source images to draw: those the regions lie on, in the order the regions come
/// (finding by finding, most important first), at most [`MAX_KEY_IMAGES`].
pub(crate) fn chosen<'a>(ctx: &Context<'a>) -> Vec<&'a KeyImagePixels> {
    let mut out: Vec<&KeyImagePixels> = Vec::new();
    for r in ctx.input.evidence.iter().flat_map(|e| &e.regions) {
        let found = ctx
            .input
            .key_images
            .iter()
            .find(|i| i.sop_instance_uid == r.sop_instance_uid && i.frame == r.frame);
        if let Some(i) = found {
            if !out.iter().any(|o| std::ptr::eq(*o, i)) && out.len() < MAX_KEY_IMAGES {
                out.push(i);
            }
        }
    }
    out
}

/// An RGB canvas, row by row.
struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn set(&mut self, x: usize, y: usize, c: [u8; 3]) {
        if x < self.w && y < self.h {
            let i = (y * self.w + x) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }

    fn fill(&mut self, x0: usize, y0: usize, x1: usize, y1: usize, c: [u8; 3]) {
        for y in y0..y1.min(self.h) {
            for x in x0..x1.min(self.w) {
                self.set(x, y, c);
            }
        }
    }

    /// Text in `c` over what is there (anti-aliased: blended by the glyph's coverage);
    /// cut at the right margin. Returns the x after the last glyph.
    fn text(
        &mut self,
        x0: usize,
        y0: usize,
        s: &str,
        st: (FontWeight, RasterHeight),
        c: [u8; 3],
    ) -> usize {
        let advance = get_raster_width(st.0, st.1);
        let mut x = x0;
        for ch in s.chars() {
            if x + advance > self.w.saturating_sub(MARGIN / 2) {
                break;
            }
            if let Some(g) = glyph(ch, st) {
                for (ry, row) in g.rows().enumerate() {
                    for (rx, a) in row.iter().enumerate() {
                        let (px, py) = (x + rx, y0 + ry);
                        if *a == 0 || px >= self.w || py >= self.h {
                            continue;
                        }
                        let i = (py * self.w + px) * 3;
                        let a = *a as u32;
                        for (under, want) in self.px[i..i + 3].iter_mut().zip(c) {
                            *under = ((want as u32 * a + *under as u32 * (255 - a)) / 255) as u8;
                        }
                    }
                }
            }
            x += advance;
        }
        x
    }
}

/// The key image: the source enlarged by a whole factor, the regions outlined with their
/// tags, and a legend band below (heading, the image, one line per region).
fn render(img: &KeyImagePixels, marks: &[Mark], heading: &[String]) -> (usize, usize, Vec<u8>) {
    let scale = MIN_WIDTH.div_ceil(img.cols.max(1)).max(1);
    let (iw, ih) = (img.cols * scale, img.rows * scale);
    let w = iw.max(MIN_WIDTH);
    let line_h = |st: (FontWeight, RasterHeight)| st.1.val() + LEADING;
    let square = BODY.1.val() - 4;
    let text_x = MARGIN + square + 6;
    let chars = (w - text_x - MARGIN / 2) / get_raster_width(BODY.0, BODY.1);
    let legends: Vec<Vec<String>> = marks.iter().map(|m| wrap(&m.legend, chars)).collect();
    let legend_lines: usize = legends.iter().map(Vec::len).sum();
    let legend_h = 2 * MARGIN + heading.len() * line_h(HEAD) + legend_lines * line_h(BODY);
    let h = (ih + legend_h).next_multiple_of(2);
    let mut c = Canvas {
        w,
        h,
        px: vec![0; w * h * 3],
    };
    let x_off = (w - iw) / 2;
    for y in 0..ih {
        for x in 0..iw {
            let g = img.pixels[(y / scale) * img.cols + x / scale];
            c.set(x_off + x, y, [g, g, g]);
        }
    }
    for m in marks {
        let to = |v: f64, max: usize| ((v.max(0.0) * scale as f64).round() as usize).min(max);
        let (l, t) = (x_off + to(m.rect[0], iw), to(m.rect[1], ih));
        let (r, b) = (x_off + to(m.rect[2], iw), to(m.rect[3], ih));
        let (r, b) = (r.max(l + 1), b.max(t + 1));
        // The outline drawn outside the region, so the region's own pixels stay visible.
        let (ol, ot) = (l.saturating_sub(LINE), t.saturating_sub(LINE));
        c.fill(ol, ot, r + LINE, t, m.colour);
        c.fill(ol, b, r + LINE, b + LINE, m.colour);
        c.fill(ol, ot, l, b + LINE, m.colour);
        c.fill(r, ot, r + LINE, b + LINE, m.colour);
        // The tag on a filled patch above the region (inside it when at the top edge).
        let adv = get_raster_width(BODY.0, BODY.1);
        let (tw, th) = (m.tag.chars().count() * adv + 4, BODY.1.val());
        let ty = if ot >= th { ot - th } else { b + LINE };
        c.fill(ol, ty, ol + tw, ty + th, m.colour);
        c.text(ol + 2, ty, &m.tag, BODY, [0, 0, 0]);
    }
    let mut y = ih + MARGIN;
    for line in heading {
        c.text(MARGIN, y, line, HEAD, [255, 255, 255]);
        y += line_h(HEAD);
    }
    for (m, lines) in marks.iter().zip(&legends) {
        c.fill(MARGIN, y + 2, MARGIN + square, y + 2 + square, m.colour);
        for line in lines {
            c.text(text_x, y, line, BODY, [255, 255, 255]);
            y += line_h(BODY);
        }
    }
    (w, h, c.px)
}

/// `text` in lines of at most `width` characters, broken at spaces (a word longer than a
/// line is cut); continuation lines are indented by two spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(8);
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for (i, word) in text.split(' ').enumerate() {
        if i > 0 && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::replace(&mut line, "  ".to_string()));
        } else if i > 0 {
            line.push(' ');
        }
        line.push_str(word);
    }
    lines.push(line);
    lines
        .into_iter()
        .map(|l| l.chars().take(width).collect())
        .collect()
}

fn heading(ctx: &Context, img: &KeyImagePixels) -> Vec<String> {
    let mut v = vec!["Prima AI key image - NOT FOR DIAGNOSIS".to_string()];
    if ctx.input.model.demo {
        v.push("DEMO MODEL - NOT FOR CLINICAL USE".to_string());
    }
    v.push(match img.instance_number {
        Some(n) => format!("{}, image {n}", img.series_name),
        None => img.series_name.clone(),
    });
    v
}

/// The Secondary Capture of key image number `n` (1-based).
pub(crate) fn build(
    ctx: &Context,
    img: &KeyImagePixels,
    n: usize,
    sop_uid: &str,
) -> Result<Vec<u8>, ReportError> {
    if img.pixels.len() != img.rows * img.cols || img.rows == 0 {
        return Err(ReportError::InvalidInput(format!(
            "key image {}: {} pixels for {} x {}",
            img.sop_instance_uid,
            img.pixels.len(),
            img.cols,
            img.rows
        )));
    }
    let marks = marks(ctx, img);
    let mut o = base_header(
        ctx,
        SECONDARY_CAPTURE,
        sop_uid,
        "OT",
        &ctx.key_images_series_uid,
        KEY_IMAGES_SERIES_NUMBER,
        KEY_IMAGES_SERIES_DESCRIPTION,
    );
    secondary_capture_image(&mut o);
    put_str(&mut o, tags::INSTANCE_NUMBER, VR::IS, &n.to_string());
    // General Image: derived from the source image, whose reference says which one.
    put_str(
        &mut o,
        tags::DERIVATION_DESCRIPTION,
        VR::ST,
        "Source image windowed to 8 bits (0.5-99.5th percentile) and enlarged; the \
         regions of the model's most important volume tokens (LIME) outlined, ranked.",
    );
    let mut source = dicom_object::InMemDicomObject::new_empty();
    put_str(
        &mut source,
        tags::REFERENCED_SOP_CLASS_UID,
        VR::UI,
        &img.sop_class_uid,
    );
    put_str(
        &mut source,
        tags::REFERENCED_SOP_INSTANCE_UID,
        VR::UI,
        &img.sop_instance_uid,
    );
    if let Some(f) = img.frame {
        put_str(
            &mut source,
            tags::REFERENCED_FRAME_NUMBER,
            VR::IS,
            &f.to_string(),
        );
    }
    put_seq(
        &mut source,
        tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
        vec![code_item(&Code::new(
            "121322",
            "DCM",
            "Source image for image processing operation",
        ))],
    );
    put_seq(&mut o, tags::SOURCE_IMAGE_SEQUENCE, vec![source]);
    // Image Pixel: RGB, so the regions keep their colours.
    let (w, h, px) = render(img, &marks, &heading(ctx, img));
    put_pixels_8bit(&mut o, (w, h), true, px);
    to_part10(o, SECONDARY_CAPTURE, sop_uid)
}

/// Whether the run's explanation has regions to draw.
pub(crate) fn any_regions(evidence: &[FindingEvidence]) -> bool {
    evidence.iter().any(|e| !e.regions.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legends_wrap_at_spaces_with_an_indent() {
        assert_eq!(wrap("a bc de", 80), vec!["a bc de"]);
        assert_eq!(
            wrap("1  Tumor: Present (margin +1.00), region 1/3", 20),
            vec!["1  Tumor: Present", "  (margin +1.00),", "  region 1/3"]
        );
        assert_eq!(wrap(&"x".repeat(30), 10), vec!["x".repeat(10)]);
    }

    #[test]
    fn window_spreads_the_bulk_and_clips_hot_pixels() {
        let mut v: Vec<f64> = (0..1000).map(|i| i as f64).collect();
        v[999] = 1e9; // one hot pixel
        let g = window(&v, false);
        assert_eq!(g[0], 0);
        assert_eq!(g[999], 255);
        assert!(g[500] > 100 && g[500] < 160, "{}", g[500]);
        let inverted = window(&v, true);
        assert_eq!(inverted[0], 255);
        // A flat image stays black rather than dividing by zero; NaN is black.
        assert!(window(&[5.0; 10], false).iter().all(|g| *g == 0));
        assert_eq!(window(&[f64::NAN, 1.0, 2.0], false)[0], 0);
    }

    #[test]
    fn render_outlines_each_region_in_its_colour_and_keeps_its_inside() {
        let img = KeyImagePixels {
            sop_class_uid: "1.2".into(),
            sop_instance_uid: "1.2.3".into(),
            frame: None,
            series_name: "t1".into(),
            instance_number: Some(7),
            rows: 64,
            cols: 64,
            pixels: vec![100; 64 * 64],
        };
        let mark = Mark {
            rect: [10.0, 20.0, 30.0, 40.0],
            colour: COLOURS[0],
            tag: "1".into(),
            legend: "1  Tumor: Present".into(),
        };
        let (w, h, px) = render(&img, std::slice::from_ref(&mark), &["head".into()]);
        let scale = MIN_WIDTH / 64;
        assert_eq!(w, 64 * scale);
        assert!(h > 64 * scale, "a legend band below the image");
        let at = |x: usize, y: usize| {
            let i = (y * w + x) * 3;
            [px[i], px[i + 1], px[i + 2]]
        };
        // Just outside the left edge: the outline; inside: the image untouched.
        assert_eq!(at(10 * scale - 1, 30 * scale), COLOURS[0]);
        assert_eq!(at(10 * scale + 3, 30 * scale), [100, 100, 100]);
        assert_eq!(at(30 * scale, 30 * scale), COLOURS[0]);
        assert_eq!(at(20 * scale, 40 * scale), COLOURS[0]);
        // Far from the region: the image.
        assert_eq!(at(50 * scale, 5 * scale), [100, 100, 100]);
        // The legend has white text.
        let legend = &px[(64 * scale * w * 3)..];
        assert!(legend.chunks(3).any(|p| p == [255, 255, 255]));
    }
}
