//! Selective safetensors reader: the candle `VarBuilder` idea for tch.
//!
//! `Tensor::read_safetensors` reads the whole file into one buffer and then copies every
//! tensor, so the peak is twice the file, and it materialises tensors the node never uses
//! (unused heads, `patdisnet`, the serie encoder's own `linear`). This reader parses the
//! header itself and reads only the tensors a predicate selects, one at a time, straight
//! to the target device and kind.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use super::ModelError;

/// Headers larger than this are refused (safetensors' own limit is 100 MB).
const MAX_HEADER: u64 = 100 * 1024 * 1024;

#[derive(Debug, Clone)]
struct Entry {
    dtype: String,
    shape: Vec<i64>,
    begin: u64,
    end: u64,
}

/// The tensors of one safetensors file, on one device, float tensors in one kind.
pub(crate) struct Weights {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
    /// Shapes of every tensor in the file, loaded or not.
    shapes: HashMap<String, Vec<i64>>,
}

fn dtype_kind(dtype: &str) -> Option<(Kind, usize)> {
    Some(match dtype {
        "F32" => (Kind::Float, 4),
        "F16" => (Kind::Half, 2),
        "BF16" => (Kind::BFloat16, 2),
        "F64" => (Kind::Double, 8),
        "I64" => (Kind::Int64, 8),
        "I32" => (Kind::Int, 4),
        "I16" => (Kind::Int16, 2),
        "I8" => (Kind::Int8, 1),
        "U8" => (Kind::Uint8, 1),
        "BOOL" => (Kind::Bool, 1),
        _ => return None,
    })
}

impl Weights {
    /// Reads the tensors whose names satisfy `want`; float tensors are converted to
    /// `float_kind` and everything is moved to `device`.
    pub(crate) fn load(
        path: &Path,
        want: impl Fn(&str) -> bool,
        device: Device,
        float_kind: Kind,
    ) -> Result<Self, ModelError> {
        let bad = |msg: String| ModelError::Weights {
            path: path.to_path_buf(),
            msg,
        };
        let mut file = File::open(path).map_err(|e| ModelError::io(path, e))?;
        let file_len = file.metadata().map_err(|e| ModelError::io(path, e))?.len();
        let mut len8 = [0u8; 8];
        file.read_exact(&mut len8)
            .map_err(|e| ModelError::io(path, e))?;
        let header_len = u64::from_le_bytes(len8);
        if header_len > MAX_HEADER || 8 + header_len > file_len {
            return Err(bad(format!("header length {header_len} out of range")));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header)
            .map_err(|e| ModelError::io(path, e))?;
        let header: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&header).map_err(|e| bad(format!("header: {e}")))?;
        let data_start = 8 + header_len;
        let mut entries = Vec::new();
        for (name, v) in &header {
            if name == "__metadata__" {
                continue;
            }
            let dtype = v["dtype"]
                .as_str()
                .ok_or_else(|| bad(format!("{name}: no dtype")))?
                .to_string();
            let shape: Vec<i64> = v["shape"]
                .as_array()
                .ok_or_else(|| bad(format!("{name}: no shape")))?
                .iter()
                .map(|d| d.as_i64().ok_or_else(|| bad(format!("{name}: bad shape"))))
                .collect::<Result<_, _>>()?;
            let offs = v["data_offsets"]
                .as_array()
                .filter(|a| a.len() == 2)
                .ok_or_else(|| bad(format!("{name}: no data_offsets")))?;
            let begin = offs[0]
                .as_u64()
                .ok_or_else(|| bad(format!("{name}: bad offsets")))?;
            let end = offs[1]
                .as_u64()
                .ok_or_else(|| bad(format!("{name}: bad offsets")))?;
            let (_, elt) = dtype_kind(&dtype)
                .ok_or_else(|| bad(format!("{name}: unsupported dtype {dtype}")))?;
            let numel: i64 = shape.iter().product();
            if shape.iter().any(|&d| d < 0)
                || end < begin
                || end - begin != numel as u64 * elt as u64
                || data_start + end > file_len
            {
                return Err(bad(format!("{name}: inconsistent offsets/shape")));
            }
            entries.push((
                name.clone(),
                Entry {
                    dtype,
                    shape,
                    begin,
                    end,
                },
            ));
        }
        let shapes = entries
            .iter()
            .map(|(n, e)| (n.clone(), e.shape.clone()))
            .collect();
        let mut tensors = HashMap::new();
        let mut buf = Vec::new();
        for (name, e) in entries.into_iter().filter(|(n, _)| want(n)) {
            let (kind, _) = dtype_kind(&e.dtype).expect("checked above");
            buf.resize((e.end - e.begin) as usize, 0);
            file.seek(SeekFrom::Start(data_start + e.begin))
                .map_err(|err| ModelError::io(path, err))?;
            file.read_exact(&mut buf)
                .map_err(|err| ModelError::io(path, err))?;
            let mut t = Tensor::f_from_data_size(&buf, &e.shape, kind)?;
            if t.is_floating_point() && kind != float_kind {
                t = t.f_to_kind(float_kind)?;
            }
            if device != Device::Cpu {
                t = t.f_to_device(device)?;
            }
            tensors.insert(name, t);
        }
        Ok(Weights {
            path: path.to_path_buf(),
            tensors,
            shapes,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file holds `key` (loaded or not).
    pub(crate) fn contains(&self, key: &str) -> bool {
        self.shapes.contains_key(key)
    }

    /// Shape of `key` as stored in the file.
    pub(crate) fn shape(&self, key: &str) -> Result<Vec<i64>, ModelError> {
        self.shapes
            .get(key)
            .cloned()
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.path.clone(),
                key: key.to_string(),
            })
    }

    /// The loaded tensor `key` (a shallow clone sharing storage).
    pub(crate) fn get(&self, key: &str) -> Result<Tensor, ModelError> {
        self.tensors
            .get(key)
            .map(Tensor::shallow_clone)
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.path.clone(),
                key: key.to_string(),
            })
    }

    /// The loaded tensor `key`, checked against `expected` (`-1` = any size).
    pub(crate) fn get_shaped(&self, key: &str, expected: &[i64]) -> Result<Tensor, ModelError> {
        let t = self.get(key)?;
        let actual = t.size();
        let ok = actual.len() == expected.len()
            && actual.iter().zip(expected).all(|(&a, &e)| e < 0 || a == e);
        if !ok {
            return Err(ModelError::Shape {
                key: key.to_string(),
                actual,
                expected: expected.to_vec(),
            });
        }
        Ok(t)
    }
}
