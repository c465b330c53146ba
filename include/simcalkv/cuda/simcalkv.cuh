// simcalkv CUDA: all the header-only GPU kernels (see docs/cuda.md).
#pragma once

#include "simcalkv/cuda/apply.cuh"
#include "simcalkv/cuda/attention.cuh"
#include "simcalkv/cuda/common.cuh"
#include "simcalkv/cuda/compress.cuh"
#include "simcalkv/cuda/layout.cuh"
