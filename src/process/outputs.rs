//! One analysis → the result objects (SR, KOS, card): what the report builder needs,
//! gathered from the prepared series, the model's output and its manifest.

use crate::job::{OutputObject, PredecessorRef};
use crate::model::Manifest;
use crate::report::{
    build_outputs, keyimages, FindingEvidence, KeyImagePixels, KeyRegion, ModelIdentity,
    NodeIdentity, Predictions, ReportConfig, ReportError, ReportInput, SkippedSeries,
    SourceInstance, UsedSeries,
};

use super::run::Analysis;

/// What the report builder needs from one inference run.
pub struct ReportArgs<'a> {
    pub analysis: &'a Analysis,
    pub manifest: &'a Manifest,
    pub header: &'a dicom_object::InMemDicomObject,
    pub input_set_hash: [u8; 32],
    pub predecessors: &'a [PredecessorRef],
    pub forced_complete: bool,
    pub node: &'a NodeIdentity,
    pub config: &'a ReportConfig,
}

/// The value every slice of a series gives, or `None` when one lacks it or they differ: a
/// descriptor written once for the whole series must hold for each of its images.
fn shared<T: PartialEq>(
    slices: &[crate::imaging::header::SliceMeta],
    get: impl Fn(&crate::imaging::header::SliceMeta) -> Option<T>,
) -> Option<T> {
    let mut it = slices.iter().map(get);
    let first = it.next()??;
    it.all(|v| v.as_ref() == Some(&first)).then_some(first)
}

/// SR + KOS (+ card) for one run; shared by the node and `prima-node infer --dicom`.
pub fn build_reports(a: &ReportArgs) -> Result<Vec<OutputObject>, ReportError> {
    let output = &a.analysis.run.output;
    let used: Vec<UsedSeries> = a
        .analysis
        .input
        .prepared
        .iter()
        .map(|p| UsedSeries {
            series_instance_uid: p.series_instance_uid.clone(),
            series_name: p.name.clone(),
            modality: shared(&p.slices, |s| s.modality.clone()),
            frame_of_reference_uid: shared(&p.slices, |s| s.frame_of_reference_uid.clone()),
            image_size: shared(&p.slices, |s| Some((s.rows, s.cols))),
            instances: p
                .slices
                .iter()
                .map(|s| SourceInstance {
                    sop_class_uid: s.sop_class_uid.clone(),
                    sop_instance_uid: s.sop_instance_uid.clone(),
                    instance_number: s.instance_number.map(|n| n as i32),
                    position_along_normal: s.position_along_normal(),
                })
                .collect(),
            tokens_used: p.selection.ids.len(),
        })
        .collect();
    let skipped: Vec<SkippedSeries> = a
        .analysis
        .input
        .skipped
        .iter()
        .map(|s| SkippedSeries {
            series_instance_uid: s
                .series_instance_uid
                .clone()
                .unwrap_or_else(|| s.key.clone()),
            reason: s.reason.clone(),
        })
        .collect();
    let predictions = Predictions {
        diagnosis: output.diagnosis.clone(),
        referral: output.referral.clone(),
        priority: output.priority.clone(),
        clip_emb: output.clip_emb.clone(),
    };
    let m = a.manifest;
    let model = ModelIdentity {
        name: m.model_name.clone(),
        version: m.model_version.clone(),
        demo: m.demo,
        diagnosis_thresholds: m
            .diagnosis_heads
            .iter()
            .map(|h| (h.name.clone(), h.thresh as f32))
            .collect(),
        referral_thresholds: m
            .referral_heads
            .iter()
            .map(|h| (h.name.clone(), h.thresh as f32))
            .collect(),
    };
    let evidence = finding_evidence(a.analysis);
    let key_images = if a.config.key_images {
        key_image_pixels(a.analysis, &evidence)
    } else {
        Vec::new()
    };
    let input = ReportInput {
        source_header: a.header,
        used: &used,
        skipped: &skipped,
        predictions: &predictions,
        model: &model,
        input_set_hash: a.input_set_hash,
        predecessors: a.predecessors,
        evidence: &evidence,
        key_images: &key_images,
        forced_complete: a.forced_complete,
        failed: false,
        node: a.node,
        content_datetime: dicom_now(),
    };
    build_outputs(&input, a.config)
}

/// The explained findings as the report builder takes them: per finding the images its top
/// tokens cover (token by token, most important first; within a token the image its
/// region is drawn on first, then the rest in stacking order) and one region per token.
fn finding_evidence(analysis: &Analysis) -> Vec<FindingEvidence> {
    let Some(Ok(explained)) = &analysis.explanation else {
        return Vec::new();
    };
    explained
        .iter()
        .filter_map(|e| {
            let p = analysis.input.prepared.get(e.series)?;
            let class_of = |uid: &str| {
                p.slices
                    .iter()
                    .find(|s| s.sop_instance_uid == uid)
                    .map(|s| s.sop_class_uid.clone())
            };
            let mut key_images: Vec<(String, String)> = Vec::new();
            let mut regions = Vec::new();
            for t in &e.tokens {
                let Some(place) = &t.place else { continue };
                let near = &place.image_sop_instance_uid;
                for uid in std::iter::once(near).chain(place.instances.iter()) {
                    if key_images.iter().any(|(_, u)| u == uid) {
                        continue;
                    }
                    if let Some(class) = class_of(uid) {
                        key_images.push((class, uid.clone()));
                    }
                }
                regions.push(KeyRegion {
                    sop_class_uid: place.image_sop_class_uid.clone(),
                    sop_instance_uid: near.clone(),
                    frame: place.image_frame,
                    rect: place.footprint.rect,
                    coefficient: t.coefficient,
                });
            }
            Some(FindingEvidence {
                label: e.finding.clone(),
                series_instance_uid: e.series_instance_uid.clone(),
                key_images,
                method: format!(
                    "Regions for {}: the {} of {} volume tokens of series {} whose presence \
                     moved the finding's logit most, by LIME ({} samples, seed {}, ridge R² {:.3}).",
                    crate::report::codes::humanize_label(&e.finding).1,
                    regions.len(),
                    e.n_tokens,
                    e.series_name,
                    e.samples,
                    e.seed,
                    e.r2
                ),
                regions,
            })
        })
        .collect()
}

/// The source images the regions lie on, read again from their files and windowed: the
/// prepared volume is resampled and cropped, the key images show the image as acquired. An
/// image that cannot be read is left out with a warning (the SR still names it).
fn key_image_pixels(analysis: &Analysis, evidence: &[FindingEvidence]) -> Vec<KeyImagePixels> {
    let mut out: Vec<KeyImagePixels> = Vec::new();
    for (ev, r) in evidence
        .iter()
        .flat_map(|e| e.regions.iter().map(move |r| (e, r)))
    {
        if out.len() >= keyimages::MAX_KEY_IMAGES
            || out
                .iter()
                .any(|i| i.sop_instance_uid == r.sop_instance_uid && i.frame == r.frame)
        {
            continue;
        }
        let found = analysis.input.prepared.iter().find_map(|p| {
            let s = p
                .slices
                .iter()
                .find(|s| s.sop_instance_uid == r.sop_instance_uid && number(s.frame) == r.frame)?;
            Some((p, s))
        });
        let Some((p, s)) = found else { continue };
        if s.samples_per_pixel != 1 {
            continue;
        }
        match crate::imaging::frames::read_plane(s) {
            Ok(values) => out.push(KeyImagePixels {
                sop_class_uid: s.sop_class_uid.clone(),
                sop_instance_uid: s.sop_instance_uid.clone(),
                frame: r.frame,
                series_name: p.name.clone(),
                instance_number: s.instance_number.map(|n| n as i32),
                rows: s.rows as usize,
                cols: s.cols as usize,
                pixels: keyimages::window(&values, s.photometric.trim() == "MONOCHROME1"),
            }),
            Err(e) => tracing::warn!(
                finding = %ev.label,
                error = %e,
                "a key image's source could not be read again: left out of the key-image series"
            ),
        }
    }
    out
}

/// A slice's frame (0-based, as decoded) as the frame number regions and references use.
fn number(frame: Option<u32>) -> Option<u32> {
    frame.map(|f| f + 1)
}

/// SHA-256 over the sorted (SOP Instance UID, file SHA-256) pairs of a folder's files
/// (`infer --dicom`). The node builds its input hash from what it received instead
/// (`study::assembler::input_set_hash`: the data sets' content hashes), so the two need not
/// give the same output UIDs for the same study.
pub fn input_set_hash(files: &[(String, std::path::PathBuf)]) -> std::io::Result<[u8; 32]> {
    use sha2::Digest;
    let mut pairs = Vec::with_capacity(files.len());
    for (uid, path) in files {
        let digest = sha2::Sha256::digest(std::fs::read(path)?);
        pairs.push((uid.clone(), digest));
    }
    pairs.sort();
    let mut h = sha2::Sha256::new();
    for (uid, d) in pairs {
        h.update(uid.as_bytes());
        h.update([0u8]);
        h.update(d);
    }
    Ok(h.finalize().into())
}

/// The node's identity in reports: AE title, a serial derived from where its state lives
/// (stable across restarts, distinct between nodes on one host), and the software version.
pub fn node_identity(ae_title: &str, instance: &str) -> NodeIdentity {
    use sha2::Digest;
    let serial = hex::encode(&sha2::Sha256::digest(instance.as_bytes())[..6]);
    node_identity_with_serial(ae_title, &serial)
}

/// The node's identity with a given serial number (`[node] serial_number`).
pub fn node_identity_with_serial(ae_title: &str, serial: &str) -> NodeIdentity {
    NodeIdentity::new(
        ae_title,
        serial,
        concat!("prima-node ", env!("CARGO_PKG_VERSION")),
    )
}

/// Current UTC date and time as DICOM DA/TM strings.
pub fn dicom_now() -> (String, String) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // civil-from-days (Howard Hinnant)
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    (
        format!("{y:04}{m:02}{d:02}"),
        format!("{:02}{:02}{:02}", rem / 3600, (rem / 60) % 60, rem % 60),
    )
}
