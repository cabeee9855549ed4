// Fused tensor-core scan of 4-bit TurboQuant codes for large query batches.
//
// A block takes MMA_BM rows and MMA_BN queries. For each MMA_BK-coordinate step of the
// dimension it dequantizes its rows' codes into shared memory as fp16 (one table lookup
// per byte: two values), copies the queries' fp16 coordinates beside them, and multiplies
// the two with mma.sync (fp16 inputs, fp32 accumulation). After the last step the block
// turns each accumulator into a key and keeps only the (row, query) pairs whose key can
// be at or below the query's threshold: those are appended to the query's candidate
// buffer. Neither the fp16 rows nor a score reaches global memory.
//
// The thresholds are upper bounds on each query's Kc-th best key, taken beforehand from a
// sample of rows, so every row of the Kc best is kept; tq_finish (tq_batch.cu) then picks
// the Kc best candidates and re-scores them in float32.
//
// Codes use the transposed layout of tq_scan.cu: words[w * n_pad + row]. Queries are fp16
// rows (nq, dim_pad) scaled to unit norm, zero beyond the dimension; dim_pad is a multiple
// of MMA_BK.

#include "topk.cuh"

#define MMA_BM 128
#define MMA_BN 128
#define MMA_BK 64
// Shared rows are padded to 72 halves (144 bytes) so that ldmatrix's eight row addresses
// and the dequantizer's 16-byte stores fall in distinct banks.
#define MMA_LD (MMA_BK + 8)
#define MMA_THREADS 256

__device__ __forceinline__ void ldmatrix_x4(unsigned int (&r)[4], const unsigned short* p) {
    const unsigned int address = static_cast<unsigned int>(__cvta_generic_to_shared(p));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address));
}

// c += a (16 x 16, row-major fragment) * b (16 x 8, column-major fragment).
__device__ __forceinline__ void mma_16816(float (&c)[4], const unsigned int (&a)[4],
                                          unsigned int b0, unsigned int b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Grid (ceil(n / MMA_BM), ceil(nq / MMA_BN)), MMA_THREADS threads.
// pair_table[b] holds the fp16 centroids of byte b's two values (low nibble in the low
// half). bounds[q] is the packed key bound of query q (EMPTY_SLOT: none). Candidates go
// to out[q * cap + slot] for slot = atomicAdd(counts + q, 1) < cap; a count above cap
// tells the caller that the query's buffer overflowed. The bounds come from fp16 scores
// rounded differently from these: `slack_scale[0]` (at least that rounding on a score,
// times the largest row scale) times |query_scale[q] * key_scale| is added to each bound.
__global__ void __launch_bounds__(MMA_THREADS, 2)
tq_mma_scan(const unsigned int* __restrict__ words, int n_words, int n, int n_pad,
            const unsigned int* __restrict__ pair_table, const unsigned short* __restrict__ queries,
            int nq, int dim_pad, const float* __restrict__ row_scale,
            const float* __restrict__ row_bias, const float* __restrict__ query_scale,
            const float* __restrict__ query_bias, float key_scale,
            const u64* __restrict__ bounds, const float* __restrict__ slack_scale, int cap,
            int* __restrict__ counts,
            u64* __restrict__ out) {
    __shared__ __align__(16) unsigned short rows_s[MMA_BM * MMA_LD];
    __shared__ __align__(16) unsigned short queries_s[MMA_BN * MMA_LD];
    __shared__ unsigned int pairs_s[256];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int warp_m = warp & 1, warp_n = warp >> 1;  // 2 x 4 warps of 64 rows x 32 queries
    const int row0 = blockIdx.x * MMA_BM, q0 = blockIdx.y * MMA_BN;
    for (int i = tid; i < 256; i += MMA_THREADS) pairs_s[i] = pair_table[i];

    // Each thread loads 4 code words (one row, MMA_BK / 8 / 2 consecutive words) and 4
    // 16-byte pieces of query rows per step.
    const int my_row = tid % MMA_BM, my_half = tid / MMA_BM;
    const int code_row = row0 + my_row;
    unsigned int code_words[4];
    uint4 query_pieces[4];
    auto load_step = [&](int step) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int w = step * (MMA_BK / 8) + my_half * 4 + i;
            code_words[i] = (code_row < n_pad && w < n_words)
                                ? __ldg(words + (size_t)w * n_pad + code_row) : 0u;
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int piece = tid + i * MMA_THREADS;
            const int q = q0 + piece / (MMA_BK / 8);
            const int column = step * MMA_BK + (piece % (MMA_BK / 8)) * 8;
            query_pieces[i] = q < nq ? *reinterpret_cast<const uint4*>(
                                           queries + (size_t)q * dim_pad + column)
                                     : make_uint4(0u, 0u, 0u, 0u);
        }
    };

    float acc[4][4][4];
#pragma unroll
    for (int mt = 0; mt < 4; ++mt)
#pragma unroll
        for (int nt = 0; nt < 4; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0.0f;

    const int steps = dim_pad / MMA_BK;
    load_step(0);
    for (int step = 0; step < steps; ++step) {
        __syncthreads();  // the previous step's reads of shared memory are done
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const unsigned int w = code_words[i];
            const uint4 halves = make_uint4(pairs_s[w & 0xFFu], pairs_s[(w >> 8) & 0xFFu],
                                            pairs_s[(w >> 16) & 0xFFu], pairs_s[w >> 24]);
            *reinterpret_cast<uint4*>(rows_s + my_row * MMA_LD + (my_half * 4 + i) * 8) = halves;
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int piece = tid + i * MMA_THREADS;
            *reinterpret_cast<uint4*>(queries_s + (piece / (MMA_BK / 8)) * MMA_LD
                                      + (piece % (MMA_BK / 8)) * 8) = query_pieces[i];
        }
        __syncthreads();
        if (step + 1 < steps) load_step(step + 1);  // in flight while this step multiplies

#pragma unroll
        for (int kk = 0; kk < MMA_BK; kk += 16) {
            // B fragments of the warp's four 8-query tiles: ldmatrix lane l addresses query
            // row (l % 8) + (l / 16) * 8 of a 16-query pair, columns kk + ((l / 8) % 2) * 8.
            unsigned int b[2][4];
#pragma unroll
            for (int pair = 0; pair < 2; ++pair) {
                const int q_local = warp_n * 32 + pair * 16 + (lane & 7) + (lane >> 4) * 8;
                ldmatrix_x4(b[pair], queries_s + q_local * MMA_LD + kk + ((lane >> 3) & 1) * 8);
            }
#pragma unroll
            for (int mt = 0; mt < 4; ++mt) {
                // A fragment of rows warp_m * 64 + mt * 16 + (l % 16), columns kk + (l / 16) * 8.
                unsigned int a[4];
                const int r_local = warp_m * 64 + mt * 16 + (lane & 15);
                ldmatrix_x4(a, rows_s + r_local * MMA_LD + kk + (lane >> 4) * 8);
#pragma unroll
                for (int nt = 0; nt < 4; ++nt)
                    mma_16816(acc[mt][nt], a, b[nt >> 1][(nt & 1) * 2], b[nt >> 1][(nt & 1) * 2 + 1]);
            }
        }
    }

    // Accumulator i of tile (mt, nt) is row warp_m * 64 + mt * 16 + g + 8 * (i / 2) and
    // query warp_n * 32 + nt * 8 + 2 * t + (i % 2), with g = lane / 4 and t = lane % 4.
    const int g = lane >> 2, t = lane & 3;
    const float slack = *slack_scale;
    float q_factor[4][2], q_bias[4][2], q_limit[4][2];
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const int q = q0 + warp_n * 32 + nt * 8 + 2 * t + e;
            const u64 bound = q < nq ? bounds[q] : 0ull;
            q_factor[nt][e] = q < nq ? query_scale[q] * key_scale : 0.0f;
            q_bias[nt][e] = q < nq ? query_bias[q] : 0.0f;
            // No bound: every finite key is kept. A query past nq keeps nothing.
            q_limit[nt][e] = q >= nq ? -__int_as_float(0x7f800000)
                             : bound == EMPTY_SLOT ? __int_as_float(0x7f800000)
                             : key_of(bound) + slack * fabsf(q_factor[nt][e]);
        }
#pragma unroll
    for (int mt = 0; mt < 4; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int row = row0 + warp_m * 64 + mt * 16 + g + 8 * h;
            if (row >= n) continue;
            const float scale = row_scale[row], bias = row_bias[row];
#pragma unroll
            for (int nt = 0; nt < 4; ++nt)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const float factor = scale * q_factor[nt][e];
                    const float key = fmaf(acc[mt][nt][2 * h + e], factor, bias + q_bias[nt][e]);
                    if (key <= q_limit[nt][e] && key < __int_as_float(0x7f800000)) {
                        const int q = q0 + warp_n * 32 + nt * 8 + 2 * t + e;
                        const int slot = atomicAdd(counts + q, 1);
                        if (slot < cap) out[(size_t)q * cap + slot] = pack_key(key, (unsigned int)row);
                    }
                }
        }
}
