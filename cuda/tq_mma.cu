// Fused tensor-core scan of 4-bit TurboQuant codes for large query batches, on int8
// tensor cores (mma.sync m16n8k32, int32 accumulation).
//
// A block holds MMA_BN queries in shared memory as int8 rows for the whole launch and its
// warps scan tiles of MMA_ROWS rows against them. A warp turns its rows' codes into int8
// centroids in registers, straight into the mma's A fragments: each code word (eight
// 4-bit values) gives one thread the four values of two fragment registers through three
// byte permutes on a 16-byte table. No dequantized row is written anywhere, so the only
// shared-memory traffic is the queries' fragments (ldmatrix) and the codes' copies.
//
// For that, the coordinates of a 32-wide step are permuted: fragment position
// p = 32c + 16h + 4t + j (h, t, j < 2, 4, 4) holds coordinate 32c + 8t + 4h + j, which is
// value j + 4h of code word 4c + t. prepare_queries (tq_batch.cu) writes the queries in
// that order, so that the dot products are unchanged.
//
// After a tile's last step each (row, query) accumulator becomes a key, and the pairs
// whose key can be at or below the query's threshold are appended to the query's candidate
// buffer. The thresholds are upper bounds on each query's Kc-th best key, taken beforehand
// from a sample of rows, so every row of the Kc best is kept; tq_finish (tq_batch.cu) then
// picks the Kc best candidates and re-scores them in float32.
//
// Codes use the transposed layout of tq_scan.cu: words[w * n_pad + row].

#include "topk.cuh"

#define MMA_BN 128
#define MMA_WARPS 16
#define MMA_THREADS (MMA_WARPS * 32)
#define MMA_ROWS 16
// Copies of each warp's code words in flight (cp.async), one step (4 words per row) each.
#define MMA_STAGES 3
// A staged step holds 4 words of MMA_ROWS rows, word-major with rows padded to 24 words,
// so that the reads of thread (g, t) (word t, rows g and g + 8) fall in distinct banks.
#define MMA_STAGE_LD 24
#define MMA_STAGE_WORDS (4 * MMA_STAGE_LD)
// Bytes after each shared query row, so that ldmatrix's eight row addresses fall in
// distinct banks (the row stride is an odd multiple of 16 bytes).
#define MMA_QUERY_PAD 16

__device__ __forceinline__ void ldmatrix_x4(unsigned int (&r)[4], const void* p) {
    const unsigned int address = static_cast<unsigned int>(__cvta_generic_to_shared(p));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address));
}

// c += a (16 x 32 int8, row-major fragment) * b (32 x 8 int8, column-major fragment).
__device__ __forceinline__ void mma_16832(int (&c)[4], const unsigned int (&a)[4],
                                          unsigned int b0, unsigned int b1) {
    asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// A 16-byte copy from global to shared memory that does not wait; zeros when !valid.
__device__ __forceinline__ void copy_async(void* dst, const void* src, bool valid) {
    const unsigned int address = static_cast<unsigned int>(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
                 :: "r"(address), "l"(src), "r"(valid ? 16 : 0));
}

__device__ __forceinline__ void copy_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int PENDING>
__device__ __forceinline__ void copy_wait() {
    asm volatile("cp.async.wait_group %0;\n" :: "n"(PENDING));
}

// The four 4-bit values in the low 16 bits of x as int8 centroids, value j in byte j.
// table holds the 16 int8 centroids in order (.x: centroids 0-3, ..., .w: 12-15).
__device__ __forceinline__ unsigned int int8_centroids(unsigned int x, const uint4& table) {
    const unsigned int low3 = x & 0x7777u;
    const unsigned int lower = __byte_perm(table.x, table.y, low3);   // centroids 0-7
    const unsigned int upper = __byte_perm(table.z, table.w, low3);   // centroids 8-15
    return __byte_perm(lower, upper, ((x >> 1) & 0x4444u) | 0x3210u);
}

// Grid: the blocks that fit at once (persistent), MMA_THREADS threads; dynamic shared
// memory mma_shared_bytes(dim_pad). The work is split into units of (query tile of MMA_BN,
// rows_per_unit rows), numbered with the query tile varying fastest so that units taken
// together read the same codes (from L2 after the first); blocks take units in turn from
// next_unit[0] (zero before the launch).
//
// queries (nq, dim_pad) int8 in the permuted order, zero beyond the dimension (dim_pad is
// a multiple of 32, rows_per_unit of MMA_ROWS * MMA_WARPS, n_pad of 32). table0-3: the
// int8 centroids. A row's key is acc * row_scale[row] * query_factor[q] * key_factor +
// row_bias[row] + query_bias[q]. bounds[q] is the packed key bound of query q (EMPTY_SLOT:
// none); the bounds come from fp16 scores of the float32 queries, so `slack_scale[0]` (at
// least the rounding of both on a unit-query score, times the largest row scale) times
// |query_norm[q] * key_scale| is added to each. Candidates go to out[q * cap + slot] for
// slot = atomicAdd(counts + q, 1) < cap; a count above cap tells the caller that the
// query's buffer overflowed.
__global__ void __launch_bounds__(MMA_THREADS, 1)
tq_mma_scan(const unsigned int* __restrict__ words, int n_words, int n, int n_pad,
            int rows_per_unit, int units, int* __restrict__ next_unit, unsigned int table0,
            unsigned int table1, unsigned int table2, unsigned int table3,
            const signed char* __restrict__ queries, int nq, int dim_pad,
            const float* __restrict__ row_scale, const float* __restrict__ row_bias,
            const float* __restrict__ query_factor, const float* __restrict__ query_bias,
            const float* __restrict__ query_norm, float key_factor, float key_scale,
            const u64* __restrict__ bounds, const float* __restrict__ slack_scale, int cap,
            int* __restrict__ counts, u64* __restrict__ out) {
    extern __shared__ __align__(16) unsigned char smem[];
    const int query_stride = dim_pad + MMA_QUERY_PAD;
    signed char* queries_s = reinterpret_cast<signed char*>(smem);
    unsigned int* staged = reinterpret_cast<unsigned int*>(smem + MMA_BN * query_stride);
    float* factor_s = reinterpret_cast<float*>(staged + MMA_WARPS * MMA_STAGES * MMA_STAGE_WORDS);
    float* bias_s = factor_s + MMA_BN;
    float* limit_s = bias_s + MMA_BN;
    __shared__ int unit_s;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const uint4 table = make_uint4(table0, table1, table2, table3);
    const int query_tiles = (nq + MMA_BN - 1) / MMA_BN;
    const int steps = dim_pad / 32;
    const int pieces = dim_pad / 16;
    const float slack = *slack_scale;
    unsigned int* ring = staged + warp * MMA_STAGES * MMA_STAGE_WORDS;
    // Lanes 0-15 copy a step: lane l takes word l / 4 of rows (l % 4) * 4 ... + 3.
    const int copy_word = (lane >> 2) & 3, copy_row = (lane & 3) * 4;
    const int copy_offset = copy_word * MMA_STAGE_LD + copy_row;
    int loaded_tile = -1;

    while (true) {
        if (tid == 0) unit_s = atomicAdd(next_unit, 1);
        __syncthreads();  // also: every warp is done with the previous unit's queries
        const int unit = unit_s;
        if (unit >= units) break;
        const int query_tile = unit % query_tiles;
        const int q0 = query_tile * MMA_BN;
        if (query_tile != loaded_tile) {
            for (int i = tid; i < MMA_BN * pieces; i += MMA_THREADS) {
                const int r = i / pieces, piece = i - r * pieces, q = q0 + r;
                *reinterpret_cast<uint4*>(queries_s + r * query_stride + piece * 16) =
                    q < nq ? reinterpret_cast<const uint4*>(queries + (size_t)q * dim_pad)[piece]
                           : make_uint4(0u, 0u, 0u, 0u);
            }
            for (int i = tid; i < MMA_BN; i += MMA_THREADS) {
                const int q = q0 + i;
                const u64 bound = q < nq ? bounds[q] : 0ull;
                factor_s[i] = q < nq ? query_factor[q] * key_factor : 0.0f;
                bias_s[i] = q < nq ? query_bias[q] : 0.0f;
                // No bound: every finite key is kept. A query past nq keeps nothing.
                limit_s[i] = q >= nq ? -__int_as_float(0x7f800000)
                             : bound == EMPTY_SLOT ? __int_as_float(0x7f800000)
                             : key_of(bound) + slack * fabsf(query_norm[q] * key_scale);
            }
            loaded_tile = query_tile;
        }
        __syncthreads();

        // This warp's tiles of the unit: rows unit_row0 + (j * MMA_WARPS + warp) * MMA_ROWS.
        const int unit_row0 = (unit / query_tiles) * rows_per_unit;
        const int unit_rows = min(rows_per_unit, n - unit_row0);
        const int first = warp * MMA_ROWS;
        const int tiles = first < unit_rows
                              ? (unit_rows - first + MMA_WARPS * MMA_ROWS - 1) / (MMA_WARPS * MMA_ROWS)
                              : 0;
        const int total = tiles * steps;
        // Step i of the warp's sequence is step i % steps of tile i / steps; its copy goes
        // to ring slot i % MMA_STAGES. The source advances 4 words a step and jumps to the
        // next tile's rows after the last one.
        int issue_step = 0, issue_tile = 0;
        auto issue = [&](int i) {
            if (i < total && lane < 16) {
                const int word = issue_step * 4 + copy_word;
                const int row = unit_row0 + (issue_tile * MMA_WARPS + warp) * MMA_ROWS + copy_row;
                copy_async(ring + (i % MMA_STAGES) * MMA_STAGE_WORDS + copy_offset,
                           words + (size_t)min(word, n_words - 1) * n_pad + row, word < n_words);
            }
            copy_commit();
            if (++issue_step == steps) {
                issue_step = 0;
                ++issue_tile;
            }
        };

        int acc[MMA_BN / 8][4];
#pragma unroll
        for (int nt = 0; nt < MMA_BN / 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[nt][e] = 0;
#pragma unroll
        for (int s = 0; s < MMA_STAGES - 1; ++s) issue(s);
        float scale[2], bias[2];
        int c = 0, tile = 0;
        for (int i = 0; i < total; ++i) {
            issue(i + MMA_STAGES - 1);
            copy_wait<MMA_STAGES - 1>();
            __syncwarp();
            const int tile_row0 = unit_row0 + (tile * MMA_WARPS + warp) * MMA_ROWS;
            if (c == 0) {
                // Rows past n get a zero scale and a bias of +inf: their keys are never kept.
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int row = tile_row0 + h * 8 + g;
                    scale[h] = row < n ? row_scale[row] : 0.0f;
                    bias[h] = row < n ? row_bias[row] : __int_as_float(0x7f800000);
                }
            }
            const unsigned int* slot = ring + (i % MMA_STAGES) * MMA_STAGE_WORDS + t * MMA_STAGE_LD;
            const unsigned int upper_row = slot[g], lower_row = slot[g + 8];
            const unsigned int a[4] = {int8_centroids(upper_row, table),
                                       int8_centroids(lower_row, table),
                                       int8_centroids(upper_row >> 16, table),
                                       int8_centroids(lower_row >> 16, table)};
            const signed char* step_queries =
                queries_s + ((lane >> 4) * 8 + (lane & 7)) * query_stride + c * 32
                + ((lane >> 3) & 1) * 16;
#pragma unroll
            for (int pair = 0; pair < MMA_BN / 16; ++pair) {
                // ldmatrix lane l addresses query pair * 16 + (l / 16) * 8 + l % 8, bytes
                // 32c + ((l / 8) % 2) * 16: b[0], b[1] are the first 8-query tile's
                // fragments for the step's two 16-byte halves, b[2], b[3] the second's.
                unsigned int b[4];
                ldmatrix_x4(b, step_queries + pair * 16 * query_stride);
                mma_16832(acc[2 * pair], a, b[0], b[1]);
                mma_16832(acc[2 * pair + 1], a, b[2], b[3]);
            }
            __syncwarp();  // every lane has read the slot before a later copy refills it
            if (++c < steps) continue;

            // Accumulator e of tile nt is local row g + 8 * (e / 2) and query
            // nt * 8 + 2 * t + (e % 2).
#pragma unroll
            for (int nt = 0; nt < MMA_BN / 8; ++nt)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int q_local = nt * 8 + 2 * t + e;
                    const float factor = factor_s[q_local], q_bias = bias_s[q_local];
                    const float limit = limit_s[q_local];
#pragma unroll
                    for (int h = 0; h < 2; ++h) {
                        int& value = acc[nt][2 * h + e];
                        const float key = fmaf(__int2float_rn(value), scale[h] * factor,
                                               bias[h] + q_bias);
                        value = 0;
                        if (key <= limit && key < __int_as_float(0x7f800000)) {
                            const int q = q0 + q_local;
                            const int row = tile_row0 + h * 8 + g;
                            const int position = atomicAdd(counts + q, 1);
                            if (position < cap)
                                out[(size_t)q * cap + position] = pack_key(key, (unsigned int)row);
                        }
                    }
                }
            c = 0;
            ++tile;
        }
        copy_wait<0>();
    }
}
