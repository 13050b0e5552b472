#!/usr/bin/env bash
# Re-execute every notebook in place, top to bottom, in the preset given by MINIMFM_PRESET (default tiny),
# so the committed notebooks show real figures. Takes the tokenizer cache under runs/ if present.
set -euo pipefail
cd "$(dirname "$0")/.."
export MINIMFM_PRESET=${MINIMFM_PRESET:-tiny}; unset MPLBACKEND  # inline figures
for nb in ${@:-notebooks/*.ipynb}; do
  echo "== $nb ($MINIMFM_PRESET)"
  (cd notebooks && python -m jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=3600 "$(basename "$nb")")
done
