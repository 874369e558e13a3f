//! The source images the model used, as the SR presents them: the TID 1600 Image Library
//! (one group per series, with the descriptors its images share) and the per-finding
//! "Source of Measurement" references of TID 1501.
//!
//! Compactness is a choice: descriptors every image of a series shares (modality, frame of
//! reference, matrix size) are written once at the group level, where TID 1600 row 3 allows
//! them, and each image is one IMAGE item (named "Source", as highdicom names library
//! entries) without descriptors. A 600-image study adds a few
//! hundred bytes per series, not a descriptor tree per image.

use super::codes;
use super::items::{
    code_value_item, container_item, named_reference_item, num_item, uidref_item, Obj, Rel,
};
use super::{SourceInstance, UsedSeries};

/// The series' instances in slice order (position along the slice normal when every
/// instance has one, else as given), each SOP instance once (a multi-frame instance is one
/// image however many of its frames were used).
pub(crate) fn in_slice_order(series: &UsedSeries) -> Vec<&SourceInstance> {
    let mut slices: Vec<&SourceInstance> = series.instances.iter().collect();
    if slices.iter().all(|i| i.position_along_normal.is_some()) {
        slices.sort_by(|a, b| {
            a.position_along_normal
                .unwrap_or_default()
                .total_cmp(&b.position_along_normal.unwrap_or_default())
        });
    }
    let mut seen = std::collections::HashSet::new();
    slices.retain(|i| seen.insert(i.sop_instance_uid.as_str()));
    slices
}

/// CONTAINER (111028, DCM, "Image Library") with one Image Library Group per used series.
/// `None` when no series lists an instance (a failed run reports no images).
pub(crate) fn image_library(used: &[UsedSeries]) -> Option<Obj> {
    let groups: Vec<Obj> = used
        .iter()
        .filter(|s| !s.instances.is_empty())
        .map(group)
        .collect();
    if groups.is_empty() {
        return None;
    }
    Some(container_item(
        Some(Rel::Contains),
        &codes::image_library(),
        None,
        groups,
    ))
}

fn group(series: &UsedSeries) -> Obj {
    let mut children = Vec::new();
    if let Some(code) = series
        .modality
        .as_deref()
        .and_then(codes::acquisition_modality)
    {
        children.push(code_value_item(
            Rel::HasAcqContext,
            &codes::modality(),
            &code,
        ));
    }
    if let Some(f) = series.frame_of_reference_uid.as_deref() {
        children.push(uidref_item(
            Rel::HasAcqContext,
            &codes::frame_of_reference_uid(),
            f,
        ));
    }
    if let Some((rows, cols)) = series.image_size {
        children.push(num_item(
            Rel::HasAcqContext,
            &codes::pixel_data_rows(),
            rows as f32,
            &codes::pixels(),
        ));
        children.push(num_item(
            Rel::HasAcqContext,
            &codes::pixel_data_columns(),
            cols as f32,
            &codes::pixels(),
        ));
    }
    children.extend(in_slice_order(series).into_iter().map(|i| {
        named_reference_item(
            "IMAGE",
            Some(&codes::source()),
            &i.sop_class_uid,
            &i.sop_instance_uid,
        )
    }));
    container_item(
        Some(Rel::Contains),
        &codes::image_library_group(),
        None,
        children,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_dictionary_std::{tags, uids};

    fn series(uid: &str, positions: &[Option<f64>]) -> UsedSeries {
        UsedSeries {
            series_instance_uid: uid.into(),
            series_name: uid.into(),
            modality: Some("MR".into()),
            frame_of_reference_uid: Some("1.2.3.4".into()),
            image_size: Some((256, 224)),
            instances: positions
                .iter()
                .enumerate()
                .map(|(k, p)| SourceInstance {
                    sop_class_uid: uids::MR_IMAGE_STORAGE.into(),
                    sop_instance_uid: format!("{uid}.{k}"),
                    instance_number: None,
                    position_along_normal: *p,
                })
                .collect(),
            tokens_used: 1,
        }
    }

    fn referenced(item: &Obj) -> String {
        let r = &item
            .get(tags::REFERENCED_SOP_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()[0];
        r.get(tags::REFERENCED_SOP_INSTANCE_UID)
            .unwrap()
            .to_str()
            .unwrap()
            .trim_end_matches('\0')
            .to_string()
    }

    fn children(item: &Obj) -> &[Obj] {
        item.get(tags::CONTENT_SEQUENCE).unwrap().items().unwrap()
    }

    #[test]
    fn groups_hold_shared_descriptors_then_each_image_once_in_slice_order() {
        let mut s = series("9", &[Some(2.0), Some(0.0), Some(1.0)]);
        s.instances.push(s.instances[0].clone()); // a second frame of the first instance
        let lib = image_library(&[s, series("8", &[])]).unwrap();
        let groups = children(&lib);
        assert_eq!(groups.len(), 1, "a series without instances has no group");
        let items = children(&groups[0]);
        let kinds: Vec<String> = items
            .iter()
            .map(|i| {
                i.get(tags::VALUE_TYPE)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .trim()
                    .to_string()
            })
            .collect();
        assert_eq!(
            kinds,
            ["CODE", "UIDREF", "NUM", "NUM", "IMAGE", "IMAGE", "IMAGE"]
        );
        let images: Vec<String> = items[4..].iter().map(referenced).collect();
        assert_eq!(images, ["9.1", "9.2", "9.0"]);
    }

    #[test]
    fn a_series_without_images_has_no_library() {
        assert!(image_library(&[series("3", &[])]).is_none());
    }
}
