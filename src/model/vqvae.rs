//! The VQ-VAE encoder (monai-generative `VQVAE.encoder`,
//! docs/prima-inference-spec.md §8.2). Only `encode` is used by inference: no quantiser, no
//! decoder.

use tch::Tensor;

use super::manifest::TokenizerConfig;
use super::weights::Weights;
use super::ModelError;

/// A `Conv3d` with bias and equal parameters on all three axes.
struct Conv3d {
    weight: Tensor,
    bias: Tensor,
    stride: i64,
    padding: i64,
    dilation: i64,
}

impl Conv3d {
    #[allow(clippy::too_many_arguments)]
    fn new(
        w: &Weights,
        prefix: &str,
        in_ch: i64,
        out_ch: i64,
        kernel: i64,
        stride: i64,
        dilation: i64,
        padding: i64,
    ) -> Result<Self, ModelError> {
        Ok(Conv3d {
            weight: channels_last(&w.get_shaped(
                &format!("{prefix}.weight"),
                &[out_ch, in_ch, kernel, kernel, kernel],
            )?)?,
            bias: w.get_shaped(&format!("{prefix}.bias"), &[out_ch])?,
            stride,
            padding,
            dilation,
        })
    }

    /// Output spatial size and floating-point operations (2 per multiply-add, bias
    /// ignored) for one sample of spatial size `dims`.
    fn cost(&self, dims: [i64; 3]) -> ([i64; 3], f64) {
        let s = self.weight.size();
        let (out_ch, in_ch, k) = (s[0], s[1], s[2]);
        let out =
            dims.map(|d| (d + 2 * self.padding - self.dilation * (k - 1) - 1) / self.stride + 1);
        let voxels: i64 = out.iter().product();
        (out, 2.0 * (voxels * out_ch * in_ch * k * k * k) as f64)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        Ok(x.f_conv3d(
            &self.weight,
            Some(&self.bias),
            [self.stride; 3],
            [self.padding; 3],
            [self.dilation; 3],
            1,
        )?)
    }
}

/// The same 5-D tensor, with NDHWC strides ("channels-last 3-D"). With input and weights in
/// this layout oneDNN's convolutions skip their internal reorders: about 10-15 % less
/// VQ-VAE time at 256 channels on a 2-core AVX2 CPU, same results to float rounding.
fn channels_last(t: &Tensor) -> Result<Tensor, ModelError> {
    Ok(t.f_permute([0, 2, 3, 4, 1])?
        .f_contiguous()?
        .f_permute([0, 4, 1, 2, 3])?)
}

enum Block {
    /// Strided downsampling conv followed by ReLU.
    Down(Conv3d),
    /// `relu(x + conv2(relu(conv1(x))))`.
    Residual(Conv3d, Conv3d),
    /// Final conv to `embedding_dim`, no activation.
    Out(Conv3d),
}

/// `encoder.blocks.<i>` in order.
pub struct VqvaeEncoder {
    blocks: Vec<Block>,
    in_channels: i64,
}

impl VqvaeEncoder {
    /// Builds the general layout of §8.2 from the tokenizer config; weights at
    /// `<prefix>.blocks.<i>` (prefix = `encoder`).
    pub(crate) fn new(w: &Weights, prefix: &str, c: &TokenizerConfig) -> Result<Self, ModelError> {
        if c.spatial_dims != 3 {
            return Err(ModelError::Input(format!(
                "tokenizer spatial_dims {} (only 3 is supported)",
                c.spatial_dims
            )));
        }
        let mut blocks = Vec::new();
        let mut in_ch = c.in_channels;
        for (s, &[stride, kernel, dilation, padding]) in c.downsample_parameters.iter().enumerate()
        {
            let (ch, res_ch) = (c.num_channels[s], c.num_res_channels[s]);
            let i = blocks.len();
            blocks.push(Block::Down(Conv3d::new(
                w,
                &format!("{prefix}.blocks.{i}.conv"),
                in_ch,
                ch,
                kernel,
                stride,
                dilation,
                padding,
            )?));
            for _ in 0..c.num_res_layers {
                let i = blocks.len();
                let p = format!("{prefix}.blocks.{i}");
                blocks.push(Block::Residual(
                    Conv3d::new(w, &format!("{p}.conv1.conv"), ch, res_ch, 3, 1, 1, 1)?,
                    Conv3d::new(w, &format!("{p}.conv2.conv"), res_ch, ch, 3, 1, 1, 1)?,
                ));
            }
            in_ch = ch;
        }
        let i = blocks.len();
        blocks.push(Block::Out(Conv3d::new(
            w,
            &format!("{prefix}.blocks.{i}.conv"),
            in_ch,
            c.embedding_dim,
            3,
            1,
            1,
            1,
        )?));
        Ok(VqvaeEncoder {
            blocks,
            in_channels: c.in_channels,
        })
    }

    pub fn in_channels(&self) -> i64 {
        self.in_channels
    }

    /// Floating-point operations to encode one token of spatial shape `token` (the
    /// convolutions' multiply-adds; activations and additions are negligible). Derived
    /// from the loaded weights, so it holds for any tokenizer configuration.
    pub fn flops_per_token(&self, token: [i64; 3]) -> f64 {
        let mut dims = token;
        let mut total = 0.0;
        for b in &self.blocks {
            match b {
                Block::Down(c) | Block::Out(c) => {
                    let (d, f) = c.cost(dims);
                    dims = d;
                    total += f;
                }
                Block::Residual(c1, c2) => {
                    let (d, f1) = c1.cost(dims);
                    let (d, f2) = c2.cost(d);
                    dims = d;
                    total += f1 + f2;
                }
            }
        }
        total
    }

    /// x (n, in_channels, D, H, W) → (n, embedding_dim, a, b, c), contiguous.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let mut x = channels_last(x)?;
        for b in &self.blocks {
            x = match b {
                Block::Down(c) => c.forward(&x)?.f_relu()?,
                Block::Residual(c1, c2) => {
                    let h = c2.forward(&c1.forward(&x)?.f_relu()?)?;
                    h.f_add(&x)?.f_relu()?
                }
                Block::Out(c) => c.forward(&x)?,
            };
        }
        Ok(x.f_contiguous()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn conv(out_ch: i64, in_ch: i64, k: i64, stride: i64, padding: i64) -> Conv3d {
        Conv3d {
            weight: Tensor::zeros([out_ch, in_ch, k, k, k], (Kind::Float, Device::Cpu)),
            bias: Tensor::zeros([out_ch], (Kind::Float, Device::Cpu)),
            stride,
            padding,
            dilation: 1,
        }
    }

    /// The upstream 256-channel encoder costs ≈ 16.5 GFLOP per token whatever the thin axis.
    #[test]
    fn flops_follow_the_layers() {
        let c = 256;
        let res = || Block::Residual(conv(c, c, 3, 1, 1), conv(c, c, 3, 1, 1));
        let enc = VqvaeEncoder {
            blocks: vec![
                Block::Down(conv(c, 1, 4, 2, 1)),
                res(),
                res(),
                Block::Down(conv(c, c, 2, 2, 0)),
                res(),
                res(),
                Block::Out(conv(2, c, 3, 1, 1)),
            ],
            in_channels: 1,
        };
        // (4·16·16 voxels after the first conv, 2·8·8 after the second), ×2 per MAC.
        let (v1, v2) = (1024.0, 128.0);
        let c = c as f64;
        let expected = 2.0
            * (v1 * c * 64.0
                + 4.0 * v1 * c * c * 27.0
                + v2 * c * c * 8.0
                + 4.0 * v2 * c * c * 27.0
                + v2 * 2.0 * c * 27.0);
        for t in [[8, 32, 32], [32, 8, 32], [32, 32, 8]] {
            assert_eq!(enc.flops_per_token(t), expected, "{t:?}");
        }
        assert!((expected / 1e9 - 16.48).abs() < 0.01);
    }
}
