// CPU inference kernel of the hard bounded activations (fitact_pipeline/cpu_kernel.py loads it).
//
// mode 0, clip       (Clip-Act, GB-ReLU, FitReLU-Naive): x if 0 < x <= b and x < inf, else 0
// mode 1, clamp      (Ranger, its authors' clamp):      min(max(0, x), b) as torch.clamp computes it:
//                                                       NaN stays NaN, +inf -> b, -inf -> 0
// mode 2, clamp_zero (Ranger, nonfinite=zero):          min(max(0, x), b), non-finite x counted as 0
// Each is the exact expression of its eager form (bounded.py, protections/ranger.py), faulty
// (negative, NaN, inf) bounds included.
//
// Why a hand-written kernel: a neuron-wise bound is a second stream as large as one sample's
// activation map. Read once per sample (what torch.compile generates), it cost ~2x relu_ on a
// ResNet50 map; here four samples share each bound load, which brings the cost close to relu_
// (docs/protections.md, "Overheads").
//
// Layout: x is (N, M) contiguous; bound has C values, value c covers the S = M / C contiguous
// elements [c*S, (c+1)*S) of every sample: neuron-wise C = M, S = 1; channel-wise S = H*W;
// layer-wise C = 1.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

// Built without -march (the cached library must run on any x86-64 that shares the cache
// directory): on x86-64 GCC also emits AVX2 and AVX-512 versions of the loops below and picks one
// at load time, as ATen does for its own kernels.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define VECTOR_CLONES
#endif

constexpr int CLIP = 0, CLAMP = 1, CLAMP_ZERO = 2;

template <int MODE>
inline float bounded(float v, float b) {
  if (MODE == CLAMP) {  // relu keeps NaN; torch.minimum keeps a NaN of either side (v != v: v is NaN)
    const float r = (v > 0.f || v != v) ? v : 0.f;
    return (r < b || r != r) ? r : b;
  }
  if (MODE == CLAMP_ZERO) {  // min(max(0, x), b) with non-finite x -> 0; a NaN bound gives NaN
    const float r = (v > 0.f && v < INFINITY) ? v : 0.f;
    return r < b ? r : b;
  }
  const float r = v > 0.f ? v : 0.f;
  return ((v <= b) & (v < INFINITY)) ? r : 0.f;
}

// In place, ``src`` is null and each row is read through its own restrict pointer (s0 = d0), so
// every restrict promise holds in both modes; the promises are what lets the compiler vectorise.
template <int MODE, bool OUT>
VECTOR_CLONES void four_rows_neuronwise(float* __restrict__ dst, const float* __restrict__ src, const float* __restrict__ b,
                          int64_t m, int64_t j0, int64_t j1) {
  float* __restrict__ d0 = dst; float* __restrict__ d1 = dst + m;
  float* __restrict__ d2 = dst + 2 * m; float* __restrict__ d3 = dst + 3 * m;
  const float* s0 = OUT ? src : d0; const float* s1 = OUT ? src + m : d1;
  const float* s2 = OUT ? src + 2 * m : d2; const float* s3 = OUT ? src + 3 * m : d3;
  for (int64_t j = j0; j < j1; ++j) {
    const float bj = b[j];
    d0[j] = bounded<MODE>(s0[j], bj);
    d1[j] = bounded<MODE>(s1[j], bj);
    d2[j] = bounded<MODE>(s2[j], bj);
    d3[j] = bounded<MODE>(s3[j], bj);
  }
}

// One row, columns [j0, j1); bound value c covers columns [c*s, (c+1)*s); j0 and j1 are multiples of s.
template <int MODE, bool OUT>
VECTOR_CLONES void one_row(float* __restrict__ dst, const float* __restrict__ src, const float* __restrict__ b,
             int64_t s, int64_t j0, int64_t j1) {
  const float* in = OUT ? src : dst;
  if (s == 1) {
    for (int64_t j = j0; j < j1; ++j) dst[j] = bounded<MODE>(in[j], b[j]);
    return;
  }
  for (int64_t c = j0 / s; c < j1 / s; ++c) {
    const float bc = b[c];
    for (int64_t j = c * s; j < (c + 1) * s; ++j) dst[j] = bounded<MODE>(in[j], bc);
  }
}

template <int MODE, bool OUT>
void run(float* dst, const float* src, const float* b, int64_t n, int64_t m, int64_t c) {
  const int64_t s = m / c;
  if (s > 1 && s < 16) {  // runs this short do not vectorise: spell the bound out per value, once
    std::vector<float> per_value(m);
    for (int64_t j = 0; j < m; ++j) per_value[j] = b[j / s];
    run<MODE, OUT>(dst, src, per_value.data(), n, m, m);
    return;
  }
  // Work is split into (group of 4 samples) x (column block); a block holds whole bound runs and
  // ~128 KB of neuron-wise bound, so it stays in L2 while the four samples stream past it.
  const int64_t rows_per_group = s == 1 ? 4 : 1;
  const int64_t block = std::max<int64_t>(s, (32768 / s) * s);
  const int64_t groups = (n + rows_per_group - 1) / rows_per_group;
  const int64_t blocks = (m + block - 1) / block;
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / (rows_per_group * std::min(block, m)));
  at::parallel_for(0, groups * blocks, grain, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t i0 = (t / blocks) * rows_per_group, j0 = (t % blocks) * block;
      const int64_t j1 = std::min(m, j0 + block), rows = std::min(rows_per_group, n - i0);
      float* d = dst + i0 * m;
      const float* in = OUT ? src + i0 * m : nullptr;
      if (rows == 4) {
        four_rows_neuronwise<MODE, OUT>(d, in, b, m, j0, j1);
      } else {
        for (int64_t r = 0; r < rows; ++r) one_row<MODE, OUT>(d + r * m, OUT ? in + r * m : nullptr, b, s, j0, j1);
      }
    }
  });
}

void check(const at::Tensor& x, const at::Tensor& bound, int64_t mode) {
  TORCH_CHECK(mode == CLIP || mode == CLAMP || mode == CLAMP_ZERO, "fitact bounded_relu: mode ", mode,
              " is not allowed; choose 0 (clip), 1 (clamp) or 2 (clamp_zero)");
  TORCH_CHECK(x.device().is_cpu() && bound.device().is_cpu(), "fitact bounded_relu: CPU tensors only");
  TORCH_CHECK(x.scalar_type() == at::kFloat && bound.scalar_type() == at::kFloat,
              "fitact bounded_relu: float32 only, got ", x.scalar_type(), " and ", bound.scalar_type());
  TORCH_CHECK(x.is_contiguous() && bound.is_contiguous(), "fitact bounded_relu: contiguous tensors only");
  TORCH_CHECK(x.dim() >= 2, "fitact bounded_relu: x needs a batch dimension and a sample shape");
  const int64_t m = x.numel() / std::max<int64_t>(1, x.size(0));
  TORCH_CHECK(bound.numel() >= 1 && m % bound.numel() == 0, "fitact bounded_relu: ", bound.numel(),
              " bound values do not tile a sample of ", m, " values");
}

template <bool OUT>
void dispatch(float* dst, const float* src, const at::Tensor& x, const at::Tensor& bound, int64_t mode) {
  const int64_t n = x.size(0), m = x.numel() / std::max<int64_t>(1, n);
  if (n == 0 || m == 0) return;
  const float* b = bound.data_ptr<float>();
  if (mode == CLAMP) run<CLAMP, OUT>(dst, src, b, n, m, bound.numel());
  else if (mode == CLAMP_ZERO) run<CLAMP_ZERO, OUT>(dst, src, b, n, m, bound.numel());
  else run<CLIP, OUT>(dst, src, b, n, m, bound.numel());
}

// Returns nothing (the caller keeps x): torch.compile cannot functionalise a custom op whose
// output aliases an input.
void bounded_relu_(at::Tensor x, const at::Tensor& bound, int64_t mode) {
  check(x, bound, mode);
  dispatch<false>(x.data_ptr<float>(), nullptr, x, bound, mode);
}

at::Tensor bounded_relu(const at::Tensor& x, const at::Tensor& bound, int64_t mode) {
  check(x, bound, mode);
  at::Tensor out = at::empty_like(x);
  dispatch<true>(out.data_ptr<float>(), x.data_ptr<float>(), x, bound, mode);
  return out;
}

}  // namespace

TORCH_LIBRARY(fitact, m) {
  m.def("bounded_relu_(Tensor(a!) x, Tensor bound, int form) -> ()");
  m.def("bounded_relu(Tensor x, Tensor bound, int form) -> Tensor");
}

TORCH_LIBRARY_IMPL(fitact, CPU, m) {
  m.impl("bounded_relu_", &bounded_relu_);
  m.impl("bounded_relu", &bounded_relu);
}
