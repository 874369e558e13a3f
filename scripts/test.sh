#!/usr/bin/env bash
# The whole test suite: Rust unit + integration tests (real binary, DCMTK, Orthanc) and
# the Python converter tests. Installs what is missing first (idempotent).
set -euo pipefail
# setup.sh first: env.sh resolves the .venv link that setup creates.
bash "$(dirname "${BASH_SOURCE[0]}")/setup.sh" --deps
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
export TCP_NODELAY=1
echo "== python: checkpoint converter tests"
if [ -d scripts/tests ]; then
  .venv/bin/python -m unittest discover -s scripts/tests 2>&1 | tail -n 5
fi
echo "== rust: cargo test"
trim_target
cargo test --locked --all-targets --features stand-in -- --test-threads=2
