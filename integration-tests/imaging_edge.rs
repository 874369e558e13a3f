//! Edge cases of the imaging path on small generated studies: 256-slice, one-slice,
//! reversed, oblique, mixed sizes, Enhanced MR multi-frame, MONOCHROME1, too many
//! patches, missing geometry.
use std::path::Path;

use prima_node::imaging::series::{scan_study, SliceOrder};
use prima_node::process::prepare::prepare_all;
use prima_node::process::series::{prepare_series, PreparedSeries};
use prima_node::synth::{write_study, Plane, SynthSeries, SynthStudy};

fn study(series: Vec<SynthSeries>) -> SynthStudy {
    SynthStudy {
        series,
        ..SynthStudy::brain(7)
    }
}

fn prepare_one(dir: &Path, order: SliceOrder) -> PreparedSeries {
    let scan = scan_study(dir, order).unwrap();
    assert_eq!(scan.series.len(), 1, "{:?}", scan.skipped);
    prepare_series(&scan.series[0]).unwrap()
}

#[test]
fn series_with_256_slices_uses_the_slice_axis() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = SynthSeries::new(1, "AX 3D", Plane::Axial, 32, 32, 256);
    s.slice_spacing = 0.6;
    write_study(&study(vec![s]), tmp.path()).unwrap();
    let p = prepare_one(tmp.path(), SliceOrder::Position);
    assert_eq!(p.oriented_shape, [256, 256, 256]);
    assert_eq!(p.tokenized.thin_axis, 0);
    assert_eq!(p.tokenized.n_patches(), 64 * 64);
    let mut s = SynthSeries::new(1, "SAG 3D", Plane::Sagittal, 32, 32, 256);
    s.slice_spacing = 0.6;
    let tmp = tempfile::tempdir().unwrap();
    write_study(&study(vec![s]), tmp.path()).unwrap();
    let p = prepare_one(tmp.path(), SliceOrder::Position);
    assert_eq!(p.tokenized.thin_axis, 2, "sagittal slices land on x");
}

#[test]
fn one_slice_series_is_padded_and_used() {
    let tmp = tempfile::tempdir().unwrap();
    write_study(
        &study(vec![SynthSeries::new(1, "ONE", Plane::Axial, 64, 64, 1)]),
        tmp.path(),
    )
    .unwrap();
    let p = prepare_one(tmp.path(), SliceOrder::Position);
    assert_eq!(p.tokenized.padded_shape, [4, 256, 256]);
    assert_eq!(p.tokenized.n_patches(), 64);
    assert!(!p.selection.ids.is_empty());
}

#[test]
fn reversed_file_names_position_mode_restores_order() {
    let fwd = tempfile::tempdir().unwrap();
    let rev = tempfile::tempdir().unwrap();
    let s = SynthSeries::new(1, "AX", Plane::Axial, 64, 64, 12);
    let mut r = s.clone();
    r.reversed_names = true;
    write_study(&study(vec![s]), fwd.path()).unwrap();
    write_study(&study(vec![r]), rev.path()).unwrap();
    let a = prepare_one(fwd.path(), SliceOrder::Position);
    let b = prepare_one(rev.path(), SliceOrder::Position);
    assert_eq!(a.selected_tokens(), b.selected_tokens());
    // Upstream's file-name order stacks the reversed files upside down.
    let c = prepare_one(rev.path(), SliceOrder::FileName);
    assert_ne!(a.selected_tokens(), c.selected_tokens());
}

#[test]
fn oblique_axial_stays_axial() {
    let tmp = tempfile::tempdir().unwrap();
    write_study(
        &study(vec![SynthSeries::new(
            1,
            "OBL",
            Plane::ObliqueAxial(20.0),
            96,
            96,
            16,
        )]),
        tmp.path(),
    )
    .unwrap();
    let p = prepare_one(tmp.path(), SliceOrder::Position);
    assert_eq!(p.orientation_code, "LPS");
    assert_eq!(p.oriented_shape, [16, 256, 256]);
    let positions: Vec<f64> = p
        .slices
        .iter()
        .map(|s| s.position_along_normal().unwrap())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn mixed_sizes_keep_the_most_common() {
    let tmp = tempfile::tempdir().unwrap();
    write_study(
        &study(vec![SynthSeries::new(1, "AX", Plane::Axial, 64, 64, 10)]),
        tmp.path(),
    )
    .unwrap();
    // Three localizer-like images of another matrix in the same series.
    let loc = tempfile::tempdir().unwrap();
    write_study(
        &study(vec![SynthSeries::new(1, "AX", Plane::Coronal, 80, 80, 3)]),
        loc.path(),
    )
    .unwrap();
    for (i, e) in std::fs::read_dir(loc.path().join("S1"))
        .unwrap()
        .enumerate()
    {
        std::fs::copy(e.unwrap().path(), tmp.path().join(format!("S1/LOC{i}.dcm"))).unwrap();
    }
    for order in [SliceOrder::Position, SliceOrder::FileName] {
        let scan = scan_study(tmp.path(), order).unwrap();
        let c = &scan.series[0];
        assert_eq!(c.images_found, 13);
        assert_eq!(c.slices.len(), 10);
        assert!(c.slices.iter().all(|s| s.rows == 64));
    }
}

#[test]
fn enhanced_mr_multiframe_equals_single_frame_files() {
    let single = tempfile::tempdir().unwrap();
    let multi = tempfile::tempdir().unwrap();
    let s = SynthSeries::new(1, "AX", Plane::Axial, 64, 64, 10);
    let mut m = s.clone();
    m.enhanced_multiframe = true;
    write_study(&study(vec![s]), single.path()).unwrap();
    write_study(&study(vec![m]), multi.path()).unwrap();
    let a = prepare_one(single.path(), SliceOrder::Position);
    let b = prepare_one(multi.path(), SliceOrder::Position);
    assert_eq!(b.slices.len(), 10);
    assert_eq!(b.slices[3].frame, Some(3));
    assert_eq!(a.selection.ids, b.selection.ids);
    assert_eq!(a.selected_tokens(), b.selected_tokens());
}

/// Spec §1.6: neither GDCM nor upstream inverts MONOCHROME1, so the tokens are those of
/// the same stored values labelled MONOCHROME2.
#[test]
fn monochrome1_is_not_inverted() {
    let a_dir = tempfile::tempdir().unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let s = SynthSeries::new(1, "AX", Plane::Axial, 64, 64, 8);
    let mut m = s.clone();
    m.monochrome1 = true;
    write_study(&study(vec![s]), a_dir.path()).unwrap();
    write_study(&study(vec![m]), b_dir.path()).unwrap();
    let a = prepare_one(a_dir.path(), SliceOrder::Position);
    let b = prepare_one(b_dir.path(), SliceOrder::Position);
    assert_eq!(a.selected_tokens(), b.selected_tokens());
}

#[test]
fn unusable_series_are_skipped_with_a_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let big = SynthSeries::new(1, "TOO MANY", Plane::Axial, 8, 8, 313);
    let ok = SynthSeries::new(2, "OK", Plane::Axial, 32, 32, 8);
    write_study(&study(vec![big, ok]), tmp.path()).unwrap();
    // A series without geometry: strip ImagePositionPatient from a copy.
    let nogeo = tmp.path().join("S9");
    std::fs::create_dir_all(&nogeo).unwrap();
    for e in std::fs::read_dir(tmp.path().join("S2")).unwrap() {
        let p = e.unwrap().path();
        let mut obj = dicom_object::open_file(&p).unwrap();
        obj.remove_element(dicom_dictionary_std::tags::IMAGE_POSITION_PATIENT);
        obj.put(dicom_core::DataElement::new(
            dicom_dictionary_std::tags::SERIES_INSTANCE_UID,
            dicom_core::VR::UI,
            dicom_core::PrimitiveValue::from("1.2.3.999"),
        ));
        obj.write_to_file(nogeo.join(p.file_name().unwrap()))
            .unwrap();
    }
    let scan = scan_study(tmp.path(), SliceOrder::Position).unwrap();
    let (ok, skipped) = prepare_all(&scan);
    assert_eq!(ok.len(), 1);
    assert!(ok[0].name.starts_with("OK-"), "{}", ok[0].name);
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert!(
        skipped.iter().any(|s| s.reason.contains("patches")),
        "{skipped:?}"
    );
    assert!(
        skipped
            .iter()
            .any(|s| s.reason.contains("ImagePositionPatient")),
        "{skipped:?}"
    );
}
