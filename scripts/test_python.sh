#!/usr/bin/env bash
# The Python package's tests (python/tests): builds simcalkv._C in place against the PyTorch that
# PYTHON imports (default /usr/bin/python3 with Debian's python3-torch), then runs pytest. The
# transformers tests skip where transformers is not installed (Debian ships none).
# usage: scripts/test_python.sh [pytest arguments]     env: PYTHON, SIMCALKV_MARCH (see python/setup.py)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-/usr/bin/python3}
[ -n "${PYTHON:-}" ] || bash scripts/install-deps.sh --python
"$python" -c "import torch" 2>/dev/null ||
  { echo "test_python.sh: $python cannot import torch (scripts/install-deps.sh --python, or PYTHON=...)" >&2; exit 1; }
start=$SECONDS
"$python" -m compileall -q python/simcalkv python/tests benchmarks/python  # the modules the tests skip here still parse
(cd python && "$python" setup.py -q build_ext --inplace >build_ext.log 2>&1) ||
  { tail -40 python/build_ext.log; echo "test_python.sh: building simcalkv._C failed (log: python/build_ext.log)" >&2; exit 1; }
echo "simcalkv._C built in $((SECONDS - start)) s against torch $("$python" -c 'import torch; print(torch.__version__)')"
PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}" "$python" -m pytest -q -p no:cacheprovider python/tests "$@"
