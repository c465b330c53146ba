# Builds simcalkv._C, the library's CPU policies and attention as PyTorch operators, from the
# headers in ../include with torch.utils.cpp_extension. Nothing is downloaded: it compiles against
# the torch it runs under. Eigen and xsimd come from the system (Debian: libeigen3-dev,
# libxsimd-dev) or from SIMCALKV_EXTRA_INCLUDE (a path list) where they live elsewhere.
import os
import shutil
import sys
from pathlib import Path

from setuptools import setup
import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

here = Path(__file__).resolve().parent
library_include = here.parent / "include"
if not (library_include / "simcalkv" / "core.hpp").exists():
    sys.exit(f"simcalkv: the C++ headers are not at {library_include}; build from the repository's python/ folder")

include_dirs = [str(library_include)]
for candidate in os.environ.get("SIMCALKV_EXTRA_INCLUDE", "").split(os.pathsep) + ["/usr/include/eigen3"]:
    if candidate and Path(candidate).is_dir():
        include_dirs.append(candidate)

# The CUDA kernels (python/csrc/cuda_ops.cu) join when torch was built with CUDA and nvcc is there;
# SIMCALKV_CUDA=0 leaves them out, SIMCALKV_CUDA=1 insists. TORCH_CUDA_ARCH_LIST picks the GPUs
# (default: the ones visible; the kernels need sm_80 or newer).
want_cuda = os.environ.get("SIMCALKV_CUDA", "auto")
with_cuda = want_cuda != "0" and torch.version.cuda is not None and CUDA_HOME is not None
if want_cuda == "1" and not with_cuda:
    sys.exit(f"simcalkv: SIMCALKV_CUDA=1 but torch {torch.__version__} has no CUDA or nvcc was not found (CUDA_HOME)")

# -march: the kernels are built for one instruction set; SIMCALKV_MARCH=native for this CPU's
# widest (the default, x86-64-v2 class baseline, runs everywhere the wheel may be copied).
march = os.environ.get("SIMCALKV_MARCH", "")
extra = ["-std=c++20", "-O2", "-fvisibility=hidden", "-Wno-deprecated-declarations"] + ([f"-march={march}"] if march else [])

if with_cuda:
    extension = CUDAExtension(
        "simcalkv._C", ["csrc/ops.cpp", "csrc/cuda_ops.cu"], include_dirs=include_dirs + [str(here / "csrc")],
        define_macros=[("SIMCALKV_WITH_CUDA", "1")],
        extra_compile_args={"cxx": extra, "nvcc": ["-std=c++20", "-O2", "--expt-relaxed-constexpr"]})
else:
    extension = CppExtension("simcalkv._C", ["csrc/ops.cpp"], include_dirs=include_dirs, extra_compile_args=extra)

setup(
    name="simcalkv",
    version="0.1.0",
    description="simcalkv KV-cache compression (similarity-aware merging with bias calibration) for PyTorch",
    packages=["simcalkv"],
    ext_modules=[extension],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)},
    python_requires=">=3.9",
)
