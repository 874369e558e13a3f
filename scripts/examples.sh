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
# validate_and_render <outputs dir> <html prefix>: the validators, then dsr2html.
# +U8: the documents are UTF-8 (ISO_IR 192); +Rd: the full data of every content item (the
# referenced images' UIDs); +Cm: units by meaning ("no units", "pixels"), not UCUM codes.
validate_and_render() {
  sr="$1/STUDY_A_sr.dcm"
  kos="$1/STUDY_A_kos.dcm"
  scripts/validate-outputs.sh "$ref/studies/STUDY_A" "$sr" "$kos" > "$work/validate.log" 2>&1 || {
    cat "$work/validate.log" >&2
    echo "$prog: the outputs in $1 do not pass the validators" >&2
    exit 1
  }
  dsr2html +U8 +Rd +Cm "$sr" "docs/examples/$2-sr.html"
  dsr2html +U8 +Rd +Cm "$kos" "docs/examples/$2-kos.html"
}
mkdir -p docs/examples
"$bin" infer --model "$work/model" --out "$work/out" --device cpu --dicom "$ref/studies/STUDY_A" >&2
validate_and_render "$work/out" study-a-findings
mv docs/examples/study-a-findings-kos.html docs/examples/study-a-priority-kos.html

# The same study explained (LIME, upstream's 1000 samples): the KOS's key images are the
# instances behind the top finding's top tokens and the SR draws their regions.
"$bin" infer --model "$work/model" --out "$work/explained" --device cpu --dicom --explain \
  "$ref/studies/STUDY_A" >&2
validate_and_render "$work/explained" study-a-explained
.venv/bin/python scripts/explain_picture.py "$sr" "$kos" "$ref/studies/STUDY_A" \
  docs/examples/study-a-explained-key-images.png
# The key-image series the node sends with an explanation (Secondary Capture, regions drawn).
for k in "$work/explained"/STUDY_A_keyimage*.dcm; do
  if dciodvfy "$k" 2>&1 | grep -q Error; then
    dciodvfy "$k" >&2 || true
    echo "$prog: $k does not pass dciodvfy" >&2
    exit 1
  fi
done
.venv/bin/python -c 'import sys, pydicom; from PIL import Image
Image.fromarray(pydicom.dcmread(sys.argv[1]).pixel_array).save(sys.argv[2])' \
  "$work/explained/STUDY_A_keyimage1.dcm" docs/examples/study-a-key-image-1.png
echo "wrote docs/examples/study-a-{findings-sr,priority-kos,explained-sr,explained-kos}.html," \
  "docs/examples/study-a-explained-key-images.png and docs/examples/study-a-key-image-1.png"
