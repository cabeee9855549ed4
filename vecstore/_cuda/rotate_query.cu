// Rotation of one query on the device: out[i] = sum_j matrix[i * dim + j] * query[j] for
// a (rot_dim x dim) row-major float32 matrix. One warp per output coordinate: the lanes
// read consecutive matrix entries and the warp sums them with shuffles.

extern "C" __global__ void rotate_query(const float* __restrict__ matrix,
                                        const float* __restrict__ query, int dim, int rot_dim,
                                        float* __restrict__ out) {
    const int i = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (i >= rot_dim) return;
    const float* row = matrix + (size_t)i * dim;
    float sum = 0.0f;
    for (int j = lane; j < dim; j += 32) sum = fmaf(row[j], query[j], sum);
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xFFFFFFFFu, sum, offset);
    if (lane == 0) out[i] = sum;
}
