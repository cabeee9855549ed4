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
// A staged step holds 4 code words of MMA_ROWS rows (64 words), word-major; row r of word
// w sits at r ^ (8 * (w / 2)), so that the reads of thread (g, t) (word t, rows g and
// g + 8) fall in distinct banks while 4-row groups stay contiguous for 16-byte copies.
// Each warp keeps STAGES steps (a template parameter) in flight.
#define MMA_STAGE_WORDS (4 * MMA_ROWS)
// Bytes after each shared query row, so that ldmatrix's eight row addresses fall in
// distinct banks (the row stride is an odd multiple of 16 bytes).
#define MMA_QUERY_PAD 16

// Four 8 x 8 b16 matrices from shared memory; lane l gives the address (a shared-space
// byte address) of row l % 8 of matrix l / 8.
__device__ __forceinline__ void ldmatrix_x4(unsigned int (&r)[4], unsigned int address) {
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

// c = a * b, the first step of a tile (no accumulator to read).
__device__ __forceinline__ void mma_16832_first(int (&c)[4], const unsigned int (&a)[4],
                                                unsigned int b0, unsigned int b1) {
    asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %10, %10, %10};\n"
                 : "=r"(c[0]), "=r"(c[1]), "=r"(c[2]), "=r"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "r"(0));
}

template <bool B>
struct Flag {
    static constexpr bool value = B;
};

// A 16-byte copy from global to shared memory that does not wait; zeros when !valid.
// dst is a shared-space byte address.
__device__ __forceinline__ void copy_async(unsigned int dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
                 :: "r"(dst), "l"(src), "r"(valid ? 16 : 0));
}

__device__ __forceinline__ void copy_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int PENDING>
__device__ __forceinline__ void copy_wait() {
    asm volatile("cp.async.wait_group %0;\n" :: "n"(PENDING));
}

// A code word's eight 4-bit values as int8 centroids: values 0-3 in bytes 0-3 of low,
// values 4-7 in those of high. table holds the 16 int8 centroids in order (.x: centroids
// 0-3, ..., .w: 12-15). Each half takes two permutes from the lower and upper eight
// centroids (by a value's low three bits) and one that picks between them (by its top bit).
__device__ __forceinline__ void int8_centroids(unsigned int word, const uint4& table,
                                               unsigned int& low, unsigned int& high) {
    const unsigned int low3 = word & 0x77777777u;
    const unsigned int pick = ((word >> 1) & 0x44444444u) | 0x32103210u;
    low = __byte_perm(__byte_perm(table.x, table.y, low3), __byte_perm(table.z, table.w, low3),
                      pick);
    const unsigned int low3_high = low3 >> 16, pick_high = pick >> 16;
    high = __byte_perm(__byte_perm(table.x, table.y, low3_high),
                       __byte_perm(table.z, table.w, low3_high), pick_high);
}

// Grid: the blocks that fit at once (persistent), MMA_THREADS threads; dynamic shared
// memory mma_shared_bytes(dim_pad, STAGES). The work is split into units of (query tile
// of MMA_BN, rows_per_unit rows), numbered with the query tile varying fastest so that units taken
// together read the same codes (from L2 after the first); blocks take units in turn from
// next_unit[0] (zero before the launch).
//
// queries (nq, dim_pad) int8 in the permuted order, zero beyond the dimension, with
// dim_pad = 32 * STEPS; rows_per_unit is a multiple of MMA_ROWS * MMA_WARPS and n_pad of
// 32. table0-3: the int8 centroids. A row's key is acc * row_scale[row] * query_factor[q]
// * key_factor + row_bias[row] + query_bias[q]. bounds[q] is the packed key bound of query
// q (EMPTY_SLOT: none); the bounds come from fp16 scores of the float32 queries, so
// slack * part_terms[0] (part_terms[0]: the largest |row scale|, part_terms[1]: the
// smallest row bias) times |query_norm[q] * key_scale| is added to each. Candidates go to
// out[q * cap + slot] for slot = atomicAdd(counts + q, 1) < cap; a count above cap tells
// the caller that the query's buffer overflowed.
template <int STEPS, int STAGES>
__global__ void __launch_bounds__(MMA_THREADS, 1)
tq_mma_scan(const unsigned int* __restrict__ words, int n_words, int n, int n_pad,
            int rows_per_unit, int units, int* __restrict__ next_unit, unsigned int table0,
            unsigned int table1, unsigned int table2, unsigned int table3,
            const signed char* __restrict__ queries, int nq,
            const float* __restrict__ row_scale, const float* __restrict__ row_bias,
            const float* __restrict__ query_factor, const float* __restrict__ query_bias,
            const float* __restrict__ query_norm, float key_factor, float key_scale,
            const u64* __restrict__ bounds, const float* __restrict__ part_terms, float slack,
            int cap, int* __restrict__ counts, u64* __restrict__ out) {
    extern __shared__ __align__(16) unsigned char smem[];
    constexpr int dim_pad = STEPS * 32, query_stride = dim_pad + MMA_QUERY_PAD;
    constexpr int stage_bytes = MMA_STAGE_WORDS * 4;
    signed char* queries_s = reinterpret_cast<signed char*>(smem);
    unsigned int* staged = reinterpret_cast<unsigned int*>(smem + MMA_BN * query_stride);
    float* factor_s = reinterpret_cast<float*>(staged + MMA_WARPS * STAGES * MMA_STAGE_WORDS);
    float* bias_s = factor_s + MMA_BN;
    float* limit_s = bias_s + MMA_BN;
    int* least_s = reinterpret_cast<int*>(limit_s + MMA_BN);
    __shared__ int unit_s;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const uint4 table = make_uint4(table0, table1, table2, table3);
    const int query_tiles = (nq + MMA_BN - 1) / MMA_BN;
    const float scale_peak = part_terms[0], bias_floor = part_terms[1];
    // This warp's ring of staged steps, as a shared address and as a word index.
    const int ring_index = warp * STAGES * MMA_STAGE_WORDS;
    const unsigned int ring = static_cast<unsigned int>(__cvta_generic_to_shared(staged + ring_index));
    // Lanes 0-15 copy a step: lane l takes word l / 4 of rows (l % 4) * 4 ... + 3; the
    // words of the later steps it copies stop being codes after copy_steps steps.
    const int copy_word = (lane >> 2) & 3, copy_row = (lane & 3) * 4;
    const unsigned int copy_to =
        ring + (copy_word * MMA_ROWS + (copy_row ^ (8 * (copy_word >> 1)))) * 4;
    const int copy_steps = (n_words - copy_word + 3) / 4;
    const int read_from = ring_index + t * MMA_ROWS + (g ^ (8 * (t >> 1)));
    const unsigned int lane_queries = static_cast<unsigned int>(__cvta_generic_to_shared(
        queries_s + ((lane >> 4) * 8 + (lane & 7)) * query_stride + ((lane >> 3) & 1) * 16));
    int loaded_tile = -1;

    while (true) {
        if (tid == 0) unit_s = atomicAdd(next_unit, 1);
        __syncthreads();  // also: every warp is done with the previous unit's queries
        const int unit = unit_s;
        if (unit >= units) break;
        const int query_tile = unit % query_tiles;
        const int q0 = query_tile * MMA_BN;
        if (query_tile != loaded_tile) {
            for (int i = tid; i < MMA_BN * (dim_pad / 16); i += MMA_THREADS) {
                const int r = i / (dim_pad / 16), piece = i % (dim_pad / 16), q = q0 + r;
                *reinterpret_cast<uint4*>(queries_s + r * query_stride + piece * 16) =
                    q < nq ? reinterpret_cast<const uint4*>(queries + (size_t)q * dim_pad)[piece]
                           : make_uint4(0u, 0u, 0u, 0u);
            }
            for (int i = tid; i < MMA_BN; i += MMA_THREADS) {
                const int q = q0 + i;
                const u64 bound = q < nq ? bounds[q] : 0ull;
                const float factor = q < nq ? query_factor[q] * key_factor : 0.0f;
                const float q_bias = q < nq ? query_bias[q] : 0.0f;
                // No bound: every finite key is kept. A query past nq keeps nothing.
                const float limit = q >= nq ? -__int_as_float(0x7f800000)
                                    : bound == EMPTY_SLOT ? __int_as_float(0x7f800000)
                                    : key_of(bound) + slack * scale_peak
                                                      * fabsf(query_norm[q] * key_scale);
                factor_s[i] = factor;
                bias_s[i] = q_bias;
                limit_s[i] = limit;
                // A key is at least bias_floor + q_bias - |acc| * scale_peak * |factor|,
                // so a kept key has |acc| >= (bias_floor + q_bias - limit) /
                // (scale_peak * |factor|): least_s[q] is that bound rounded down, with a
                // margin for the rounding of this float arithmetic.
                const float least = (bias_floor + q_bias - limit) / (scale_peak * fabsf(factor));
                least_s[i] = !(least > 2.0f) ? 0
                             : least >= 2.0e9f ? 0x7FFFFFFF
                             : static_cast<int>(least * (1.0f - 1e-5f)) - 2;
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
        const int total = tiles * STEPS;
        // The copies run STAGES - 1 steps ahead of the reads, across tiles: step i of
        // the warp's sequence (step i % STEPS of tile i / STEPS) goes to ring slot
        // i % STAGES. Its source advances 4 words a step and moves to the next tile's
        // rows after a tile's last step.
        const unsigned int* tile_source = words + (size_t)min(copy_word, n_words - 1) * n_pad
                                          + unit_row0 + first + copy_row;
        const unsigned int* source = tile_source;
        int issued = 0, issue_step = 0, fill = 0;
        auto issue = [&]() {
            if (issued < total && lane < 16)
                copy_async(copy_to + fill * stage_bytes, source, issue_step < copy_steps);
            copy_commit();
            ++issued;
            fill = fill == STAGES - 1 ? 0 : fill + 1;
            if (++issue_step == STEPS) {
                issue_step = 0;
                tile_source += MMA_WARPS * MMA_ROWS;
                source = tile_source;
            } else if (issue_step < copy_steps) {
                source += 4 * (size_t)n_pad;
            }
        };
#pragma unroll
        for (int s = 0; s < STAGES - 1; ++s) issue();

        int acc[MMA_BN / 8][4];
        // The A fragments of a step are made one step ahead, so that the next step's
        // permutes overlap this step's mma.
        int read = 0;
        unsigned int a[4];
        auto make_fragments = [&]() {
            const unsigned int* slot = staged + read_from + read * MMA_STAGE_WORDS;
            int8_centroids(slot[0], table, a[0], a[2]);
            int8_centroids(slot[t >> 1 ? -8 : 8], table, a[1], a[3]);
            read = read == STAGES - 1 ? 0 : read + 1;
        };
        // Step c of tile `tile`; a tile's first step starts the accumulators.
        auto step = [&](int tile, int c, auto starts) {
            const unsigned int step_a[4] = {a[0], a[1], a[2], a[3]};
            issue();
            copy_wait<STAGES - 2>();
            __syncwarp();
            if (tile * STEPS + c + 1 < total) make_fragments();
            const unsigned int step_queries = lane_queries + c * 32;
#pragma unroll
            for (int pair = 0; pair < MMA_BN / 16; ++pair) {
                // Lane l addresses query pair * 16 + (l / 16) * 8 + l % 8, bytes
                // 32c + ((l / 8) % 2) * 16: b[0], b[1] are the first 8-query tile's
                // fragments for the step's two 16-byte halves, b[2], b[3] the second's.
                unsigned int b[4];
                ldmatrix_x4(b, step_queries + pair * 16 * query_stride);
                if (decltype(starts)::value) {
                    mma_16832_first(acc[2 * pair], step_a, b[0], b[1]);
                    mma_16832_first(acc[2 * pair + 1], step_a, b[2], b[3]);
                } else {
                    mma_16832(acc[2 * pair], step_a, b[0], b[1]);
                    mma_16832(acc[2 * pair + 1], step_a, b[2], b[3]);
                }
            }
            __syncwarp();  // every lane has read the slot before a later copy refills it
        };
        issue();
        copy_wait<STAGES - 2>();
        __syncwarp();
        if (total > 0) make_fragments();
        __syncwarp();
        for (int tile = 0; tile < tiles; ++tile) {
            const int tile_row0 = unit_row0 + first + tile * MMA_WARPS * MMA_ROWS;
            // Rows past n get a zero scale and a bias of +inf: their keys are never kept.
            float scale[2], bias[2];
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int row = tile_row0 + h * 8 + g;
                scale[h] = row < n ? row_scale[row] : 0.0f;
                bias[h] = row < n ? row_bias[row] : __int_as_float(0x7f800000);
            }
            step(tile, 0, Flag<true>());
            for (int c = 1; c < STEPS; ++c) step(tile, c, Flag<false>());

            // Accumulator e of tile nt is local row g + 8 * (e / 2) and query
            // nt * 8 + 2 * t + (e % 2). Most pairs of rows fail the integer test on |acc|.
#pragma unroll
            for (int nt = 0; nt < MMA_BN / 8; ++nt)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int q_local = nt * 8 + 2 * t + e;
                    if (max(abs(acc[nt][e]), abs(acc[nt][2 + e])) < least_s[q_local]) continue;
#pragma unroll
                    for (int h = 0; h < 2; ++h) {
                        const float key = fmaf(__int2float_rn(acc[nt][2 * h + e]),
                                               scale[h] * factor_s[q_local],
                                               bias[h] + bias_s[q_local]);
                        if (key <= limit_s[q_local] && key < __int_as_float(0x7f800000)) {
                            const int q = q0 + q_local;
                            const int position = atomicAdd(counts + q, 1);
                            if (position < cap)
                                out[(size_t)q * cap + position] =
                                    pack_key(key, (unsigned int)(tile_row0 + h * 8 + g));
                        }
                    }
                }
        }
        copy_wait<0>();
    }
}
