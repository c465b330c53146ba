// Instantiates the CUDA entry points for representative types and layouts, so that a compile of
// this file (scripts/cuda_check.sh, no GPU needed) checks real device code, not only syntax.
#include <simcalkv/cuda/simcalkv.cuh>

namespace sc = simcalkv::cuda;

template cudaError_t sc::compress_layer<sc::bf16, float, sc::RaggedLayout>(
    const sc::LayerKV<sc::bf16, sc::RaggedLayout>&, const sc::WindowArgs<float>&, const sc::PolicyConfig&,
    const sc::BudgetRule&, const int32_t*, const sc::CompressShape&, void*, std::size_t, cudaStream_t, sc::SeqStats*,
    const simcalkv::LayerPlanBuffers*);
template cudaError_t sc::compress_layer<sc::fp16, sc::fp16, sc::PagedLayout>(
    const sc::LayerKV<sc::fp16, sc::PagedLayout>&, const sc::WindowArgs<sc::fp16>&, const sc::PolicyConfig&,
    const sc::BudgetRule&, const int32_t*, const sc::CompressShape&, void*, std::size_t, cudaStream_t, sc::SeqStats*,
    const simcalkv::LayerPlanBuffers*);
template cudaError_t sc::decode_attention<sc::bf16, sc::RaggedLayout, sc::bf16, float>(
    const sc::LayerKV<sc::bf16, sc::RaggedLayout>&, const sc::DecodeIO<sc::bf16, float>&, const sc::DecodeShape&, void*,
    std::size_t, cudaStream_t);
template cudaError_t sc::decode_attention<sc::fp16, sc::PagedLayout, sc::fp16, sc::fp16>(
    const sc::LayerKV<sc::fp16, sc::PagedLayout>&, const sc::DecodeIO<sc::fp16, sc::fp16>&, const sc::DecodeShape&, void*,
    std::size_t, cudaStream_t);

template cudaError_t sc::apply_plan<sc::bf16, sc::RaggedLayout>(const sc::LayerKV<sc::bf16, sc::RaggedLayout>&,
                                                                const simcalkv::LayerPlanView&, const sc::ApplyShape&,
                                                                void*, std::size_t, cudaStream_t);
template cudaError_t sc::apply_plan<sc::fp16, sc::PagedLayout>(const sc::LayerKV<sc::fp16, sc::PagedLayout>&,
                                                               const simcalkv::LayerPlanView&, const sc::ApplyShape&,
                                                               void*, std::size_t, cudaStream_t);

int main() { return 0; }
