//! The findings SR: Comprehensive 3D SR with a TID 1500 "Imaging Measurement Report" tree,
//! as IHE AI Results (AIR) expects of an Evidence Creator: the Image Library (TID 1600) lists
//! the source images, every measurement group references the images behind its finding.

use dicom_core::VR;
use dicom_dictionary_std::tags;

use super::codes;
use super::header::{base_header, observer_context, put_referenced_requests, to_part10};
use super::items::{
    code_item, code_value_item, coding_scheme_identification, container_item, format_ds,
    hierarchical_refs, language_item, named_reference_item, num_item, put_seq, put_str,
    region_item, template_item, text_item, uidref_item, Obj, Rel,
};
use super::library;
use super::{
    is_sr_document, uid, Context, Finding, FindingEvidence, ReportError, COMPREHENSIVE_3D_SR,
    DEMO_COMMENT, NOT_VERIFIED_COMMENT, SR_SERIES_DESCRIPTION, SR_SERIES_NUMBER,
};

pub(crate) fn build(ctx: &Context) -> Result<Vec<u8>, ReportError> {
    let input = ctx.input;
    let mut o = base_header(
        ctx,
        COMPREHENSIVE_3D_SR,
        &ctx.sr_uid,
        "SR",
        &ctx.sr_series_uid,
        SR_SERIES_NUMBER,
        SR_SERIES_DESCRIPTION,
    );

    // SR Document General
    put_str(
        &mut o,
        tags::COMPLETION_FLAG,
        VR::CS,
        if ctx.partial { "PARTIAL" } else { "COMPLETE" },
    );
    put_str(&mut o, tags::VERIFICATION_FLAG, VR::CS, "UNVERIFIED");
    put_str(&mut o, tags::PRELIMINARY_FLAG, VR::CS, "PRELIMINARY");
    put_seq(&mut o, tags::PERFORMED_PROCEDURE_CODE_SEQUENCE, vec![]);
    put_referenced_requests(ctx, &mut o);

    let evidence: Vec<(String, Vec<(String, String)>)> = input
        .used
        .iter()
        .map(|s| {
            (
                s.series_instance_uid.clone(),
                s.instances
                    .iter()
                    .map(|i| (i.sop_class_uid.clone(), i.sop_instance_uid.clone()))
                    .collect(),
            )
        })
        .collect();
    if evidence.iter().any(|(_, v)| !v.is_empty()) {
        put_seq(
            &mut o,
            tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE,
            vec![hierarchical_refs(&ctx.study_uid, &evidence)],
        );
    }

    let mut preds: Vec<_> = input
        .predecessors
        .iter()
        .filter(|p| is_sr_document(&p.sop_class_uid) && p.sop_instance_uid != ctx.sr_uid)
        .cloned()
        .collect();
    preds.sort_by(|a, b| {
        (&a.series_instance_uid, &a.sop_instance_uid)
            .cmp(&(&b.series_instance_uid, &b.sop_instance_uid))
    });
    preds.dedup_by(|a, b| a.sop_instance_uid == b.sop_instance_uid);
    if !preds.is_empty() {
        let mut series: Vec<(String, Vec<(String, String)>)> = Vec::new();
        for p in preds {
            let inst = (p.sop_class_uid, p.sop_instance_uid);
            match series.iter_mut().find(|(s, _)| *s == p.series_instance_uid) {
                Some((_, v)) => v.push(inst),
                None => series.push((p.series_instance_uid, vec![inst])),
            }
        }
        put_seq(
            &mut o,
            tags::PREDECESSOR_DOCUMENTS_SEQUENCE,
            vec![hierarchical_refs(&ctx.study_uid, &series)],
        );
    }

    put_seq(
        &mut o,
        tags::CODING_SCHEME_IDENTIFICATION_SEQUENCE,
        vec![coding_scheme_identification()],
    );

    // SR Document Content: the root content item is the dataset itself.
    put_str(&mut o, tags::VALUE_TYPE, VR::CS, "CONTAINER");
    put_seq(
        &mut o,
        tags::CONCEPT_NAME_CODE_SEQUENCE,
        vec![code_item(&report_title(ctx))],
    );
    put_str(&mut o, tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE");
    put_seq(
        &mut o,
        tags::CONTENT_TEMPLATE_SEQUENCE,
        vec![template_item("1500")],
    );
    put_seq(&mut o, tags::CONTENT_SEQUENCE, content(ctx));

    to_part10(o, COMPREHENSIVE_3D_SR, &ctx.sr_uid)
}

/// "Imaging Measurement Report" when the report has regions to draw (an explanation with
/// regions), else "Diagnostic imaging report" (`codes::diagnostic_imaging_report`).
fn report_title(ctx: &Context) -> codes::Code {
    if ctx.input.evidence.iter().any(|e| !e.regions.is_empty()) {
        codes::imaging_measurement_report()
    } else {
        codes::diagnostic_imaging_report()
    }
}

/// Root children in TID 1500 row order.
fn content(ctx: &Context) -> Vec<Obj> {
    let input = ctx.input;
    let mut items = vec![language_item()];
    items.extend(observer_context(ctx));
    items.push(code_value_item(
        Rel::HasConceptMod,
        &codes::procedure_reported(),
        &codes::mri_unspecified_body_region(),
    ));
    items.extend(library::image_library(input.used));

    // OHIF (and any viewer that draws TID 1501 groups) needs one region on one image per
    // group: a group without one crashes OHIF 3.13's SR loader, and a group with several is
    // drawn on the first one's image. So each explained region is its own group; findings
    // without a region are evaluations (below), where no viewer expects a region.
    let groups: Vec<Obj> = input
        .evidence
        .iter()
        .filter_map(|ev| {
            let f = ctx.summary.findings.iter().find(|f| f.label == ev.label)?;
            Some(region_groups(ctx, f, ev))
        })
        .flatten()
        .collect();
    if !groups.is_empty() {
        items.push(container_item(
            Some(Rel::Contains),
            &codes::imaging_measurements(),
            None,
            groups,
        ));
    }

    let mut evals: Vec<Obj> = ctx.summary.findings.iter().map(evaluation).collect();
    if let Some(p) = &ctx.summary.priority {
        evals.push(code_value_item(
            Rel::Contains,
            &codes::priority(),
            &codes::priority_code(p),
        ));
    }
    for (label, _) in &ctx.summary.referrals {
        evals.push(code_value_item(
            Rel::Contains,
            &codes::recommendation(),
            &codes::referral_code(label),
        ));
    }
    let any_succeeded = !input.failed;
    let all_succeeded = any_succeeded && !ctx.partial;
    evals.push(code_value_item(
        Rel::Contains,
        &codes::cad_summary(),
        &codes::cad_summary_value(all_succeeded, any_succeeded, ctx.summary.with_findings),
    ));
    evals.push(text_item(
        Rel::Contains,
        &codes::comment(),
        NOT_VERIFIED_COMMENT,
    ));
    if input.model.demo {
        evals.push(text_item(Rel::Contains, &codes::comment(), DEMO_COMMENT));
    }
    if input.failed {
        evals.push(text_item(
            Rel::Contains,
            &codes::comment(),
            "The model could not process this study; no findings are reported.",
        ));
    }
    for e in input.evidence {
        evals.push(text_item(Rel::Contains, &codes::comment(), &e.method));
    }
    if input.forced_complete {
        evals.push(text_item(
            Rel::Contains,
            &codes::comment(),
            "Study analysed before all expected series had arrived.",
        ));
    }
    for s in input.skipped {
        evals.push(text_item(
            Rel::Contains,
            &codes::comment(),
            &format!(
                "Series {} not analysed: {}",
                s.series_instance_uid, s.reason
            ),
        ));
    }
    items.push(container_item(
        Some(Rel::Contains),
        &codes::qualitative_evaluations(),
        None,
        evals,
    ));
    items
}

/// One diagnosis head as a qualitative evaluation (TID 1500 row 13): the diagnosis =
/// Present | Absent, INFERRED FROM the model's decision margin. The model reads every series
/// and names no image for a finding without an explanation; the Image Library lists them.
fn evaluation(f: &Finding) -> Obj {
    let mut item = code_value_item(
        Rel::Contains,
        &codes::diagnosis_code(&f.label),
        &present_or_absent(f),
    );
    put_seq(
        &mut item,
        tags::CONTENT_SEQUENCE,
        vec![num_item(
            Rel::InferredFrom,
            &codes::decision_margin(),
            f.margin,
            &codes::no_units(),
        )],
    );
    item
}

fn present_or_absent(f: &Finding) -> codes::Code {
    if f.present {
        codes::present()
    } else {
        codes::absent()
    }
}

/// LIME importance of each region as a percentage of the finding's most important one: the
/// raw ridge coefficients are ~1e-5 and read as "0.00" at a viewer's two decimals. The
/// coefficients themselves are in the run record.
pub(crate) fn importance_percent(coefficients: &[f64]) -> Vec<f64> {
    let top = coefficients.iter().fold(0.0f64, |m, c| m.max(c.abs()));
    coefficients
        .iter()
        .map(|c| if top > 0.0 { 100.0 * c / top } else { 0.0 })
        .collect()
}

/// TID 1501 groups of an explained finding, one per region, most important first: each
/// tracked on its own, with the finding, a line a viewer shows as its label (the finding's
/// name, Present/Absent and margin), the one image it lies on as its source, and its LIME
/// importance INFERRED FROM the region.
fn region_groups(ctx: &Context, f: &Finding, ev: &FindingEvidence) -> Vec<Obj> {
    let model = ctx.input.model;
    let dx = codes::diagnosis_code(&f.label);
    let name = codes::humanize_label(&f.label).1;
    let verdict = if f.present { "Present" } else { "Absent" };
    let coefficients: Vec<f64> = ev.regions.iter().map(|r| r.coefficient).collect();
    let n = ev.regions.len();
    ev.regions
        .iter()
        .zip(importance_percent(&coefficients))
        .enumerate()
        .map(|(k, (r, pct))| {
            let id = format!("{} region {}", f.label, k + 1);
            let mut importance = num_item(
                Rel::Contains,
                &codes::lime_importance(),
                pct as f32,
                &codes::percent(),
            );
            put_seq(
                &mut importance,
                tags::CONTENT_SEQUENCE,
                vec![region_item(
                    r.rect,
                    &r.sop_class_uid,
                    &r.sop_instance_uid,
                    r.frame,
                )],
            );
            let children = vec![
                text_item(Rel::HasObsContext, &codes::tracking_identifier(), &id),
                uidref_item(
                    Rel::HasObsContext,
                    &codes::tracking_unique_identifier(),
                    &uid::tracking_uid(&ctx.study_uid, &id),
                ),
                code_value_item(Rel::Contains, &codes::finding(), &dx),
                text_item(
                    Rel::Contains,
                    &codes::comment(),
                    &format!(
                        "{name}: {verdict} (margin {:+.2}), region {}/{n}",
                        f.margin,
                        k + 1
                    ),
                ),
                code_value_item(Rel::HasConceptMod, &codes::finding_site(), &codes::brain()),
                text_item(Rel::HasConceptMod, &codes::algorithm_name(), &model.name),
                text_item(
                    Rel::HasConceptMod,
                    &codes::algorithm_version(),
                    &model.version,
                ),
                text_item(
                    Rel::HasConceptMod,
                    &codes::algorithm_parameters(),
                    &format!("threshold={}", format_ds(f.threshold)),
                ),
                named_reference_item(
                    "IMAGE",
                    Some(&codes::source_of_measurement()),
                    &r.sop_class_uid,
                    &r.sop_instance_uid,
                ),
                importance,
                code_value_item(Rel::Contains, &dx, &present_or_absent(f)),
            ];
            container_item(
                Some(Rel::Contains),
                &codes::measurement_group(),
                Some("1501"),
                children,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn importance_is_a_percentage_of_the_largest_magnitude() {
        assert_eq!(
            importance_percent(&[4e-5, -1e-5, 2e-5]),
            vec![100.0, -25.0, 50.0]
        );
        assert_eq!(importance_percent(&[-2e-5, 1e-5]), vec![-100.0, 50.0]);
        assert_eq!(importance_percent(&[0.0]), vec![0.0]);
    }
}
