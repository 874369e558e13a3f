#!/usr/bin/env python3
"""Draw the SR's explained regions on the KOS's key images (a check a person can look at).

usage: explain_picture.py <sr.dcm> <kos.dcm> <study_dir> <out.png>

Reads the regions (SCOORD POLYLINE, INFERRED FROM a PRIMA-LIME-PCT importance) from the SR with
pydicom, finds the images they are drawn on among the study's files, and renders each region's
image with its rectangle and importance, in the KOS's key image order."""
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pydicom  # noqa: E402


def walk(items, parent=None):
    for it in items:
        yield it, parent
        if "ContentSequence" in it:
            yield from walk(it.ContentSequence, it)


def main():
    sr_path, kos_path, study_dir, out = sys.argv[1:5]
    sr = pydicom.dcmread(sr_path)
    kos = pydicom.dcmread(kos_path)
    key = [
        i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for i in kos.ContentSequence
        if i.ValueType == "IMAGE"
    ]
    description = next(
        i.TextValue
        for i in kos.ContentSequence
        if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeValue == "113012"
    )
    regions = []
    for it, parent in walk(sr.ContentSequence):
        if it.ValueType == "SCOORD" and parent is not None and parent.ValueType == "NUM":
            weight = float(parent.MeasuredValueSequence[0].NumericValue)
            uid = it.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
            pts = np.array(it.GraphicData, dtype=float).reshape(-1, 2)
            regions.append((uid, pts, weight))
    files = {}
    for p in pathlib.Path(study_dir).rglob("*"):
        if p.is_file():
            try:
                ds = pydicom.dcmread(p)
            except Exception:
                continue
            files[ds.SOPInstanceUID] = ds
    images = sorted({u for u, _, _ in regions}, key=lambda u: key.index(u) if u in key else 99)
    fig, axes = plt.subplots(1, len(images), figsize=(4.2 * len(images), 4.8), squeeze=False)
    for ax, uid in zip(axes[0], images):
        ds = files[uid]
        px = ds.pixel_array.astype(float) * float(getattr(ds, "RescaleSlope", 1)) + float(
            getattr(ds, "RescaleIntercept", 0)
        )
        # the image's pixel centres sit at +0.5 in SR image coordinates
        ax.imshow(px, cmap="gray", extent=(0, px.shape[1], px.shape[0], 0))
        for k, (u, pts, w) in enumerate(regions):
            if u != uid:
                continue
            ax.plot(pts[:, 0], pts[:, 1], color="orange", lw=1.5)
            ax.text(pts[0, 0], pts[0, 1] - 3, f"#{k + 1} LIME {w:+.1f}%", color="orange", fontsize=8)
        ax.set_title(
            f"{ds.get('SeriesDescription', '')}  instance {ds.get('InstanceNumber', '?')}\n"
            f"key image {key.index(uid) + 1 if uid in key else '-'} of {len(key)}",
            fontsize=9,
        )
        ax.axis("off")
    fig.suptitle(description, fontsize=8, wrap=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"{out}: {len(regions)} regions on {len(images)} images")


if __name__ == "__main__":
    main()
