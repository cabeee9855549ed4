// The final merge of a scan's per-block candidates on the device: one block per query
// keeps the k best of `lists` sorted lists of k packed keys (topk.cuh),
// candidates[(q * lists + l) * k + j], and writes them sorted to out[q * k + j], so only k
// values per query go back to the host.
//
// Thread t walks list t (and t + blockDim.x, ...) from its head, offering its j-th value
// in step j. A list whose j-th value cannot beat the current k-th best has nothing
// better after it, so the merge ends at the first step in which no thread has a value to
// offer: after the heads, typically a few steps.
//
// `keys` and `rows` (both null, or both set): the k best also as float32 keys and int64
// rows, +inf and -1 for an empty slot or a masked row (as unpack_keys in
// vecstore/search/gpu/kernels.py), so a caller can read them straight from mapped host
// memory.
//
// merge_topk_warps does the same for k <= 32 with a WarpTopK per warp: warp w walks lists
// w * 32 + lane, (w + warps) * 32 + lane, ..., and the warps combine at the end; no
// barrier and no sort until then.

#include "topk.cuh"

// Writes `value`, slot `at` of the merged k best, as packed, and when `keys` is set also
// as a float32 key and an int64 row.
__device__ __forceinline__ void write_best(u64 value, size_t at, u64* __restrict__ out,
                                           float* __restrict__ keys,
                                           long long* __restrict__ rows) {
    out[at] = value;
    if (keys != nullptr) {
        const float key = value == EMPTY_SLOT ? __int_as_float(0x7f800000) : key_of(value);
        const bool empty = !isfinite(key);
        keys[at] = empty ? __int_as_float(0x7f800000) : key;
        rows[at] = empty ? -1ll : (long long)(unsigned int)value;
    }
}

__global__ void merge_topk(const u64* __restrict__ candidates, int lists, int k, int size,
                           u64* __restrict__ out, float* __restrict__ keys,
                           long long* __restrict__ rows) {
    extern __shared__ __align__(16) unsigned char smem[];
    u64* best = reinterpret_cast<u64*>(smem);          // size
    int* counts = reinterpret_cast<int*>(best + size);  // 1 + flag
    BlockTopK top{best, counts, counts + 1, 1, size, k};
    top.init();
    __syncthreads();
    for (int first = 0; first < lists; first += blockDim.x) {
        const int list = first + threadIdx.x;
        const u64* values = candidates + ((size_t)blockIdx.x * lists + list) * k;
        u64 next = list < lists ? values[0] : EMPTY_SLOT;
        for (int j = 0; j < k; ++j) {
            const u64 value = next;
            next = list < lists && j + 1 < k ? values[j + 1] : EMPTY_SLOT;
            if (!__syncthreads_or(value < best[k - 1])) break;
            top.offer(0, value);
            top.end_step();
        }
    }
    top.finish();
    for (int i = threadIdx.x; i < k; i += blockDim.x)
        write_best(best[i], (size_t)blockIdx.x * k + i, out, keys, rows);
}

__global__ void merge_topk_warps(const u64* __restrict__ candidates, int lists, int k,
                                 u64* __restrict__ out, float* __restrict__ keys,
                                 long long* __restrict__ rows) {
    extern __shared__ __align__(16) unsigned char smem[];
    u64* warp_lists = reinterpret_cast<u64*>(smem);  // blockDim.x
    WarpTopK top[1];
    top[0].init(k);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int first = warp * 32; first < lists; first += warps * 32) {
        const int list = first + lane;
        const u64* values = candidates + ((size_t)blockIdx.x * lists + list) * k;
        u64 next = list < lists ? values[0] : EMPTY_SLOT;
        for (int j = 0; j < k; ++j) {
            const u64 value = next;
            next = list < lists && j + 1 < k ? values[j + 1] : EMPTY_SLOT;
            if (!__any_sync(FULL_MASK, value < top[0].bound)) break;
            top[0].offer(value);
        }
    }
    combine_warps<1>(top, warp_lists);
    if (threadIdx.x < k) write_best(top[0].held, (size_t)blockIdx.x * k + threadIdx.x, out, keys, rows);
}
