// Per-pixel front-to-back compositing of tiled Gaussians on the CPU: the compiled twin of
// renderssl.render.splat._CompositeTiles (same inputs, same outputs, same thresholds).
//
// Inputs, per (Gaussian, tile) pair sorted by tile then depth: coef (M, 6) with
// ln(alpha_raw) = coef . [u^2, uv, v^2, u, v, 1] in the tile's pixel frame, the Gaussian index
// pair_gauss (M,); per Gaussian values (G, D); per tile row its first pair and pair count.
// Forward walks each pixel's list until transmittance would reach T_MIN (gsplat's rule) and stores
// the last contributing position. Backward walks it back to front, recovering the transmittance
// before each Gaussian as T / (1 - alpha) (alpha <= 0.99), as gsplat's backward does. Torch's intra-op
// threads (at::parallel_for, so torch.set_num_threads applies) split the tile rows; every pair belongs to one row, so per-pair gradients are written without races and the
// caller sums them per Gaussian.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <cmath>
#include <vector>

namespace {

constexpr int TILE = 16;
constexpr double ALPHA_MAX = 0.99;
constexpr double ALPHA_MIN = 1.0 / 255.0;
constexpr double T_MIN = 1e-4;

template <typename scalar_t>
inline scalar_t log_alpha(const scalar_t* c, scalar_t u, scalar_t v) {
  return c[0] * u * u + c[1] * u * v + c[2] * v * v + c[3] * u + c[4] * v + c[5];
}

template <typename scalar_t>
void forward_rows(const scalar_t* coef, const int64_t* pair_gauss, const scalar_t* values, const int64_t* row_start,
                  const int64_t* row_count, int64_t rows, int64_t D, scalar_t* out, scalar_t* T_final, int64_t* last) {
  constexpr int P = TILE * TILE;
  at::parallel_for(0, rows, 1, [&](int64_t row_begin, int64_t row_end) {
  for (int64_t r = row_begin; r < row_end; ++r) {
    const int64_t start = row_start[r], count = row_count[r];
    for (int p = 0; p < P; ++p) {
      const scalar_t u = scalar_t(p % TILE) + scalar_t(0.5), v = scalar_t(p / TILE) + scalar_t(0.5);
      scalar_t* acc = out + (r * P + p) * D;
      scalar_t T = 1;
      int64_t last_k = -1;
      for (int64_t k = 0; k < count; ++k) {
        const int64_t i = start + k;
        const scalar_t raw = std::exp(log_alpha(coef + 6 * i, u, v));
        if (raw < scalar_t(ALPHA_MIN)) continue;
        const scalar_t alpha = raw < scalar_t(ALPHA_MAX) ? raw : scalar_t(ALPHA_MAX);
        const scalar_t next_T = T * (1 - alpha);
        if (next_T <= scalar_t(T_MIN)) break;
        const scalar_t w = alpha * T;
        const scalar_t* val = values + pair_gauss[i] * D;
        for (int64_t d = 0; d < D; ++d) acc[d] += w * val[d];
        T = next_T;
        last_k = k;
      }
      T_final[r * P + p] = T;
      last[r * P + p] = last_k;
    }
  }
  });
}

template <typename scalar_t>
void backward_rows(const scalar_t* coef, const int64_t* pair_gauss, const scalar_t* values, const int64_t* row_start,
                   const scalar_t* T_final, const int64_t* last, const scalar_t* g_out, const scalar_t* g_T, int64_t rows,
                   int64_t D, scalar_t* g_coef, scalar_t* g_pair_values) {
  constexpr int P = TILE * TILE;
  at::parallel_for(0, rows, 1, [&](int64_t row_begin, int64_t row_end) {
  for (int64_t r = row_begin; r < row_end; ++r) {
    const int64_t start = row_start[r];
    for (int p = 0; p < P; ++p) {
      const scalar_t u = scalar_t(p % TILE) + scalar_t(0.5), v = scalar_t(p / TILE) + scalar_t(0.5);
      const scalar_t feat[6] = {u * u, u * v, v * v, u, v, 1};
      const scalar_t* go = g_out + (r * P + p) * D;
      scalar_t T = T_final[r * P + p];
      scalar_t after = g_T[r * P + p] * T;  // sum_{j>k} w_j v_j.g + g_T T_final
      for (int64_t k = last[r * P + p]; k >= 0; --k) {
        const int64_t i = start + k;
        const scalar_t raw = std::exp(log_alpha(coef + 6 * i, u, v));
        if (raw < scalar_t(ALPHA_MIN)) continue;
        const scalar_t alpha = raw < scalar_t(ALPHA_MAX) ? raw : scalar_t(ALPHA_MAX);
        T = T / (1 - alpha);  // transmittance in front of this Gaussian
        const scalar_t w = alpha * T;
        const scalar_t* val = values + pair_gauss[i] * D;
        scalar_t* gv = g_pair_values + i * D;
        scalar_t vg = 0;
        for (int64_t d = 0; d < D; ++d) {
          vg += val[d] * go[d];
          gv[d] += w * go[d];
        }
        if (raw < scalar_t(ALPHA_MAX)) {
          const scalar_t g_log = (T * vg - after / (1 - alpha)) * raw;  // d alpha / d ln(alpha) = alpha
          scalar_t* gc = g_coef + 6 * i;
          for (int j = 0; j < 6; ++j) gc[j] += g_log * feat[j];
        }
        after += w * vg;
      }
    }
  }
  });
}

void check(const torch::Tensor& t, const char* name, int dims) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.dim() == dims, name, " must have ", dims, " dimensions");
}

}  // namespace

std::vector<torch::Tensor> composite_forward(torch::Tensor coef, torch::Tensor pair_gauss, torch::Tensor values,
                                             torch::Tensor row_start, torch::Tensor row_count) {
  check(coef, "coef", 2), check(pair_gauss, "pair_gauss", 1), check(values, "values", 2);
  check(row_start, "row_start", 1), check(row_count, "row_count", 1);
  const int64_t rows = row_start.size(0), D = values.size(1), P = TILE * TILE;
  auto out = torch::zeros({rows, P, D}, values.options());
  auto T_final = torch::empty({rows, P}, values.options());
  auto last = torch::empty({rows, P}, row_start.options());
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "composite_forward", [&] {
    forward_rows<scalar_t>(coef.data_ptr<scalar_t>(), pair_gauss.data_ptr<int64_t>(), values.data_ptr<scalar_t>(),
                           row_start.data_ptr<int64_t>(), row_count.data_ptr<int64_t>(), rows, D, out.data_ptr<scalar_t>(),
                           T_final.data_ptr<scalar_t>(), last.data_ptr<int64_t>());
  });
  return {out, T_final, last};
}

std::vector<torch::Tensor> composite_backward(torch::Tensor coef, torch::Tensor pair_gauss, torch::Tensor values,
                                              torch::Tensor row_start, torch::Tensor T_final, torch::Tensor last,
                                              torch::Tensor g_out, torch::Tensor g_T) {
  check(coef, "coef", 2), check(g_out, "g_out", 3), check(g_T, "g_T", 2);
  const int64_t rows = row_start.size(0), D = values.size(1);
  auto g_coef = torch::zeros_like(coef);
  auto g_pair_values = torch::zeros({coef.size(0), D}, values.options());
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "composite_backward", [&] {
    backward_rows<scalar_t>(coef.data_ptr<scalar_t>(), pair_gauss.data_ptr<int64_t>(), values.data_ptr<scalar_t>(),
                            row_start.data_ptr<int64_t>(), T_final.data_ptr<scalar_t>(), last.data_ptr<int64_t>(),
                            g_out.data_ptr<scalar_t>(), g_T.data_ptr<scalar_t>(), rows, D, g_coef.data_ptr<scalar_t>(),
                            g_pair_values.data_ptr<scalar_t>());
  });
  return {g_coef, g_pair_values};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("composite_forward", &composite_forward, "tiled Gaussian compositing, forward (CPU)");
  m.def("composite_backward", &composite_backward, "tiled Gaussian compositing, backward (CPU)");
}
