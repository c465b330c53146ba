# Builds simcalkv._C, the library's CPU policies and attention as PyTorch operators, from the
# headers in ../include with torch.utils.cpp_extension. Nothing is downloaded: it compiles against
# the torch it runs under. Eigen and xsimd come from the system (Debian: libeigen3-dev,
# libxsimd-dev) or from SIMCALKV_EXTRA_INCLUDE (a path list) where they live elsewhere.
import os
import sys
from pathlib import Path

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

here = Path(__file__).resolve().parent
library_include = here.parent / "include"
if not (library_include / "simcalkv" / "core.hpp").exists():
    sys.exit(f"simcalkv: the C++ headers are not at {library_include}; build from the repository's python/ folder")

include_dirs = [str(library_include)]
for candidate in os.environ.get("SIMCALKV_EXTRA_INCLUDE", "").split(os.pathsep) + ["/usr/include/eigen3"]:
    if candidate and Path(candidate).is_dir():
        include_dirs.append(candidate)

# -march: the kernels are built for one instruction set; SIMCALKV_MARCH=native for this CPU's
# widest (the default, x86-64-v2 class baseline, runs everywhere the wheel may be copied).
march = os.environ.get("SIMCALKV_MARCH", "")
extra = ["-std=c++20", "-O2", "-fvisibility=hidden", "-Wno-deprecated-declarations"] + ([f"-march={march}"] if march else [])

setup(
    name="simcalkv",
    version="0.1.0",
    description="simcalkv KV-cache compression (similarity-aware merging with bias calibration) for PyTorch",
    packages=["simcalkv"],
    ext_modules=[CppExtension("simcalkv._C", ["csrc/ops.cpp"], include_dirs=include_dirs, extra_compile_args=extra)],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=False)},
    python_requires=">=3.9",
)
