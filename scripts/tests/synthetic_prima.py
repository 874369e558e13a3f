"""Build small FullMRIModel checkpoints with real torch modules, pickled under upstream's
module names, for converter tests the fixture does not cover (plain serie encoder form,
3-class priority). Test helper only: never imported by the converter."""

from __future__ import annotations

import math
import sys
import types

import torch
from torch import nn


def _fake_module(name: str) -> types.ModuleType:
    mod = sys.modules.get(name)
    if mod is None:
        mod = types.ModuleType(name)
        sys.modules[name] = mod
    return mod


class PreNorm(nn.Module):
    def __init__(self, dim, fn):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn


class Attention(nn.Module):
    def __init__(self, dim, heads, dim_head):
        super().__init__()
        inner = heads * dim_head
        self.inner_dim = inner
        self.heads = heads
        self.dim_head = dim_head
        self.scale = dim_head ** -0.5
        self.causal = False
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(0.0))


class FeedForward(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0),
                                 nn.Linear(hidden, dim), nn.Dropout(0.0))


class Transformer(nn.Module):
    def __init__(self, dim, depth, heads, dim_head, mlp_dim):
        super().__init__()
        self.layers = nn.ModuleList([
            nn.ModuleList([PreNorm(dim, Attention(dim, heads, dim_head)),
                           PreNorm(dim, FeedForward(dim, mlp_dim))])
            for _ in range(depth)
        ])


class ViT(nn.Module):
    def __init__(self, dim, num_classes, depth, heads, mlp_dim, dim_head, clsnum):
        super().__init__()
        self.dim = dim
        self.pos_embedding = None
        self.clsnum = clsnum
        self.pool = "cls"
        self.cls_token = nn.Parameter(torch.randn(1, clsnum, dim))
        self.transformer = Transformer(dim, depth, heads, dim_head, mlp_dim)
        self.layernorm = nn.LayerNorm(dim)
        self.mlp_head = nn.Sequential(nn.Linear(clsnum * dim, num_classes))


def _pe1d(rows, ch):
    f = 1.0 / (10000 ** (torch.arange(0, ch, 2).float() / ch))
    pos = torch.arange(rows).float()
    g = torch.einsum("i,j->ij", pos, f)
    return torch.stack((g.sin(), g.cos()), dim=-1).flatten(-2)


class SerieTransformerEncoder(nn.Module):
    def __init__(self, out_dim, prelinear=False):
        super().__init__()
        self.embsize = 256
        self.embed = nn.Embedding(47, 246)
        self.p_enc = _pe1d(200, 10)
        self.transformer = Transformer(256, 1, 2, 16, 40)
        self.linear = nn.Linear(256, out_dim)
        self.prelinear = prelinear


class HierViT(nn.Module):
    def __init__(self, serie_form):
        super().__init__()
        self.useseriename = True
        self.usestudydescription = True
        self.patdis = False
        self.dummy_param = nn.Parameter(torch.empty(0))
        self.innerViT = ViT(289, 16, 1, 2, 24, 8, 2)
        self.outerViT = ViT(16, 8, 1, 2, 24, 8, 2)
        if serie_form == "plain":
            self.serieencoder = SerieTransformerEncoder(289)
        else:
            self.serieencoder = nn.Sequential(SerieTransformerEncoder(32, prelinear=True),
                                              nn.Linear(256, 289))
        self.studyencoder = SerieTransformerEncoder(16)


class FullMRIModel(nn.Module):
    def __init__(self, serie_form="plain", priority_outputs=3, variant=False):
        super().__init__()
        self.clipvisualmodel = HierViT(serie_form)
        emb = 2 * 16

        def head(n):
            return nn.Sequential(nn.Linear(emb, 12), nn.ReLU(), nn.Linear(12, 6), nn.ReLU(),
                                 nn.Linear(6, n))

        a, b = head(5), head(5)
        a.thresh, b.thresh = 0.25, -0.5
        r = head(1)
        r.thresh = 0.1
        if not variant:
            self.diagnosisheads = {"alpha": [a, 1], "beta": [b, 4], "gamma": [a, 2]}
            self.referralheads = {"only": [r, 0]}
            self.m1 = nn.ModuleList([v[0] for v in self.diagnosisheads.values()])
            self.m2 = nn.ModuleList([v[0] for v in self.referralheads.values()])
            self.priorityhead = head(priority_outputs)
        else:
            # the other upstream FullMRIModel: tuple entries, diagnosis_modules /
            # referral_modules, numpy thresholds and indices, a DataParallel-wrapped head
            import numpy as np
            a.thresh, b.thresh = np.float64(0.25), np.float32(-0.5)
            wrapped = nn.DataParallel(r)
            wrapped.thresh = 0.1
            self.diagnosisheads = {"alpha": (a, np.int64(1)), "beta": (b, 4),
                                   "gamma": (a, 2)}
            self.referralheads = {"only": (wrapped, 0)}
            self.diagnosis_modules = nn.ModuleList([v[0] for v in self.diagnosisheads.values()])
            self.referral_modules = nn.ModuleList([v[0] for v in self.referralheads.values()])
            self.priorityhead = nn.DataParallel(head(priority_outputs))


_CLASSES = {
    "model_parts": [PreNorm, Attention, FeedForward, Transformer, ViT,
                    SerieTransformerEncoder, HierViT],
    "complete_visual_model": [FullMRIModel],
}


def save_synthetic(path, serie_form="plain", priority_outputs=3, seed=7, variant=False,
                   wrap_root=False):
    """torch.save a FullMRIModel whose classes pickle as upstream's module names."""
    torch.manual_seed(seed)
    for modname, classes in _CLASSES.items():
        fm = _fake_module(modname)
        for c in classes:
            c.__module__ = modname
            c.__qualname__ = c.__name__
            setattr(fm, c.__name__, c)
    model = FullMRIModel(serie_form, priority_outputs, variant)
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-0.5, 0.5)
    torch.save(nn.DataParallel(model) if wrap_root else model, path)
    return model


def tokenizer_config_for(enc_channels=8):
    return {
        "vqvae_config": {
            "spatial_dims": 3, "in_channels": 1, "out_channels": 1, "num_res_layers": 1,
            "downsample_parameters": [[2, 4, 1, 1], [2, 2, 1, 0]],
            "upsample_parameters": [[2, 4, 1, 1, 0], [2, 2, 1, 0, 0]],
            "num_channels": [enc_channels, enc_channels],
            "num_res_channels": [enc_channels, enc_channels],
            "num_embeddings": 16, "embedding_dim": 2,
        }
    }


def save_tokenizer(path, enc_channels=8):
    """A state_dict with the monai-generative VQVAE encoder keys (num_res_layers = 1)."""
    C = enc_channels
    sd = {}

    def conv(key, cout, cin, k):
        sd[key + ".weight"] = torch.randn(cout, cin, k, k, k) / math.sqrt(cin * k ** 3)
        sd[key + ".bias"] = torch.randn(cout) * 0.05

    conv("encoder.blocks.0.conv", C, 1, 4)
    conv("encoder.blocks.1.conv1.conv", C, C, 3)
    conv("encoder.blocks.1.conv2.conv", C, C, 3)
    conv("encoder.blocks.2.conv", C, C, 2)
    conv("encoder.blocks.3.conv1.conv", C, C, 3)
    conv("encoder.blocks.3.conv2.conv", C, C, 3)
    conv("encoder.blocks.4.conv", 2, C, 3)
    conv("decoder.blocks.0.conv", C, 2, 3)
    sd["quantizer.quantizer.embedding.weight"] = torch.randn(16, 2)
    torch.save(sd, path)
    return sd
