#!/usr/bin/env python3
"""Positive control for ohif_check.py: copies an SR keeping only the measurement groups that
carry a region (a NUM with a nested SCOORD), under new series/instance UIDs.

OHIF 3.13.2 loads such an SR without error, so a run on it shows the harness can pass; a run
on today's full SR shows it failing. Not a fix: the groups without regions are simply dropped.

Usage: .venv/bin/python integration-tests/viewer/regions_only_sr.py IN_SR.dcm OUT_SR.dcm
"""
import sys

import pydicom
from pydicom.uid import generate_uid

IMAGING_MEASUREMENTS = "126010"


def has_region(group) -> bool:
    return any(item.ValueType == "NUM" and "ContentSequence" in item for item in group.ContentSequence)


def main() -> int:
    src, dst = sys.argv[1:3]
    ds = pydicom.dcmread(src)
    for item in ds.ContentSequence:
        if item.ValueType == "CONTAINER" and item.ConceptNameCodeSequence[0].CodeValue == IMAGING_MEASUREMENTS:
            kept = [g for g in item.ContentSequence if has_region(g)]
            print(f"kept {len(kept)} of {len(item.ContentSequence)} measurement groups", file=sys.stderr)
            item.ContentSequence = kept
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(dst)
    return 0


if __name__ == "__main__":
    sys.exit(main())
