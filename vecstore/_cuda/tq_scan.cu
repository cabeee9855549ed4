// Fused exhaustive scan of TurboQuant MSE codes with a per-block top-k.
//
// Codes are resident in a transposed layout: words[w * n_pad + row] is little-endian
// 32-bit word w of a row's bit-packed centroid indices (value j of a row occupies stream
// bits [j*BITS, (j+1)*BITS)). A warp reading word w of 32 consecutive rows touches 128
// contiguous bytes.
//
// Each thread scores one row against NQ queries at a time:
//     dot_q = sum_j q_rot[q][j] * centroids[v_j]
//     key   = key_scale * dot_q * row_scale[row] + row_bias[row] + query_bias[q]
// (ip/cosine: key = -dot * scale; l2: key = ||q||^2 - 2 dot * norm + norm^2). Smaller keys
// are better. Each block keeps its K best per query and writes only those: for K <= 32
// (WARP_TOP) each warp holds its K best in registers and the warps combine at the end
// (WarpTopK), else the block shares one list per query (BlockTopK, topk.cuh).


#include "topk.cuh"

// Words of a row loaded before the first is used; 4-bit table lookups load up to 48 (a
// whole row at d = 384), which scanned 1M x 384 codes in 98.6 us against 107.8 us with 16.
#define UNROLL 16
#define TABLE4_UNROLL 48

// TABLE (one query, few levels): table[j * levels + v] = q[j] * centroids[v] in shared
// memory, so each coordinate costs one lookup and one add. GIVEN_TABLE (implies TABLE and
// NQ = 1): the table comes per query from `tables` (nq x DIM x levels), for codecs whose
// score is a sum of per-value table entries (PQ distance tables, MIB per-dimension levels).
// PROD (TurboQuant_prod): BITS are the MSE bits, and each row also has DIM QJL sign bits
// in `signs` (same transposed layout) and a factor residual[row] = sqrt(pi/2)/D * ||r||:
//     dot_q += residual[row] * sum_j sketched[q][j] * (sign_j ? 1 : -1)
template <int BITS, int NQ, bool TABLE, int DIM, bool GIVEN_TABLE, bool PROD, bool WARP_TOP>
__global__ void tq_scan(const unsigned int* __restrict__ words, int n_words_arg, int n, int n_pad,
                        const float* __restrict__ row_scale, const float* __restrict__ row_bias,
                        const float* __restrict__ queries, const float* __restrict__ query_bias,
                        int nq, int dim_arg, const float* __restrict__ centroids, float key_scale,
                        int k, int size, int rows_per_block, const float* __restrict__ tables,
                        const unsigned int* __restrict__ signs, const float* __restrict__ sketched,
                        const float* __restrict__ residual, u64* __restrict__ out) {
    extern __shared__ __align__(16) unsigned char smem[];
    constexpr int dim = DIM;
    constexpr int n_words = (DIM * BITS + 31) / 32;
    constexpr int levels = 1 << BITS;
    // A table built here is static shared memory, which the lookups address by a uniform
    // register plus an immediate; a given table comes first in the dynamic part. Tables
    // cover every value of the last word (table_dim values, zeros past dim), since the
    // 4-bit lookups read a whole word's values.
    constexpr int table_dim = 32 % BITS == 0 ? n_words * (32 / BITS) : DIM;
    constexpr bool STATIC_TABLE = TABLE && !GIVEN_TABLE;
    __shared__ float static_table[STATIC_TABLE ? table_dim * levels : 1];
    float* table = STATIC_TABLE ? static_table : reinterpret_cast<float*>(smem);
    // NQ * size: BlockTopK's lists, or with WARP_TOP the warps' (size = blockDim.x).
    u64* best = reinterpret_cast<u64*>(smem + (GIVEN_TABLE ? table_dim * levels * 4 : 0));
    float* q_s = reinterpret_cast<float*>(best + NQ * size);                // NQ * dim
    float* c_s = q_s + NQ * dim;                                            // levels
    int* counts = reinterpret_cast<int*>(c_s + levels);                     // NQ
    int* flush_flag = counts + NQ;                                          // 1
    float* sq_s = reinterpret_cast<float*>(flush_flag + 1);                 // NQ * dim when PROD
    BlockTopK top{best, counts, flush_flag, NQ, size, k};
    WarpTopK warp_top[NQ];

    const int q0 = blockIdx.y * NQ;
    if (WARP_TOP) {
#pragma unroll
        for (int q = 0; q < NQ; ++q) warp_top[q].init(k);
    } else {
        top.init();
    }
    for (int i = threadIdx.x; i < NQ * dim; i += blockDim.x) {
        int q = i / dim;
        q_s[i] = (q0 + q < nq) ? queries[(size_t)(q0 + q) * dim + (i % dim)] : 0.0f;
    }
    for (int i = threadIdx.x; i < levels; i += blockDim.x) c_s[i] = centroids[i];
    if (PROD) {
        for (int i = threadIdx.x; i < NQ * dim; i += blockDim.x) {
            int q = i / dim;
            sq_s[i] = (q0 + q < nq) ? sketched[(size_t)(q0 + q) * dim + (i % dim)] : 0.0f;
        }
    }
    __syncthreads();
    if (TABLE) {
        for (int i = threadIdx.x; i < table_dim * levels; i += blockDim.x)
            table[i] = i >= dim * levels ? 0.0f
                       : GIVEN_TABLE ? tables[(size_t)q0 * dim * levels + i]
                                     : q_s[i / levels] * c_s[i % levels];
        __syncthreads();
    }

    float qbias[NQ];
#pragma unroll
    for (int q = 0; q < NQ; ++q) qbias[q] = (q0 + q < nq) ? query_bias[q0 + q] : 0.0f;
    const unsigned int mask = (1u << BITS) - 1u;

    const int row_begin = blockIdx.x * rows_per_block;
    const int row_end = min(n, row_begin + rows_per_block);
    for (int base = row_begin; base < row_end; base += blockDim.x) {
        const int row = base + threadIdx.x;
        u64 packed[NQ];
#pragma unroll
        for (int q = 0; q < NQ; ++q) packed[q] = EMPTY_SLOT;
        if (row < row_end) {
            float dot[NQ];
#pragma unroll
            for (int q = 0; q < NQ; ++q) dot[q] = 0.0f;
            float odd_dot = 0.0f;  // a second sum for 4-bit table lookups (two add chains)
            if (32 % BITS == 0) {
                constexpr int per_word = 32 / BITS;
                constexpr int unroll = TABLE && BITS == 4 ? TABLE4_UNROLL : UNROLL;
#pragma unroll
                for (int w0 = 0; w0 < n_words; w0 += unroll) {
                    unsigned int chunk[unroll];
#pragma unroll
                    for (int u = 0; u < unroll; ++u)
                        if (w0 + u < n_words) chunk[u] = __ldg(words + (size_t)(w0 + u) * n_pad + row);
#pragma unroll
                    for (int u = 0; u < unroll; ++u) {
                        if (TABLE && BITS == 4 && w0 + u < n_words) {
                            // Byte offsets 4 * v of the even and odd values of the word.
                            const unsigned int even = (chunk[u] << 2) & 0x3C3C3C3Cu;
                            const unsigned int odd = (chunk[u] >> 2) & 0x3C3C3C3Cu;
                            const unsigned char* row_table =
                                reinterpret_cast<const unsigned char*>(table + (w0 + u) * 8 * levels);
#pragma unroll
                            for (int s = 0; s < 8; ++s) {
                                const unsigned int offset =
                                    __byte_perm(s & 1 ? odd : even, 0u, 0x4440u | (s >> 1));
                                const float entry = *reinterpret_cast<const float*>(
                                    row_table + s * levels * 4 + offset);
                                if (s & 1) odd_dot += entry; else dot[0] += entry;
                            }
                            continue;
                        }
#pragma unroll
                        for (int s = 0; s < per_word; ++s) {
                            const int j = (w0 + u) * per_word + s;
                            if (w0 + u < n_words && j < dim) {
                                const unsigned int v = (chunk[u] >> (s * BITS)) & mask;
                                if (TABLE) {
                                    dot[0] += table[j * levels + v];
                                } else {
                                    const float c = c_s[v];
#pragma unroll
                                    for (int q = 0; q < NQ; ++q) dot[q] = fmaf(q_s[q * dim + j], c, dot[q]);
                                }
                            }
                        }
                    }
                }
            } else {
                unsigned int lo = __ldg(words + row);
                unsigned int hi = (n_words > 1) ? __ldg(words + (size_t)n_pad + row) : 0u;
                int loaded = 0;
                for (int j = 0; j < dim; ++j) {
                    const int bit = j * BITS;
                    const int w = bit >> 5;
                    while (loaded < w) {
                        ++loaded;
                        lo = hi;
                        hi = (loaded + 1 < n_words) ? __ldg(words + (size_t)(loaded + 1) * n_pad + row) : 0u;
                    }
                    unsigned int v = __funnelshift_r(lo, hi, bit & 31) & mask;
                    float c = c_s[v];
#pragma unroll
                    for (int q = 0; q < NQ; ++q) dot[q] = fmaf(q_s[q * dim + j], c, dot[q]);
                }
            }
            dot[0] += odd_dot;
            if (PROD) {
                constexpr int sign_words = (DIM + 31) / 32;
                float qjl[NQ];
#pragma unroll
                for (int q = 0; q < NQ; ++q) qjl[q] = 0.0f;
                for (int w = 0; w < sign_words; ++w) {
                    const unsigned int bits = __ldg(signs + (size_t)w * n_pad + row);
#pragma unroll
                    for (int b = 0; b < 32; ++b) {
                        const int j = w * 32 + b;
                        if (j < dim) {
                            const float sign = ((bits >> b) & 1u) ? 1.0f : -1.0f;
#pragma unroll
                            for (int q = 0; q < NQ; ++q) qjl[q] = fmaf(sq_s[q * dim + j], sign, qjl[q]);
                        }
                    }
                }
                const float factor = residual[row];
#pragma unroll
                for (int q = 0; q < NQ; ++q) dot[q] = fmaf(factor, qjl[q], dot[q]);
            }
            const float scale = row_scale[row] * key_scale;
            const float bias = row_bias[row];
#pragma unroll
            for (int q = 0; q < NQ; ++q) {
                if (q0 + q < nq)
                    packed[q] = pack_key(fmaf(dot[q], scale, bias + qbias[q]), (unsigned int)row);
            }
        }
        if (WARP_TOP) {
#pragma unroll
            for (int q = 0; q < NQ; ++q) warp_top[q].offer(packed[q]);
        } else {
#pragma unroll
            for (int q = 0; q < NQ; ++q) top.offer(q, packed[q]);
            top.end_step();
        }
    }
    if (WARP_TOP) {
        combine_warps<NQ>(warp_top, best);  // warp 0 holds the block's k best
#pragma unroll
        for (int q = 0; q < NQ; ++q) {
            if (threadIdx.x < k && q0 + q < nq)
                out[((size_t)(q0 + q) * gridDim.x + blockIdx.x) * k + threadIdx.x] = warp_top[q].held;
        }
        return;
    }
    top.finish();
    for (int i = threadIdx.x; i < NQ * k; i += blockDim.x) {
        int q = i / k;
        if (q0 + q < nq) out[((size_t)(q0 + q) * gridDim.x + blockIdx.x) * k + (i % k)] = best[(size_t)q * size + (i % k)];
    }
}
