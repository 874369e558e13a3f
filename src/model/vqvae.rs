//! The VQ-VAE encoder (monai-generative `VQVAE.encoder`, spec §8.2). Only `encode` is
//! used by inference: no quantiser, no decoder.

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
            weight: w.get_shaped(
                &format!("{prefix}.weight"),
                &[out_ch, in_ch, kernel, kernel, kernel],
            )?,
            bias: w.get_shaped(&format!("{prefix}.bias"), &[out_ch])?,
            stride,
            padding,
            dilation,
        })
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

    /// x (n, in_channels, D, H, W) → (n, embedding_dim, a, b, c).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let mut x = x.shallow_clone();
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
        Ok(x)
    }
}
