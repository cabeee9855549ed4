// Per-block top-k of packed (key, row) values, shared by the scan kernels.
//
// Keys and rows are packed into one 64-bit value (order-preserving float bits in the high
// word, row in the low word), so smaller packed values are better keys and ties go to the
// smaller row. Per block and query, a shared array holds the best K packed values so far
// followed by a buffer of candidates that beat the current K-th best (the threshold). When
// a buffer may overflow on the next step, the block bitonic-sorts the array and keeps the
// K best. No score is ever written to global memory.

typedef unsigned long long u64;

#define EMPTY_SLOT (~0ull)

__device__ __forceinline__ unsigned int order_float(float f) {
    unsigned int b = __float_as_uint(f);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ u64 pack_key(float key, unsigned int row) {
    return ((u64)order_float(key) << 32) | (u64)row;
}

// The key of a packed value (not EMPTY_SLOT).
__device__ __forceinline__ float key_of(u64 packed) {
    const unsigned int b = (unsigned int)(packed >> 32);
    return __uint_as_float((b & 0x80000000u) ? (b ^ 0x80000000u) : ~b);
}

// Bitonic sort, ascending, of `count` arrays of `size` (a power of two) u64 values each,
// every array starting `stride` values after the previous one.
__device__ void bitonic_sort(u64* arrays, int count, int size, int stride) {
    const int half = size >> 1;
    const int half_shift = __ffs(half) - 1;
    const int pairs = count * half;
    for (int k = 2; k <= size; k <<= 1) {
        for (int j = k >> 1; j > 0; j >>= 1) {
            for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
                const int t = p & (half - 1);
                const int i = ((t & ~(j - 1)) << 1) | (t & (j - 1));
                const int l = i + j;
                u64* arr = arrays + (size_t)(p >> half_shift) * stride;
                const bool up = ((i & k) == 0);
                const u64 x = arr[i], y = arr[l];
                if ((x > y) == up) { arr[i] = y; arr[l] = x; }
            }
            __syncthreads();
        }
    }
}

// The running best of `groups` queries: best[groups * size], counts[groups], one flag.
struct BlockTopK {
    u64* best;
    int* counts;
    int* flush_flag;
    int groups;
    int size;
    int k;

    // Empties every array; the caller synchronizes before the first offer.
    __device__ void init() {
        for (int i = threadIdx.x; i < groups * size; i += blockDim.x) best[i] = EMPTY_SLOT;
        if (threadIdx.x < groups) counts[threadIdx.x] = 0;
        if (threadIdx.x == 0) *flush_flag = 0;
    }

    // Keeps `packed` for query `q` when it beats the current K-th best. The threads of a
    // warp that keep a value take their buffer slots with one atomic.
    __device__ __forceinline__ void offer(int q, u64 packed) {
        u64* arr = best + (size_t)q * size;
        const bool keep = packed < arr[k - 1];
        const unsigned int keepers = __ballot_sync(__activemask(), keep);
        if (!keep) return;
        const int lane = threadIdx.x & 31;
        const int leader = __ffs(keepers) - 1;
        int first = 0;
        if (lane == leader) first = atomicAdd(&counts[q], __popc(keepers));
        first = __shfl_sync(keepers, first, leader);
        arr[k + first + __popc(keepers & ((1u << lane) - 1u))] = packed;
    }

    // Ends a step in which each thread offered at most one value per query; every thread
    // of the block calls it. Sorts when the next step could overflow a buffer, and as soon
    // as a query has K candidates but no K-th best yet (so that the threshold filters from
    // the second step on). A sort covers only the leading power of two that holds the
    // kept values and the pending candidates.
    __device__ void end_step() {
        __syncthreads();
        if (threadIdx.x < groups) {
            const int pending = counts[threadIdx.x];
            if (pending > size - k - (int)blockDim.x
                || (pending >= k && best[(size_t)threadIdx.x * size + k - 1] == EMPTY_SLOT))
                *flush_flag = 1;
        }
        __syncthreads();
        if (*flush_flag) {
            int pending = 0;
            for (int q = 0; q < groups; ++q) pending = max(pending, counts[q]);
            int length = 2;
            while (length < k + pending) length <<= 1;
            bitonic_sort(best, groups, length, size);
            const int shift = __ffs(length) - 1;
            for (int i = threadIdx.x; i < groups * length; i += blockDim.x) {
                const int at = i & (length - 1);
                if (at >= k) best[(size_t)(i >> shift) * size + at] = EMPTY_SLOT;
            }
            __syncthreads();
            if (threadIdx.x < groups) counts[threadIdx.x] = 0;
            if (threadIdx.x == 0) *flush_flag = 0;
            __syncthreads();
        }
    }

    // Offers `count` packed values to query 0, blockDim.x per step; every thread of the
    // block calls it. Four steps' values are loaded at a time, so that their loads
    // overlap.
    __device__ void offer_all(const u64* __restrict__ values, int count) {
        for (int base = 0; base < count; base += 4 * blockDim.x) {
            u64 loaded[4];
#pragma unroll
            for (int s = 0; s < 4; ++s) {
                const int i = base + s * blockDim.x + threadIdx.x;
                loaded[s] = i < count ? values[i] : EMPTY_SLOT;
            }
#pragma unroll
            for (int s = 0; s < 4; ++s) {
                if (base + s * (int)blockDim.x >= count) break;
                offer(0, loaded[s]);
                end_step();
            }
        }
    }

    // Sorts every array so that best[q * size + i], i < k, are query q's k best. Only the
    // leading power of two holding the k best and the pending candidates is sorted (the
    // rest is empty); nothing is sorted when nothing was kept since the last sort.
    __device__ void finish() {
        __syncthreads();
        if (threadIdx.x == 0) {
            int pending = 0;
            for (int q = 0; q < groups; ++q) pending = max(pending, counts[q]);
            *flush_flag = pending;
        }
        __syncthreads();
        const int pending = *flush_flag;
        if (pending) {
            int length = 2;
            while (length < k + pending) length <<= 1;
            bitonic_sort(best, groups, length, size);
        }
    }
};

// The k <= 32 best packed values offered to a warp, held in registers: lane i holds the
// i-th best (EMPTY_SLOT while fewer were offered), so no barrier and no shared memory is
// needed until the warps of a block combine their lists. Lanes from k on hold values no
// better than the k-th best; only the first k are results.
#define FULL_MASK 0xFFFFFFFFu
// Kept values at which an offer sorts them and merges, instead of inserting one at a time
// (an insertion is ~12 instructions, a sort and merge ~170).
#define WARP_SORT_MIN 12

__device__ __forceinline__ u64 min_u64(u64 a, u64 b) { return a < b ? a : b; }
__device__ __forceinline__ u64 max_u64(u64 a, u64 b) { return a < b ? b : a; }

// The warp's 32 values (one per lane) sorted ascending across the lanes (bitonic).
__device__ __forceinline__ u64 warp_sort(u64 value) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int size = 2; size <= 32; size <<= 1) {
#pragma unroll
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            const u64 other = __shfl_xor_sync(FULL_MASK, value, stride);
            const bool lower = (lane & stride) == 0, ascending = (lane & size) == 0;
            value = lower == ascending ? min_u64(value, other) : max_u64(value, other);
        }
    }
    return value;
}

struct WarpTopK {
    u64 held;   // this lane's value
    u64 bound;  // the k-th best, which an offered value must beat
    int k;

    __device__ void init(int k_) {
        held = bound = EMPTY_SLOT;
        k = k_;
    }

    // Keeps the values that beat the k-th best; every lane of the warp calls it with one
    // value (EMPTY_SLOT for none).
    __device__ __forceinline__ void offer(u64 value) {
        const bool keep = value < bound;
        unsigned int keepers = __ballot_sync(FULL_MASK, keep);
        if (keepers == 0) return;
        if (__popc(keepers) >= WARP_SORT_MIN) {
            merge(warp_sort(keep ? value : EMPTY_SLOT));
            return;
        }
        const int lane = threadIdx.x & 31;
        do {
            const u64 kept = __shfl_sync(FULL_MASK, value, __ffs(keepers) - 1);
            const u64 before = __shfl_up_sync(FULL_MASK, held, 1);
            if (kept < held) held = lane > 0 && before > kept ? before : kept;
            keepers &= keepers - 1;
        } while (keepers);
        bound = __shfl_sync(FULL_MASK, held, k - 1);
    }

    // Merges `sorted`, 32 values ascending across the lanes: the 32 least of both lists
    // are min(held[i], sorted[31 - i]), a bitonic sequence, which half-cleaners sort.
    __device__ __forceinline__ void merge(u64 sorted) {
        const int lane = threadIdx.x & 31;
        u64 value = min_u64(held, __shfl_sync(FULL_MASK, sorted, 31 - lane));
#pragma unroll
        for (int stride = 16; stride > 0; stride >>= 1) {
            const u64 other = __shfl_xor_sync(FULL_MASK, value, stride);
            value = (lane & stride) == 0 ? min_u64(value, other) : max_u64(value, other);
        }
        held = value;
        bound = __shfl_sync(FULL_MASK, held, k - 1);
    }
};

// Combines the warps' lists of NQ queries so that warp 0 holds the block's k best of
// each; every thread of the block calls it. `lists`: NQ * blockDim.x values of shared
// memory. Pairs of warps merge in log2(warps) rounds.
template <int NQ>
__device__ void combine_warps(WarpTopK (&top)[NQ], u64* lists) {
    const int warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
#pragma unroll
    for (int q = 0; q < NQ; ++q) lists[q * blockDim.x + threadIdx.x] = top[q].held;
    __syncthreads();
    for (int width = 1; width < warps; width <<= 1) {
        if ((warp & (2 * width - 1)) == 0 && warp + width < warps) {
#pragma unroll
            for (int q = 0; q < NQ; ++q) {
                top[q].merge(lists[q * blockDim.x + threadIdx.x + width * 32]);
                lists[q * blockDim.x + threadIdx.x] = top[q].held;
            }
        }
        __syncthreads();
    }
}
