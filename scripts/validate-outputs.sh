#!/usr/bin/env bash
# Run the DICOM validators on prima-node result objects, the way the tests do.
#
#   scripts/validate-outputs.sh <source-study-dir> <sr.dcm> [<kos.dcm> ...]
#
# dciodvfy (dicom3tools), dsrdump -v (DCMTK), dcentvfy over source + outputs, PixelMed
# DicomSRValidator. Exit status 1 when any validator reports an Error (dcentvfy: any line).
set -u
src="$1"; shift
jar=/usr/share/java/pixelmed.jar
fail=0
for f in "$@"; do
  echo "===== dciodvfy $f"
  out=$(dciodvfy "$f" 2>&1); echo "$out"
  grep -q Error <<<"$out" && fail=1
  echo "===== dsrdump -v $f (diagnostics only)"
  out=$(dsrdump -v "$f" 2>&1) || fail=1
  grep -E '^(E|F|W):' <<<"$out"
  grep -qE '^(E|F):' <<<"$out" && fail=1
  echo "===== PixelMed DicomSRValidator $f"
  out=$(java -Djdk.xml.xpathExprOpLimit=0 -Djdk.xml.xpathExprGrpLimit=0 -Djdk.xml.xpathTotalOpLimit=0 -cp "$jar" com.pixelmed.validate.DicomSRValidator "$f" 2>&1); echo "$out"
  grep -q Error <<<"$out" && fail=1
done
echo "===== dcentvfy (source + outputs)"
out=$(find "$src" -type f -print0 | sort -z | xargs -0 dcentvfy "$@" 2>&1); echo "$out"
# Tolerated: dicom3tools files AccessionNumber under the Series IE for KO and 3D SR.
grep -v 'Different information entities for attribute - Element=<AccessionNumber>' <<<"$out" | grep -q . && fail=1
echo "result: $([ $fail = 0 ] && echo PASS || echo FAIL)"
exit $fail
