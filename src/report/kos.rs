//! The worklist-priority Key Object Selection document (TID 2010, title "Of Interest").

use dicom_core::VR;
use dicom_dictionary_std::tags;

use super::codes;
use super::header::{base_header, observer_context, put_referenced_requests, to_part10};
use super::items::{
    code_item, hierarchical_refs, language_item, put_seq, put_str, reference_item, template_item,
    text_item, Rel,
};
use super::library::in_slice_order;
use super::{
    Context, ReportError, SourceInstance, UsedSeries, COMPREHENSIVE_3D_SR, KEY_OBJECT_SELECTION,
    KOS_SERIES_NUMBER,
};

/// How many representative slices the KOS references at most.
const MAX_KEY_IMAGES: usize = 3;
/// Findings named in the one-line description before "+N more".
const MAX_NAMED_FINDINGS: usize = 3;

pub(crate) fn build(ctx: &Context) -> Result<Vec<u8>, ReportError> {
    let priority = ctx
        .summary
        .priority
        .as_deref()
        .ok_or_else(|| ReportError::InvalidInput("KOS needs a priority".into()))?;
    let level = priority.to_ascii_uppercase();
    // Each run has its own series; the worklist tells the amended one by its description.
    let series_description = if earlier(ctx).is_empty() {
        format!("AI PRIORITY {level}")
    } else {
        format!("AI PRIORITY {level} (AMENDED)")
    };
    let mut o = base_header(
        ctx,
        KEY_OBJECT_SELECTION,
        &ctx.kos_uid,
        "KO",
        &ctx.kos_series_uid,
        KOS_SERIES_NUMBER,
        &series_description,
    );

    // Explained: the images behind the top finding's top tokens, most important first;
    // else a few representative slices.
    let key: Option<(String, Vec<(String, String)>)> = match ctx.input.evidence.first() {
        Some(ev) if !ev.key_images.is_empty() => {
            Some((ev.series_instance_uid.clone(), ev.key_images.clone()))
        }
        _ => representative_slices(ctx.input.used).map(|(series, slices)| {
            (
                series.series_instance_uid.clone(),
                slices
                    .iter()
                    .map(|i| (i.sop_class_uid.clone(), i.sop_instance_uid.clone()))
                    .collect(),
            )
        }),
    };
    put_referenced_requests(ctx, &mut o);

    // Every object the content tree references must be in the evidence (PS3.3 C.17.6.2.1).
    let mut evidence: Vec<(String, Vec<(String, String)>)> = Vec::new();
    if let Some(k) = &key {
        evidence.push(k.clone());
    }
    evidence.push((
        ctx.sr_series_uid.clone(),
        vec![(COMPREHENSIVE_3D_SR.to_string(), ctx.sr_uid.clone())],
    ));
    put_seq(
        &mut o,
        tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE,
        vec![hierarchical_refs(&ctx.study_uid, &evidence)],
    );

    put_str(&mut o, tags::VALUE_TYPE, VR::CS, "CONTAINER");
    put_seq(
        &mut o,
        tags::CONCEPT_NAME_CODE_SEQUENCE,
        vec![code_item(&codes::of_interest())],
    );
    put_str(&mut o, tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE");
    put_seq(
        &mut o,
        tags::CONTENT_TEMPLATE_SEQUENCE,
        vec![template_item("2010")],
    );

    let mut items = vec![language_item()];
    items.extend(observer_context(ctx));
    items.push(text_item(
        Rel::Contains,
        &codes::key_object_description(),
        &description(ctx, &level),
    ));
    if let Some((_, images)) = &key {
        for (class, uid) in images {
            items.push(reference_item("IMAGE", class, uid));
        }
    }
    items.push(reference_item(
        "COMPOSITE",
        COMPREHENSIVE_3D_SR,
        &ctx.sr_uid,
    ));
    put_seq(&mut o, tags::CONTENT_SEQUENCE, items);

    to_part10(o, KEY_OBJECT_SELECTION, &ctx.kos_uid)
}

/// The priority KOS of earlier runs of the study that this one replaces, sorted. The KOS
/// IOD has no Predecessor Documents Sequence, so the description names them.
pub(crate) fn earlier<'a>(ctx: &'a Context) -> Vec<&'a str> {
    let mut uids: Vec<&str> = ctx
        .input
        .predecessors
        .iter()
        .filter(|p| p.sop_class_uid == KEY_OBJECT_SELECTION && p.sop_instance_uid != ctx.kos_uid)
        .map(|p| p.sop_instance_uid.as_str())
        .collect();
    uids.sort_unstable();
    uids.dedup();
    uids
}

/// Up to three slices around the middle of the series with the most tokens used (the first
/// such series on a tie): the model gives no per-series attribution to do better.
pub(crate) fn representative_slices(
    used: &[UsedSeries],
) -> Option<(&UsedSeries, Vec<&SourceInstance>)> {
    let mut best: Option<&UsedSeries> = None;
    for s in used.iter().filter(|s| !s.instances.is_empty()) {
        if best.is_none_or(|b| s.tokens_used > b.tokens_used) {
            best = Some(s);
        }
    }
    let series = best?;
    let slices = in_slice_order(series);
    let n = slices.len();
    let start = (n / 2).saturating_sub(1);
    let end = (start + MAX_KEY_IMAGES).min(n);
    Some((series, slices[start..end].to_vec()))
}

/// The one line a radiologist reads in a second.
pub(crate) fn description(ctx: &Context, level: &str) -> String {
    let input = ctx.input;
    let mut present: Vec<_> = ctx.summary.findings.iter().filter(|f| f.present).collect();
    present.sort_by(|a, b| b.margin.total_cmp(&a.margin).then(a.label.cmp(&b.label)));
    let mut findings: Vec<String> = present
        .iter()
        .take(MAX_NAMED_FINDINGS)
        .map(|f| codes::humanize_label(&f.label).1)
        .collect();
    if present.len() > MAX_NAMED_FINDINGS {
        findings.push(format!("+{} more", present.len() - MAX_NAMED_FINDINGS));
    }
    let findings = if findings.is_empty() {
        "no finding above threshold".to_string()
    } else {
        findings.join(", ")
    };
    let mut line = String::new();
    if input.model.demo {
        line.push_str("DEMO MODEL, NOT FOR CLINICAL USE — ");
    }
    line.push_str(&format!("AI triage priority {level} — {findings}"));
    if !ctx.summary.referrals.is_empty() {
        let refs: Vec<String> = ctx
            .summary
            .referrals
            .iter()
            .map(|(l, _)| codes::humanize_label(l).1)
            .collect();
        line.push_str(&format!("; refer: {}", refs.join(", ")));
    }
    if let Some(ev) = input.evidence.first().filter(|e| !e.key_images.is_empty()) {
        line.push_str(&format!(
            "; key images: where the model looked for {}",
            codes::humanize_label(&ev.label).1
        ));
    }
    if ctx.partial {
        line.push_str(" (partial study)");
    }
    line.push_str(&format!(
        " — {} {}, not a diagnosis",
        input.model.name, input.model.version
    ));
    let replaced = earlier(ctx);
    if !replaced.is_empty() {
        line.push_str(&format!(
            " — CURRENT: replaces the earlier AI priority (KOS {})",
            replaced.join(", ")
        ));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(uid: &str, pos: Option<f64>) -> SourceInstance {
        SourceInstance {
            sop_class_uid: dicom_dictionary_std::uids::MR_IMAGE_STORAGE.into(),
            sop_instance_uid: uid.into(),
            instance_number: None,
            position_along_normal: pos,
        }
    }

    fn series(uid: &str, n: usize, tokens: usize) -> UsedSeries {
        UsedSeries {
            series_instance_uid: uid.into(),
            series_name: uid.into(),
            modality: None,
            frame_of_reference_uid: None,
            image_size: None,
            instances: (0..n)
                .map(|i| inst(&format!("{uid}.{i}"), Some(-(i as f64))))
                .collect(),
            tokens_used: tokens,
        }
    }

    #[test]
    fn picks_middle_of_series_with_most_tokens() {
        let used = vec![series("1", 10, 5), series("2", 7, 9), series("3", 30, 9)];
        let (s, slices) = representative_slices(&used).unwrap();
        assert_eq!(s.series_instance_uid, "2");
        // positions are descending in the given order, so sorting reverses it
        let uids: Vec<_> = slices.iter().map(|i| i.sop_instance_uid.as_str()).collect();
        assert_eq!(uids, ["2.4", "2.3", "2.2"]);
    }

    #[test]
    fn tiny_series() {
        let used = vec![series("1", 1, 1)];
        assert_eq!(representative_slices(&used).unwrap().1.len(), 1);
        let used = vec![series("1", 2, 1)];
        assert_eq!(representative_slices(&used).unwrap().1.len(), 2);
        assert!(representative_slices(&[]).is_none());
    }
}
