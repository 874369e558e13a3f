#!/usr/bin/env python3
"""Upstream's LIME, run for src/explain's tests (integration-tests/explain_reference.rs).

Prints JSON: for several seeds and sizes, numpy's legacy RandomState.randint stream and the
masks util_lime.py builds from it, and for recorded masks and labels what
lime.lime_base.LimeBase.explain_instance_with_data returns with upstream's arguments
(feature_selection="none", kernel sqrt(exp(-d**2 / 0.25**2)), zero distances), checked here
against scikit-learn's Ridge(alpha=1). Needs numpy, scikit-learn and lime (scripts/setup.sh
installs them in the project venv)."""
import json

import numpy as np
from lime.lime_base import LimeBase
from sklearn.linear_model import Ridge


def masks(seed, n_tokens, samples, fracs=1):
    m = np.random.RandomState(seed).randint(0, fracs + 1, n_tokens * samples).reshape(samples, n_tokens) / fracs
    m[0, :] = 1
    m[m.sum(1) == 0] = 1
    return m


out = {"randint": [], "masks": [], "lime": []}
for seed, high, n in ((0, 2, 50), (1, 5, 40), (7, 1000, 30), (123456789, 2**31, 20), (2**32 - 1, 3, 64)):
    v = np.random.RandomState(seed).randint(0, high, n)
    out["randint"].append({"seed": seed, "high": high, "values": [int(x) for x in v]})
for seed, n_tokens, samples in ((0, 154, 1000), (1, 3, 40), (42, 1, 10), (2**32 - 1, 700, 13), (5, 16, 200)):
    m = masks(seed, n_tokens, samples)
    out["masks"].append({
        "seed": seed, "n_tokens": n_tokens, "samples": samples,
        "rows": ["".join("1" if x else "0" for x in row) for row in m],
    })
for seed, n_tokens, samples in ((0, 30, 1000), (0, 40, 25), (3, 154, 1000), (9, 5, 8)):
    m = masks(seed, n_tokens, samples)
    # labels: a linear part, an interaction and a wiggle, so the fit is not exact
    w = np.sin(np.arange(n_tokens) * 1.7)
    y = m @ w + 0.3 * m[:, 0] * m[:, -1] + 0.01 * np.cos(np.arange(samples))
    base = LimeBase(kernel_fn=lambda d: np.sqrt(np.exp(-(d ** 2) / 0.25 ** 2)), verbose=False)
    intercept, exp, score, local_pred = base.explain_instance_with_data(
        m, y[:, None], np.zeros(samples), 0, n_tokens, feature_selection="none")
    coef = dict(exp)
    r = Ridge(alpha=1, fit_intercept=True).fit(m, y)
    assert np.allclose([coef[j] for j in range(n_tokens)], r.coef_, rtol=1e-10, atol=1e-12)
    out["lime"].append({
        "seed": seed, "n_tokens": n_tokens, "samples": samples,
        "labels": [float(x) for x in y],
        "intercept": float(intercept), "score": float(score),
        "local_pred": float(np.ravel(local_pred)[0]),
        "coef": [float(coef[j]) for j in range(n_tokens)],
        "ranking": [int(j) for j, _ in exp],
    })
print(json.dumps(out))
