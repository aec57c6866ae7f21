// CPU kernels of the pairwise engine (schemas and math in ../schemas.cpp): one tiled pass over the pairs i < j of
// two feature sets x (N, p), y (N, q). Each tile pair (I ≤ J) gets its Gram blocks x_I·x_Jᵀ and y_I·y_Jᵀ from
// BLAS; the element loop turns them into RDM values (1 − cos or ‖x_i − x_j‖) and RBF kernel values and
// accumulates per-thread statistics that are summed at the end. Memory O(N + bins) per thread.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../pairwise.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

namespace clnscl {
namespace {

constexpr int64_t kTile = 256;

struct Tile {
  int64_t i0, j0, r, c;
  const double *gx, *gy;  // r × c Gram blocks
};

// Calls visit(tile, thread) for every tile pair I ≤ J of part `part` of `parts` (the tile pairs, enumerated row by
// row, cut into equal runs; see part_range), in parallel; on a diagonal tile (I = J) the visitor must take only the
// entries above the diagonal, so that every pair i < j is seen once.
template <typename Visit>
void for_each_tile(const at::Tensor& x, const at::Tensor& y, int64_t part, int64_t parts, Visit visit) {
  const int64_t n = x.size(0);
  const int64_t nb = (n + kTile - 1) / kTile;
  std::vector<std::pair<int64_t, int64_t>> pairs;
  for (int64_t i = 0; i < nb; ++i)
    for (int64_t j = i; j < nb; ++j) pairs.emplace_back(i * kTile, j * kTile);
  const auto [first, last] = part_range(static_cast<int64_t>(pairs.size()), part, parts);
  at::parallel_for(first, last, 1, [&](int64_t p0, int64_t p1) {
    std::vector<double> bx(kTile * kTile), by(kTile * kTile);
    const int thread = at::get_thread_num();
    for (int64_t p = p0; p < p1; ++p) {
      const auto [i0, j0] = pairs[p];
      const int64_t r = std::min(kTile, n - i0), c = std::min(kTile, n - j0);
      at::Tensor gx = at::from_blob(bx.data(), {r, c}, x.options());
      at::Tensor gy = at::from_blob(by.data(), {r, c}, y.options());
      at::mm_out(gx, x.narrow(0, i0, r), x.narrow(0, j0, c).t());
      at::mm_out(gy, y.narrow(0, i0, r), y.narrow(0, j0, c).t());
      visit(Tile{i0, j0, r, c, bx.data(), by.data()}, thread);
    }
  });
}

// Calls fn(i, j, gx_ij, gy_ij) for the pairs i < j of a tile (on a diagonal tile, the entries above it).
template <typename Fn>
inline void for_each_pair(const Tile& t, Fn fn) {
  for (int64_t u = 0; u < t.r; ++u)
    for (int64_t v = (t.i0 == t.j0 ? u + 1 : 0); v < t.c; ++v) fn(t.i0 + u, t.j0 + v, t.gx[u * t.c + v], t.gy[u * t.c + v]);
}

constexpr int kScalars = 13;

// Moments over i < j. scalars: Σdx, Σdx², Σdy, Σdy², Σdx·dy, min dx, max dx, min dy, max dy,
// max|cos_x − cos_y|, ΣKxKy, ΣKx², ΣKy² (K = exp(−γ·‖·‖²), skipped when γ ≤ 0); row sums Σ_{j≠i} K_ij.
std::tuple<at::Tensor, at::Tensor, at::Tensor> pairwise_moments_cpu(const at::Tensor& x_in, const at::Tensor& y_in,
                                                                   int64_t rdm, double gamma_x, double gamma_y,
                                                                   int64_t part, int64_t parts) {
  at::NoGradGuard no_grad;
  const Prepared p = prepare(x_in, y_in);
  const int64_t n = p.x.size(0);
  const int nt = at::get_num_threads();
  const bool rbf = gamma_x > 0.0 && gamma_y > 0.0;
  std::vector<double> acc(static_cast<size_t>(nt) * kScalars, 0.0);
  for (int t = 0; t < nt; ++t) {
    double* a = acc.data() + t * kScalars;
    a[5] = a[7] = std::numeric_limits<double>::infinity();
    a[6] = a[8] = -std::numeric_limits<double>::infinity();
  }
  std::vector<double> rows(rbf ? static_cast<size_t>(nt) * 2 * n : 0, 0.0);
  const double *nx = p.nx.data_ptr<double>(), *ny = p.ny.data_ptr<double>();
  for_each_tile(p.x, p.y, part, parts, [&](const Tile& t, int thread) {
    double* a = acc.data() + thread * kScalars;
    double* rkx = rbf ? rows.data() + static_cast<size_t>(thread) * 2 * n : nullptr;
    double* rky = rbf ? rkx + n : nullptr;
    for_each_pair(t, [&](int64_t i, int64_t j, double gx, double gy) {
      const double dx = rdm_value(rdm, gx, nx[i], nx[j]), dy = rdm_value(rdm, gy, ny[i], ny[j]);
      a[0] += dx, a[1] += dx * dx, a[2] += dy, a[3] += dy * dy, a[4] += dx * dy;
      a[5] = std::min(a[5], dx), a[6] = std::max(a[6], dx), a[7] = std::min(a[7], dy), a[8] = std::max(a[8], dy);
      a[9] = std::max(a[9], std::abs(cosine(gx, nx[i], nx[j]) - cosine(gy, ny[i], ny[j])));
      if (rbf) {
        const double kx = std::exp(-gamma_x * squared_distance(gx, nx[i], nx[j]));
        const double ky = std::exp(-gamma_y * squared_distance(gy, ny[i], ny[j]));
        a[10] += kx * ky, a[11] += kx * kx, a[12] += ky * ky;
        rkx[i] += kx, rkx[j] += kx, rky[i] += ky, rky[j] += ky;
      }
    });
  });
  at::Tensor scalars = at::zeros({kScalars}, at::kDouble);
  double* s = scalars.data_ptr<double>();
  s[5] = s[7] = std::numeric_limits<double>::infinity();
  s[6] = s[8] = -std::numeric_limits<double>::infinity();
  for (int t = 0; t < nt; ++t) {
    const double* a = acc.data() + t * kScalars;
    for (int k : {0, 1, 2, 3, 4, 10, 11, 12}) s[k] += a[k];
    s[5] = std::min(s[5], a[5]), s[6] = std::max(s[6], a[6]), s[7] = std::min(s[7], a[7]), s[8] = std::max(s[8], a[8]);
    s[9] = std::max(s[9], a[9]);
  }
  if (s[0] != s[0] || s[2] != s[2])  // NaN features: every statistic is NaN (min/max alone would hide it)
    for (int k = 0; k < kScalars; ++k) s[k] = std::numeric_limits<double>::quiet_NaN();
  at::Tensor rkx = at::zeros({n}, at::kDouble), rky = at::zeros({n}, at::kDouble);
  if (rbf) {
    at::Tensor all = at::from_blob(rows.data(), {nt, 2, n}, at::kDouble).sum(0);
    rkx.copy_(all[0]);
    rky.copy_(all[1]);
  }
  return {scalars, rkx, rky};
}

// Histograms of the RDM values of x and of y over i < j: `bins` equal-width bins over [lo, hi] each, with the
// smallest and largest value seen in every bin (to tell a bin of exact ties from a spread one).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> pairwise_histograms_cpu(
    const at::Tensor& x_in, const at::Tensor& y_in, int64_t rdm, double lo_x, double hi_x, double lo_y, double hi_y,
    int64_t bins, int64_t part, int64_t parts) {
  at::NoGradGuard no_grad;
  TORCH_CHECK(bins >= 1, "pairwise_histograms: bins must be >= 1");
  const Prepared p = prepare(x_in, y_in);
  const int nt = at::get_num_threads();
  const double wx = hi_x > lo_x ? (hi_x - lo_x) / bins : 1.0, wy = hi_y > lo_y ? (hi_y - lo_y) / bins : 1.0;
  const size_t per = static_cast<size_t>(bins);
  std::vector<int64_t> cx(nt * per, 0), cy(nt * per, 0);
  constexpr double inf = std::numeric_limits<double>::infinity();
  std::vector<double> ex(nt * per * 2), ey(nt * per * 2);  // (min, max) per bin
  for (size_t k = 0; k < nt * per; ++k) ex[2 * k] = ey[2 * k] = inf, ex[2 * k + 1] = ey[2 * k + 1] = -inf;
  const double *nx = p.nx.data_ptr<double>(), *ny = p.ny.data_ptr<double>();
  for_each_tile(p.x, p.y, part, parts, [&](const Tile& t, int thread) {
    int64_t *hx = cx.data() + thread * per, *hy = cy.data() + thread * per;
    double *mx = ex.data() + thread * per * 2, *my = ey.data() + thread * per * 2;
    for_each_pair(t, [&](int64_t i, int64_t j, double gx, double gy) {
      const double dx = rdm_value(rdm, gx, nx[i], nx[j]), dy = rdm_value(rdm, gy, ny[i], ny[j]);
      const int64_t bx = bin_of(dx, lo_x, wx, bins), by = bin_of(dy, lo_y, wy, bins);
      ++hx[bx], ++hy[by];
      mx[2 * bx] = std::min(mx[2 * bx], dx), mx[2 * bx + 1] = std::max(mx[2 * bx + 1], dx);
      my[2 * by] = std::min(my[2 * by], dy), my[2 * by + 1] = std::max(my[2 * by + 1], dy);
    });
  });
  at::Tensor hx = at::from_blob(cx.data(), {nt, bins}, at::kLong).sum(0);
  at::Tensor hy = at::from_blob(cy.data(), {nt, bins}, at::kLong).sum(0);
  at::Tensor ext_x = at::from_blob(ex.data(), {nt, bins, 2}, at::kDouble);
  at::Tensor ext_y = at::from_blob(ey.data(), {nt, bins, 2}, at::kDouble);
  at::Tensor range_x = at::stack({ext_x.select(2, 0).amin(0), ext_x.select(2, 1).amax(0)}, 1);
  at::Tensor range_y = at::stack({ext_y.select(2, 0).amin(0), ext_y.select(2, 1).amax(0)}, 1);
  return {hx, hy, range_x, range_y};
}

// Σ_{i<j} rank_x[bin(dx_ij)] · rank_y[bin(dy_ij)] with the bins of pairwise_histograms.
at::Tensor pairwise_rank_product_cpu(const at::Tensor& x_in, const at::Tensor& y_in, int64_t rdm, double lo_x,
                                     double hi_x, double lo_y, double hi_y, const at::Tensor& rank_x_in,
                                     const at::Tensor& rank_y_in, int64_t part,
                                     int64_t parts) {
  at::NoGradGuard no_grad;
  const Prepared p = prepare(x_in, y_in);
  const at::Tensor rank_x = rank_x_in.to(at::kDouble).contiguous(), rank_y = rank_y_in.to(at::kDouble).contiguous();
  const int64_t bins_x = rank_x.numel(), bins_y = rank_y.numel();
  TORCH_CHECK(bins_x >= 1 && bins_y >= 1, "pairwise_rank_product: empty rank tables");
  const double wx = hi_x > lo_x ? (hi_x - lo_x) / bins_x : 1.0, wy = hi_y > lo_y ? (hi_y - lo_y) / bins_y : 1.0;
  const int nt = at::get_num_threads();
  std::vector<double> acc(nt, 0.0);
  const double *nx = p.nx.data_ptr<double>(), *ny = p.ny.data_ptr<double>();
  const double *rx = rank_x.data_ptr<double>(), *ry = rank_y.data_ptr<double>();
  for_each_tile(p.x, p.y, part, parts, [&](const Tile& t, int thread) {
    double sum = 0.0;
    for_each_pair(t, [&](int64_t i, int64_t j, double gx, double gy) {
      const double dx = rdm_value(rdm, gx, nx[i], nx[j]), dy = rdm_value(rdm, gy, ny[i], ny[j]);
      sum += rx[bin_of(dx, lo_x, wx, bins_x)] * ry[bin_of(dy, lo_y, wy, bins_y)];
    });
    acc[thread] += sum;
  });
  double total = 0.0;
  for (double a : acc) total += a;
  return at::scalar_tensor(total, at::kDouble);
}

}  // namespace

TORCH_LIBRARY_IMPL(clnscl, CPU, m) {
  m.impl("pairwise_moments", &pairwise_moments_cpu);
  m.impl("pairwise_histograms", &pairwise_histograms_cpu);
  m.impl("pairwise_rank_product", &pairwise_rank_product_cpu);
}

}  // namespace clnscl
