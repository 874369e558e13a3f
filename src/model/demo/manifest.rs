//! The manifest of a demo model: the upstream architecture or a tiny one, in the
//! converter's format.

use serde_json::{json, Value};

use super::names::{DIAGNOSIS_NAMES, REFERRAL_NAMES};
use super::{DemoSize, FORMAT_VERSION};
use crate::model::manifest::{
    Architecture, Extra, FormKind, HeadEntry, Manifest, NameEncoderConfig, PatchifierConfig,
    PriorityHead, TokenizerConfig, VitConfig,
};

fn vit_config(
    dim: i64,
    depth: i64,
    heads: i64,
    dim_head: i64,
    mlp: i64,
    cls: i64,
    nc: i64,
) -> VitConfig {
    VitConfig {
        dim,
        depth,
        heads,
        dim_head,
        mlp_dim: mlp,
        clsnum: cls,
        num_classes: nc,
        pool: "cls".into(),
        attention_scale: Some((dim_head as f64).powf(-0.5)),
        layernorm_eps: 1e-5,
        project_out: Some(!(heads == 1 && dim_head == dim)),
        extra: Default::default(),
    }
}

#[allow(clippy::too_many_arguments)]
fn name_encoder_config(
    attr: &str,
    emb_dim: i64,
    depth: i64,
    heads: i64,
    dim_head: i64,
    mlp: i64,
    prelinear: bool,
    linear_out: i64,
    form_kind: FormKind,
    projection: Option<[i64; 2]>,
) -> NameEncoderConfig {
    let pe = 10;
    let embsize = emb_dim + pe;
    let form = match (form_kind, projection) {
        (FormKind::Sequential, Some([_, d])) => {
            format!("Sequential(SerieTransformerEncoder(prelinear=True), Linear({embsize}, {d}))")
        }
        _ => format!(
            "SerieTransformerEncoder(prelinear={})",
            if prelinear { "True" } else { "False" }
        ),
    };
    let prefix = match form_kind {
        FormKind::Sequential => format!("clipvisualmodel.{attr}.0"),
        FormKind::Plain => format!("clipvisualmodel.{attr}"),
    };
    NameEncoderConfig {
        embedding: [47, emb_dim],
        embsize,
        positional_encoding_dim: pe,
        positional_encoding_rows: 200,
        depth,
        heads,
        dim_head,
        mlp_dim: mlp,
        prelinear,
        linear_out,
        attention_scale: Some((dim_head as f64).powf(-0.5)),
        layernorm_eps: 1e-5,
        project_out: Some(!(heads == 1 && dim_head == embsize)),
        p_enc_key: Some(format!("{prefix}.p_enc")),
        state_dict_prefix: Some(prefix),
        form: Some(form),
        form_kind: Some(form_kind),
        projection,
        projection_prefix: projection.map(|_| format!("clipvisualmodel.{attr}.1")),
        extra: Default::default(),
    }
}

/// The manifest of a demo model of `size`.
pub fn demo_manifest(size: DemoSize, seed: u64) -> Manifest {
    let full = size == DemoSize::Full;
    let (inner, outer) = vit_configs(full);
    let (serie, study) = name_encoders(full, inner.dim, outer.dim);
    let e = outer.clsnum * outer.dim;
    let hidden = if full { vec![4000, 1000] } else { vec![16, 8] };
    let linear_indices: Vec<i64> = (0..=hidden.len() as i64).map(|i| 2 * i).collect();
    let diagnosis_heads = head_table("m1", &DIAGNOSIS_NAMES, &hidden, &linear_indices);
    let referral_heads = head_table("m2", &REFERRAL_NAMES, &hidden, &linear_indices);
    // Both demo sizes follow the current release; the fixture checkpoint has the earlier
    // 4-class head, so both sizes still run end to end in the tests.
    let classes: Vec<String> = vec!["none", "low", "high"]
        .into_iter()
        .map(String::from)
        .collect();
    Manifest {
        format_version: json!(FORMAT_VERSION),
        model_name: format!("prima-demo-{}", size.as_str()),
        model_version: format!("demo-{}-seed{seed}", size.as_str()),
        demo: true,
        sources: json!({
            "generator": "prima-node model demo",
            "size": size.as_str(),
            "seed": seed,
        }),
        architecture: Architecture {
            inner,
            outer,
            useseriename: true,
            usestudydescription: true,
            serie_name_encoder: Some(serie),
            study_description_encoder: Some(study),
            pipeline_patchifier: PatchifierConfig {
                in_dim: 256,
                d: 30,
                out_dim: 289,
                extra: Default::default(),
            },
            extra: [("patdis".to_string(), json!(false))].into_iter().collect(),
        },
        tokenizer: tokenizer_config(full),
        diagnosis_heads,
        referral_heads,
        priority_head: PriorityHead {
            state_dict_prefix: "priorityhead".into(),
            weights_prefix: Some("priorityhead".into()),
            num_outputs: classes.len() as i64,
            hidden: hidden.clone(),
            linear_indices: Some(linear_indices.clone()),
            extra: [("weights_dedup".to_string(), json!(null))]
                .into_iter()
                .collect(),
        },
        priority_classes: classes,
        embedding_dim: e,
        extra: converter_extra(),
    }
}

/// (inner, outer) ViT: upstream's sizes for `full`, tiny ones otherwise.
fn vit_configs(full: bool) -> (VitConfig, VitConfig) {
    if full {
        (
            vit_config(289, 15, 16, 64, 1024, 20, 1024),
            vit_config(1024, 4, 8, 64, 1024, 10, 128),
        )
    } else {
        (
            vit_config(289, 1, 2, 16, 32, 2, 16),
            vit_config(16, 1, 2, 8, 32, 2, 8),
        )
    }
}

/// (series-name, study-description) encoders: for `full`, the pre-trained `Sequential`
/// serie encoder projecting to the inner ViT; otherwise both in the plain form.
fn name_encoders(
    full: bool,
    inner_dim: i64,
    outer_dim: i64,
) -> (NameEncoderConfig, NameEncoderConfig) {
    if full {
        (
            name_encoder_config(
                "serieencoder",
                246,
                3,
                4,
                64,
                300,
                true,
                128,
                FormKind::Sequential,
                Some([256, inner_dim]),
            ),
            name_encoder_config(
                "studyencoder",
                246,
                3,
                4,
                64,
                300,
                false,
                outer_dim,
                FormKind::Plain,
                None,
            ),
        )
    } else {
        (
            name_encoder_config(
                "serieencoder",
                22,
                1,
                2,
                8,
                32,
                false,
                inner_dim,
                FormKind::Plain,
                None,
            ),
            name_encoder_config(
                "studyencoder",
                22,
                1,
                2,
                8,
                32,
                false,
                outer_dim,
                FormKind::Plain,
                None,
            ),
        )
    }
}

/// The VQ-VAE encoder, with the converter's descriptive entries.
fn tokenizer_config(full: bool) -> TokenizerConfig {
    let mut tokenizer = if full {
        TokenizerConfig {
            spatial_dims: 3,
            in_channels: 1,
            num_channels: vec![256, 256],
            num_res_channels: vec![256, 256],
            num_res_layers: 2,
            downsample_parameters: vec![[2, 4, 1, 1], [2, 2, 1, 0]],
            embedding_dim: 2,
            extra: Default::default(),
        }
    } else {
        TokenizerConfig {
            spatial_dims: 3,
            in_channels: 1,
            num_channels: vec![8, 16],
            num_res_channels: vec![4, 8],
            num_res_layers: 1,
            downsample_parameters: vec![[2, 4, 1, 1], [2, 2, 1, 0]],
            embedding_dim: 2,
            extra: Default::default(),
        }
    };
    let blocks = tokenizer_blocks(&tokenizer);
    for (k, v) in [
        ("activation", json!("relu")),
        ("blocks", blocks),
        ("state_dict_prefix", json!("encoder.blocks")),
        ("omitted_prefixes", json!(["decoder.", "quantizer."])),
    ] {
        tokenizer.extra.insert(k.to_string(), v);
    }
    tokenizer
}

/// One head module shared by every name of a list, as upstream allows: each name is an
/// output column of the module at `<list>.0`.
fn head_table(
    list: &str,
    names: &[&str],
    hidden: &[i64],
    linear_indices: &[i64],
) -> Vec<HeadEntry> {
    names
        .iter()
        .enumerate()
        .map(|(k, n)| {
            let mut extra = Extra::new();
            extra.insert("module_list".into(), json!(list));
            extra.insert("index_in_module_list".into(), json!(k));
            let others: Vec<&str> = names.iter().copied().filter(|o| o != n).collect();
            extra.insert("same_module_object_as".into(), json!(others));
            let dedup = if k == 0 {
                json!(null)
            } else {
                json!("same_module_object")
            };
            extra.insert("weights_dedup".into(), dedup);
            HeadEntry {
                name: n.to_string(),
                state_dict_prefix: format!("{list}.{k}"),
                weights_prefix: format!("{list}.0"),
                idx: k as i64,
                thresh: 0.0,
                num_outputs: names.len() as i64,
                hidden: hidden.to_vec(),
                linear_indices: Some(linear_indices.to_vec()),
                extra,
            }
        })
        .collect()
}

/// What the converter records of itself and the checkpoint (a demo model has none).
fn converter_extra() -> Extra {
    [
        ("source".to_string(), json!(null)),
        ("source_sha256".to_string(), json!(null)),
        (
            "state_dict_alias_prefixes".to_string(),
            json!({"clipmodel.visual_model.": "clipvisualmodel."}),
        ),
        (
            "converter".to_string(),
            json!({"name": "prima-node model demo", "version": "1"}),
        ),
    ]
    .into_iter()
    .collect()
}

/// The converter's descriptive `tokenizer.blocks` list for a config.
fn tokenizer_blocks(t: &TokenizerConfig) -> Value {
    let mut blocks = Vec::new();
    let mut in_ch = t.in_channels;
    for (s, &[stride, kernel, dilation, padding]) in t.downsample_parameters.iter().enumerate() {
        let ch = t.num_channels[s];
        blocks.push(
            json!({"index": blocks.len(), "kind": "conv", "in": in_ch, "out": ch,
            "stride": stride, "kernel": kernel, "dilation": dilation, "padding": padding,
            "relu": true}),
        );
        for _ in 0..t.num_res_layers {
            blocks.push(
                json!({"index": blocks.len(), "kind": "residual", "channels": ch,
                "res_channels": t.num_res_channels[s]}),
            );
        }
        in_ch = ch;
    }
    blocks.push(json!({"index": blocks.len(), "kind": "conv", "in": in_ch,
        "out": t.embedding_dim, "stride": 1, "kernel": 3, "dilation": 1, "padding": 1,
        "relu": false}));
    Value::Array(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_manifests_validate_and_round_trip() {
        for size in [DemoSize::Small, DemoSize::Full] {
            let m = demo_manifest(size, 3);
            m.validate().unwrap();
            let text = serde_json::to_string(&m).unwrap();
            let back: Manifest = serde_json::from_str(&text).unwrap();
            assert_eq!(serde_json::to_string(&back).unwrap(), text);
        }
        let full = demo_manifest(DemoSize::Full, 3);
        assert_eq!(full.diagnosis_heads.len(), 52);
        assert_eq!(full.diagnosis_heads[32].name, "tumor_adult_meningioma");
        assert_eq!(full.embedding_dim, 10240);
        assert_eq!(full.priority_classes, ["none", "low", "high"]);
        let small = demo_manifest(DemoSize::Small, 3);
        assert_eq!(small.priority_classes, ["none", "low", "high"]);
    }
}
