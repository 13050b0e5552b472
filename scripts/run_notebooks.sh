#!/usr/bin/env bash
# Re-execute notebooks in place, top to bottom, in the preset given by MINIMFM_PRESET (default tiny), so the
# committed notebooks show real figures; default: every chapter, then every worked solution. Prints each one's
# wall time. Models and tokenizers come from runs/ under the repository root (or $MINIMFM_ROOT): build them first
# with `python -m minimfm course prepare` to keep this to the notebooks' own work.
set -euo pipefail
cd "$(dirname "$0")/.."
export MINIMFM_PRESET=${MINIMFM_PRESET:-tiny}; unset MPLBACKEND  # inline figures
for nb in ${@:-notebooks/*.ipynb notebooks/solutions/*.ipynb}; do
  echo "== $nb ($MINIMFM_PRESET)"
  start=$(date +%s)
  (cd "$(dirname "$nb")" && python -m jupyter nbconvert --to notebook --execute --inplace \
      --ExecutePreprocessor.timeout=3600 "$(basename "$nb")")
  echo "== $nb: $(( $(date +%s) - start )) s"
done
