// The final merge of a scan's per-block candidates on the device: one block per query
// keeps the k best of candidates[q * n_cand + i] (packed keys, topk.cuh) and writes them
// sorted to out[q * k + i], so only k values per query go back to the host.

#include "topk.cuh"

__global__ void merge_topk(const u64* __restrict__ candidates, int n_cand, int k, int size,
                           u64* __restrict__ out) {
    extern __shared__ __align__(16) unsigned char smem[];
    u64* best = reinterpret_cast<u64*>(smem);          // size
    int* counts = reinterpret_cast<int*>(best + size);  // 1 + flag
    BlockTopK top{best, counts, counts + 1, 1, size, k};
    top.init();
    __syncthreads();
    top.offer_all(candidates + (size_t)blockIdx.x * n_cand, n_cand);
    top.finish();
    for (int i = threadIdx.x; i < k; i += blockDim.x) out[(size_t)blockIdx.x * k + i] = best[i];
}
