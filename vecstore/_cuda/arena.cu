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

// New rows of a device arena, read in place from pinned host memory: rows [start,
// start + m) get their code words (n_words, m), QJL sign words (n_signs, m; none when 0),
// score scales, squared norms (also as the unmasked l2 bias) and tq{b}-prod residual
// factors (none when null), with a live bias of 0. One thread per row; the arena's word
// buffers hold `capacity` rows per word.
extern "C" __global__ void place_rows(const unsigned int* __restrict__ words_in, int n_words,
                                      const unsigned int* __restrict__ signs_in, int n_signs,
                                      const float* __restrict__ scale_in,
                                      const float* __restrict__ sq_norms_in,
                                      const float* __restrict__ residual_in, int m,
                                      long long start, long long capacity,
                                      unsigned int* __restrict__ words,
                                      unsigned int* __restrict__ signs,
                                      float* __restrict__ scale, float* __restrict__ sq_norms,
                                      float* __restrict__ residual,
                                      float* __restrict__ base_sq_norms,
                                      float* __restrict__ zeros) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= m) return;
    const long long row = start + i;
    for (int w = 0; w < n_words; ++w) words[w * capacity + row] = words_in[(long long)w * m + i];
    for (int w = 0; w < n_signs; ++w) signs[w * capacity + row] = signs_in[(long long)w * m + i];
    scale[row] = scale_in[i];
    sq_norms[row] = sq_norms_in[i];
    base_sq_norms[row] = sq_norms_in[i];
    zeros[row] = 0.0f;
    if (residual_in != nullptr) residual[row] = residual_in[i];
}
