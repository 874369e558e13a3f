"""Convert the upstream Prima checkpoints into what the node loads.

    convert-checkpoint --prima primafullmodel107.pt --tokenizer vqvae.pth \
        --tokenizer-config tokenizer_config.json --out <model-dir>

writes ``prima.safetensors``, ``tokenizer.safetensors`` and ``manifest.json`` into the model
directory. The checkpoints are read with :mod:`prima_unpickle` (no upstream code, no
``transformers``, no torch, nothing from the file is ever executed). Every hyper-parameter
in the manifest comes from the checkpoint itself (plain attributes and tensor shapes) or
from the tokenizer config, cross-checked against the tensors.

Exit codes: 0 ok, 1 conversion error, 2 usage error, 3 the checkpoint was refused as unsafe.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import sys
import tempfile
from collections import Counter, OrderedDict
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from prima_unpickle import (  # noqa: E402
    CheckpointError,
    LazyTensor,
    Stub,
    TorchArchive,
    UnsafeCheckpointError,
)

FORMAT_VERSION = 1
CONVERTER_VERSION = "1"

# What the pipeline feeds the VQ-VAE: 4 slices duplicated to 8, 32 x 32 in plane (spec §7).
PIPELINE_TOKEN_SHAPE = (8, 32, 32)
# The patchifier appends a one-hot orientation (axial/coronal/sagittal) to each token.
ORIENTATION_ONE_HOT = 3

# Module prefixes that inference reads; everything else in the state_dict is left out.
INFERENCE_ROOT = "clipvisualmodel"


class ConversionError(CheckpointError):
    """The checkpoint is readable but not what the node can run."""


# ---------------------------------------------------------------------------------------
# Generic helpers over the stub module tree


def _d(obj) -> dict:
    if not isinstance(obj, Stub):
        raise ConversionError(f"expected a pickled module, found {type(obj).__name__}")
    return obj.__dict__


def _cls(obj) -> str:
    return type(obj)._stub_name if isinstance(obj, Stub) else type(obj).__name__


def _is_module(obj) -> bool:
    return isinstance(obj, Stub) and isinstance(obj.__dict__.get("_modules"), dict)


def children(mod) -> "OrderedDict[str, Any]":
    return OrderedDict((k, v) for k, v in _d(mod).get("_modules", {}).items() if v is not None)


def child(mod, name: str, what: str = ""):
    c = _d(mod).get("_modules", {}).get(name)
    if c is None:
        raise ConversionError(f"{what or _cls(mod)} has no submodule '{name}'")
    return c


def param(mod, name: str, what: str = "") -> LazyTensor:
    d = _d(mod)
    t = d.get("_parameters", {}).get(name)
    if t is None:
        t = d.get("_buffers", {}).get(name)
    if not isinstance(t, LazyTensor):
        raise ConversionError(f"{what or _cls(mod)} has no tensor '{name}'")
    return t


def attr(mod, name: str, what: str = "", types=None):
    d = _d(mod)
    if name not in d:
        raise ConversionError(f"{what or _cls(mod)} lacks attribute '{name}'")
    v = d[name]
    if types is not None and not isinstance(v, types):
        raise ConversionError(f"{what or _cls(mod)}.{name} has unexpected type {type(v).__name__}")
    return v


def state_dict_entries(mod, prefix: str = "") -> Iterator[Tuple[str, LazyTensor]]:
    """``nn.Module.state_dict()`` order: own parameters, persistent buffers, then children."""
    d = _d(mod)
    for name, p in d.get("_parameters", {}).items():
        if p is not None:
            yield prefix + name, _tensor(p, prefix + name)
    nonpersistent = d.get("_non_persistent_buffers_set") or set()
    for name, b in d.get("_buffers", {}).items():
        if b is not None and name not in nonpersistent:
            yield prefix + name, _tensor(b, prefix + name)
    for name, m in d.get("_modules", {}).items():
        if m is not None:
            yield from state_dict_entries(m, prefix + name + ".")


def _tensor(t, key) -> LazyTensor:
    if not isinstance(t, LazyTensor):
        raise ConversionError(f"state_dict entry {key} is not a tensor ({type(t).__name__})")
    return t


def module_paths(mod, prefix: str = "") -> Iterator[Tuple[str, Any]]:
    """Every (dotted path, module) pair, shared modules once per path (like named_modules
    with remove_duplicate=False)."""
    yield prefix.rstrip("."), mod
    for name, m in children(mod).items():
        yield from module_paths(m, prefix + name + ".")


def key_table(entries: Sequence[Tuple[str, LazyTensor]]) -> List[dict]:
    """The fixture's ``state_dict_keys.json`` format: key, shape, dtype, same_tensor_as."""
    first: Dict[tuple, str] = {}
    out = []
    for key, t in entries:
        same = None
        if t.numel:  # empty tensors share no data
            ak = t.alias_key()
            same = first.get(ak)
            if same is None:
                first[ak] = key
        out.append({"key": key, "shape": list(t.shape), "dtype": t.dtype, "same_tensor_as": same})
    return out


_PARALLEL_WRAPPERS = ("DataParallel", "DistributedDataParallel")


def _unwrap_parallel(mod) -> Tuple[Any, List[str]]:
    """Follow ``.module`` through DataParallel wrappers (upstream saved several that way)."""
    wrappers: List[str] = []
    while (isinstance(mod, Stub) and _cls(mod) in _PARALLEL_WRAPPERS
           and _d(mod).get("_modules", {}).get("module") is not None):
        wrappers.append(_cls(mod))
        mod = _d(mod)["_modules"]["module"]
    return mod, wrappers


def _find_module_list(mods: dict, want: list, preferred: str, what: str) -> str:
    """The ModuleList registering exactly these head objects, in order (m1/m2 upstream;
    diagnosis_modules/referral_modules in another upstream version)."""
    for name in [preferred] + [n for n in mods if n != preferred]:
        ml = mods.get(name)
        if ml is None or _cls(ml) != "ModuleList":
            continue
        kids = list(children(ml).values())
        if len(kids) == len(want) and all(a is b for a, b in zip(kids, want)):
            return name
    raise ConversionError(f"no ModuleList of FullMRIModel holds the modules of {what} in order")


def _float(v, what: str) -> float:
    if isinstance(v, LazyTensor):
        if v.numel != 1:
            raise ConversionError(f"{what} is a tensor with {v.numel} elements")
        return float(v.numpy().reshape(-1)[0])
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
        raise ConversionError(f"{what} is not a number ({type(v).__name__})")
    return float(v)


def _int(v, what: str) -> int:
    if isinstance(v, LazyTensor):
        if v.numel != 1 or not v.dtype.startswith(("int", "uint")):
            raise ConversionError(f"{what} is not an integer tensor of one element")
        return int(v.numpy().reshape(-1)[0])
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise ConversionError(f"{what} is not an integer ({type(v).__name__})")
    return int(v)


# ---------------------------------------------------------------------------------------
# Architecture from the module tree


def _linear_shape(mod, what) -> Tuple[int, int]:
    w = param(mod, "weight", what)
    if len(w.shape) != 2:
        raise ConversionError(f"{what}.weight is not 2-D")
    return w.shape[0], w.shape[1]


def transformer_arch(tr, dim: int, what: str) -> dict:
    """Depth, heads, dim_head, mlp_dim, scale and LayerNorm eps of a ``Transformer``."""
    layers = list(children(child(tr, "layers", what)).items())
    if not layers:
        raise ConversionError(f"{what} has no layers")
    per_layer = []
    scale_attr_ignored: set = set()
    for i, (name, layer) in enumerate(layers):
        lw = f"{what}.layers.{name}"
        if name != str(i):
            raise ConversionError(f"{what}: layer keys are not 0..n-1")
        attn_pn, ff_pn = child(layer, "0", lw), child(layer, "1", lw)
        attn = child(attn_pn, "fn", lw + ".0")
        ff = child(ff_pn, "fn", lw + ".1")
        heads = _int(attr(attn, "heads", lw + ".0.fn"), lw + ".0.fn.heads")
        dim_head = _int(attr(attn, "dim_head", lw + ".0.fn"), lw + ".0.fn.dim_head")
        # Upstream's attention (flash-attn varlen, or its fallback) scales by
        # dim_head ** -0.5 and never reads `scale`; record the attribute only if it differs.
        scale = float(dim_head ** -0.5)
        scale_attr = _d(attn).get("scale")
        if scale_attr is not None and _float(scale_attr, lw + ".0.fn.scale") != scale:
            scale_attr_ignored.add(_float(scale_attr, lw + ".0.fn.scale"))
        if _d(attn).get("causal", False):
            raise ConversionError(f"{lw}: causal attention is not supported")
        qkv = param(child(attn, "to_qkv", lw), "weight", lw + ".0.fn.to_qkv")
        if qkv.shape != (3 * heads * dim_head, dim):
            raise ConversionError(
                f"{lw}.0.fn.to_qkv.weight is {list(qkv.shape)}, expected "
                f"[{3 * heads * dim_head}, {dim}] from heads={heads}, dim_head={dim_head}"
            )
        if "bias" in _d(child(attn, "to_qkv")).get("_parameters", {}) and \
                _d(child(attn, "to_qkv"))["_parameters"]["bias"] is not None:
            raise ConversionError(f"{lw}.0.fn.to_qkv has a bias (upstream has none)")
        to_out = _d(attn).get("_modules", {}).get("to_out")
        project_out = _cls(to_out) != "Identity" if to_out is not None else False
        if project_out:
            o = _linear_shape(child(to_out, "0", lw), lw + ".0.fn.to_out.0")
            if o != (dim, heads * dim_head):
                raise ConversionError(f"{lw}.0.fn.to_out.0.weight has shape {list(o)}")
        elif heads * dim_head != dim:
            raise ConversionError(f"{lw}: no output projection but heads*dim_head != dim")
        net = child(ff, "net", lw + ".1.fn")
        mlp_dim, in0 = _linear_shape(child(net, "0"), lw + ".1.fn.net.0")
        out3, in3 = _linear_shape(child(net, "3"), lw + ".1.fn.net.3")
        if in0 != dim or out3 != dim or in3 != mlp_dim:
            raise ConversionError(f"{lw}: feed-forward shapes do not match dim {dim}")
        gelu = child(net, "1", lw + ".1.fn.net")
        approx = _d(gelu).get("approximate", "none")
        if _cls(gelu) != "GELU" or approx != "none":
            raise ConversionError(f"{lw}: feed-forward activation is {_cls(gelu)}({approx!r})")
        eps = set()
        for pn in (attn_pn, ff_pn):
            norm = child(pn, "norm", lw)
            eps.add(_float(attr(norm, "eps", lw + ".norm"), lw + ".norm.eps"))
            if param(norm, "weight", lw + ".norm").shape != (dim,):
                raise ConversionError(f"{lw}: LayerNorm width differs from dim {dim}")
        per_layer.append((heads, dim_head, scale, mlp_dim, project_out, tuple(sorted(eps))))
    if len(set(per_layer)) != 1:
        raise ConversionError(f"{what}: layers differ in heads/dim_head/mlp_dim/eps")
    heads, dim_head, scale, mlp_dim, project_out, eps = per_layer[0]
    if len(eps) != 1:
        raise ConversionError(f"{what}: LayerNorm eps differ within a layer")
    out = {
        "depth": len(layers),
        "heads": heads,
        "dim_head": dim_head,
        "mlp_dim": mlp_dim,
        "attention_scale": scale,
        "layernorm_eps": eps[0],
        "project_out": project_out,
    }
    if scale_attr_ignored:
        out["scale_attribute_ignored"] = sorted(scale_attr_ignored)
    return out


def vit_arch(vit, what: str) -> dict:
    if "dim" in _d(vit):
        dim = _int(_d(vit)["dim"], what + ".dim")
    else:  # upstream falls back to the final LayerNorm's width
        dim = param(child(vit, "layernorm", what), "weight", what + ".layernorm").shape[0]
    clsnum = _int(attr(vit, "clsnum", what), what + ".clsnum")
    pool = attr(vit, "pool", what, str)
    if pool != "cls":
        raise ConversionError(f"{what}.pool is {pool!r}; only 'cls' is supported")
    if _d(vit).get("pos_embedding") is not None:
        raise ConversionError(f"{what} has a positional embedding; upstream Prima has none")
    cls_token = param(vit, "cls_token", what)
    if cls_token.shape != (1, clsnum, dim):
        raise ConversionError(f"{what}.cls_token is {list(cls_token.shape)}, clsnum={clsnum}")
    tr = transformer_arch(child(vit, "transformer", what), dim, what + ".transformer")
    ln = child(vit, "layernorm", what)
    ln_eps = _float(attr(ln, "eps", what + ".layernorm"), what + ".layernorm.eps")
    if ln_eps != tr["layernorm_eps"]:
        raise ConversionError(f"{what}: final LayerNorm eps differs from the blocks'")
    nc, nin = _linear_shape(child(child(vit, "mlp_head", what), "0"), what + ".mlp_head.0")
    if nin != clsnum * dim:
        raise ConversionError(f"{what}.mlp_head.0 takes {nin} inputs, clsnum*dim = {clsnum * dim}")
    return {
        "dim": dim,
        "depth": tr["depth"],
        "heads": tr["heads"],
        "dim_head": tr["dim_head"],
        "mlp_dim": tr["mlp_dim"],
        "clsnum": clsnum,
        "num_classes": nc,
        "pool": pool,
        "attention_scale": tr["attention_scale"],
        "layernorm_eps": tr["layernorm_eps"],
        "project_out": tr["project_out"],
        **({"scale_attribute_ignored": tr["scale_attribute_ignored"]}
           if "scale_attribute_ignored" in tr else {}),
    }


def name_encoder_arch(enc, prefix: str, what: str) -> Tuple[dict, Optional[Tuple[str, LazyTensor]]]:
    """A ``SerieTransformerEncoder``; also returns its ``p_enc`` table for export."""
    if _cls(enc) != "SerieTransformerEncoder":
        raise ConversionError(f"{what} is a {_cls(enc)}, expected SerieTransformerEncoder")
    emb = param(child(enc, "embed", what), "weight", what + ".embed")
    embsize = _int(attr(enc, "embsize", what), what + ".embsize")
    # forward() tests hasattr(self, 'prelinear'): absent means False
    prelinear = _d(enc).get("prelinear", False)
    if not isinstance(prelinear, bool):
        raise ConversionError(f"{what}.prelinear is not a bool")
    p_enc = _d(enc).get("p_enc")
    if not isinstance(p_enc, LazyTensor) or len(p_enc.shape) != 2:
        raise ConversionError(f"{what}.p_enc (1-D positional table) is missing or not 2-D")
    rows, pe_dim = p_enc.shape
    if emb.shape[1] + pe_dim != embsize:
        raise ConversionError(
            f"{what}: embedding width {emb.shape[1]} + positional {pe_dim} != embsize {embsize}"
        )
    tr = transformer_arch(child(enc, "transformer", what), embsize, what + ".transformer")
    lin_out, lin_in = _linear_shape(child(enc, "linear", what), what + ".linear")
    if lin_in != embsize:
        raise ConversionError(f"{what}.linear takes {lin_in} inputs, embsize is {embsize}")
    arch = {
        "embedding": list(emb.shape),
        "embsize": embsize,
        "positional_encoding_dim": pe_dim,
        "positional_encoding_rows": rows,
        "depth": tr["depth"],
        "heads": tr["heads"],
        "dim_head": tr["dim_head"],
        "mlp_dim": tr["mlp_dim"],
        "prelinear": prelinear,
        "linear_out": lin_out,
        "attention_scale": tr["attention_scale"],
        "layernorm_eps": tr["layernorm_eps"],
        "project_out": tr["project_out"],
        "state_dict_prefix": prefix,
        "p_enc_key": prefix + ".p_enc",
    }
    return arch, (prefix + ".p_enc", p_enc)


def serie_encoder_arch(hv, inner_dim: int):
    prefix = INFERENCE_ROOT + ".serieencoder"
    se = child(hv, "serieencoder", "HierViT")
    if _cls(se) == "Sequential":
        kids = children(se)
        if list(kids) != ["0", "1"]:
            raise ConversionError("HierViT.serieencoder Sequential must have exactly 2 entries")
        arch, penc = name_encoder_arch(kids["0"], prefix + ".0", "serieencoder.0")
        if not arch["prelinear"]:
            raise ConversionError("serieencoder.0 is wrapped in a Sequential but prelinear=False")
        out, inp = _linear_shape(kids["1"], "serieencoder.1")
        if inp != arch["embsize"]:
            raise ConversionError(f"serieencoder.1 takes {inp} inputs, embsize is {arch['embsize']}")
        arch["form"] = (
            f"Sequential(SerieTransformerEncoder(prelinear=True), Linear({inp}, inner.dim))"
        )
        arch["form_kind"] = "sequential"
        arch["projection"] = [inp, out]
        arch["projection_prefix"] = prefix + ".1"
    else:
        arch, penc = name_encoder_arch(se, prefix, "serieencoder")
        if arch["prelinear"]:
            raise ConversionError("plain serieencoder with prelinear=True has no projection")
        arch["form"] = (f"SerieTransformerEncoder(prelinear=False) with its own "
                        f"linear = Linear({arch['embsize']}, inner.dim)")
        arch["form_kind"] = "plain"
        arch["projection"] = [arch["embsize"], arch["linear_out"]]
        arch["projection_prefix"] = prefix + ".linear"
    if arch["projection"][1] != inner_dim:
        raise ConversionError(
            f"serie name encoder projects to {arch['projection'][1]}, inner ViT dim is {inner_dim}"
        )
    return arch, penc


def head_arch(head, what: str, embedding_dim: int) -> dict:
    """``Sequential(Linear, ReLU, Linear, ReLU, ..., Linear)``."""
    kids = list(children(head).items())
    if _cls(head) != "Sequential" or not kids:
        raise ConversionError(f"{what} is not a non-empty Sequential")
    dims = []
    linear_idx = []
    for pos, (name, m) in enumerate(kids):
        if name != str(pos):
            raise ConversionError(f"{what}: Sequential keys are not 0..n-1")
        expect_linear = pos % 2 == 0
        if expect_linear:
            if _cls(m) != "Linear":
                raise ConversionError(f"{what}.{name} is {_cls(m)}, expected Linear")
            out, inp = _linear_shape(m, f"{what}.{name}")
            b = _d(m).get("_parameters", {}).get("bias")
            if not isinstance(b, LazyTensor) or b.shape != (out,):
                raise ConversionError(f"{what}.{name} has no bias of size {out}")
            if dims and inp != dims[-1]:
                raise ConversionError(f"{what}.{name} takes {inp} inputs, previous gives {dims[-1]}")
            if not dims and inp != embedding_dim:
                raise ConversionError(
                    f"{what}.0 takes {inp} inputs, the clip embedding has {embedding_dim}"
                )
            dims.append(out)
            linear_idx.append(pos)
        elif _cls(m) != "ReLU":
            raise ConversionError(f"{what}.{name} is {_cls(m)}, expected ReLU")
    if len(kids) % 2 == 0:
        raise ConversionError(f"{what} ends with an activation, not a Linear")
    return {"num_outputs": dims[-1], "hidden": dims[:-1], "linear_indices": linear_idx}


# ---------------------------------------------------------------------------------------
# Tokenizer


def _conv_out(n: int, stride: int, kernel: int, dilation: int, padding: int) -> int:
    return (n + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def tokenizer_arch(cfg: dict, sd: "OrderedDict[str, LazyTensor]") -> Tuple[dict, List[str]]:
    """Encoder layout from the config, checked against the tensors; returns the keys to keep."""
    c = cfg.get("vqvae_config", cfg)

    def need(*names):
        for n in names:
            if n in c:
                return c[n]
        raise ConversionError(f"tokenizer config lacks '{names[0]}'")

    spatial_dims = int(need("spatial_dims"))
    in_channels = int(need("in_channels"))
    channels = [int(x) for x in need("num_channels", "channels")]
    res_channels = [int(x) for x in need("num_res_channels")]
    num_res_layers = int(need("num_res_layers"))
    down = [[int(v) for v in p] for p in need("downsample_parameters")]
    embedding_dim = int(need("embedding_dim"))
    if not (len(channels) == len(res_channels) == len(down)) or not channels:
        raise ConversionError(
            "tokenizer config: num_channels, num_res_channels and downsample_parameters "
            "must have the same non-zero length"
        )
    if any(len(p) != 4 for p in down):
        raise ConversionError("tokenizer config: downsample_parameters entries are [s, k, d, p]")

    problems = []

    def check(key, shape):
        t = sd.get(key)
        if t is None:
            problems.append(f"{key} missing")
        elif list(t.shape) != list(shape):
            problems.append(f"{key} is {list(t.shape)}, config implies {list(shape)}")

    blocks = []
    idx = 0
    prev = in_channels
    for s, (stride, kernel, dilation, padding) in enumerate(down):
        C, R = channels[s], res_channels[s]
        pre = f"encoder.blocks.{idx}.conv."
        check(pre + "weight", [C, prev] + [kernel] * spatial_dims)
        check(pre + "bias", [C])
        blocks.append({"index": idx, "kind": "conv", "in": prev, "out": C, "stride": stride,
                       "kernel": kernel, "dilation": dilation, "padding": padding, "relu": True})
        idx += 1
        for _ in range(num_res_layers):
            pre = f"encoder.blocks.{idx}."
            check(pre + "conv1.conv.weight", [R, C] + [3] * spatial_dims)
            check(pre + "conv1.conv.bias", [R])
            check(pre + "conv2.conv.weight", [C, R] + [3] * spatial_dims)
            check(pre + "conv2.conv.bias", [C])
            blocks.append({"index": idx, "kind": "residual", "channels": C, "res_channels": R})
            idx += 1
        prev = C
    pre = f"encoder.blocks.{idx}.conv."
    check(pre + "weight", [embedding_dim, prev] + [3] * spatial_dims)
    check(pre + "bias", [embedding_dim])
    blocks.append({"index": idx, "kind": "conv", "in": prev, "out": embedding_dim, "stride": 1,
                   "kernel": 3, "dilation": 1, "padding": 1, "relu": False})
    expected = {f"encoder.blocks.{b['index']}." for b in blocks}
    enc_keys = [k for k in sd if k.startswith("encoder.")]
    extra = [k for k in enc_keys if not any(k.startswith(p) for p in expected)]
    if extra:
        problems.append(f"encoder tensors the config does not describe: {extra[:5]}")
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ConversionError(
            "tokenizer config does not match the checkpoint: " + "; ".join(problems[:3]) + more
        )

    shape = list(PIPELINE_TOKEN_SHAPE)[:spatial_dims]
    for stride, kernel, dilation, padding in down:
        shape = [_conv_out(n, stride, kernel, dilation, padding) for n in shape]
    arch = {
        "spatial_dims": spatial_dims,
        "in_channels": in_channels,
        "num_channels": channels,
        "num_res_channels": res_channels,
        "num_res_layers": num_res_layers,
        "downsample_parameters": down,
        "embedding_dim": embedding_dim,
        "activation": "relu",
        "blocks": blocks,
        "token_input_shape": list(PIPELINE_TOKEN_SHAPE),
        "encoded_shape": [embedding_dim] + shape,
        "encoded_size": embedding_dim * int(np.prod(shape)),
        "state_dict_prefix": "encoder.blocks",
    }
    omitted = sorted({k.split(".")[0] + "." for k in sd if not k.startswith("encoder.")})
    arch["omitted_prefixes"] = omitted
    arch["omitted_note"] = (
        "decoder and quantizer are not used by inference (the pipeline calls encode() only) "
        "and are not stored"
    )
    return arch, enc_keys


def tokenizer_state_dict(obj) -> "OrderedDict[str, LazyTensor]":
    """A plain state_dict, a dict wrapping one, or a whole pickled VQVAE module."""
    if isinstance(obj, Stub):
        return OrderedDict(state_dict_entries(obj))
    if isinstance(obj, dict):
        if obj and all(isinstance(v, LazyTensor) for v in obj.values()):
            return OrderedDict(obj)
        for k in ("state_dict", "model_state_dict", "model", "network"):
            if k in obj:
                return tokenizer_state_dict(obj[k])
    raise ConversionError("tokenizer file holds neither a state_dict nor a VQVAE module")


# ---------------------------------------------------------------------------------------
# safetensors (written by hand so multi-GB checkpoints stream one tensor at a time)

_ST_DTYPES = {
    np.dtype("float32"): "F32",
    np.dtype("float64"): "F64",
    np.dtype("float16"): "F16",
    np.dtype("int64"): "I64",
    np.dtype("int32"): "I32",
    np.dtype("int16"): "I16",
    np.dtype("int8"): "I8",
    np.dtype("uint8"): "U8",
    np.dtype("bool"): "BOOL",
}


def _as_stored(t: LazyTensor) -> np.ndarray:
    a = t.numpy()
    if a.dtype.kind == "f":
        a = a.astype(np.float32, copy=False)
    return np.ascontiguousarray(a)


def write_safetensors(path: str, tensors: Sequence[Tuple[str, LazyTensor]],
                      metadata: Dict[str, str]) -> int:
    """Write ``tensors`` in the given order; returns the data size in bytes."""
    header: Dict[str, Any] = {"__metadata__": metadata}
    off = 0
    layout = []
    for name, t in tensors:
        if name in header:
            raise ConversionError(f"duplicate tensor name {name}")
        a_dtype = np.dtype(np.float32) if t.dtype in ("float32", "float64", "float16",
                                                      "bfloat16") else None
        if a_dtype is None:
            a_dtype = np.dtype(t.dtype)
        st = _ST_DTYPES.get(a_dtype)
        if st is None:
            raise ConversionError(f"{name}: dtype {t.dtype} cannot be stored")
        n = t.numel * a_dtype.itemsize
        header[name] = {"dtype": st, "shape": list(t.shape), "data_offsets": [off, off + n]}
        layout.append((name, t, n))
        off += n
    hbytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hbytes += b" " * ((8 - len(hbytes) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hbytes)))
        f.write(hbytes)
        for name, t, n in layout:
            a = _as_stored(t)
            if a.nbytes != n:
                raise ConversionError(f"{name}: {a.nbytes} bytes, expected {n}")
            if n:
                f.write(a.data)
        _fsync_file(f)
    return off


# ---------------------------------------------------------------------------------------
# Conversion


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _tensor_digest(t: LazyTensor) -> str:
    a = _as_stored(t)
    return hashlib.sha256(a.data if a.size else b"").hexdigest()


class PrimaCheckpoint:
    """The unpickled ``FullMRIModel`` and everything derived from it."""

    def __init__(self, path: str):
        self.path = path
        self.root = TorchArchive(path).load()
        # upstream's loader does `if hasattr(full_model, "module"): full_model = full_model.module`
        self.unwrapped: List[str] = []
        self.root, self.unwrapped = _unwrap_parallel(self.root)
        if _cls(self.root) != "FullMRIModel" or not _is_module(self.root):
            raise ConversionError(
                f"{os.path.basename(path)} holds a {_cls(self.root)}, expected a pickled "
                "FullMRIModel (the full_model_ckpt file)"
            )
        self.entries: List[Tuple[str, LazyTensor]] = list(state_dict_entries(self.root))

    # -- state_dict view
    def key_table(self) -> List[dict]:
        return key_table(self.entries)

    def alias_prefixes(self) -> Dict[str, str]:
        """Module paths that are the same object as an inference module path."""
        by_id: Dict[int, List[str]] = {}
        for path, m in module_paths(self.root):
            by_id.setdefault(id(m), []).append(path)
        out: Dict[str, str] = {}
        head_roots = ("m1.", "m2.")
        for paths in by_id.values():
            if len(paths) < 2:
                continue
            canonical = next((p for p in paths if p == INFERENCE_ROOT or
                              p.startswith(INFERENCE_ROOT + ".")), None)
            if canonical is None or any(p.startswith(head_roots) for p in paths):
                continue
            for p in paths:
                if p == canonical:
                    continue
                # only the outermost alias: children follow from their parent's mapping
                parent_p, _, tail = p.rpartition(".")
                if parent_p + "." in out and out[parent_p + "."] + tail == canonical:
                    continue
                out[p + "."] = canonical + "."
        # drop entries implied by a shorter one
        return {k: v for k, v in out.items()
                if not any(k != k2 and k.startswith(k2) and v.startswith(v2)
                           for k2, v2 in out.items())}

    # -- architecture
    def architecture(self, tokenizer_encoded_size: Optional[int]):
        mods = _d(self.root)["_modules"]
        hv = mods.get(INFERENCE_ROOT)
        if hv is None or _cls(hv) != "HierViT":
            raise ConversionError("FullMRIModel.clipvisualmodel is missing or not a HierViT")
        inner = vit_arch(child(hv, "innerViT", "HierViT"), "innerViT")
        outer = vit_arch(child(hv, "outerViT", "HierViT"), "outerViT")
        if inner["num_classes"] != outer["dim"]:
            raise ConversionError(
                f"inner ViT emits {inner['num_classes']} features, outer ViT dim is {outer['dim']}"
            )
        arch: Dict[str, Any] = {"inner": inner, "outer": outer}
        for k in ("useseriename", "usestudydescription", "patdis"):
            arch[k] = bool(attr(hv, k, "HierViT", bool))
        penc = []
        if arch["useseriename"]:
            se, pe = serie_encoder_arch(hv, inner["dim"])
            arch["serie_name_encoder"] = se
            penc.append(pe)
        if arch["usestudydescription"]:
            sd, pe = name_encoder_arch(child(hv, "studyencoder", "HierViT"),
                                       INFERENCE_ROOT + ".studyencoder", "studyencoder")
            if sd["prelinear"]:
                raise ConversionError("studyencoder has prelinear=True (no projection)")
            if sd["linear_out"] != outer["dim"]:
                raise ConversionError(
                    f"study encoder gives {sd['linear_out']} features, outer dim is {outer['dim']}"
                )
            arch["study_description_encoder"] = sd
            penc.append(pe)
        arch["pipeline_patchifier"] = self._patchifier(inner["dim"], tokenizer_encoded_size)
        return arch, penc

    def _patchifier(self, inner_dim: int, enc_size: Optional[int]) -> dict:
        # The pipeline builds its own MedicalImagePatchifier; the CLIP's copy tells us `d`.
        clip = _d(self.root)["_modules"].get("clipmodel")
        d = None
        if clip is not None:
            p = _d(clip).get("_modules", {}).get("patchifier")
            if p is not None and "d" in _d(p):
                d = _int(_d(p)["d"], "clipmodel.patchifier.d")
                if "out_dim" in _d(p) and _int(_d(p)["out_dim"], "patchifier.out_dim") != inner_dim:
                    raise ConversionError("clipmodel.patchifier.out_dim differs from inner ViT dim")
        if d is None:
            if enc_size is None:
                raise ConversionError("cannot derive the patchifier width: no clipmodel.patchifier")
            d = inner_dim - enc_size - ORIENTATION_ONE_HOT
        in_dim = inner_dim - d - ORIENTATION_ONE_HOT
        if enc_size is not None and in_dim != enc_size:
            raise ConversionError(
                f"inner ViT dim {inner_dim} = in_dim + d + 3 needs in_dim {in_dim}, but the "
                f"tokenizer encodes a token to {enc_size} values"
            )
        if d % 6 != 0 or d <= 0:
            raise ConversionError(f"3-D positional encoding width {d} is not a multiple of 6")
        return {"in_dim": in_dim, "d": d, "out_dim": in_dim + d + ORIENTATION_ONE_HOT}

    # -- heads
    def head_tables(self, embedding_dim: int):
        d = _d(self.root)
        mods = d["_modules"]
        tables = {}
        for attr_name, ml_pref, kind in (("diagnosisheads", "m1", "diagnosis"),
                                         ("referralheads", "m2", "referral")):
            heads = d.get(attr_name)
            if not isinstance(heads, dict):
                raise ConversionError(f"FullMRIModel.{attr_name} is missing")
            names_by_obj: Dict[int, List[str]] = {}
            for name, v in heads.items():
                if not isinstance(name, str):
                    raise ConversionError(f"{attr_name} has a non-string name")
                if not isinstance(v, (list, tuple)) or len(v) < 2 or not _is_module(v[0]):
                    raise ConversionError(f"{attr_name}[{name!r}] is not [module, idx]")
                names_by_obj.setdefault(id(v[0]), []).append(name)
            ml_name = _find_module_list(mods, [v[0] for v in heads.values()], ml_pref, attr_name)
            rows = []
            for pos, (name, v) in enumerate(heads.items()):
                head, idx = v[0], _int(v[1], f"{attr_name}[{name!r}] idx")
                what = f"{ml_name}.{pos}"
                seq, wrappers = _unwrap_parallel(head)
                wpath = what + ".module" * len(wrappers)
                ha = head_arch(seq, wpath, embedding_dim)
                if not 0 <= idx < ha["num_outputs"]:
                    raise ConversionError(f"{name!r}: idx {idx} outside {ha['num_outputs']} outputs")
                th_owner = head if "thresh" in _d(head) else seq
                rows.append({
                    "name": name,
                    "module_list": ml_name,
                    "index_in_module_list": pos,
                    "state_dict_prefix": what,
                    "idx": idx,
                    "thresh": _float(attr(th_owner, "thresh", what), what + ".thresh"),
                    "num_outputs": ha["num_outputs"],
                    "hidden": ha["hidden"],
                    "same_module_object_as": [n for n in names_by_obj[id(head)] if n != name],
                    "linear_indices": ha["linear_indices"],
                    "_module": seq,
                    "_weights_path": wpath,
                })
            tables[kind] = rows
        ph = mods.get("priorityhead")
        if ph is None:
            raise ConversionError("FullMRIModel.priorityhead is missing")
        ph, wrappers = _unwrap_parallel(ph)
        ph_path = "priorityhead" + ".module" * len(wrappers)
        pa = head_arch(ph, ph_path, embedding_dim)
        if pa["num_outputs"] == 4:
            classes = ["none", "low", "medium", "high"]
        elif pa["num_outputs"] == 3:
            classes = ["none", "low", "high"]
        else:
            raise ConversionError(f"priorityhead has {pa['num_outputs']} outputs (3 or 4 expected)")
        prio = {"state_dict_prefix": "priorityhead", "num_outputs": pa["num_outputs"],
                "hidden": pa["hidden"], "linear_indices": pa["linear_indices"], "_module": ph,
                "_weights_path": ph_path}
        return tables["diagnosis"], tables["referral"], prio, classes


def dedup_heads(rows: List[dict]) -> Dict[str, Any]:
    """Assign ``weights_prefix``: the first head with the same module object or the same
    tensor data; only that one is stored. Mutates rows; returns stats."""
    by_obj: Dict[int, str] = {}
    by_data: Dict[tuple, str] = {}
    stored, full = 0, 0
    for r in rows:
        mod = r.pop("_module")
        prefix = r.pop("_weights_path")
        entries = list(state_dict_entries(mod))
        nbytes = sum(t.numel * 4 for _, t in entries)
        full += nbytes
        if id(mod) in by_obj:
            r["weights_prefix"] = by_obj[id(mod)]
            r["weights_dedup"] = "same_module_object"
            continue
        sig = tuple((k, t.shape, _tensor_digest(t)) for k, t in entries)
        if sig in by_data:
            r["weights_prefix"] = by_data[sig]
            r["weights_dedup"] = "identical_data"
            by_obj[id(mod)] = by_data[sig]
            continue
        by_obj[id(mod)] = prefix
        by_data[sig] = prefix
        r["weights_prefix"] = prefix
        r["weights_dedup"] = None
        r["_entries"] = entries
        stored += nbytes
    return {"head_bytes_full": full, "head_bytes_stored": stored}


def load_tokenizer_config(path: str) -> dict:
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ConversionError(f"cannot read tokenizer config {path}: {e}") from None


def _fsync_file(f):
    """Flush ``f`` and make its content durable before anyone renames it into place: a
    crash or power loss must leave the old file or the complete new one, never a torn one
    under the final name (the loader refuses a file whose sha256 is not the manifest's)."""
    f.flush()
    os.fsync(f.fileno())


def _fsync_dir(path: str):
    """Make the entries of directory ``path`` (new names, renames) durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _makedirs_durable(path: str):
    """``os.makedirs``, with every directory it creates and the parent of each fsynced."""
    path = os.path.abspath(path)
    missing = []
    p = path
    while not os.path.isdir(p):
        missing.append(p)
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    os.makedirs(path, exist_ok=True)
    for d in missing:
        _fsync_dir(d)
    if missing:
        _fsync_dir(os.path.dirname(missing[-1]))


def _atomic_replace(tmp: str, final: str):
    os.replace(tmp, final)


def convert(prima_path: str, tokenizer_path: str, tokenizer_config_path: str, out_dir: str,
            model_name: str = "prima", model_version: Optional[str] = None,
            dump_keys: Optional[str] = None, log=None) -> dict:
    """Run the whole conversion; returns the manifest (also written to out_dir)."""
    log = log or (lambda msg: None)
    for p in (prima_path, tokenizer_path, tokenizer_config_path):
        if not os.path.isfile(p):
            raise ConversionError(f"no such file: {p}")

    cfg = load_tokenizer_config(tokenizer_config_path)
    log(f"reading {tokenizer_path}")
    tok_sd = tokenizer_state_dict(TorchArchive(tokenizer_path).load())
    tok_arch, tok_keys = tokenizer_arch(cfg, tok_sd)

    log(f"reading {prima_path}")
    ck = PrimaCheckpoint(prima_path)
    if dump_keys:
        write_json(dump_keys, ck.key_table())

    arch, penc = ck.architecture(tok_arch["encoded_size"])
    embedding_dim = arch["outer"]["clsnum"] * arch["outer"]["dim"]
    diag, ref, prio, classes = ck.head_tables(embedding_dim)
    stats = dedup_heads(diag + ref + [prio])

    # tensors to store, in state_dict order
    stored: List[Tuple[str, LazyTensor]] = []
    skipped_empty = []
    for key, t in ck.entries:
        if key.startswith(INFERENCE_ROOT + "."):
            if t.numel == 0:
                skipped_empty.append(key)
                continue
            stored.append((key, t))
    stored.extend(penc)
    for r in diag + ref + [prio]:
        for k, t in r.pop("_entries", []):
            stored.append((r["weights_prefix"] + "." + k, t))
    for r in diag + ref + [prio]:
        r.pop("_entries", None)

    prima_sha = sha256_file(prima_path)
    tok_sha = sha256_file(tokenizer_path)
    cfg_sha = sha256_file(tokenizer_config_path)
    if model_version is None:
        stem = os.path.splitext(os.path.basename(prima_path))[0]
        model_version = f"{stem}-{prima_sha[:12]}"

    _makedirs_durable(out_dir)
    meta = {"format": "pt", "model_name": model_name, "model_version": model_version}
    tmp_prima = os.path.join(out_dir, ".prima.safetensors.tmp")
    tmp_tok = os.path.join(out_dir, ".tokenizer.safetensors.tmp")
    tmp_man = os.path.join(out_dir, ".manifest.json.tmp")
    try:
        log(f"writing {len(stored)} tensors to prima.safetensors")
        prima_bytes = write_safetensors(tmp_prima, stored, dict(meta, source_sha256=prima_sha))
        tok_bytes = write_safetensors(tmp_tok, [(k, tok_sd[k]) for k in tok_keys],
                                      dict(meta, source_sha256=tok_sha))
        manifest = _manifest(**locals())
        write_json(tmp_man, manifest)
        _atomic_replace(tmp_prima, os.path.join(out_dir, "prima.safetensors"))
        _atomic_replace(tmp_tok, os.path.join(out_dir, "tokenizer.safetensors"))
        _atomic_replace(tmp_man, os.path.join(out_dir, "manifest.json"))
        _fsync_dir(out_dir)
    finally:
        for t in (tmp_prima, tmp_tok, tmp_man):
            if os.path.exists(t):
                os.unlink(t)
    return manifest


def _manifest(*, prima_path, tokenizer_path, tokenizer_config_path, model_name, model_version,
              prima_sha, tok_sha, cfg_sha, ck, arch, tok_arch, diag, ref, prio, classes,
              embedding_dim, stored, skipped_empty, tok_keys, prima_bytes, tok_bytes, stats,
              tmp_prima, tmp_tok, **_unused):
    full_bytes = stats["head_bytes_full"] + sum(
        t.numel * 4 for k, t in ck.entries if k.startswith(INFERENCE_ROOT + "."))

    manifest = OrderedDict()
    manifest["format_version"] = FORMAT_VERSION
    manifest["model_name"] = model_name
    manifest["model_version"] = model_version
    manifest["demo"] = False
    manifest["source"] = os.path.basename(prima_path)
    manifest["source_sha256"] = prima_sha
    manifest["sources"] = {
        "prima": {"file": os.path.basename(prima_path), "sha256": prima_sha,
                  "unwrapped": ck.unwrapped},
        "tokenizer": {"file": os.path.basename(tokenizer_path), "sha256": tok_sha},
        "tokenizer_config": {"file": os.path.basename(tokenizer_config_path), "sha256": cfg_sha},
    }
    manifest["architecture"] = arch
    manifest["tokenizer"] = tok_arch
    manifest["diagnosis_heads"] = diag
    manifest["referral_heads"] = ref
    manifest["priority_head"] = prio
    manifest["priority_classes"] = classes
    manifest["embedding_dim"] = embedding_dim
    manifest["state_dict_alias_prefixes"] = ck.alias_prefixes()
    manifest["files"] = {
        "prima": {
            "file": "prima.safetensors",
            "sha256": sha256_file(tmp_prima),
            "tensors": len(stored),
            "data_bytes": prima_bytes,
            "inference_state_dict_bytes": full_bytes,
            "state_dict_keys": len(ck.entries),
            "source_dtypes": dict(sorted(Counter(t.dtype for _, t in stored).items())),
            "omitted_empty": skipped_empty,
            "omitted_note": (
                "only clipvisualmodel.*, m1/m2 heads (each distinct head once, see "
                "weights_prefix), priorityhead.* and the p_enc tables are stored; "
                "clipmodel.* (aliases of clipvisualmodel.*, text model, temperatures) is "
                "not used by inference"
            ),
        },
        "tokenizer": {"file": "tokenizer.safetensors", "sha256": sha256_file(tmp_tok),
                      "tensors": len(tok_keys), "data_bytes": tok_bytes},
    }
    manifest["head_dedup"] = stats
    manifest["converter"] = {"name": "convert-checkpoint", "version": CONVERTER_VERSION}
    return manifest


def write_json(path: str, obj):
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
        _fsync_file(f)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------
# CLI


def _one_line(msg: str) -> str:
    return " ".join(str(msg).split())


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        prog="convert-checkpoint",
        description="Convert the upstream Prima checkpoint and VQ-VAE tokenizer into "
                    "safetensors + manifest.json without executing checkpoint code.",
    )
    ap.add_argument("--prima", required=True, help="full model checkpoint (FullMRIModel, .pt)")
    ap.add_argument("--tokenizer", help="VQ-VAE state_dict (.pth)")
    ap.add_argument("--tokenizer-config", help="tokenizer config JSON (vqvae_config)")
    ap.add_argument("--out", help="model directory to write")
    ap.add_argument("--model-name", default="prima")
    ap.add_argument("--model-version", default=None,
                    help="default: <stem of the prima file>-<first 12 hex of its sha256>")
    ap.add_argument("--dump-keys", metavar="JSON",
                    help="also write the reconstructed state_dict key table (key, shape, "
                         "dtype, same_tensor_as); with only --prima, do just that")
    ap.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    ap.add_argument("-q", "--quiet", action="store_true", help="no summary line")
    args = ap.parse_args(argv)

    # Failures print exactly one line; progress only with -v, the summary unless -q.
    def log(msg):
        if args.verbose:
            print(f"convert-checkpoint: {msg}", file=sys.stderr)

    def summary(msg):
        if not args.quiet:
            print(f"convert-checkpoint: {msg}", file=sys.stderr)

    try:
        if args.out is None:
            if not args.dump_keys:
                ap.error("--out is required (or --dump-keys alone)")
            ck = PrimaCheckpoint(args.prima)
            write_json(args.dump_keys, ck.key_table())
            summary(f"wrote {len(ck.entries)} keys to {args.dump_keys}")
            return 0
        if not args.tokenizer or not args.tokenizer_config:
            ap.error("--tokenizer and --tokenizer-config are required with --out")
        m = convert(args.prima, args.tokenizer, args.tokenizer_config, args.out,
                    model_name=args.model_name, model_version=args.model_version,
                    dump_keys=args.dump_keys, log=log)
        f = m["files"]["prima"]
        summary(f"{m['model_version']}: {f['tensors']} tensors, {f['data_bytes']} bytes "
            f"(inference state_dict {f['inference_state_dict_bytes']} bytes), "
            f"{len(m['diagnosis_heads'])} diagnosis / {len(m['referral_heads'])} referral heads "
            f"-> {args.out}")
        return 0
    except UnsafeCheckpointError as e:
        print(f"convert-checkpoint: refused: {_one_line(e)}", file=sys.stderr)
        return 3
    except CheckpointError as e:
        print(f"convert-checkpoint: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"convert-checkpoint: error: {_one_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
