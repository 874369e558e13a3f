#!/usr/bin/env python3
"""Read a prima-node findings SR back with highdicom and compare it with a predictions JSON.

usage: highdicom_check.py <sr.dcm> <predictions.json> [<thresholds.json>]

predictions.json is upstream's format ({"diagnosis": {name: [v]}, "referral": {...},
"priority": {...}}). thresholds.json is {"diagnosis": {name: t}, "referral": {name: t}}, or a
converter manifest (diagnosis_heads / referral_heads with name + thresh). Exit 0 when every
diagnosis margin, threshold and present/absent decision, the priority and the referral
recommendations match; prints one line per mismatch otherwise.
"""
import hashlib
import json
import sys

import numpy as np
import pydicom
import highdicom as hd
from highdicom.sr import MeasurementReport


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


def main():
    sr_path, pred_path = sys.argv[1], sys.argv[2]
    thresholds = load_thresholds(sys.argv[3]) if len(sys.argv) > 3 else None
    preds = json.load(open(pred_path))
    errors = []

    sr = hd.sr.srread(sr_path)  # must parse as a highdicom SR object
    if not isinstance(sr, hd.sr.ComprehensiveSR):
        errors.append(f"srread gave {type(sr).__name__}, expected ComprehensiveSR")
    ds = pydicom.dcmread(sr_path)
    report = MeasurementReport.from_sequence([ds])
    groups = report.get_image_measurement_groups()

    seen = set()
    for g in groups:
        label = g.tracking_identifier
        if label not in preds["diagnosis"]:
            errors.append(f"unexpected group {label!r}")
            continue
        seen.add(label)
        expected = np.float32(preds["diagnosis"][label][0])
        ms = g.get_measurements()
        if len(ms) != 1:
            errors.append(f"{label}: {len(ms)} measurements")
            continue
        m = ms[0]
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
    print(f"highdicom: {len(groups)} measurement groups checked, {len(errors)} mismatches")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
