#!/usr/bin/env bash
# Regenerate docs/examples/: the findings SR and the priority KOS that `prima-node infer
# --dicom` makes for the fixture study (STUDY_A) with the converted fixture model, checked by
# the validators (scripts/validate-outputs.sh) and rendered as HTML by DCMTK's dsr2html, so
# a person can read what a PACS receives without a DICOM viewer.
#
#   scripts/examples.sh            (PRIMA_NODE_BIN=<binary> to skip the release build)
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bin=$(release_bin)
ref="$PRIMA_REFERENCE_DIR"
work=$(mktemp -d /tmp/prima-examples.XXXXXX)
trap 'rm -rf "$work"' EXIT

.venv/bin/python scripts/convert-checkpoint -q --prima "$ref/models/prima/primafullmodel_fixture.pt" \
  --tokenizer "$ref/models/tokenizer/vqvae_reduced.pth" \
  --tokenizer-config "$ref/models/tokenizer/tokenizer_config.json" --out "$work/model"
"$bin" infer --model "$work/model" --out "$work/out" --device cpu --dicom "$ref/studies/STUDY_A" >&2
sr="$work/out/STUDY_A_sr.dcm"
kos="$work/out/STUDY_A_kos.dcm"
scripts/validate-outputs.sh "$ref/studies/STUDY_A" "$sr" "$kos" > "$work/validate.log" 2>&1 || {
  cat "$work/validate.log" >&2
  echo "$prog: the outputs do not pass the validators" >&2
  exit 1
}
mkdir -p docs/examples
# +U8: the documents are UTF-8 (ISO_IR 192); +Rd: the full data of every content item (the
# referenced images' UIDs); +Cm: units by meaning ("no units", "pixels"), not UCUM codes.
for pair in "$sr:study-a-findings-sr.html" "$kos:study-a-priority-kos.html"; do
  dsr2html +U8 +Rd +Cm "${pair%%:*}" "docs/examples/${pair#*:}"
done
echo "wrote docs/examples/study-a-findings-sr.html and docs/examples/study-a-priority-kos.html"
