#!/usr/bin/env python3
"""Worst errors of predictions JSON files against a baseline (stdlib only: the GPU
machine's Python has no numpy guarantee).

    compare.py BASELINE NAME=PREDICTIONS.json ...   -> one JSON object per NAME on stdout

Scores (diagnosis, referral, priority): |a-b| / max(|b|, 0.1), the measure the parity
tests use (relative, absolute below 0.1). clip_emb: relative L2, and the same elementwise
measure. Names and their order must match, or the file is reported as not comparable."""
import json
import math
import sys

FLOOR = 0.1


def load(path):
    d = json.load(open(path))
    scores = {}
    for sec in ("diagnosis", "referral", "priority"):
        for k, v in d[sec].items():
            scores[f"{sec}/{k}"] = float(v[0])
    return scores, [float(x) for x in d["clip_emb"][0]]


def compare(got, want):
    gs, ge = got
    ws, we = want
    if list(gs) != list(ws) or len(ge) != len(we):
        return {"comparable": False, "why": "output names, order or sizes differ"}
    out = {"comparable": True}
    for sec in ("diagnosis", "referral", "priority"):
        errs = [(abs(gs[k] - ws[k]) / max(abs(ws[k]), FLOOR), k) for k in ws if k.startswith(sec + "/")]
        worst = max(errs)
        out[sec] = {"worst_rel": worst[0], "at": worst[1]}
    num = math.sqrt(sum((a - b) ** 2 for a, b in zip(ge, we)))
    den = math.sqrt(sum(b * b for b in we)) or 1.0
    elem = max(abs(a - b) / max(abs(b), FLOOR) for a, b in zip(ge, we))
    out["clip_emb"] = {"rel_l2": num / den, "worst_rel": elem}
    out["worst_score_rel"] = max(out[s]["worst_rel"] for s in ("diagnosis", "referral", "priority"))
    return out


def main():
    base = load(sys.argv[1])
    res = {}
    for arg in sys.argv[2:]:
        name, path = arg.split("=", 1)
        try:
            res[name] = compare(load(path), base)
        except (OSError, ValueError, KeyError) as e:
            res[name] = {"comparable": False, "why": f"{path}: {e}"}
    json.dump(res, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
