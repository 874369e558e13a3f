//! Model parity against the upstream fixtures (issue 3): VQ-VAE encoder, patchifier,
//! name encoders, HierViT and heads of the converted fixture model, stage by stage, plus
//! the demo models.
//!
//! The converted fixture model is made once per test process by running
//! `scripts/convert-checkpoint` (or point `PRIMA_CONVERTED_MODEL` at an already converted
//! model directory).
//! Run with `--nocapture` to see the per-stage maximum errors.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use prima_node::model::{write_demo_model, DemoSize, ModelOptions, PrimaModel};
use serde_json::Value;
use tch::Tensor;

const STUDIES: [&str; 3] = ["STUDY_A", "STUDY_C", "STUDY_C_J2K"];

mod fixtures;
use fixtures::{convert_fixture_model, json, reference_dir as fixture_dir};

/// The converted fixture model directory (converted once per process).
fn converted_model() -> Option<PathBuf> {
    static DIR: OnceLock<Option<(Option<tempfile::TempDir>, PathBuf)>> = OnceLock::new();
    let got = DIR.get_or_init(|| {
        if let Some(d) = std::env::var_os("PRIMA_CONVERTED_MODEL") {
            return Some((None, PathBuf::from(d)));
        }
        let fx = fixture_dir()?;
        let tmp = tempfile::tempdir().expect("tempdir");
        let out = convert_fixture_model(&fx, &tmp.path().join("model"));
        Some((Some(tmp), out))
    });
    got.as_ref().map(|(_, p)| p.clone())
}

fn load_model(dir: &Path) -> PrimaModel {
    PrimaModel::load(dir, &ModelOptions::default()).expect("load model")
}

fn npy(path: &Path) -> (Vec<u64>, npyz::NpyFile<File>) {
    let f = npyz::NpyFile::new(File::open(path).unwrap_or_else(|e| panic!("{path:?}: {e}")))
        .unwrap_or_else(|e| panic!("{path:?}: {e}"));
    (f.shape().to_vec(), f)
}

fn npy_f32(path: &Path) -> Tensor {
    let (shape, f) = npy(path);
    let v: Vec<f32> = f.into_vec().unwrap();
    let shape: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    Tensor::from_slice(&v).reshape(shape)
}

fn npy_i64(path: &Path) -> (Vec<u64>, Vec<i64>) {
    let (shape, f) = npy(path);
    (shape, f.into_vec().unwrap())
}

/// (max |a − b|, max |a − b| / max |b|).
fn errs(a: &Tensor, b: &Tensor) -> (f64, f64) {
    assert_eq!(a.size(), b.size(), "shape mismatch");
    let d = (a - b).abs().max().double_value(&[]);
    let s = b.abs().max().double_value(&[]).max(f64::MIN_POSITIVE);
    (d, d / s)
}

fn series_folders(study_dir: &Path) -> Vec<String> {
    json(&study_dir.join("run_record.json"))["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["folder"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn vqvae_encoder_matches_fixture() {
    let (Some(fx), Some(md)) = (fixture_dir(), converted_model()) else {
        return;
    };
    let model = load_model(&md);
    let mut worst = 0f64;
    let mut checked = 0;
    for study in STUDIES {
        let inter = fx.join("expected").join(study).join("intermediates");
        for folder in series_folders(&fx.join("expected").join(study)) {
            let sub = inter.join(format!("{folder}_vqvae_input_tokens_subset.npy"));
            if !sub.is_file() {
                continue;
            }
            let (shape, f) = npy(&sub);
            let tokens: Vec<f32> = f.into_vec().unwrap();
            let (_, ids) =
                npy_i64(&inter.join(format!("{folder}_vqvae_input_tokens_subset_ids.npy")));
            let n = shape[0] as usize;
            let ts = [shape[1] as usize, shape[2] as usize, shape[3] as usize];
            let got = model.encode_tokens(&tokens, n, ts).unwrap();
            let all = npy_f32(&inter.join(format!("{folder}_vqvae_encoder_output.npy")));
            let want = all.index_select(0, &Tensor::from_slice(&ids));
            let (abs, rel) = errs(&got, &want);
            println!("vqvae {study}/{folder}: {n} tokens, max abs {abs:.3e}, rel {rel:.3e}");
            assert!(rel <= 1e-5, "{study}/{folder}: VQ-VAE rel error {rel}");
            worst = worst.max(rel);
            checked += 1;

            // Encoding distinct tokens once and gathering gives the same rows.
            let sel: Vec<usize> = (0..n).chain(0..n.min(3)).rev().collect();
            let got2 = model.encode_selected(&tokens, n, ts, &sel).unwrap();
            let idx: Vec<i64> = sel.iter().map(|&i| i as i64).collect();
            let want2 = got.index_select(0, &Tensor::from_slice(&idx));
            assert_eq!(errs(&got2, &want2).0, 0.0, "encode_selected differs");
        }
    }
    assert!(checked >= 4, "expected the fixture's token subsets");
    println!("vqvae: worst rel {worst:.3e} over {checked} series");
}

#[test]
fn patchifier_matches_fixture() {
    let (Some(fx), Some(md)) = (fixture_dir(), converted_model()) else {
        return;
    };
    let model = load_model(&md);
    for study in STUDIES {
        let inter = fx.join("expected").join(study).join("intermediates");
        for folder in series_folders(&fx.join("expected").join(study)) {
            let all = npy_f32(&inter.join(format!("{folder}_vqvae_encoder_output.npy")));
            let (_, ids) = npy_i64(&inter.join(format!("{folder}_filtered_token_ids.npy")));
            let (_, c) = npy_i64(&inter.join(format!("{folder}_filtered_coords.npy")));
            let coords: Vec<[i64; 3]> = c.chunks(3).map(|v| [v[0], v[1], v[2]]).collect();
            let enc = all.index_select(0, &Tensor::from_slice(&ids));
            let got = model.patchify(&enc, &coords).unwrap();
            let want = npy_f32(&inter.join(format!("{folder}_patchifier_output.npy")));
            assert_eq!(got.size(), want.size());
            let part = |t: &Tensor, a: i64, n: i64| t.narrow(1, a, n);
            let (e_enc, _) = errs(&part(&got, 0, 256), &part(&want, 0, 256));
            let (e_pe, _) = errs(&part(&got, 256, 30), &part(&want, 256, 30));
            let (e_oh, _) = errs(&part(&got, 286, 3), &part(&want, 286, 3));
            println!(
                "patchifier {study}/{folder}: {} tokens, enc {e_enc:.1e}, pe {e_pe:.3e}, onehot {e_oh:.1e}",
                ids.len()
            );
            assert_eq!(e_enc, 0.0, "{study}/{folder}: encoder columns differ");
            assert!(e_pe <= 2.4e-7, "{study}/{folder}: PE error {e_pe}");
            assert_eq!(e_oh, 0.0, "{study}/{folder}: one-hot differs");
        }
    }
}

fn close(got: f64, want: f64) -> bool {
    (got - want).abs() <= 1e-5 || (got - want).abs() <= 1e-4 * want.abs()
}

#[test]
fn hiervit_and_heads_match_fixture() {
    let (Some(fx), Some(md)) = (fixture_dir(), converted_model()) else {
        return;
    };
    let model = load_model(&md);
    for study in STUDIES {
        let sd = fx.join("expected").join(study);
        let inter = sd.join("intermediates");
        let (series, study_ids) = study_inputs(&sd);
        let out = model.forward(&series, &study_ids).unwrap();

        let stage = |name: &str, got: &Tensor, file: &str| {
            let want = npy_f32(&inter.join(file));
            let want = want.reshape(got.size());
            let (abs, rel) = errs(got, &want);
            println!("{study} {name}: max abs {abs:.3e}, rel {rel:.3e}");
            assert!(rel <= 1e-5, "{study} {name}: rel error {rel}");
        };
        stage(
            "serie name encoder",
            out.serie_name_enc.as_ref().unwrap(),
            "serie_name_encoder_output.npy",
        );
        stage(
            "study encoder",
            out.study_enc.as_ref().unwrap(),
            "study_description_encoder_output.npy",
        );
        stage("inner pooled", &out.inner_pooled, "inner_vit_pooled.npy");
        stage(
            "series embeddings",
            &out.series_emb,
            "inner_vit_series_embeddings.npy",
        );
        let clip = Tensor::from_slice(&out.clip_emb);
        stage("clip embedding", &clip, "clip_embedding.npy");

        let pred_path = sd.join(format!("{study}_predictions.json"));
        let pred = json(&pred_path);
        let pred_text = std::fs::read_to_string(&pred_path).unwrap();
        let want_clip: Vec<f64> = pred["clip_emb"][0]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let num: f64 = out
            .clip_emb
            .iter()
            .zip(&want_clip)
            .map(|(&g, &w)| (g as f64 - w).powi(2))
            .sum::<f64>()
            .sqrt();
        let den: f64 = want_clip.iter().map(|w| w * w).sum::<f64>().sqrt();
        println!("{study} clip_emb rel L2 {:.3e}", num / den);
        assert!(num / den <= 1e-4);

        let mut worst = 0f64;
        for (section, got) in [
            ("diagnosis", &out.diagnosis),
            ("referral", &out.referral),
            ("priority", &out.priority),
        ] {
            let want = pred[section].as_object().unwrap();
            let mut want_names: Vec<&String> = want.keys().collect();
            // serde_json's map is sorted: take upstream's order from the file text.
            let body = &pred_text[pred_text.find(&format!("\"{section}\"")).unwrap()..];
            want_names.sort_by_key(|n| body.find(&format!("\"{n}\"")).unwrap());
            let got_names: Vec<&String> = got.iter().map(|(n, _)| n).collect();
            assert_eq!(got_names, want_names, "{study} {section} names/order");
            for (n, v) in got {
                let w = want[n][0].as_f64().unwrap();
                // Upstream prints float32 values as doubles: compare as float32.
                let w32 = w as f32 as f64;
                assert!(close(*v as f64, w32), "{study} {section}.{n}: {v} vs {w}");
                worst = worst.max((*v as f64 - w32).abs());
            }
        }
        println!("{study} heads: max abs error {worst:.3e}");
    }
}

/// A fixture study's HierViT input: per series the patchified tokens and name ids, and the
/// study description's ids.
fn study_inputs(sd: &Path) -> (Vec<(Tensor, Vec<i64>)>, Vec<i64>) {
    let inter = sd.join("intermediates");
    let rr = json(&sd.join("run_record.json"));
    let pi = &rr["prima_input"];
    let rows = |v: &Value| -> Vec<Vec<i64>> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_i64().unwrap())
                    .collect()
            })
            .collect()
    };
    let names = rows(&pi["serienames_char_ids"][0]);
    let study_ids = rows(&pi["studydescription_char_ids"]).remove(0);
    let series = series_folders(sd)
        .iter()
        .zip(names)
        .map(|(f, n)| {
            (
                npy_f32(&inter.join(format!("{f}_patchifier_output.npy"))),
                n,
            )
        })
        .collect();
    (series, study_ids)
}

/// LIME's batched labels (inner ViT of untouched series reused, perturbed inputs packed
/// into one call) equal a whole-study forward of each perturbed input, and so do the
/// occlusion's.
#[test]
fn batched_perturbations_equal_whole_study_forwards() {
    let (Some(fx), Some(md)) = (fixture_dir(), converted_model()) else {
        return;
    };
    let model = load_model(&md);
    let (series, study_ids) = study_inputs(&fx.join("expected").join(STUDIES[0]));
    let fixed = model.fix_study(&series, &study_ids, false).unwrap();
    let whole = |input: &[(Tensor, Vec<i64>)], k: usize| {
        let o = model.forward(input, &study_ids).unwrap();
        o.diagnosis[k].1 as f64 + model.manifest().diagnosis_heads[k].thresh
    };
    let worst = std::cell::Cell::new(0f64);
    let near = |got: f64, want: f64, what: &str| {
        worst.set(worst.get().max((got - want).abs()));
        assert!(
            (got - want).abs() <= 1e-6 + 1e-6 * want.abs(),
            "{what}: batched {got} vs whole {want}"
        );
    };
    let s = (0..series.len())
        .max_by_key(|&i| series[i].0.size()[0])
        .unwrap();
    let n = series[s].0.size()[0];
    // Keep sets of very different sizes, so that the packing pads and masks.
    let keeps: Vec<Vec<i64>> = vec![
        (0..n).collect(),
        (0..n).step_by(2).collect(),
        (0..n).filter(|j| j % 7 == 3).collect(),
        vec![n - 1],
        (1..n).filter(|j| (n - j) % 3 == 1).collect(),
    ];
    for k in [0, model.manifest().diagnosis_heads.len() - 1] {
        let batched = fixed.logits_keeping(k, s, &keeps).unwrap();
        for (keep, got) in keeps.iter().zip(&batched) {
            let mut input: Vec<(Tensor, Vec<i64>)> = series
                .iter()
                .map(|(t, nm)| (t.shallow_clone(), nm.clone()))
                .collect();
            input[s].0 = series[s].0.index_select(0, &Tensor::from_slice(keep));
            near(
                *got,
                whole(&input, k),
                &format!("head {k}, {} tokens kept", keep.len()),
            );
        }
        let left_out: Vec<usize> = (0..series.len()).collect();
        let occ = fixed.logits_without(k, &left_out).unwrap();
        near(occ[0], whole(&series, k), &format!("head {k}, whole study"));
        for (o, got) in left_out.iter().zip(&occ[1..]) {
            let rest: Vec<(Tensor, Vec<i64>)> = series
                .iter()
                .enumerate()
                .filter(|(i, _)| i != o)
                .map(|(_, (t, nm))| (t.shallow_clone(), nm.clone()))
                .collect();
            near(
                *got,
                whole(&rest, k),
                &format!("head {k}, series {o} left out"),
            );
        }
    }
    println!(
        "batched vs whole-study logits: max abs difference {:.3e}",
        worst.get()
    );
}

#[test]
fn small_demo_model_is_deterministic_and_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    let t0 = std::time::Instant::now();
    write_demo_model(&a, DemoSize::Small, 7).unwrap();
    println!("small demo written in {:.2} s", t0.elapsed().as_secs_f64());
    write_demo_model(&b, DemoSize::Small, 7).unwrap();
    write_demo_model(&c, DemoSize::Small, 8).unwrap();
    for f in [
        "manifest.json",
        "prima.safetensors",
        "tokenizer.safetensors",
    ] {
        let (x, y) = (
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
        );
        assert!(x == y, "{f} differs for the same seed");
    }
    assert!(
        std::fs::read(a.join("prima.safetensors")).unwrap()
            != std::fs::read(c.join("prima.safetensors")).unwrap()
    );

    let model = load_model(&a);
    assert!(model.manifest().demo);
    assert_eq!(model.manifest().model_version, "demo-small-seed7");
    let run = |m: &PrimaModel| {
        let _g = tch::no_grad_guard();
        tch::manual_seed(1);
        let tokens = Tensor::rand([30, 8, 32, 32], (tch::Kind::Float, tch::Device::Cpu));
        let tv: Vec<f32> = Vec::try_from(&tokens.reshape([-1])).unwrap();
        let enc = m.encode_tokens(&tv, 30, [8, 32, 32]).unwrap();
        assert_eq!(enc.size(), [30, 2, 2, 8, 8]);
        let coords: Vec<[i64; 3]> = (0..30).map(|i| [4 * (i % 5), 32 * (i / 5), 64]).collect();
        let p = m.patchify(&enc, &coords).unwrap();
        let series = vec![
            (p.narrow(0, 0, 20), vec![1, 2, 3, 46]),
            (p.narrow(0, 20, 10), vec![5, 45, 6, 7, 8, 46, 0, 0]),
        ];
        m.forward(&series, &[13, 18, 9, 46]).unwrap()
    };
    let o1 = run(&model);
    let o2 = run(&load_model(&b));
    assert_eq!(o1.diagnosis.len(), 52);
    assert_eq!(o1.priority.len(), 3);
    assert!(o1.clip_emb.iter().all(|v| v.is_finite()));
    let vals = |o: &prima_node::model::PrimaOutput| -> Vec<f32> {
        o.diagnosis
            .iter()
            .chain(&o.referral)
            .chain(&o.priority)
            .map(|(_, v)| *v)
            .chain(o.clip_emb.iter().copied())
            .collect()
    };
    assert!(vals(&o1).iter().all(|v| v.is_finite()));
    assert_eq!(vals(&o1), vals(&o2));
    // Activations stay O(1): the scores are neither vanishing nor exploding.
    let max = vals(&o1).iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(max > 1e-3 && max < 1e3, "demo outputs out of scale: {max}");
}

/// Timing of the full-size demo model (not a parity test; run with `--ignored`):
/// creation, load, HierViT + heads on STUDY_A's token counts, VQ-VAE per token.
#[test]
#[ignore]
fn full_demo_model_timing() {
    use std::time::Instant;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("full");
    let t = Instant::now();
    write_demo_model(&dir, DemoSize::Full, 1).unwrap();
    println!("full demo written in {:.2} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let model = load_model(&dir);
    println!("full demo loaded in {:.2} s", t.elapsed().as_secs_f64());
    let _g = tch::no_grad_guard();
    tch::manual_seed(0);
    let counts = [188i64, 432, 175, 192, 144, 154];
    let series: Vec<(Tensor, Vec<i64>)> = counts
        .iter()
        .map(|&k| {
            let x = Tensor::randn([k, 289], (tch::Kind::Float, tch::Device::Cpu));
            (x, vec![1, 24, 27, 20, 46])
        })
        .collect();
    for run in 0..2 {
        let t = Instant::now();
        let out = model
            .forward(&series, &[13, 18, 9, 45, 2, 18, 1, 9, 14, 46])
            .unwrap();
        println!(
            "run {run}: HierViT + heads on STUDY_A counts {:.3} s (clip_emb {}, finite {})",
            t.elapsed().as_secs_f64(),
            out.clip_emb.len(),
            out.clip_emb.iter().all(|v| v.is_finite())
        );
    }
    let n = 16;
    let tokens = Tensor::rand([n, 8, 32, 32], (tch::Kind::Float, tch::Device::Cpu));
    let tv: Vec<f32> = Vec::try_from(&tokens.reshape([-1])).unwrap();
    let t = Instant::now();
    let enc = model.encode_tokens(&tv, n as usize, [8, 32, 32]).unwrap();
    println!(
        "VQ-VAE: {:.4} s per token ({n} tokens, {} threads), out {:?}",
        t.elapsed().as_secs_f64() / n as f64,
        tch::get_num_threads(),
        enc.size()
    );
}

#[test]
fn a_damaged_model_file_is_refused_naming_the_file_and_both_hashes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    write_demo_model(&dir, DemoSize::Small, 7).unwrap();
    // The demo writer records what the loader checks.
    load_model(&dir);
    for file in ["prima.safetensors", "tokenizer.safetensors"] {
        let path = dir.join(file);
        let good = std::fs::read(&path).unwrap();
        let mut bad = good.clone();
        // A byte in the tensor data, past the header: the header still parses.
        let at = bad.len() - 5;
        bad[at] ^= 0x01;
        std::fs::write(&path, &bad).unwrap();
        let hex = |b: &[u8]| {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(b))
        };
        let err = match PrimaModel::load(&dir, &ModelOptions::default()) {
            Ok(_) => panic!("{file}: a damaged model loaded"),
            Err(e) => e.to_string(),
        };
        assert_eq!(
            err,
            format!(
                "model file {} is damaged or altered: its SHA-256 is {}, the manifest records {}",
                path.display(),
                hex(&bad),
                hex(&good)
            )
        );
        std::fs::write(&path, &good).unwrap();
    }
    load_model(&dir);
}
