// Large query batches on the tensor cores. Per tile of rows:
//   1. tq_dequantize writes the tile's centroid values as fp16 rows (tile, dim_pad);
//   2. cuBLAS multiplies the fp16 queries by the tile (fp32 accumulation, fp16 scores);
//   3. tile_topk keeps the best Kc rows per query and slice of the tile, skipping rows that
//      cannot beat the Kc-th best of a slice seen before (a bound per query).
// Only a tile's scores exist at a time. tq_finish then merges the slices' candidates of
// each query and re-scores the best Kc in float32 from the codes, so the keys returned
// equal the single-query kernel's up to summation order, and fp16 rounding can only matter
// for a row outside the Kc best.
//
// Codes use the transposed layout of tq_scan.cu: words[w * n_pad + row].

#include "topk.cuh"

__device__ __forceinline__ unsigned int code_value(const unsigned int* __restrict__ words,
                                                   int n_words, int n_pad, int row, int bit,
                                                   unsigned int mask) {
    const int w = bit >> 5;
    const unsigned int lo = __ldg(words + (size_t)w * n_pad + row);
    const unsigned int hi = (w + 1 < n_words) ? __ldg(words + (size_t)(w + 1) * n_pad + row) : 0u;
    return __funnelshift_r(lo, hi, bit & 31) & mask;
}

// Block of DEQUANT_ROWS rows: their words are staged in shared memory (coalesced loads
// along rows), then written out as fp16 rows with consecutive threads storing consecutive
// 16-byte groups of 8 values. out[r * dim_pad + j] = half bits of centroids[value j of row
// row0 + r], 0 for j >= dim; dim_pad is a multiple of 8.
#define DEQUANT_ROWS 32

template <int BITS>
__global__ void tq_dequantize(const unsigned int* __restrict__ words, int n_words, int n_pad,
                              int row0, int rows, int dim, int dim_pad,
                              const unsigned short* __restrict__ centroid_halves,
                              unsigned short* __restrict__ out) {
    extern __shared__ __align__(16) unsigned char smem[];
    unsigned int* staged = reinterpret_cast<unsigned int*>(smem);              // n_words x (ROWS + 1)
    unsigned short* table =
        reinterpret_cast<unsigned short*>(staged + n_words * (DEQUANT_ROWS + 1));  // levels
    const int first_row = blockIdx.x * DEQUANT_ROWS;
    for (int i = threadIdx.x; i < (1 << BITS); i += blockDim.x) table[i] = centroid_halves[i];
#pragma unroll 4
    for (int i = threadIdx.x; i < n_words * DEQUANT_ROWS; i += blockDim.x) {
        const int w = i / DEQUANT_ROWS, r = i % DEQUANT_ROWS;
        staged[w * (DEQUANT_ROWS + 1) + r] =
            first_row + r < rows ? __ldg(words + (size_t)w * n_pad + row0 + first_row + r) : 0u;
    }
    __syncthreads();
    const unsigned int mask = (1u << BITS) - 1u;
    const int groups = dim_pad / 8;
    for (int unit = threadIdx.x; unit < DEQUANT_ROWS * groups; unit += blockDim.x) {
        const int r = unit / groups, g = unit % groups;
        if (first_row + r >= rows) break;
        unsigned int halves[4] = {0u, 0u, 0u, 0u};
#pragma unroll
        for (int s = 0; s < 8; ++s) {
            const int j = g * 8 + s;
            if (j < dim) {
                const int bit = j * BITS, w = bit >> 5;
                const unsigned int lo = staged[w * (DEQUANT_ROWS + 1) + r];
                const unsigned int hi = w + 1 < n_words ? staged[(w + 1) * (DEQUANT_ROWS + 1) + r] : 0u;
                halves[s >> 1] |= (unsigned int)table[__funnelshift_r(lo, hi, bit & 31) & mask]
                                  << (16 * (s & 1));
            }
        }
        reinterpret_cast<uint4*>(out + (size_t)(first_row + r) * dim_pad)[g] =
            make_uint4(halves[0], halves[1], halves[2], halves[3]);
    }
}

#define TOPK_PER_THREAD 8

__device__ __forceinline__ unsigned short float_to_half(float f) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ float half_to_float(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

// Grid (slices, queries of the chunk). scores (chunk, ld) fp16 bits hold
// <q, y_row0 + r> / query_scale[q] for r < tile_rows (queries are scaled to unit norm for
// fp16). Block (s, q) keeps the k best keys of rows [s * slice_rows, ...) of query q0 + q
// that beat bounds[q0 + q], writes them to
// out[((q0 + q) * n_slots + row0 / slice_rows + s) * k + i] (empty slots: EMPTY_SLOT) and
// lowers the bound to its k-th best: no row above a slice's k-th best can be in the k best.
// Rows are read 8 per thread (TOPK_PER_THREAD) with 16-byte loads: slice_rows, tile_rows
// and row0 are multiples of 8, and the row arrays start 16-byte aligned.
__global__ void tile_topk(const unsigned short* __restrict__ scores, int ld, int tile_rows,
                          int row0, int q0, int nq, int slice_rows, int n_slots,
                          const float* __restrict__ row_scale, const float* __restrict__ row_bias,
                          const float* __restrict__ query_scale,
                          const float* __restrict__ query_bias, float key_scale, int k, int size,
                          u64* __restrict__ bounds, u64* __restrict__ out) {
    extern __shared__ __align__(16) unsigned char smem[];
    u64* best = reinterpret_cast<u64*>(smem);
    int* counts = reinterpret_cast<int*>(best + size);
    BlockTopK top{best, counts, counts + 1, 1, size, k};
    const int q = q0 + blockIdx.y;
    if (q >= nq) return;
    top.init();
    __syncthreads();
    const unsigned short* row_scores = scores + (size_t)blockIdx.y * ld;
    const float qbias = query_bias[q];
    const float qscale = query_scale[q] * key_scale;
    const u64 bound = bounds[q];
    const int begin = blockIdx.x * slice_rows;
    const int end = min(tile_rows, begin + slice_rows);
    // Each thread takes TOPK_PER_THREAD = 8 consecutive rows per round with 16-byte loads
    // (scores, scales, biases). A score can enter only if its key is at most that of
    // min(bound, the block's current k-th best): a float compare per score. Most rounds hold
    // no such score; one barrier tells, and only rounds with one go through the
    // one-offer-per-step protocol (where packed compares settle equal keys).
    for (int base = begin; base < end; base += TOPK_PER_THREAD * blockDim.x) {
        const u64 threshold = min(bound, best[k - 1]);
        const float limit = threshold == EMPTY_SLOT ? __int_as_float(0x7f800000)
                                                    : key_of(threshold);
        const int first = base + threadIdx.x * TOPK_PER_THREAD;
        float keys[TOPK_PER_THREAD];
        int pending = 0;
        if (first + TOPK_PER_THREAD <= end) {
            const uint4 halves = *reinterpret_cast<const uint4*>(row_scores + first);
            const float4* scale4 = reinterpret_cast<const float4*>(row_scale + row0 + first);
            const float4* bias4 = reinterpret_cast<const float4*>(row_bias + row0 + first);
            const float4 s0 = scale4[0], s1 = scale4[1], b0 = bias4[0], b1 = bias4[1];
            const unsigned int h[4] = {halves.x, halves.y, halves.z, halves.w};
            const float sc[8] = {s0.x, s0.y, s0.z, s0.w, s1.x, s1.y, s1.z, s1.w};
            const float bi[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
            for (int u = 0; u < TOPK_PER_THREAD; ++u) {
                const float score = half_to_float((unsigned short)(h[u >> 1] >> (16 * (u & 1))));
                keys[u] = fmaf(score, sc[u] * qscale, bi[u] + qbias);
                pending |= keys[u] <= limit;
            }
        } else {
#pragma unroll
            for (int u = 0; u < TOPK_PER_THREAD; ++u) {
                const int r = first + u;
                keys[u] = 0.0f;
                if (r < end) {
                    keys[u] = fmaf(half_to_float(row_scores[r]), row_scale[row0 + r] * qscale,
                                   row_bias[row0 + r] + qbias);
                    pending |= keys[u] <= limit;
                }
            }
        }
        if (__syncthreads_or(pending)) {
#pragma unroll
            for (int u = 0; u < TOPK_PER_THREAD; ++u) {
                const int r = first + u;
                if (r < end) {
                    const u64 packed = pack_key(keys[u], (unsigned int)(row0 + r));
                    if (packed < bound) top.offer(0, packed);
                }
                top.end_step();
            }
        }
    }
    top.finish();
    const size_t slot = (size_t)q * n_slots + row0 / slice_rows + blockIdx.x;
    for (int i = threadIdx.x; i < k; i += blockDim.x) out[slot * k + i] = best[i];
    if (threadIdx.x == 0 && best[k - 1] != EMPTY_SLOT) atomicMin(bounds + q, best[k - 1]);
}

// One block per query: the kc best of the n_cand candidates (the first filled[q] of them
// when filled is not null), re-scored in float32 against queries (nq, dim_pad) and sorted;
// out[q * k + i] are the k best.
template <int BITS>
__global__ void tq_finish(const u64* __restrict__ candidates, int n_cand,
                          const int* __restrict__ filled, int kc, int size,
                          int exact_size, const unsigned int* __restrict__ words, int n_words,
                          int n_pad, const float* __restrict__ row_scale,
                          const float* __restrict__ row_bias, const float* __restrict__ queries,
                          int dim, int dim_pad, const float* __restrict__ query_bias,
                          const float* __restrict__ centroids, float key_scale, int k,
                          u64* __restrict__ out) {
    extern __shared__ __align__(16) unsigned char smem[];
    u64* best = reinterpret_cast<u64*>(smem);                        // size
    u64* exact = best + size;                                        // exact_size
    float* c_s = reinterpret_cast<float*>(exact + exact_size);       // levels
    int* counts = reinterpret_cast<int*>(c_s + (1 << BITS));         // 1 + flag
    BlockTopK top{best, counts, counts + 1, 1, size, kc};
    const int q = blockIdx.x;
    top.init();
    for (int i = threadIdx.x; i < (1 << BITS); i += blockDim.x) c_s[i] = centroids[i];
    __syncthreads();
    top.offer_all(candidates + (size_t)q * n_cand,
                  filled != nullptr ? max(0, min(filled[q], n_cand)) : n_cand);
    top.finish();

    const unsigned int mask = (1u << BITS) - 1u;
    const float* query = queries + (size_t)q * dim_pad;
    const float qbias = query_bias[q];
    const int lane = threadIdx.x & 31;
    for (int i = threadIdx.x >> 5; i < exact_size; i += blockDim.x >> 5) {
        const u64 candidate = i < kc ? best[i] : EMPTY_SLOT;
        if (candidate == EMPTY_SLOT) {
            if (lane == 0) exact[i] = EMPTY_SLOT;
            continue;
        }
        const int row = (int)(candidate & 0xFFFFFFFFull);
        float dot = 0.0f;
        for (int j = lane; j < dim; j += 32)
            dot = fmaf(query[j], c_s[code_value(words, n_words, n_pad, row, j * BITS, mask)], dot);
#pragma unroll
        for (int offset = 16; offset > 0; offset >>= 1) dot += __shfl_xor_sync(0xFFFFFFFFu, dot, offset);
        if (lane == 0) {
            const float key = fmaf(dot, row_scale[row] * key_scale, row_bias[row] + qbias);
            exact[i] = pack_key(key, (unsigned int)row);
        }
    }
    __syncthreads();
    bitonic_sort(exact, 1, exact_size, exact_size);
    for (int i = threadIdx.x; i < k; i += blockDim.x) out[(size_t)q * k + i] = exact[i];
}

// One block per query of rotated (nq, dim) float32: the float32 rows padded with zeros
// (nq, dim_pad), the fp16 rows scaled to unit norm (nq, dim_pad) and norms[q] (1 for a
// zero query). When int8 is not null (tq_mma_scan's input, dim_pad a multiple of 32), also
// the int8 rows rint(x * 127 / max|x|) in tq_mma.cu's order: position 32c + 16h + 4t + j
// holds coordinate 32c + 8t + 4h + j; and inv_scale[q] = max|x| / 127 (1 for a zero query).
__global__ void prepare_queries(const float* __restrict__ rotated, int dim, int dim_pad,
                                float* __restrict__ padded, unsigned short* __restrict__ halves,
                                float* __restrict__ norms, signed char* __restrict__ int8,
                                float* __restrict__ inv_scale) {
    __shared__ float sums[32], peaks[32];
    const float* x = rotated + (size_t)blockIdx.x * dim;
    float sum = 0.0f, peak = 0.0f;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) {
        sum = fmaf(x[j], x[j], sum);
        peak = fmaxf(peak, fabsf(x[j]));
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        sum += __shfl_xor_sync(0xFFFFFFFFu, sum, offset);
        peak = fmaxf(peak, __shfl_xor_sync(0xFFFFFFFFu, peak, offset));
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    if (lane == 0) {
        sums[warp] = sum;
        peaks[warp] = peak;
    }
    __syncthreads();
    sum = 0.0f;
    peak = 0.0f;
    for (int w = 0; w < warps; ++w) {
        sum += sums[w];
        peak = fmaxf(peak, peaks[w]);
    }
    const float norm = sum > 0.0f ? sqrtf(sum) : 1.0f;
    const float to_int8 = peak > 0.0f ? 127.0f / peak : 1.0f;
    const size_t out = (size_t)blockIdx.x * dim_pad;
    for (int j = threadIdx.x; j < dim_pad; j += blockDim.x) {
        const float value = j < dim ? x[j] : 0.0f;
        padded[out + j] = value;
        halves[out + j] = float_to_half(value / norm);
        if (int8 != nullptr) {
            const int c = j >> 5, h = (j >> 4) & 1, t = (j >> 2) & 3, i = j & 3;
            const int source = 32 * c + 8 * t + 4 * h + i;
            int8[out + j] = source < dim ? (signed char)__float2int_rn(x[source] * to_int8) : 0;
        }
    }
    if (threadIdx.x == 0) {
        norms[blockIdx.x] = norm;
        if (int8 != nullptr) inv_scale[blockIdx.x] = peak > 0.0f ? peak / 127.0f : 1.0f;
    }
}
