//! Deterministic random tensors of a demo model and the safetensors files that hold them.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde_json::json;

use crate::model::manifest::{Manifest, NameEncoderConfig, VitConfig};
use crate::model::patchify::sincos_table;
use crate::model::ModelError;

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
pub(super) struct TensorSet {
    seed: u64,
    pub(super) tensors: BTreeMap<String, (Vec<i64>, Vec<f32>)>,
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
    pub(super) fn write(
        &self,
        path: &Path,
        metadata: &BTreeMap<String, String>,
    ) -> Result<(), ModelError> {
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

/// The VQ-VAE encoder's tensors (`tokenizer.safetensors`) for the manifest's tokenizer.
pub(super) fn tokenizer_tensors(m: &Manifest, seed: u64) -> TensorSet {
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
    tok
}

/// The visual model's, name encoders' and heads' tensors (`prima.safetensors`); a head
/// module shared by several names is generated once.
pub(super) fn prima_tensors(m: &Manifest, seed: u64) -> Result<TensorSet, ModelError> {
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
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_keyed_by_seed_and_name() {
        let a = Rng::new(1, "x").normals(5, 0.0, 1.0);
        assert_eq!(a, Rng::new(1, "x").normals(5, 0.0, 1.0));
        assert_ne!(a, Rng::new(2, "x").normals(5, 0.0, 1.0));
        assert_ne!(a, Rng::new(1, "y").normals(5, 0.0, 1.0));
    }
}
