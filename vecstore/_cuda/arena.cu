// Row biases of a device arena after some of its rows changed state: changes[i] >= 0
// names a row that is live (bias 0, or its squared norm for l2 keys), ~changes[i] one that
// is deleted (bias +inf under both metrics). One thread per changed row.

extern "C" __global__ void set_row_biases(const long long* __restrict__ changes, int count,
                                          const float* __restrict__ base_sq_norms,
                                          float* __restrict__ zeros,
                                          float* __restrict__ sq_norms) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    const long long change = changes[i];
    const bool live = change >= 0;
    const long long row = live ? change : ~change;
    zeros[row] = live ? 0.0f : __int_as_float(0x7f800000);
    sq_norms[row] = live ? base_sq_norms[row] : __int_as_float(0x7f800000);
}
