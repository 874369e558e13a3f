#!/usr/bin/env python3
"""Read a prima-node findings SR back with highdicom and compare it with a predictions JSON.

usage: highdicom_check.py [--sources <sources.json>] [--evidence <evidence.json>] <sr.dcm> <predictions.json> [<thresholds.json>]

predictions.json is upstream's format ({"diagnosis": {name: [v]}, "referral": {...},
"priority": {...}}). thresholds.json is {"diagnosis": {name: t}, "referral": {name: t}}, or a
converter manifest (diagnosis_heads / referral_heads with name + thresh). Exit 0 when every
diagnosis margin, threshold and present/absent decision, the priority and the referral
recommendations match; prints one line per mismatch otherwise.

sources.json is {series_uid: {"instances": [sop_uid, ...], "frame_of_reference": uid|null}}:
the images the model used. With it, the Image Library (TID 1600) must hold exactly one group
per series with exactly those images and that frame of reference, and every measurement
group must reference (121112 "Source of Measurement") one image of each series.

evidence.json is {label: {"regions": [{"image": sop_uid, "rect": [l, t, r, b],
"coefficient": c}, ...]}}: the explained findings. Their groups must reference exactly the
region images as sources and carry, after the margin, one LIME weight (PRIMA-LIME) per region
whose referenced coordinates are that closed rectangle on that image.
"""
import hashlib
import json
import sys

import numpy as np
import pydicom
import highdicom as hd
from highdicom.sr import MeasurementReport
from highdicom.sr.utils import find_content_items
from pydicom.sr.codedict import codes


def code_value(prefix, label):
    return f"{prefix}-" + hashlib.sha256(label.encode()).hexdigest().upper()[: 16 - len(prefix) - 1]


def load_thresholds(path):
    t = json.load(open(path))
    if "diagnosis_heads" in t:
        return (
            {h["name"]: h["thresh"] for h in t["diagnosis_heads"]},
            {h["name"]: h["thresh"] for h in t["referral_heads"]},
        )
    return t["diagnosis"], t.get("referral", {})


def name_of(item):
    c = item.ConceptNameCodeSequence[0]
    return (c.CodeValue, c.CodingSchemeDesignator)


def image_uid(item):
    return hd.sr.ImageContentItem.from_dataset(item).referenced_sop_instance_uid


def check_library(ds, sources, errors):
    """The Image Library, read with highdicom.sr's content-item API."""
    libs = find_content_items(ds, name=codes.DCM.ImageLibrary, value_type="CONTAINER")
    if len(libs) != 1:
        errors.append(f"{len(libs)} Image Library containers")
        return {}
    groups = find_content_items(libs[0], name=codes.DCM.ImageLibraryGroup, value_type="CONTAINER")
    series_of = {}
    for series_uid, want in sources.items():
        for uid in want["instances"]:
            series_of[uid] = series_uid
    found = {}
    for g in groups:
        images = [image_uid(i) for i in find_content_items(g, value_type="IMAGE", relationship_type="CONTAINS")]
        owners = {series_of.get(u) for u in images}
        if len(owners) != 1 or None in owners:
            errors.append(f"library group mixes or invents series: {sorted(map(str, owners))}")
            continue
        series_uid = owners.pop()
        if series_uid in found:
            errors.append(f"series {series_uid} has two library groups")
        found[series_uid] = images
        want = sources[series_uid]
        if sorted(images) != sorted(set(want["instances"])) or len(images) != len(set(images)):
            errors.append(f"library group of {series_uid}: {len(images)} images, expected {len(set(want['instances']))}")
        fors = [
            hd.sr.UIDRefContentItem.from_dataset(i).value
            for i in find_content_items(g, name=codes.DCM.FrameOfReferenceUID, relationship_type="HAS ACQ CONTEXT")
        ]
        if fors != ([want["frame_of_reference"]] if want["frame_of_reference"] else []):
            errors.append(f"library group of {series_uid}: frame of reference {fors}")
        mods = find_content_items(g, name=codes.DCM.Modality, relationship_type="HAS ACQ CONTEXT")
        if len(mods) != 1:
            errors.append(f"library group of {series_uid}: {len(mods)} modality descriptors")
    missing = set(sources) - set(found)
    if missing:
        errors.append(f"series missing from the Image Library: {sorted(missing)}")
    return series_of


def check_regions(label, measurements, regions, errors):
    """LIME weights of an explained finding, read with highdicom's Measurement API."""
    for k, (m, want) in enumerate(zip(measurements, regions)):
        if (m.name.value, m.name.scheme_designator) != ("PRIMA-LIME", "99PRIMA"):
            errors.append(f"{label} region {k}: NUM concept {m.name}")
        if np.float32(m.value) != np.float32(want["coefficient"]):
            errors.append(f"{label} region {k}: weight {m.value} != {want['coefficient']}")
        coords = m.referenced_coordinates or []
        if len(coords) != 1:
            errors.append(f"{label} region {k}: {len(coords)} referenced coordinates")
            continue
        c = coords[0]
        if c.graphic_type != hd.sr.GraphicTypeValues.POLYLINE:
            errors.append(f"{label} region {k}: graphic type {c.graphic_type}")
        l, t, r, b = np.float32(want["rect"])
        rect = np.array([[l, t], [r, t], [r, b], [l, b], [l, t]], dtype=np.float32)
        if c.value.shape != rect.shape or not np.array_equal(c.value.astype(np.float32), rect):
            errors.append(f"{label} region {k}: polyline {c.value.tolist()} != {rect.tolist()}")
        image = hd.sr.ImageContentItem.from_dataset(c.ContentSequence[0])
        if image.relationship_type != hd.sr.RelationshipTypeValues.SELECTED_FROM:
            errors.append(f"{label} region {k}: image relationship {image.relationship_type}")
        if image.referenced_sop_instance_uid != want["image"]:
            errors.append(f"{label} region {k}: on {image.referenced_sop_instance_uid}, expected {want['image']}")


def main():
    args = sys.argv[1:]
    sources = None
    evidence = {}
    while args[:1] in (["--sources"], ["--evidence"]):
        if args[0] == "--sources":
            sources = json.load(open(args[1]))
        else:
            evidence = json.load(open(args[1]))
        args = args[2:]
    sr_path, pred_path = args[0], args[1]
    thresholds = load_thresholds(args[2]) if len(args) > 2 else None
    preds = json.load(open(pred_path))
    errors = []

    sr = hd.sr.srread(sr_path)  # must parse as a highdicom SR object
    if not isinstance(sr, hd.sr.Comprehensive3DSR):
        errors.append(f"srread gave {type(sr).__name__}, expected Comprehensive3DSR")
    ds = pydicom.dcmread(sr_path)
    report = MeasurementReport.from_sequence([ds])
    groups = report.get_image_measurement_groups()
    series_of = check_library(ds, sources, errors) if sources is not None else None

    seen = set()
    for g in groups:
        label = g.tracking_identifier
        if label not in preds["diagnosis"]:
            errors.append(f"unexpected group {label!r}")
            continue
        seen.add(label)
        expected = np.float32(preds["diagnosis"][label][0])
        ms = g.get_measurements()
        regions = evidence.get(label, {}).get("regions", [])
        if len(ms) != 1 + len(regions):
            errors.append(f"{label}: {len(ms)} measurements, expected {1 + len(regions)}")
            continue
        m = ms[0]
        check_regions(label, ms[1:], regions, errors)
        if (m.name.value, m.name.scheme_designator) != ("PRIMA-MARGIN", "99PRIMA"):
            errors.append(f"{label}: NUM concept {m.name}")
        if np.float32(m.value) != expected:
            errors.append(f"{label}: margin {m.value} != {expected}")
        if (m.unit.value, m.unit.scheme_designator) != ("1", "UCUM"):
            errors.append(f"{label}: unit {m.unit}")
        ft = g.finding_type
        if ft is None or ft.value != code_value("DX", label) or ft.scheme_designator != "99PRIMA":
            errors.append(f"{label}: finding code {ft}")
        evals = g.get_qualitative_evaluations()
        want = ("52101004", "Present") if expected > 0 else ("272519000", "Absent")
        got = [(e.value.value, e.value.meaning) for e in evals if ft is not None and e.name.value == ft.value]
        if got != [want]:
            errors.append(f"{label}: present/absent {got} != {want}")
        params = [
            i.TextValue
            for i in g[0].ContentSequence
            if i.ValueType == "TEXT" and name_of(i) == ("111002", "DCM")
        ]
        if thresholds is not None:
            t = np.float32(thresholds[0][label])
            if len(params) != 1 or not params[0].startswith("threshold=") or np.float32(params[0][10:]) != t:
                errors.append(f"{label}: algorithm parameters {params} != threshold={t}")
        if regions:
            refs = [i.referenced_sop_instance_uid for i in g.source_images]
            want_refs = list(dict.fromkeys(r["image"] for r in regions))
            if refs != want_refs:
                errors.append(f"{label}: source images {refs}, expected the region images {want_refs}")
        elif series_of is not None:
            refs = [i.referenced_sop_instance_uid for i in g.source_images]
            named = sorted(str(series_of.get(u)) for u in refs)
            if named != sorted(sources):
                errors.append(f"{label}: source images name series {named}, expected {sorted(sources)}")
        sites = [(s.value.value, s.value.scheme_designator) for s in g.finding_sites]
        if sites != [("12738006", "SCT")]:
            errors.append(f"{label}: finding sites {sites}")
    missing = set(preds["diagnosis"]) - seen
    if missing:
        errors.append(f"missing groups: {sorted(missing)}")

    qual = [
        i
        for i in ds.ContentSequence
        if i.ValueType == "CONTAINER" and name_of(i) == ("C0034375", "UMLS")
    ]
    if len(qual) != 1:
        errors.append(f"{len(qual)} Qualitative Evaluations containers")
    else:
        items = qual[0].ContentSequence
        if any(i.ValueType == "NUM" for i in items):
            errors.append("NUM inside Qualitative Evaluations")
        prio = [i for i in items if name_of(i) == ("260870009", "SCT")]
        classes = list(preds["priority"].keys())
        values = [preds["priority"][c][0] for c in classes]
        want = classes[int(np.argmax(np.array(values, dtype=np.float32)))]
        got = [i.ConceptCodeSequence[0].CodeValue for i in prio]
        if got != [f"PRIORITY-{want.upper()}"]:
            errors.append(f"priority {got} != {want}")
        recs = sorted(i.ConceptCodeSequence[0].CodeValue for i in items if name_of(i) == ("121075", "DCM"))
        want_recs = sorted(code_value("RF", k) for k, v in preds["referral"].items() if np.float32(v[0]) > 0)
        if recs != want_recs:
            errors.append(f"referrals {recs} != {want_recs}")
        cad = [i.ConceptCodeSequence[0].CodeValue for i in items if name_of(i) == ("111017", "DCM")]
        if len(cad) != 1:
            errors.append(f"CAD summary items: {cad}")

    for e in errors:
        print("MISMATCH", e)
    lib = "" if sources is None else f", image library of {len(sources)} series"
    print(f"highdicom: {len(groups)} measurement groups checked{lib}, {len(errors)} mismatches")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
