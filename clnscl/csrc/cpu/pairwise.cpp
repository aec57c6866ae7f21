// CPU kernels of the pairwise engine (schemas and math in ../schemas.cpp): one tiled pass over the pairs i < j of
// two feature sets x (N, p), y (N, q). Each tile pair (I ≤ J) gets its Gram blocks x_I·x_Jᵀ and y_I·y_Jᵀ from
// BLAS (float64, at the machine's dgemm rate); an element loop per tile row, branch-free so that it vectorises
// (templated on the RDM and on what the pass computes), turns them into RDM values (1 − cos or ‖x_i − x_j‖) and
// RBF kernel values and accumulates per-thread statistics, summed at the end. Histogram counts go through a
// scalar loop over a row's bins computed by the vector loop. Memory O(N + bins) per thread.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../pairwise.h"
#include "vmath.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <utility>
#include <vector>

namespace clnscl {
namespace {

constexpr int64_t kTile = 256, kRows = 256;
constexpr double kInf = std::numeric_limits<double>::infinity();

// A band of r rows from i0 of a tile pair whose columns start at j0: c columns, the band's first row `skip` rows
// into its tile (on a diagonal tile the band's row u pairs with the columns after skip + u).
struct Tile {
  int64_t i0, j0, r, c, skip;
  const double *gx, *gy;  // r × c Gram blocks
};

// Calls visit(band, thread) for every band of rows of every tile pair I ≤ J of part `part` of `parts` (the tile pairs, enumerated row by
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
    std::vector<double> bx(kRows * kTile), by(kRows * kTile);
    const int thread = at::get_thread_num();
    for (int64_t p = p0; p < p1; ++p) {
      const auto [i0, j0] = pairs[p];
      const int64_t c = std::min(kTile, n - j0);
      // the tile's rows in bands of kRows, so that a band's Gram blocks are still in cache for the element loop
      for (int64_t b0 = i0; b0 < std::min(i0 + kTile, n); b0 += kRows) {
        const int64_t r = std::min({kRows, n - b0, i0 + kTile - b0});
        at::Tensor gx = at::from_blob(bx.data(), {r, c}, x.options());
        at::Tensor gy = at::from_blob(by.data(), {r, c}, y.options());
        at::mm_out(gx, x.narrow(0, b0, r), x.narrow(0, j0, c).t());
        at::mm_out(gy, y.narrow(0, b0, r), y.narrow(0, j0, c).t());
        visit(Tile{b0, j0, r, c, b0 - i0, bx.data(), by.data()}, thread);
      }
    }
  });
}

// A side's rows: squared norms and reciprocal norms (0 for a zero row, NaN for a NaN row).
struct Rows {
  at::Tensor norms, inverse;
  const double* n() const { return norms.data_ptr<double>(); }
  const double* inv() const { return inverse.data_ptr<double>(); }
};

Rows rows_of(const at::Tensor& squared_norms) {
  return {squared_norms, at::where(squared_norms > 0, squared_norms.rsqrt(), squared_norms * 0).contiguous()};
}

// The RDM value of a pair from its Gram entry g, squared norms and reciprocal norms (math in ../pairwise.h).
template <int64_t R>
inline double rdm_of(double g, double na, double nb, double ia, double ib) {
  if constexpr (R == kEuclidean) {
    const double s = na + nb - 2.0 * g;
    return std::sqrt(s < 0.0 ? 0.0 : s);
  } else {
    return 1.0 - g * ia * ib;
  }
}

// The pairs of tile row u: columns [first_column(t, u), t.c).
inline int64_t first_column(const Tile& t, int64_t u) { return t.i0 - t.skip == t.j0 ? t.skip + u + 1 : 0; }

constexpr int kScalars = 14;

// What a moments pass adds up besides the RDM moments: RBF kernel sums (γ > 0) and binned rank products.
struct MomentsArgs {
  double gamma_x, gamma_y;
  const double *rank_x, *rank_y;
  double lo_x, scale_x, lo_y, scale_y;  // bins_per_unit
  int64_t bins_x, bins_y;
};

struct KernelSums {
  double kxky, kxkx, kyky, row_x, row_y;
};

// The RBF kernel values K_x = exp(−γ_x‖x_i − x_j‖²), K_y of one row i against c columns: their sums (the row's
// kernel sums among them), and each added to its column's sum. A function of its own, not inlined: inside the
// moments loop, or inlined into it, GCC leaves the exps scalar.
__attribute__((noinline)) KernelSums kernel_row(const double* __restrict__ gx, const double* __restrict__ gy,
                                                const double* __restrict__ nxj, const double* __restrict__ nyj,
                                                double nxi, double nyi, double gamma_x, double gamma_y, int64_t c,
                                                double* __restrict__ colx, double* __restrict__ coly) {
  double kxky = 0, kxkx = 0, kyky = 0, row_x = 0, row_y = 0;
#pragma omp simd reduction(+ : kxky, kxkx, kyky, row_x, row_y)
  for (int64_t v = 0; v < c; ++v) {
    const double sx = nxi + nxj[v] - 2.0 * gx[v], sy = nyi + nyj[v] - 2.0 * gy[v];
    const double kx = cpu::exp_fast<double>(-gamma_x * (sx < 0.0 ? 0.0 : sx));
    const double ky = cpu::exp_fast<double>(-gamma_y * (sy < 0.0 ? 0.0 : sy));
    kxky += kx * ky, kxkx += kx * kx, kyky += ky * ky, row_x += kx, row_y += ky;
    colx[v] += kx, coly[v] += ky;
  }
  return {kxky, kxkx, kyky, row_x, row_y};
}

// One tile of the moments pass into a thread's scalars `a` and kernel row sums rkx, rky (see the schema).
template <int64_t R, bool kRbf, bool kRanks>
void moments_tile(const Tile& t, const Rows& X, const Rows& Y, const MomentsArgs& m, double* a, double* rkx,
                  double* rky) {
  const double *nx = X.n(), *ny = Y.n(), *ix = X.inv(), *iy = Y.inv();
  const double *nxj = nx + t.j0, *nyj = ny + t.j0, *ixj = ix + t.j0, *iyj = iy + t.j0;
  double *colx = rkx + t.j0, *coly = rky + t.j0;
  const double *rank_x = m.rank_x, *rank_y = m.rank_y;
  const double gamma_x = m.gamma_x, gamma_y = m.gamma_y, lo_x = m.lo_x, lo_y = m.lo_y;
  const double scale_x = m.scale_x, scale_y = m.scale_y;
  const int64_t bins_x = m.bins_x, bins_y = m.bins_y;
  for (int64_t u = 0; u < t.r; ++u) {
    const int64_t i = t.i0 + u;
    const double nxi = nx[i], nyi = ny[i], ixi = ix[i], iyi = iy[i];
    const double* __restrict__ gx = t.gx + u * t.c;
    const double* __restrict__ gy = t.gy + u * t.c;
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, k0 = 0, k1 = 0, k2 = 0, rowx = 0, rowy = 0, rp = 0;
    double lox = kInf, hix = -kInf, loy = kInf, hiy = -kInf, gap = 0;
    const int64_t v0 = first_column(t, u);
#pragma omp simd reduction(+ : s0, s1, s2, s3, s4, rp) reduction(min : lox, loy) \
    reduction(max : hix, hiy, gap)
    for (int64_t v = v0; v < t.c; ++v) {
      const double dx = rdm_of<R>(gx[v], nxi, nxj[v], ixi, ixj[v]);
      const double dy = rdm_of<R>(gy[v], nyi, nyj[v], iyi, iyj[v]);
      s0 += dx, s1 += dx * dx, s2 += dy, s3 += dy * dy, s4 += dx * dy;
      lox = dx < lox ? dx : lox, hix = dx > hix ? dx : hix, loy = dy < loy ? dy : loy, hiy = dy > hiy ? dy : hiy;
      const double dc = std::abs(gx[v] * ixi * ixj[v] - gy[v] * iyi * iyj[v]);
      gap = dc > gap ? dc : gap;
      if constexpr (kRanks) {
        rp += rank_x[bin_of<int32_t>(dx, lo_x, scale_x, bins_x)] * rank_y[bin_of<int32_t>(dy, lo_y, scale_y, bins_y)];
      }
    }
    if constexpr (kRbf) {
      const KernelSums k = kernel_row(gx + v0, gy + v0, nxj + v0, nyj + v0, nxi, nyi, gamma_x, gamma_y, t.c - v0,
                                      colx + v0, coly + v0);
      k0 = k.kxky, k1 = k.kxkx, k2 = k.kyky, rowx = k.row_x, rowy = k.row_y;
    }
    a[0] += s0, a[1] += s1, a[2] += s2, a[3] += s3, a[4] += s4;
    a[5] = std::min(a[5], lox), a[6] = std::max(a[6], hix), a[7] = std::min(a[7], loy), a[8] = std::max(a[8], hiy);
    a[9] = std::max(a[9], gap);
    a[10] += k0, a[11] += k1, a[12] += k2, a[13] += rp;
    rkx[i] += rowx, rky[i] += rowy;
  }
}

// Moments over i < j (layout in ../schemas.cpp): scalars Σdx, Σdx², Σdy, Σdy², Σdx·dy, min dx, max dx, min dy,
// max dy, max|cos_x − cos_y|, ΣKxKy, ΣKx², ΣKy², Σ rank_x[bin(dx)]·rank_y[bin(dy)]; kernel row sums Σ_{j≠i} K_ij.
std::tuple<at::Tensor, at::Tensor, at::Tensor> pairwise_moments_cpu(
    const at::Tensor& x_in, const at::Tensor& y_in, int64_t rdm, double gamma_x, double gamma_y,
    const std::optional<at::Tensor>& rank_x_in, const std::optional<at::Tensor>& rank_y_in, double lo_x, double hi_x,
    double lo_y, double hi_y, int64_t part, int64_t parts) {
  at::NoGradGuard no_grad;
  const Prepared p = prepare(x_in, y_in);
  const Rows X = rows_of(p.nx), Y = rows_of(p.ny);
  const int64_t n = p.x.size(0);
  const int nt = at::get_num_threads();
  const bool rbf = gamma_x > 0.0 && gamma_y > 0.0;
  TORCH_CHECK(rank_x_in.has_value() == rank_y_in.has_value(), "pairwise_moments: pass both rank tables or neither");
  const bool ranks = rank_x_in.has_value();
  at::Tensor rank_x, rank_y;
  MomentsArgs m{gamma_x, gamma_y, nullptr, nullptr, lo_x, 1.0, lo_y, 1.0, 1, 1};
  if (ranks) {
    rank_x = rank_x_in->to(at::kDouble).contiguous(), rank_y = rank_y_in->to(at::kDouble).contiguous();
    m.bins_x = rank_x.numel(), m.bins_y = rank_y.numel();
    TORCH_CHECK(m.bins_x >= 1 && m.bins_y >= 1 && m.bins_x < (int64_t{1} << 31) && m.bins_y < (int64_t{1} << 31),
                "pairwise_moments: rank tables need 1 to 2^31 - 1 entries");
    m.rank_x = rank_x.data_ptr<double>(), m.rank_y = rank_y.data_ptr<double>();
    m.scale_x = bins_per_unit(lo_x, hi_x, m.bins_x), m.scale_y = bins_per_unit(lo_y, hi_y, m.bins_y);
  }
  std::vector<double> acc(static_cast<size_t>(nt) * kScalars, 0.0);
  for (int t = 0; t < nt; ++t) {
    double* a = acc.data() + t * kScalars;
    a[5] = a[7] = kInf, a[6] = a[8] = -kInf;
  }
  std::vector<double> rows(static_cast<size_t>(nt) * 2 * n, 0.0);
  auto run = [&](auto tile) {
    for_each_tile(p.x, p.y, part, parts, [&](const Tile& t, int thread) {
      double* rk = rows.data() + static_cast<size_t>(thread) * 2 * n;
      tile(t, X, Y, m, acc.data() + thread * kScalars, rk, rk + n);
    });
  };
  // the 8 instantiations: RDM × RBF × ranks
  const int which = (rdm == kEuclidean ? 4 : 0) + (rbf ? 2 : 0) + (ranks ? 1 : 0);
  switch (which) {
    case 0: run(moments_tile<kCosine, false, false>); break;
    case 1: run(moments_tile<kCosine, false, true>); break;
    case 2: run(moments_tile<kCosine, true, false>); break;
    case 3: run(moments_tile<kCosine, true, true>); break;
    case 4: run(moments_tile<kEuclidean, false, false>); break;
    case 5: run(moments_tile<kEuclidean, false, true>); break;
    case 6: run(moments_tile<kEuclidean, true, false>); break;
    default: run(moments_tile<kEuclidean, true, true>); break;
  }
  at::Tensor scalars = at::zeros({kScalars}, at::kDouble);
  double* s = scalars.data_ptr<double>();
  s[5] = s[7] = kInf, s[6] = s[8] = -kInf;
  for (int t = 0; t < nt; ++t) {
    const double* a = acc.data() + t * kScalars;
    for (int k : {0, 1, 2, 3, 4, 10, 11, 12, 13}) s[k] += a[k];
    s[5] = std::min(s[5], a[5]), s[6] = std::max(s[6], a[6]), s[7] = std::min(s[7], a[7]), s[8] = std::max(s[8], a[8]);
    s[9] = std::max(s[9], a[9]);
  }
  if (s[0] != s[0] || s[2] != s[2])  // NaN features: every statistic is NaN (min/max alone would hide it)
    for (int k = 0; k < kScalars; ++k) s[k] = std::numeric_limits<double>::quiet_NaN();
  at::Tensor all = at::from_blob(rows.data(), {nt, 2, n}, at::kDouble).sum(0);
  return {scalars, all[0].clone(), all[1].clone()};
}

// A histogram bin of one thread: its count and the smallest and largest value counted in it.
struct Bin {
  int64_t count = 0;
  double lo = kInf, hi = -kInf;
};

// Counts v in b. The extremes are stored only when they change (rarely, once a bin has a few values): branches
// that predict well instead of three stores per value.
inline void count(Bin& b, double v) {
  ++b.count;
  if (v < b.lo) b.lo = v;
  if (v > b.hi) b.hi = v;
}

struct Binning {
  double lo_x, scale_x, lo_y, scale_y;  // bins_per_unit
  int64_t bins;
};

// One tile of the histogram pass into a thread's bins hx, hy: the values and their bins of a tile row from the
// vector loop, then the counts.
template <int64_t R>
void histogram_tile(const Tile& t, const Rows& X, const Rows& Y, const Binning& h, Bin* hx, Bin* hy) {
  const double *nx = X.n(), *ny = Y.n(), *ix = X.inv(), *iy = Y.inv();
  const double *nxj = nx + t.j0, *nyj = ny + t.j0, *ixj = ix + t.j0, *iyj = iy + t.j0;
  alignas(64) double vx[kTile], vy[kTile];
  alignas(64) int32_t bx[kTile], by[kTile];
  for (int64_t u = 0; u < t.r; ++u) {
    const int64_t i = t.i0 + u, v0 = first_column(t, u);
    const double nxi = nx[i], nyi = ny[i], ixi = ix[i], iyi = iy[i];
    const double* __restrict__ gx = t.gx + u * t.c;
    const double* __restrict__ gy = t.gy + u * t.c;
#pragma omp simd
    for (int64_t v = v0; v < t.c; ++v) {
      const double dx = rdm_of<R>(gx[v], nxi, nxj[v], ixi, ixj[v]);
      const double dy = rdm_of<R>(gy[v], nyi, nyj[v], iyi, iyj[v]);
      vx[v] = dx, vy[v] = dy;
      bx[v] = bin_of<int32_t>(dx, h.lo_x, h.scale_x, h.bins);
      by[v] = bin_of<int32_t>(dy, h.lo_y, h.scale_y, h.bins);
    }
    for (int64_t v = v0; v < t.c; ++v) count(hx[bx[v]], vx[v]), count(hy[by[v]], vy[v]);
  }
}

// Histograms of the RDM values of x and of y over i < j: `bins` equal-width bins over [lo, hi] each, with the
// smallest and largest value seen in every bin (to tell a bin of exact ties from a spread one).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> pairwise_histograms_cpu(
    const at::Tensor& x_in, const at::Tensor& y_in, int64_t rdm, double lo_x, double hi_x, double lo_y, double hi_y,
    int64_t bins, int64_t part, int64_t parts) {
  at::NoGradGuard no_grad;
  TORCH_CHECK(bins >= 1 && bins < (int64_t{1} << 31), "pairwise_histograms: bins must be in [1, 2^31 - 1]");
  const Prepared p = prepare(x_in, y_in);
  const Rows X = rows_of(p.nx), Y = rows_of(p.ny);
  const int nt = at::get_num_threads();
  const Binning h{lo_x, bins_per_unit(lo_x, hi_x, bins), lo_y, bins_per_unit(lo_y, hi_y, bins), bins};
  const size_t per = static_cast<size_t>(bins);
  std::vector<Bin> bx(nt * per), by(nt * per);
  for_each_tile(p.x, p.y, part, parts, [&](const Tile& t, int thread) {
    Bin *hx = bx.data() + thread * per, *hy = by.data() + thread * per;
    if (rdm == kEuclidean)
      histogram_tile<kEuclidean>(t, X, Y, h, hx, hy);
    else
      histogram_tile<kCosine>(t, X, Y, h, hx, hy);
  });
  auto gather = [&](const std::vector<Bin>& all) {
    at::Tensor counts = at::zeros({bins}, at::kLong), range = at::empty({bins, 2}, at::kDouble);
    int64_t* c = counts.data_ptr<int64_t>();
    double* e = range.data_ptr<double>();
    for (size_t b = 0; b < per; ++b) {
      Bin total;
      for (int t = 0; t < nt; ++t) {
        const Bin& one = all[t * per + b];
        total.count += one.count, total.lo = std::min(total.lo, one.lo), total.hi = std::max(total.hi, one.hi);
      }
      c[b] = total.count, e[2 * b] = total.lo, e[2 * b + 1] = total.hi;
    }
    return std::make_pair(counts, range);
  };
  auto [hx, ex] = gather(bx);
  auto [hy, ey] = gather(by);
  return {hx, hy, ex, ey};
}

}  // namespace

TORCH_LIBRARY_IMPL(clnscl, CPU, m) {
  m.impl("pairwise_moments", &pairwise_moments_cpu);
  m.impl("pairwise_histograms", &pairwise_histograms_cpu);
}

}  // namespace clnscl
