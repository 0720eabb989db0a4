#!/usr/bin/env bash
# Create the separate virtual environment that holds SCALE-Sim 3.0.0 (github.com/scalesim-project/scale-sim-v3).
# SCALE-Sim needs NumPy < 2 and pandas < 2.3, which the project's own environment does not pin, so it lives apart;
# nothing in the qift_hw package imports it. Idempotent: an environment that already imports scalesim is kept.
# Usage: sw/scalesim_env.sh [DIR]   (default .venv-scalesim at the repository root)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${1:-$root/.venv-scalesim}"
py="${PYTHON:-python3}"
if [ -x "$dir/bin/python" ] && "$dir/bin/python" -c 'import scalesim, numpy; assert numpy.__version__ < "2"' 2>/dev/null; then
    echo "$dir: scalesim already installed"
    exit 0
fi
"$py" -m venv "$dir"
"$dir/bin/pip" install --quiet 'scalesim==3.0.0' 'numpy<2' 'pandas<2.3'
"$dir/bin/pip" check
"$dir/bin/python" -c 'import scalesim.scale_sim, numpy; print("scalesim ready, numpy", numpy.__version__)'
echo "run: $dir/bin/python -m scalesim.scale -c CFG -t TOPO.csv -l LAYOUT.csv -p OUTDIR -i gemm"
