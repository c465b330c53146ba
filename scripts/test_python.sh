#!/usr/bin/env bash
# The Python package's tests (python/tests): installs the package with `pip install ./python` into a
# virtual environment that sees the PyTorch PYTHON imports (default /usr/bin/python3 with Debian's
# python3-torch), as docs/python.md tells users to, then runs pytest against the installed copy.
# The transformers tests skip where transformers is not installed (Debian ships none).
# usage: scripts/test_python.sh [pytest arguments]
# env: PYTHON, SIMCALKV_PYTHON_VENV (default build-python/venv), SIMCALKV_MARCH (see python/setup.py)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-/usr/bin/python3}
[ -n "${PYTHON:-}" ] || bash scripts/install-deps.sh --python
"$python" -c "import torch" 2>/dev/null ||
  { echo "test_python.sh: $python cannot import torch (scripts/install-deps.sh --python, or PYTHON=...)" >&2; exit 1; }
start=$SECONDS
"$python" -m compileall -q python/simcalkv python/tests benchmarks/python  # the modules the tests skip here still parse
venv=${SIMCALKV_PYTHON_VENV:-build-python/venv}
[ -x "$venv/bin/python" ] || "$python" -m venv --system-site-packages "$venv"
mkdir -p build-python
# No build isolation: the extension compiles against the torch the environment already has; no
# index: nothing is downloaded.
"$venv/bin/python" -m pip install --no-build-isolation --no-deps --no-index --force-reinstall ./python \
  >build-python/pip_install.log 2>&1 ||
  { tail -40 build-python/pip_install.log; echo "test_python.sh: pip install ./python failed (log: build-python/pip_install.log)" >&2; exit 1; }
installed=$("$venv/bin/python" -c 'import simcalkv, os; print(os.path.dirname(simcalkv.__file__))')
case "$installed" in
  "$PWD/python/"*) echo "test_python.sh: simcalkv was imported from the source tree ($installed), not the install" >&2; exit 1 ;;
esac
echo "pip install ./python: built in $((SECONDS - start)) s against torch $("$venv/bin/python" -c 'import torch; print(torch.__version__)'), installed at $installed"
"$venv/bin/python" -m pytest -q -p no:cacheprovider python/tests "$@"
