use super::*;
use crate::imaging::acquisition::Acquisition;

const AXIAL: [f64; 6] = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0];

fn image(n: i64, z: f64, acq: Acquisition) -> SliceMeta {
    SliceMeta {
        sop_instance_uid: format!("1.2.{n}"),
        instance_number: Some(n),
        rows: 4,
        cols: 4,
        ipp: Some([0.0, 0.0, z]),
        iop: Some(AXIAL),
        pixel_spacing: Some([1.0, 1.0]),
        acquisition: acq,
        ..SliceMeta::blank()
    }
}

fn b(b: f64) -> Acquisition {
    Acquisition {
        b_value: Some(b),
        ..Acquisition::default()
    }
}

fn zs(v: &SplitVolume) -> Vec<f64> {
    v.slices.iter().map(|s| s.ipp.unwrap()[2]).collect()
}

#[test]
fn one_clean_volume_stays_one_volume_in_position_order() {
    let slices: Vec<SliceMeta> = (0..5)
        .map(|i| image(i, 10.0 - 2.0 * i as f64, Acquisition::default()))
        .collect();
    let v = split(slices);
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].label, "");
    assert_eq!(zs(&v[0]), vec![2.0, 4.0, 6.0, 8.0, 10.0]);
    assert_eq!(choose(&v), vec![Ok(())]);
}

#[test]
fn interleaved_b_values_become_one_volume_each() {
    let slices: Vec<SliceMeta> = (0..20)
        .map(|i| {
            image(
                i,
                (i / 2) as f64 * 5.0,
                b(if i % 2 == 0 { 0.0 } else { 1000.0 }),
            )
        })
        .collect();
    let v = split(slices);
    assert_eq!(v.len(), 2);
    assert_eq!(
        v.iter().map(|v| v.label.as_str()).collect::<Vec<_>>(),
        ["b0", "b1000"]
    );
    for x in &v {
        assert_eq!(x.slices.len(), 10);
        assert_eq!(zs(x)[1] - zs(x)[0], 5.0);
    }
    assert_eq!(choose(&v), vec![Ok(()), Ok(())]);
}

#[test]
fn repeated_positions_are_time_points_and_the_first_is_used() {
    let slices: Vec<SliceMeta> = (0..12)
        .map(|i| {
            let acq = Acquisition {
                temporal_position: Some(i / 4 + 1),
                ..Acquisition::default()
            };
            image(i, (i % 4) as f64 * 3.0, acq)
        })
        .collect();
    let v = split(slices);
    assert_eq!(v.len(), 3);
    assert_eq!(v[2].label, "t3");
    assert!(v.iter().all(|x| zs(x) == vec![0.0, 3.0, 6.0, 9.0]));
    assert_eq!(v[1].slices[0].acquisition.temporal_position, Some(2));
    let c = choose(&v);
    assert_eq!(c[0], Ok(()));
    assert_eq!(
        c[2].clone().unwrap_err().to_string(),
        "time point 3 of 3 of a 4D series: the first time point is used"
    );
}

#[test]
fn phase_and_localizers_are_not_used() {
    let ty = |w: &[&str]| Acquisition {
        image_type: w.iter().map(|s| s.to_string()).collect(),
        ..Acquisition::default()
    };
    let mut slices: Vec<SliceMeta> = (0..4)
        .map(|i| image(i, i as f64, ty(&["ORIGINAL", "PRIMARY", "M", "ND"])))
        .collect();
    slices.extend((0..4).map(|i| image(10 + i, i as f64, ty(&["ORIGINAL", "PRIMARY", "P", "ND"]))));
    let v = split(slices);
    assert_eq!(v.len(), 2);
    let c = choose(&v);
    assert_eq!(c[0], Ok(()));
    assert_eq!(
        c[1].clone().unwrap_err().to_string(),
        "ph image: Prima reads magnitude images"
    );
    // Three planes, three images each.
    let mut loc = Vec::new();
    for (p, iop) in [
        [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        [0.0, 1.0, 0.0, 0.0, 0.0, -1.0],
        [1.0, 0.0, 0.0, 0.0, 0.0, -1.0],
    ]
    .into_iter()
    .enumerate()
    {
        for k in 0..3 {
            let mut s = image((p * 3 + k) as i64, 0.0, Acquisition::default());
            s.iop = Some(iop);
            s.ipp = Some([k as f64 * 5.0, k as f64 * 5.0, k as f64 * 5.0]);
            loc.push(s);
        }
    }
    let v = split(loc);
    assert_eq!(v.len(), 3);
    assert!(choose(&v).iter().all(|c| c == &Err(NotUsed::ThreePlane(3))));
}

#[test]
fn a_mixed_matrix_is_two_volumes_and_a_hole_is_not_a_volume() {
    let mut slices: Vec<SliceMeta> = (0..20)
        .map(|i| image(i, i as f64 * 5.0, Acquisition::default()))
        .collect();
    for s in slices.iter_mut().skip(2).step_by(4) {
        s.rows = 8;
        s.cols = 8;
    }
    let v = split(slices);
    assert_eq!(v.len(), 2);
    assert_eq!(v[0].label, "4x4");
    assert_eq!(v[0].slices.len(), 15);
    assert!(matches!(
        v[0].not_a_volume,
        Some(NotAVolume::Spacing { .. })
    ));
    assert_eq!(v[1].slices.len(), 5);
    assert_eq!(v[1].not_a_volume, None, "every 20 mm: uniform");
}

#[test]
fn uneven_repeats_are_not_a_volume() {
    let mut slices: Vec<SliceMeta> = (0..4)
        .map(|i| image(i, i as f64, Acquisition::default()))
        .collect();
    slices.push(image(9, 2.0, Acquisition::default()));
    let v = split(slices);
    assert_eq!(v.len(), 1);
    assert_eq!(
        v[0].not_a_volume,
        Some(NotAVolume::UnevenRepeats { min: 1, max: 2 })
    );
}

#[test]
fn diffusion_directions_yield_to_the_trace() {
    let g = |b: f64, g: [f64; 3]| Acquisition {
        b_value: Some(b),
        gradient: Some(g),
        ..Acquisition::default()
    };
    let mut slices = Vec::new();
    for (k, acq) in [
        b(0.0),
        g(1000.0, [1.0, 0.0, 0.0]),
        g(1000.0, [0.0, 1.0, 0.0]),
        b(1000.0),
    ]
    .into_iter()
    .enumerate()
    {
        for z in 0..3 {
            slices.push(image((k * 3 + z) as i64, z as f64, acq.clone()));
        }
    }
    let v = split(slices.clone());
    assert_eq!(v.len(), 4);
    let used: Vec<&str> = v
        .iter()
        .zip(choose(&v))
        .filter(|(_, c)| c.is_ok())
        .map(|(v, _)| v.label.as_str())
        .collect();
    assert_eq!(used, ["b0", "b1000"]);
    // Without the trace, the first direction stands for b=1000.
    slices.truncate(9);
    let v = split(slices);
    let c = choose(&v);
    assert_eq!(c.iter().filter(|c| c.is_ok()).count(), 2);
    assert!(c.contains(&Err(NotUsed::LaterDirection {
        b: 1000,
        index: 2,
        of: 2
    })));
}
