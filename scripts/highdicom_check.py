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
per series with exactly those images and that frame of reference.

Every diagnosis is a qualitative evaluation: CODE <diagnosis> = Present | Absent, INFERRED FROM
its decision margin (NUM PRIMA-MARGIN). The report is titled "Imaging Measurement Report"
only when it has regions; else "Diagnostic imaging report" (18748-4, LN).

evidence.json is {label: {"regions": [{"image": sop_uid, "rect": [l, t, r, b],
"coefficient": c}, ...]}}: the explained findings. Each region is its own measurement group
(its own tracking identifier), with the finding, the region image as its only source, a
comment naming the finding and Present/Absent, and one NUM PRIMA-LIME-PCT (the weight as a
percentage of the finding's largest magnitude, unit %) whose referenced coordinates are that
closed rectangle on that image.
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


def check_region_group(label, k, g, want, top, name, threshold, errors):
    """One explained region's group, read with highdicom's measurement-group API."""
    where = f"{label} region {k + 1}"
    if g.tracking_identifier != where:
        errors.append(f"{where}: tracking identifier {g.tracking_identifier!r}")
    ft = g.finding_type
    if ft is None or ft.value != code_value("DX", label) or ft.scheme_designator != "99PRIMA":
        errors.append(f"{where}: finding code {ft}")
    refs = [i.referenced_sop_instance_uid for i in g.source_images]
    if refs != [want["image"]]:
        errors.append(f"{where}: source images {refs}, expected [{want['image']}]")
    comments = [
        i.TextValue
        for i in g[0].ContentSequence
        if i.ValueType == "TEXT" and name_of(i) == ("121106", "DCM")
    ]
    if len(comments) != 1 or not comments[0].startswith(f"{name}: "):
        errors.append(f"{where}: comment {comments}")
    params = [
        i.TextValue
        for i in g[0].ContentSequence
        if i.ValueType == "TEXT" and name_of(i) == ("111002", "DCM")
    ]
    if threshold is not None and (
        len(params) != 1 or not params[0].startswith("threshold=") or np.float32(params[0][10:]) != threshold
    ):
        errors.append(f"{where}: algorithm parameters {params} != threshold={threshold}")
    ms = g.get_measurements()
    if len(ms) != 1:
        errors.append(f"{where}: {len(ms)} measurements")
        return
    m = ms[0]
    if (m.name.value, m.name.scheme_designator) != ("PRIMA-LIME-PCT", "99PRIMA"):
        errors.append(f"{where}: NUM concept {m.name}")
    if (m.unit.value, m.unit.scheme_designator) != ("%", "UCUM"):
        errors.append(f"{where}: unit {m.unit}")
    pct = 100.0 * want["coefficient"] / top if top > 0 else 0.0
    if not np.isclose(float(m.value), pct, rtol=1e-5, atol=1e-4):
        errors.append(f"{where}: importance {m.value} != {pct}")
    coords = m.referenced_coordinates or []
    if len(coords) != 1:
        errors.append(f"{where}: {len(coords)} referenced coordinates")
        return
    c = coords[0]
    if c.graphic_type != hd.sr.GraphicTypeValues.POLYLINE:
        errors.append(f"{where}: graphic type {c.graphic_type}")
    l, t, r, b = np.float32(want["rect"])
    rect = np.array([[l, t], [r, t], [r, b], [l, b], [l, t]], dtype=np.float32)
    if c.value.shape != rect.shape or not np.array_equal(c.value.astype(np.float32), rect):
        errors.append(f"{where}: polyline {c.value.tolist()} != {rect.tolist()}")
    image = hd.sr.ImageContentItem.from_dataset(c.ContentSequence[0])
    if image.relationship_type != hd.sr.RelationshipTypeValues.SELECTED_FROM:
        errors.append(f"{where}: image relationship {image.relationship_type}")
    if image.referenced_sop_instance_uid != want["image"]:
        errors.append(f"{where}: on {image.referenced_sop_instance_uid}, expected {want['image']}")


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

    with_regions = {k: v["regions"] for k, v in evidence.items() if v.get("regions")}
    title = name_of(ds)
    want_title = ("126000", "DCM") if with_regions else ("18748-4", "LN")
    if title != want_title:
        errors.append(f"report title {title} != {want_title}")
    by_label = {}
    for g in groups:
        label = g.tracking_identifier.rsplit(" region ", 1)[0]
        by_label.setdefault(label, []).append(g)
    if set(by_label) != set(with_regions):
        errors.append(f"groups for {sorted(by_label)}, expected {sorted(with_regions)}")
    for label, regions in with_regions.items():
        gs = by_label.get(label, [])
        if len(gs) != len(regions):
            errors.append(f"{label}: {len(gs)} region groups, expected {len(regions)}")
            continue
        top = max(abs(r["coefficient"]) for r in regions)
        name = gs[0].finding_type.meaning if gs[0].finding_type is not None else None
        name = name.split(": ", 1)[-1] if name else None
        for k, (g, want) in enumerate(zip(gs, regions)):
            t = np.float32(thresholds[0][label]) if thresholds is not None else None
            check_region_group(label, k, g, want, top, name, t, errors)

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
        seen = set()
        for i in items:
            if i.ValueType != "CODE" or i.ConceptNameCodeSequence[0].CodingSchemeDesignator != "99PRIMA":
                continue
            code = i.ConceptNameCodeSequence[0].CodeValue
            label = next((k for k in preds["diagnosis"] if code_value("DX", k) == code), None)
            if label is None:
                continue
            seen.add(label)
            expected = np.float32(preds["diagnosis"][label][0])
            want = ("52101004", "Present") if expected > 0 else ("272519000", "Absent")
            got = (i.ConceptCodeSequence[0].CodeValue, i.ConceptCodeSequence[0].CodeMeaning)
            if got != want:
                errors.append(f"{label}: present/absent {got} != {want}")
            margins = [
                c for c in getattr(i, "ContentSequence", [])
                if c.ValueType == "NUM" and name_of(c) == ("PRIMA-MARGIN", "99PRIMA")
                and c.RelationshipType == "INFERRED FROM"
            ]
            if len(margins) != 1:
                errors.append(f"{label}: {len(margins)} margins")
                continue
            mv = margins[0].MeasuredValueSequence[0]
            if np.float32(mv.NumericValue) != expected:
                errors.append(f"{label}: margin {mv.NumericValue} != {expected}")
            unit = mv.MeasurementUnitsCodeSequence[0]
            if (unit.CodeValue, unit.CodingSchemeDesignator) != ("1", "UCUM"):
                errors.append(f"{label}: margin unit {unit.CodeValue}")
        missing = set(preds["diagnosis"]) - seen
        if missing:
            errors.append(f"diagnoses missing from the evaluations: {sorted(missing)}")
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
