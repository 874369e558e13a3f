#!/usr/bin/env python3
"""Summary of one run.sh: errors against the reference and against CPU f32, timings per
stage, peak GPU memory. Writes the JSON, prints a short table, exits 1 when a parity gate
fails (CPU f32 vs reference, GPU f32 vs CPU f32: 1e-4 on scores and clip_emb rel L2).

    summary.py WORK OUT_JSON REFERENCE_PREDICTIONS "RUNS" "FULL_RUNS" DEVICE"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import compare, load  # noqa: E402

GATE = 1e-4


def record(work, name):
    d = os.path.join(work, name)
    r = json.load(open(os.path.join(d, "STUDY_A_run.json")))
    t0, t1 = map(float, open(os.path.join(work, name + ".wall")).read().split())
    t = r["timings"]
    model_s = t["vqvae_s"] + t["patchify_s"] + t["prima_s"]
    ex = (r.get("explanation") or {}).get("findings") or []
    lime = None
    if ex:
        f = ex[0]
        lime = {"finding": f["finding"], "series": f["series_name"], "tokens": f["n_tokens"],
                "samples": f["samples"], "seconds": f["seconds"],
                "seconds_per_1000": f["seconds"] * 1000.0 / f["samples"], "r2": f["r2"],
                "top": [t["index"] for t in f["tokens"]]}
    return {
        "lime": lime,
        "device": r["device"],
        "precision": r["precision"],
        "threads": r["threads"],
        "tokens_encoded": r["tokens_encoded"],
        "vqvae_gflop": r["vqvae_gflop"],
        "timings": t,
        "model_s": model_s,
        "vqvae_tflops": r["vqvae_gflop"] / t["vqvae_s"] / 1e3 if t["vqvae_s"] > 0 else None,
        "wall_s_with_load": t1 - t0,
    }


def preds(work, name):
    return load(os.path.join(work, name, "STUDY_A_predictions.json"))


def gpu_peak_mib(work):
    p = os.path.join(work, "gpu-mem.txt")
    if not os.path.exists(p):
        return None
    vals = [int(x) for x in open(p).read().split() if x.strip().isdigit()]
    if not vals:
        return None
    return {"baseline_mib": vals[0], "peak_mib": max(vals), "peak_above_baseline_mib": max(vals) - vals[0],
            "samples": len(vals), "how": "nvidia-smi memory.used every 50 ms (includes the caching allocator)"}


def main():
    work, out, ref_path, runs, full, device = sys.argv[1:7]
    runs, full = runs.split(), full.split()
    ref = load(ref_path)
    cpu = preds(work, "cpu-f32")
    s = {"device": device, "fixture": {}, "full_size": {}, "gates": {}}
    for name in runs:
        e = {"vs_reference": compare(preds(work, name), ref), "record": record(work, name)}
        if name != "cpu-f32":
            e["vs_cpu_f32"] = compare(preds(work, name), cpu)
        s["fixture"][name] = e
    if full:
        base = preds(work, full[0])
        for name in full:
            e = {"record": record(work, name)}
            if name != full[0]:
                e["vs_" + full[0]] = compare(preds(work, name), base)
            s["full_size"][name] = e
        s["gpu_memory"] = gpu_peak_mib(work)

    def gate(label, c):
        ok = c.get("comparable") and c["worst_score_rel"] <= GATE and c["clip_emb"]["rel_l2"] <= GATE
        s["gates"][label] = bool(ok)

    gate("cpu-f32 vs reference", s["fixture"]["cpu-f32"]["vs_reference"])
    if "gpu-f32" in s["fixture"]:
        gate("gpu-f32 vs cpu-f32", s["fixture"]["gpu-f32"]["vs_cpu_f32"])
    json.dump(s, open(out, "w"), indent=1)

    print(f"{'run':<10} {'vs reference: scores':>22} {'clip L2':>9} {'vs CPU f32: scores':>20} {'clip L2':>9}")
    for name, e in s["fixture"].items():
        r = e["vs_reference"]
        c = e.get("vs_cpu_f32")
        cs = f"{c['worst_score_rel']:>20.2e} {c['clip_emb']['rel_l2']:>9.2e}" if c and c.get("comparable") else f"{'-':>20} {'-':>9}"
        print(f"{name:<10} {r['worst_score_rel']:>22.2e} {r['clip_emb']['rel_l2']:>9.2e} {cs}")
    if full:
        print(f"{'full-size':<12} {'prepare':>8} {'vqvae':>8} {'patchify':>9} {'hiervit+heads':>14} {'model':>8} {'total':>8} {'+load':>8} {'TFLOP/s':>8}")
        for name, e in s["full_size"].items():
            t, r = e["record"]["timings"], e["record"]
            tf = r["vqvae_tflops"]
            print(f"{name:<12} {t['prepare_s']:>8.3f} {t['vqvae_s']:>8.3f} {t['patchify_s']:>9.3f} {t['prima_s']:>14.3f} "
                  f"{r['model_s']:>8.3f} {t['total_s']:>8.3f} {r['wall_s_with_load']:>8.2f} {tf if tf is None else round(tf, 1):>8}")
        for name, e in s["full_size"].items():
            lime = e["record"]["lime"]
            if lime:
                print(f"{name}: LIME {lime['finding']} in {lime['series']}: {lime['samples']} samples over "
                      f"{lime['tokens']} tokens in {lime['seconds']:.2f} s ({lime['seconds_per_1000']:.2f} s per 1000), "
                      f"R² {lime['r2']:.3f}, top tokens {lime['top']}")
        if s.get("gpu_memory"):
            print(f"GPU memory peak: {s['gpu_memory']['peak_mib']} MiB ({s['gpu_memory']['peak_above_baseline_mib']} above the idle baseline)")
    for k, v in s["gates"].items():
        print(f"gate {k}: {'ok' if v else 'FAILED'} (limit {GATE:g})")
    print(f"summary: {out}")
    sys.exit(0 if all(s["gates"].values()) else 1)


if __name__ == "__main__":
    main()
