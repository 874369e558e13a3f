#!/usr/bin/env python3
"""Synthetic MR study for the benchmarks (not a test fixture): N single-frame MR Image
Storage instances of ROWSxCOLS signed 16-bit pixels, spread over S axial series of one study,
Explicit VR Little Endian, one folder per series. The pixels are a cheap head-like phantom
(an ellipse per slice plus noise) so the node's imaging pipeline has something to segment;
geometry is consistent (axial, 1 mm pixels, slices 1 mm apart). No patient data.

    gen_study.py --out DIR [--instances 1000] [--series 4] [--rows 512] [--cols 512] [--seed 1]

Prints the number of files and bytes written.
"""

import argparse
import hashlib
import os

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

MR = "1.2.840.10008.5.1.4.1.1.4"


def uid(seed, *parts):
    h = hashlib.sha256(("prima-bench/%d/" % seed + "/".join(map(str, parts))).encode()).digest()
    return "2.25.%d" % (int.from_bytes(h[:16], "big"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--instances", type=int, default=1000)
    ap.add_argument("--series", type=int, default=4)
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--cols", type=int, default=512)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()

    rng = np.random.default_rng(a.seed)
    study = uid(a.seed, "study")
    frame = uid(a.seed, "frame")
    yy, xx = np.mgrid[0 : a.rows, 0 : a.cols].astype(np.float32)
    cy, cx = (a.rows - 1) / 2, (a.cols - 1) / 2
    r2 = ((yy - cy) / (0.42 * a.rows)) ** 2 + ((xx - cx) / (0.36 * a.cols)) ** 2
    noise = rng.normal(0, 20, size=(8, a.rows, a.cols)).astype(np.float32)

    per = [a.instances // a.series + (1 if i < a.instances % a.series else 0) for i in range(a.series)]
    total = 0
    n = 0
    for s, count in enumerate(per):
        series = uid(a.seed, "series", s)
        d = os.path.join(a.out, "S%d" % (s + 1))
        os.makedirs(d, exist_ok=True)
        for k in range(count):
            # The head shrinks towards the ends of the slab, like a real axial stack.
            t = (k - (count - 1) / 2) / max(count / 2, 1)
            scale = max(1e-3, 1 - 0.8 * t * t)
            img = np.where(r2 < scale, 800.0 + 200 * (r2 < 0.5 * scale), 0.0)
            img = (img + noise[(k + s) % 8]).clip(-1000, 4000).astype(np.int16)

            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = MR
            sop = uid(a.seed, "sop", s, k)
            meta.MediaStorageSOPInstanceUID = sop
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.1"
            ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
            ds.SOPClassUID = MR
            ds.SOPInstanceUID = sop
            ds.StudyInstanceUID = study
            ds.SeriesInstanceUID = series
            ds.FrameOfReferenceUID = frame
            ds.Modality = "MR"
            ds.PatientName = "BENCH^PHANTOM"
            ds.PatientID = "BENCH%04d" % a.seed
            ds.StudyDescription = "MRI BRAIN BENCH"
            ds.SeriesDescription = "AX BENCH %d" % (s + 1)
            ds.SeriesNumber = s + 1
            ds.InstanceNumber = k + 1
            ds.StudyDate = "20260101"
            ds.StudyTime = "120000"
            ds.AccessionNumber = "BENCH%04d" % a.seed
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.ImagePositionPatient = [-cx, -cy, float(k) - count / 2]
            ds.PixelSpacing = [1, 1]
            ds.SliceThickness = 1
            ds.SpacingBetweenSlices = 1
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows = a.rows
            ds.Columns = a.cols
            ds.BitsAllocated = 16
            ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 1
            ds.PixelData = img.tobytes()
            p = os.path.join(d, "IM%05d.dcm" % (k + 1))
            ds.save_as(p, enforce_file_format=True)
            total += os.path.getsize(p)
            n += 1
    print("files %d bytes %d" % (n, total))


if __name__ == "__main__":
    main()
