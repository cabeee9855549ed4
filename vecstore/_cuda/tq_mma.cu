// Fused tensor-core scan of 4-bit TurboQuant codes for large query batches, on int8
// tensor cores (Hopper wgmma, int32 accumulation).
//
// A block holds MMA_BN queries in shared memory as int8 and its four warpgroups scan tiles
// of 64 rows against them, one wgmma.m64n128k32 per 32 coordinates: the codes are the
// register operand (A), the queries the shared-memory one (B). Each warp turns its 16 rows'
// codes into int8 centroids in registers, straight into A fragments: each code word (eight
// 4-bit values) gives one thread the values of two fragment registers through three byte
// permutes on a 16-byte table. No dequantized row is written anywhere: shared memory holds
// the queries and the codes' copies (cp.async, up to STAGES steps ahead of use).
//
// For that, the coordinates of a 32-wide step are permuted: fragment position
// p = 32c + 16h + 4t + j (h, t, j < 2, 4, 4) holds coordinate 32c + 8t + 4h + j, which is
// value j + 4h of code word 4c + t. prepare_queries (tq_batch.cu) writes the queries in
// that order, so that the dot products are unchanged. Steps go in pairs (STEPS is even; the
// caller pads the dimension with zero queries): one copy of a pair's codes by the whole
// warp, one wait for it.
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
// Each warp keeps STAGES steps (a template parameter, even: STAGES / 2 pairs) in flight.
#define MMA_STAGE_WORDS (4 * MMA_ROWS)
// Queries sit in shared memory as wgmma's "interleaved" K-major operand: 16-byte columns of
// MMA_BN queries, column k holding coordinates 16k ... 16k + 15 of each query in turn, so
// that each 8-query, 16-byte core matrix is 128 contiguous bytes.
#define MMA_COLUMN_BYTES (MMA_BN * 16)

// Shared-memory matrix descriptor of a K-major operand without swizzling: start address,
// then the byte distances between core matrices along K (leading) and along N (stride).
__device__ __forceinline__ unsigned long long matrix_descriptor(unsigned int address) {
    return (unsigned long long)((address >> 4) & 0x3FFF)
           | ((unsigned long long)(MMA_COLUMN_BYTES >> 4) << 16)
           | ((unsigned long long)(128 >> 4) << 32);
}

__device__ __forceinline__ void wgmma_fence() {
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
// Waits until at most PENDING committed wgmma groups of this warp are running.
template <int PENDING>
__device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" :: "n"(PENDING) : "memory");
}

// Keeps registers that an asynchronous wgmma reads or writes where they are, in order:
// the compiler does not know that the instruction runs past its asm statement.
__device__ __forceinline__ void hold(unsigned int (&r)[4]) {
    asm volatile("" : "+r"(r[0]), "+r"(r[1]), "+r"(r[2]), "+r"(r[3])::"memory");
}
__device__ __forceinline__ void hold(int (&d)[MMA_BN / 8][4]) {
#pragma unroll
    for (int i = 0; i < MMA_BN / 8; ++i)
        asm volatile("" : "+r"(d[i][0]), "+r"(d[i][1]), "+r"(d[i][2]), "+r"(d[i][3])::"memory");
}

#define WGMMA_D16(i) "+r"(d[i][0]), "+r"(d[i][1]), "+r"(d[i][2]), "+r"(d[i][3])

// d (64 x 128, this warp's 16 rows) = a (64 x 32 int8, this warp's 16 x 32 fragment) x the
// 32 x 128 int8 operand at `descriptor`, plus d when `accumulate`. Asynchronous: d and a
// stay untouched until wgmma_wait.
__device__ __forceinline__ void wgmma_64x128x32(int (&d)[MMA_BN / 8][4],
                                                const unsigned int (&a)[4],
                                                unsigned long long descriptor, int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %68, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k32.s32.s8.s8 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
        "{%64, %65, %66, %67}, %69, p;\n}\n"
        : WGMMA_D16(0), WGMMA_D16(1), WGMMA_D16(2), WGMMA_D16(3), WGMMA_D16(4), WGMMA_D16(5),
          WGMMA_D16(6), WGMMA_D16(7), WGMMA_D16(8), WGMMA_D16(9), WGMMA_D16(10), WGMMA_D16(11),
          WGMMA_D16(12), WGMMA_D16(13), WGMMA_D16(14), WGMMA_D16(15)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(accumulate), "l"(descriptor));
}

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
// of MMA_BN, rows_per_unit rows), numbered with the query tile varying fastest so that
// units taken together read the same codes (from L2 after the first); blocks take units in
// turn from next_unit[0] (zero before the launch).
//
// queries (nq, 16 * query_columns) int8 in the permuted order, zero beyond the dimension,
// with 16 * query_columns <= 32 * STEPS (the coordinates past it count as zero);
// rows_per_unit is a multiple of MMA_ROWS * MMA_WARPS and n_pad of
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
            const signed char* __restrict__ queries, int query_columns, int nq,
            const float* __restrict__ row_scale, const float* __restrict__ row_bias,
            const float* __restrict__ query_factor, const float* __restrict__ query_bias,
            const float* __restrict__ query_norm, float key_factor, float key_scale,
            const u64* __restrict__ bounds, const float* __restrict__ part_terms, float slack,
            int cap, int* __restrict__ counts, u64* __restrict__ out) {
    extern __shared__ __align__(128) unsigned char smem[];
    constexpr int dim_pad = STEPS * 32, columns = dim_pad / 16;
    constexpr int stage_bytes = MMA_STAGE_WORDS * 4, pair_stages = STAGES / 2;
    static_assert(STEPS % 2 == 0 && STAGES % 2 == 0 && STAGES >= 4, "steps go in pairs");
    constexpr int group_rows = 4 * MMA_ROWS, groups = MMA_WARPS / 4;
    signed char* queries_s = reinterpret_cast<signed char*>(smem);
    unsigned int* staged = reinterpret_cast<unsigned int*>(smem + MMA_BN * dim_pad);
    float* factor_s = reinterpret_cast<float*>(staged + MMA_WARPS * STAGES * MMA_STAGE_WORDS);
    float* bias_s = factor_s + MMA_BN;
    float* limit_s = bias_s + MMA_BN;
    float* least_s = limit_s + MMA_BN;
    __shared__ int unit_s;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int group = warp >> 2, slice = (warp & 3) * MMA_ROWS;
    const uint4 table = make_uint4(table0, table1, table2, table3);
    const int query_tiles = (nq + MMA_BN - 1) / MMA_BN;
    const float scale_peak = part_terms[0], bias_floor = part_terms[1];
    const unsigned int queries_address = static_cast<unsigned int>(__cvta_generic_to_shared(queries_s));
    // This warp's ring of staged steps, as a shared address and as a word index.
    const int ring_index = warp * STAGES * MMA_STAGE_WORDS;
    const unsigned int ring = static_cast<unsigned int>(__cvta_generic_to_shared(staged + ring_index));
    // The warp copies a pair of steps: lane l takes word (l / 4) % 4 of step l / 16 of the
    // pair, rows (l % 4) * 4 ... + 3, which is word pair_word of the pair's 8; the words of
    // the later pairs it copies stop being codes after copy_pairs pairs.
    const int copy_word = (lane >> 2) & 3, copy_row = (lane & 3) * 4;
    const int pair_word = 4 * (lane >> 4) + copy_word;
    const unsigned int copy_to = ring + ((lane >> 4) * MMA_STAGE_WORDS + copy_word * MMA_ROWS
                                         + (copy_row ^ (8 * (copy_word >> 1)))) * 4;
    const int copy_pairs = (n_words - pair_word + 7) / 8;
    const int read_from = ring_index + t * MMA_ROWS + (g ^ (8 * (t >> 1)));
    int loaded_tile = -1;

    while (true) {
        if (tid == 0) unit_s = atomicAdd(next_unit, 1);
        __syncthreads();  // also: every warp is done with the previous unit's queries
        const int unit = unit_s;
        if (unit >= units) break;
        const int query_tile = unit % query_tiles;
        const int q0 = query_tile * MMA_BN;
        if (query_tile != loaded_tile) {
            for (int i = tid; i < MMA_BN * columns; i += MMA_THREADS) {
                const int column = i / MMA_BN, r = i % MMA_BN, q = q0 + r;
                *reinterpret_cast<uint4*>(queries_s + column * MMA_COLUMN_BYTES + r * 16) =
                    q < nq && column < query_columns
                        ? reinterpret_cast<const uint4*>(queries + (size_t)q * query_columns
                                                                   * 16)[column]
                        : make_uint4(0u, 0u, 0u, 0u);
            }
            for (int i = tid; i < MMA_BN; i += MMA_THREADS) {
                const int q = q0 + i;
                const u64 bound = q < nq ? bounds[q] : 0ull;
                const float factor = q < nq ? query_factor[q] * key_factor : -1.0f;
                const float q_bias = q < nq ? query_bias[q] : 0.0f;
                // No bound: every finite key is kept. A query past nq keeps nothing.
                const float limit = q >= nq ? -__int_as_float(0x7f800000)
                                    : bound == EMPTY_SLOT ? __int_as_float(0x7f800000)
                                    : key_of(bound) + slack * scale_peak
                                                      * fabsf(query_norm[q] * key_scale);
                factor_s[i] = factor;
                bias_s[i] = q_bias;
                limit_s[i] = limit;
                // As factor < 0 and a row's bias is at least bias_floor, a key within the
                // limit has acc * scale >= (limit - q_bias - bias_floor) / factor: least_s.
                least_s[i] = (limit - q_bias - bias_floor) / factor;
            }
            loaded_tile = query_tile;
        }
        // wgmma reads the queries through the async proxy.
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
        __syncthreads();

        // This warpgroup's tiles of the unit: rows unit_row0 + (j * groups + group) *
        // group_rows; this warp's slice of a tile: its MMA_ROWS rows from `slice`.
        const int unit_row0 = (unit / query_tiles) * rows_per_unit;
        const int unit_rows = min(rows_per_unit, n - unit_row0);
        const int first = group * group_rows;
        const int tiles = first < unit_rows
                              ? (unit_rows - first + groups * group_rows - 1) / (groups * group_rows)
                              : 0;
        const int total = tiles * STEPS, total_pairs = total / 2;
        // The copies run pair_stages - 1 pairs ahead of the reads, across tiles: pair i of
        // the warp's sequence (steps 2i and 2i + 1) goes to ring slots 2i % STAGES and the
        // next. The source advances 8 words a pair and moves to the next tile's rows after
        // a tile's last pair. A slice past n_pad is not copied (its rows are past n).
        const unsigned int* tile_source = words + (size_t)min(pair_word, n_words - 1) * n_pad
                                          + unit_row0 + first + slice + copy_row;
        const unsigned int* source = tile_source;
        int tile_rows0 = unit_row0 + first + slice;
        int issued = 0, issue_pair = 0, fill = 0;
        auto issue = [&]() {
            if (issued < total_pairs && tile_rows0 < n_pad)
                copy_async(copy_to + fill * 2 * stage_bytes, source, issue_pair < copy_pairs);
            copy_commit();
            ++issued;
            fill = fill == pair_stages - 1 ? 0 : fill + 1;
            if (++issue_pair == STEPS / 2) {
                issue_pair = 0;
                tile_source += groups * group_rows;
                tile_rows0 += groups * group_rows;
                source = tile_source;
            } else if (issue_pair < copy_pairs) {
                source += 8 * (size_t)n_pad;
            }
        };
#pragma unroll
        for (int s = 0; s < pair_stages - 1; ++s) issue();

        int acc[MMA_BN / 8][4];
        // Two wgmma run at a time: step c's is issued with fragments a[c % 2], then the
        // warp waits for step c - 1's and makes step c + 1's fragments in its registers.
        int read = 0;
        unsigned int a[2][4];
        auto make_fragments = [&](unsigned int (&out)[4]) {
            const unsigned int* slot = staged + read_from + read * MMA_STAGE_WORDS;
            int8_centroids(slot[0], table, out[0], out[2]);
            int8_centroids(slot[t >> 1 ? -8 : 8], table, out[1], out[3]);
            read = read == STAGES - 1 ? 0 : read + 1;
        };
        // Step c of a tile: its wgmma on the queries at `descriptor`, then the next step's
        // fragments into `next` once the wgmma that last read them is done. The first step
        // of a pair copies a pair ahead (into the slots of the pair before, which every
        // lane had read before the last wait's __syncwarp); the second waits for the next
        // pair's codes, and the __syncwarp makes the other lanes' copies visible.
        auto step = [&](int sequence, int c, bool opens_pair, unsigned long long descriptor,
                        unsigned int (&current)[4], unsigned int (&next)[4]) {
            hold(acc);
            wgmma_fence();
            wgmma_64x128x32(acc, current, descriptor, c > 0);
            wgmma_commit();
            if (opens_pair) {
                issue();
            } else {
                copy_wait<pair_stages - 2>();
                __syncwarp();
            }
            wgmma_wait<1>();
            hold(next);
            if (sequence + 1 < total) make_fragments(next);
        };
        copy_wait<pair_stages - 2>();
        __syncwarp();
        if (total > 0) make_fragments(a[0]);
        for (int tile = 0; tile < tiles; ++tile) {
            const int tile_row0 = unit_row0 + first + tile * groups * group_rows + slice;
            // Rows past n get a zero scale and a bias of +inf: their keys are never kept.
            float scale[2], bias[2];
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int row = tile_row0 + h * 8 + g;
                scale[h] = row < n ? row_scale[row] : 0.0f;
                bias[h] = row < n ? row_bias[row] : __int_as_float(0x7f800000);
            }
            // A step's queries are two 16-byte columns on from the last step's.
            const unsigned long long first_step = matrix_descriptor(queries_address);
            constexpr unsigned long long step_columns = (2 * MMA_COLUMN_BYTES) >> 4;
#pragma unroll 1
            for (int c = 0; c < STEPS; c += 2) {
                step(tile * STEPS + c, c, true, first_step + c * step_columns, a[0], a[1]);
                step(tile * STEPS + c + 1, c + 1, false, first_step + (c + 1) * step_columns,
                     a[1], a[0]);
            }
            wgmma_wait<0>();
            hold(acc);

            // Accumulator e of tile nt is row tile_row0 + g + 8 * (e / 2) and query
            // nt * 8 + 2 * t + (e % 2). Most pairs of rows fail the test on acc * scale;
            // the others have their keys made and compared with the limit.
#pragma unroll
            for (int nt = 0; nt < MMA_BN / 8; ++nt)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int q_local = nt * 8 + 2 * t + e;
                    const float least = least_s[q_local];
                    if (!(__int2float_rn(acc[nt][e]) * scale[0] >= least)
                        && !(__int2float_rn(acc[nt][2 + e]) * scale[1] >= least))
                        continue;
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
