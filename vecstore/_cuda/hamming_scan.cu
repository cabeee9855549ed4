// Fused Hamming scan of 1-bit MIB codes with a per-block top-k.
//
// Codes use the transposed layout of tq_scan.cu: words[w * n_pad + row] is 32-bit word w
// of a row's bits. Each thread scores one row against one query (grid.y):
//     distance = sum_w popc(words[w][row] ^ query_bits[w])
//     score    = cos(pi * distance / dim) * query_factor[q]   (MIB's Hamming estimate)
//     key      = key_scale * score * row_scale[row] + row_bias[row] + query_bias[q]

#include "topk.cuh"

// WARP_TOP (k <= 32): each warp keeps its k best in registers (WarpTopK) and the warps
// combine at the end; else the block shares one list (BlockTopK). `size` is the length of
// the block's list, or blockDim.x with WARP_TOP.
template <int N_WORDS, bool WARP_TOP>
__global__ void hamming_scan(const unsigned int* __restrict__ words, int n, int n_pad,
                             const float* __restrict__ row_scale, const float* __restrict__ row_bias,
                             const unsigned int* __restrict__ query_bits,
                             const float* __restrict__ query_factor,
                             const float* __restrict__ query_bias, float angle_per_bit,
                             float key_scale, int k, int size, int rows_per_block,
                             u64* __restrict__ out) {
    extern __shared__ __align__(16) unsigned char smem[];
    u64* best = reinterpret_cast<u64*>(smem);
    int* counts = reinterpret_cast<int*>(best + size);
    BlockTopK top{best, counts, counts + 1, 1, size, k};
    WarpTopK warp_top[1];
    const int q = blockIdx.y;
    unsigned int bits[N_WORDS];
#pragma unroll
    for (int w = 0; w < N_WORDS; ++w) bits[w] = query_bits[(size_t)q * N_WORDS + w];
    const float factor = query_factor[q];
    const float qbias = query_bias[q];
    if (WARP_TOP) warp_top[0].init(k); else top.init();
    __syncthreads();
    const int row_begin = blockIdx.x * rows_per_block;
    const int row_end = min(n, row_begin + rows_per_block);
    for (int base = row_begin; base < row_end; base += blockDim.x) {
        const int row = base + threadIdx.x;
        u64 packed = EMPTY_SLOT;
        if (row < row_end) {
            int distance = 0;
#pragma unroll
            for (int w = 0; w < N_WORDS; ++w)
                distance += __popc(__ldg(words + (size_t)w * n_pad + row) ^ bits[w]);
            const float score = cosf(angle_per_bit * (float)distance) * factor;
            const float key = fmaf(score, row_scale[row] * key_scale, row_bias[row] + qbias);
            packed = pack_key(key, (unsigned int)row);
        }
        if (WARP_TOP) {
            warp_top[0].offer(packed);
        } else {
            top.offer(0, packed);
            top.end_step();
        }
    }
    const size_t at = ((size_t)q * gridDim.x + blockIdx.x) * k;
    if (WARP_TOP) {
        combine_warps<1>(warp_top, best);  // warp 0 holds the block's k best
        if (threadIdx.x < k) out[at + threadIdx.x] = warp_top[0].held;
        return;
    }
    top.finish();
    for (int i = threadIdx.x; i < k; i += blockDim.x) out[at + i] = best[i];
}
