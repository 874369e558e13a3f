//! Demo models: deterministic random weights in exactly the converter's format
//! (issue 3, deliverable 5), so the node runs end to end without the released weights.
//!
//! Weights come from a SplitMix64 + Box–Muller generator keyed by (seed, tensor name),
//! not from libtorch's global RNG: the result does not depend on thread interleaving,
//! on the order tensors are generated, or on the libtorch version. Scales follow common
//! initialisations so activations stay O(1): He-normal before ReLUs, 1/√fan_in
//! elsewhere, residual-branch outputs halved, small biases, LayerNorm weights ≈ 1.
//!
//! - `full`: the upstream architecture (spec §12.3, `models/fullsize_reference.json`):
//!   VQ-VAE with 256 channels; inner ViT 289/15/16/64/1024, clsnum 20, 1024 classes;
//!   outer ViT 1024/4/8/64/1024, clsnum 10, 128 classes; clip_emb 10240; the
//!   pre-trained (`Sequential`) serie encoder; one 52-output diagnosis head
//!   (10240 → 4000 → 1000 → 52) shared by all 52 names of upstream's
//!   `config-classification-head-train.yaml` (`idx` = position in that list), one
//!   referral head, and the current release's 3-class priority (none/low/high: upstream
//!   moved to 3 classes on 2026-02-19, when its README says the released priority model was
//!   corrected; earlier downloads have 4, which the converter reads too).
//! - `small`: tiny sizes (a study runs in well under a second on a CPU), exercising the
//!   other code paths: per-stage channel counts, one residual layer per stage, the plain
//!   serie-encoder form, and the same 3-class priority (the fixture checkpoint has the
//!   earlier 4-class head, so both head sizes run end to end in the tests).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde_json::{json, Value};

use super::manifest::{
    sha256_file, Architecture, Extra, FormKind, HeadEntry, Manifest, NameEncoderConfig,
    PatchifierConfig, PriorityHead, TokenizerConfig, VitConfig,
};
use super::patchify::sincos_table;
use super::prima::{MANIFEST_FILE, PRIMA_WEIGHTS_FILE, TOKENIZER_WEIGHTS_FILE};
use super::ModelError;

/// Manifest format version this crate writes and reads.
pub const FORMAT_VERSION: i64 = 1;

/// Upstream's 52 diagnosis names, in the order of `cset.names` of
/// `Prima training and evaluation/configs/config-classification-head-train.yaml`
/// (MLNeurosurg/Prima); a name's output column is its position here.
pub const DIAGNOSIS_NAMES: [&str; 52] = [
    "cyst_arachnoid_cyst",
    "cyst_colloid_cyst",
    "developmental_dandy_walker_malformation",
    "developmental_dysgenesis_corpus_callosum",
    "developmental_heterotopia",
    "infectious_brain_abscess",
    "infectious_viral_encephalitis",
    "inflammatory_multiple_sclerosis",
    "inflammatory_neurosarcoid",
    "sellar_craniopharyngioma",
    "sellar_pituitary_adenoma",
    "sellar_rathkes_cleft_cyst",
    "spine_syrinx",
    "structural_brain_herniation",
    "structural_cephaloceles",
    "structural_cerebral_atrophy",
    "structural_chiari_malformation",
    "structural_edema",
    "structural_encephalomalacia",
    "structural_mass_effect",
    "structural_midline_shift",
    "surgical_catheter",
    "surgical_craniotomy",
    "surgical_resection_cavity",
    "trauma_brain_contusion",
    "trauma_diffuse_axonal_injury",
    "trauma_subdural_hematoma",
    "tumor_adult_brain_metastasis",
    "tumor_adult_glioma",
    "tumor_adult_high_grade_glioma",
    "tumor_adult_low_grade_glioma",
    "tumor_adult_lymphoma",
    "tumor_adult_meningioma",
    "tumor_adult_pineal_tumor",
    "tumor_adult_schwannoma",
    "tumor_pediatric_brainstem_glioma",
    "tumor_pediatric_ependymoma",
    "tumor_pediatric_germ_cell_tumor",
    "tumor_pediatric_medulloblastoma",
    "tumor_pediatric_pilocytic_astrocytoma",
    "vascular_hemorrhagic_intracranial_hemorrhage",
    "vascular_hemorrhagic_intraventricular_hemorrhage",
    "vascular_hemorrhagic_subarachnoid_hemorrahage",
    "vascular_ischemic_lacunar_stroke",
    "vascular_ischemic_large_vessel_stroke",
    "vascular_ischemic_moyamoya",
    "vascular_ischemic_small_vessel_disease",
    "vascular_malformation_arteriovenous_malformation",
    "vascular_malformation_cavernoma",
    "vascular_malformation_cerebral_aneurysm",
    "ventricular_intracranial_hypotension",
    "ventricular_ventriculomegaly",
];

/// Upstream publishes no referral names; these are the fixture's placeholders.
pub const REFERRAL_NAMES: [&str; 3] = ["neurosurgery", "neuro_oncology", "neurology"];

/// Size of a demo model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoSize {
    Small,
    Full,
}

impl DemoSize {
    pub fn as_str(self) -> &'static str {
        match self {
            DemoSize::Small => "small",
            DemoSize::Full => "full",
        }
    }
}

impl std::str::FromStr for DemoSize {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "small" => Ok(DemoSize::Small),
            "full" => Ok(DemoSize::Full),
            _ => Err(ModelError::Input(format!("demo size {s:?}: small or full"))),
        }
    }
}

/// Deterministic normal generator (SplitMix64 + Box–Muller).
struct Rng(u64);

impl Rng {
    fn new(seed: u64, name: &str) -> Self {
        // FNV-1a of the name, mixed with the seed.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        Rng(h ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    fn normals(&mut self, n: usize, mean: f64, std: f64) -> Vec<f32> {
        let mut v = Vec::with_capacity(n + 1);
        while v.len() < n {
            let r = (-2.0 * self.uniform().ln()).sqrt();
            let t = std::f64::consts::TAU * self.uniform();
            v.push((mean + std * r * t.cos()) as f32);
            v.push((mean + std * r * t.sin()) as f32);
        }
        v.truncate(n);
        v
    }
}

/// Named float32 tensors being generated for one file.
struct TensorSet {
    seed: u64,
    tensors: BTreeMap<String, (Vec<i64>, Vec<f32>)>,
}

impl TensorSet {
    fn new(seed: u64) -> Self {
        TensorSet {
            seed,
            tensors: BTreeMap::new(),
        }
    }

    fn normal(&mut self, name: &str, shape: &[i64], mean: f64, std: f64) {
        let n: i64 = shape.iter().product();
        let data = Rng::new(self.seed, name).normals(n as usize, mean, std);
        self.tensors
            .insert(name.to_string(), (shape.to_vec(), data));
    }

    fn raw(&mut self, name: &str, shape: &[i64], data: Vec<f32>) {
        self.tensors
            .insert(name.to_string(), (shape.to_vec(), data));
    }

    /// `nn.Linear` at `p`; `gain` 2 before a ReLU (He), 1 otherwise.
    fn linear(&mut self, p: &str, i: i64, o: i64, gain: f64, bias: bool) {
        self.normal(
            &format!("{p}.weight"),
            &[o, i],
            0.0,
            (gain / i as f64).sqrt(),
        );
        if bias {
            self.normal(&format!("{p}.bias"), &[o], 0.0, 0.02);
        }
    }

    fn layernorm(&mut self, p: &str, d: i64) {
        self.normal(&format!("{p}.weight"), &[d], 1.0, 0.1);
        self.normal(&format!("{p}.bias"), &[d], 0.0, 0.05);
    }

    fn conv3d(&mut self, p: &str, i: i64, o: i64, k: i64, gain: f64) {
        let fan_in = i * k * k * k;
        self.normal(
            &format!("{p}.weight"),
            &[o, i, k, k, k],
            0.0,
            (gain / fan_in as f64).sqrt(),
        );
        self.normal(&format!("{p}.bias"), &[o], 0.0, 0.02);
    }

    #[allow(clippy::too_many_arguments)]
    fn transformer(&mut self, p: &str, dim: i64, depth: i64, heads: i64, dim_head: i64, mlp: i64) {
        let inner = heads * dim_head;
        for l in 0..depth {
            let a = format!("{p}.layers.{l}.0");
            self.layernorm(&format!("{a}.norm"), dim);
            self.linear(&format!("{a}.fn.to_qkv"), dim, 3 * inner, 1.0, false);
            if !(heads == 1 && dim_head == dim) {
                self.linear(&format!("{a}.fn.to_out.0"), inner, dim, 0.25, true);
            }
            let f = format!("{p}.layers.{l}.1");
            self.layernorm(&format!("{f}.norm"), dim);
            self.linear(&format!("{f}.fn.net.0"), dim, mlp, 2.0, true);
            self.linear(&format!("{f}.fn.net.3"), mlp, dim, 0.25, true);
        }
    }

    fn vit(&mut self, p: &str, c: &VitConfig) {
        self.normal(&format!("{p}.cls_token"), &[1, c.clsnum, c.dim], 0.0, 1.0);
        self.transformer(
            &format!("{p}.transformer"),
            c.dim,
            c.depth,
            c.heads,
            c.dim_head,
            c.mlp_dim,
        );
        self.layernorm(&format!("{p}.layernorm"), c.dim);
        self.linear(
            &format!("{p}.mlp_head.0"),
            c.clsnum * c.dim,
            c.num_classes,
            1.0,
            true,
        );
    }

    fn name_encoder(&mut self, p: &str, c: &NameEncoderConfig) -> Result<(), ModelError> {
        self.normal(&format!("{p}.embed.weight"), &c.embedding, 0.0, 1.0);
        self.transformer(
            &format!("{p}.transformer"),
            c.embsize,
            c.depth,
            c.heads,
            c.dim_head,
            c.mlp_dim,
        );
        self.linear(&format!("{p}.linear"), c.embsize, c.linear_out, 1.0, true);
        let pe = sincos_table(c.positional_encoding_rows, c.positional_encoding_dim)?;
        let data = Vec::<f32>::try_from(&pe.reshape([-1]))?;
        self.raw(
            &format!("{p}.p_enc"),
            &[c.positional_encoding_rows, c.positional_encoding_dim],
            data,
        );
        Ok(())
    }

    fn head(&mut self, p: &str, e: i64, hidden: &[i64], n_out: i64) {
        let sizes: Vec<i64> = std::iter::once(e)
            .chain(hidden.iter().copied())
            .chain(std::iter::once(n_out))
            .collect();
        let last = sizes.len() - 2;
        for (i, io) in sizes.windows(2).enumerate() {
            let gain = if i < last { 2.0 } else { 1.0 };
            self.linear(&format!("{p}.{}", 2 * i), io[0], io[1], gain, true);
        }
    }

    /// safetensors: 8-byte header length, JSON header (padded to 8 bytes), data.
    fn write(&self, path: &Path, metadata: &BTreeMap<String, String>) -> Result<(), ModelError> {
        let mut header = serde_json::Map::new();
        header.insert("__metadata__".into(), json!(metadata));
        let mut offset = 0usize;
        for (name, (shape, data)) in &self.tensors {
            let n = data.len() * 4;
            header.insert(
                name.clone(),
                json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + n]}),
            );
            offset += n;
        }
        let mut h = serde_json::to_vec(&header).map_err(|e| ModelError::Input(e.to_string()))?;
        while h.len() % 8 != 0 {
            h.push(b' ');
        }
        let f = std::fs::File::create(path).map_err(|e| ModelError::io(path, e))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, f);
        let io = |e| ModelError::io(path, e);
        out.write_all(&(h.len() as u64).to_le_bytes()).map_err(io)?;
        out.write_all(&h).map_err(io)?;
        for (_, data) in self.tensors.values() {
            let mut bytes = Vec::with_capacity(data.len() * 4);
            for v in data {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
            out.write_all(&bytes).map_err(io)?;
        }
        out.flush().map_err(io)?;
        Ok(())
    }
}

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
    let (inner, outer) = if full {
        (
            vit_config(289, 15, 16, 64, 1024, 20, 1024),
            vit_config(1024, 4, 8, 64, 1024, 10, 128),
        )
    } else {
        (
            vit_config(289, 1, 2, 16, 32, 2, 16),
            vit_config(16, 1, 2, 8, 32, 2, 8),
        )
    };
    let (serie, study) = if full {
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
                Some([256, inner.dim]),
            ),
            name_encoder_config(
                "studyencoder",
                246,
                3,
                4,
                64,
                300,
                false,
                outer.dim,
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
                inner.dim,
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
                outer.dim,
                FormKind::Plain,
                None,
            ),
        )
    };
    let tokenizer = if full {
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
    let mut tokenizer = tokenizer;
    let blocks = tokenizer_blocks(&tokenizer);
    for (k, v) in [
        ("activation", json!("relu")),
        ("blocks", blocks),
        ("state_dict_prefix", json!("encoder.blocks")),
        ("omitted_prefixes", json!(["decoder.", "quantizer."])),
    ] {
        tokenizer.extra.insert(k.to_string(), v);
    }
    let e = outer.clsnum * outer.dim;
    let hidden = if full { vec![4000, 1000] } else { vec![16, 8] };
    let linear_indices: Vec<i64> = (0..=hidden.len() as i64).map(|i| 2 * i).collect();
    // One head module shared by every name of a list, as upstream allows.
    let table = |list: &str, names: &[&str]| -> Vec<HeadEntry> {
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
                    hidden: hidden.clone(),
                    linear_indices: Some(linear_indices.clone()),
                    extra,
                }
            })
            .collect()
    };
    let diagnosis_heads = table("m1", &DIAGNOSIS_NAMES);
    let referral_heads = table("m2", &REFERRAL_NAMES);
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
        tokenizer,
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
        extra: [
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
        .collect(),
    }
}

/// Writes `<out>/manifest.json`, `<out>/prima.safetensors` and
/// `<out>/tokenizer.safetensors` of a demo model (directory created 0700 if missing).
pub fn write_demo_model(out: &Path, size: DemoSize, seed: u64) -> Result<(), ModelError> {
    let mut m = demo_manifest(size, seed);
    m.validate().map_err(|msg| ModelError::Manifest {
        path: out.join(MANIFEST_FILE),
        msg,
    })?;
    create_private_dir(out)?;

    let mut tok = TensorSet::new(seed);
    let t = &m.tokenizer;
    let mut in_ch = t.in_channels;
    let mut i = 0;
    for (s, &[_, kernel, _, _]) in t.downsample_parameters.iter().enumerate() {
        let (ch, res) = (t.num_channels[s], t.num_res_channels[s]);
        tok.conv3d(&format!("encoder.blocks.{i}.conv"), in_ch, ch, kernel, 2.0);
        i += 1;
        for _ in 0..t.num_res_layers {
            tok.conv3d(&format!("encoder.blocks.{i}.conv1.conv"), ch, res, 3, 2.0);
            tok.conv3d(&format!("encoder.blocks.{i}.conv2.conv"), res, ch, 3, 0.5);
            i += 1;
        }
        in_ch = ch;
    }
    tok.conv3d(
        &format!("encoder.blocks.{i}.conv"),
        in_ch,
        t.embedding_dim,
        3,
        1.0,
    );

    let mut p = TensorSet::new(seed);
    let a = &m.architecture;
    p.vit("clipvisualmodel.innerViT", &a.inner);
    p.vit("clipvisualmodel.outerViT", &a.outer);
    if let Some(c) = &a.serie_name_encoder {
        match c.projection {
            Some([i, o]) => {
                p.name_encoder("clipvisualmodel.serieencoder.0", c)?;
                p.linear("clipvisualmodel.serieencoder.1", i, o, 1.0, true);
            }
            None => p.name_encoder("clipvisualmodel.serieencoder", c)?,
        }
    }
    if let Some(c) = &a.study_description_encoder {
        p.name_encoder("clipvisualmodel.studyencoder", c)?;
    }
    for h in m.diagnosis_heads.iter().chain(&m.referral_heads) {
        if !p
            .tensors
            .contains_key(&format!("{}.0.weight", h.weights_prefix))
        {
            p.head(&h.weights_prefix, m.embedding_dim, &h.hidden, h.num_outputs);
        }
    }
    let ph = &m.priority_head;
    p.head(ph.prefix(), m.embedding_dim, &ph.hidden, ph.num_outputs);

    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    meta.insert("model_version".to_string(), m.model_version.clone());
    let mut files = serde_json::Map::new();
    for (key, set, file) in [
        ("prima", &p, PRIMA_WEIGHTS_FILE),
        ("tokenizer", &tok, TOKENIZER_WEIGHTS_FILE),
    ] {
        let path = out.join(file);
        set.write(&path, &meta)?;
        let bytes: usize = set.tensors.values().map(|(_, d)| d.len() * 4).sum();
        files.insert(
            key.into(),
            json!({
                "file": file,
                "sha256": sha256_file(&path)?,
                "tensors": set.tensors.len(),
                "data_bytes": bytes,
            }),
        );
    }
    m.extra.insert("files".into(), Value::Object(files));
    let text = serde_json::to_string_pretty(&m).map_err(|e| ModelError::Input(e.to_string()))?;
    let mp = out.join(MANIFEST_FILE);
    std::fs::write(&mp, text + "\n").map_err(|e| ModelError::io(&mp, e))?;
    Ok(())
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

fn create_private_dir(dir: &Path) -> Result<(), ModelError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir).map_err(|e| ModelError::io(dir, e))
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

    #[test]
    fn rng_is_keyed_by_seed_and_name() {
        let a = Rng::new(1, "x").normals(5, 0.0, 1.0);
        assert_eq!(a, Rng::new(1, "x").normals(5, 0.0, 1.0));
        assert_ne!(a, Rng::new(2, "x").normals(5, 0.0, 1.0));
        assert_ne!(a, Rng::new(1, "y").normals(5, 0.0, 1.0));
    }
}
