import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def reference_binary(tmp_path_factory):
    """The C++ library's own compression (reference_compress.cpp), built once per session, or the
    binary named by SIMCALKV_REFERENCE."""
    given = os.environ.get("SIMCALKV_REFERENCE")
    if given:
        return given
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        pytest.skip(f"no C++ compiler ({cxx}) to build the reference")
    out = tmp_path_factory.mktemp("reference") / "reference_compress"
    cmd = [cxx, "-std=c++20", "-O1", f"-I{ROOT / 'include'}", "-I/usr/include/eigen3"]
    cmd += [f"-I{p}" for p in os.environ.get("SIMCALKV_EXTRA_INCLUDE", "").split(os.pathsep) if p]
    cmd += [str(ROOT / "python" / "tests" / "reference_compress.cpp"), "-o", str(out)]
    subprocess.run(cmd, check=True)
    return str(out)
