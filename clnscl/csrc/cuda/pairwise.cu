// CUDA kernels of the pairwise engine (schemas and math in ../schemas.cpp; CPU twin in ../cpu/pairwise.cpp).
//
// One block per tile pair (I ≤ J) of kSide × kSide pairs. The block builds the Gram blocks x_I·x_Jᵀ and
// y_I·y_Jᵀ from kDepth-wide slices in shared memory (float64 throughout), then each thread takes the pairs
// i < j of its entries. Sums are reduced within the block and written as one partial per block (summed by
// torch afterwards: deterministic); kernel row sums are added up per tile in shared memory, then go to global
// memory with one atomic per row.
//
// Histograms, one launch per side (only that side's Gram is needed): persistent blocks loop over the tile
// pairs and count into a block-private histogram in shared memory — 16-bit counters, two per 32-bit word, so
// that 2^16 bins take 128 KiB — flushed into the global 64-bit counts before any counter can overflow (at
// most 65,535 pairs between flushes) and at the end. More bins than fit, a device without that much shared
// memory, or CLNSCL_PAIRWISE_GLOBAL_HISTOGRAMS=1 count with global atomics instead. The per-bin extremes stay
// in global memory (a plain load first; compare-and-swap only when a value extends the bin's range).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../pairwise.h"

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <optional>

namespace clnscl {
namespace {

constexpr int kSide = 32, kDepth = 32, kThreads = 256, kPerThread = kSide * kSide / kThreads;
constexpr int kScalars = 14;

// Index of the first tile pair of row i when the pairs I ≤ J of nb tiles are enumerated row by row.
__device__ inline int64_t row_start(int64_t i, int64_t nb) { return i * (2 * nb - i + 1) / 2; }

// The tile pair number p (0 ≤ p < nb(nb+1)/2): row i from the quadratic's root, corrected for rounding.
__device__ inline void tile_of(int64_t p, int64_t nb, int64_t& ti, int64_t& tj) {
  const double b = 2.0 * static_cast<double>(nb) + 1.0;
  int64_t i = static_cast<int64_t>((b - sqrt(b * b - 8.0 * static_cast<double>(p))) / 2.0);
  while (i > 0 && row_start(i, nb) > p) --i;
  while (row_start(i + 1, nb) <= p) ++i;
  ti = i, tj = i + (p - row_start(i, nb));
}

// g[u][v] = ⟨a_{i0+u}, a_{j0+v}⟩ (0 outside the matrix), all threads of the block taking part.
__device__ void gram_block(const double* __restrict__ a, int64_t n, int64_t d, int64_t i0, int64_t j0,
                           double (*As)[kDepth + 1], double (*Bs)[kDepth + 1], double (*g)[kSide + 1]) {
  const int t = threadIdx.x;
  double acc[kPerThread] = {};
  for (int64_t k0 = 0; k0 < d; k0 += kDepth) {
    for (int e = t; e < kSide * kDepth; e += kThreads) {
      const int r = e / kDepth, k = e % kDepth;
      As[r][k] = (i0 + r < n && k0 + k < d) ? a[(i0 + r) * d + k0 + k] : 0.0;
      Bs[r][k] = (j0 + r < n && k0 + k < d) ? a[(j0 + r) * d + k0 + k] : 0.0;
    }
    __syncthreads();
    for (int w = 0; w < kPerThread; ++w) {
      const int e = t + w * kThreads, u = e / kSide, v = e % kSide;
#pragma unroll 8
      for (int k = 0; k < kDepth; ++k) acc[w] += As[u][k] * Bs[v][k];
    }
    __syncthreads();
  }
  for (int w = 0; w < kPerThread; ++w) {
    const int e = t + w * kThreads;
    g[e / kSide][e % kSide] = acc[w];
  }
  __syncthreads();
}

__device__ void atomic_min_double(double* addr, double v) {
  auto* p = reinterpret_cast<unsigned long long*>(addr);
  unsigned long long old = *p;
  while (v < __longlong_as_double(old)) {
    const unsigned long long prev = atomicCAS(p, old, __double_as_longlong(v));
    if (prev == old) break;
    old = prev;
  }
}

__device__ void atomic_max_double(double* addr, double v) {
  auto* p = reinterpret_cast<unsigned long long*>(addr);
  unsigned long long old = *p;
  while (v > __longlong_as_double(old)) {
    const unsigned long long prev = atomicCAS(p, old, __double_as_longlong(v));
    if (prev == old) break;
    old = prev;
  }
}

struct Pair {
  int64_t i, j;
  double gx, gy;
};

// Visits this thread's pairs i < j of the block's tile: fn(Pair).
template <typename Fn>
__device__ void for_each_pair(int64_t n, int64_t i0, int64_t j0, double (*gx)[kSide + 1], double (*gy)[kSide + 1],
                              Fn fn) {
  for (int w = 0; w < kPerThread; ++w) {
    const int e = threadIdx.x + w * kThreads, u = e / kSide, v = e % kSide;
    const int64_t i = i0 + u, j = j0 + v;
    if (i < n && j < n && i < j) fn(Pair{i, j, gx[u][v], gy[u][v]});
  }
}

#define CLNSCL_PAIRWISE_SHARED                                                             \
  __shared__ double As[kSide][kDepth + 1], Bs[kSide][kDepth + 1];                          \
  __shared__ double Gx[kSide][kSide + 1], Gy[kSide][kSide + 1];                            \
  int64_t ti, tj;                                                                           \
  tile_of(first + blockIdx.x, (n + kSide - 1) / kSide, ti, tj);                             \
  const int64_t i0 = ti * kSide, j0 = tj * kSide;                                           \
  gram_block(x, n, p, i0, j0, As, Bs, Gx);                                                  \
  gram_block(y, n, q, i0, j0, As, Bs, Gy);

__global__ void moments_kernel(const double* __restrict__ x, const double* __restrict__ y, int64_t n, int64_t p,
                               int64_t q, const double* __restrict__ nx, const double* __restrict__ ny, int64_t rdm,
                               double gamma_x, double gamma_y, const double* __restrict__ rank_x,
                               const double* __restrict__ rank_y, double lo_x, double sx, int64_t bins_x, double lo_y,
                               double sy, int64_t bins_y, int64_t first, double* __restrict__ partial,
                               double* __restrict__ rkx, double* __restrict__ rky) {
  CLNSCL_PAIRWISE_SHARED
  const bool rbf = gamma_x > 0.0 && gamma_y > 0.0;
  // kernel sums of this tile's rows (i) and columns (j), for K_x and K_y: added up in shared memory, then one
  // global atomic per row and column instead of four per pair
  __shared__ double rows_x[kSide], cols_x[kSide], rows_y[kSide], cols_y[kSide];
  for (int e = threadIdx.x; e < kSide; e += kThreads) rows_x[e] = cols_x[e] = rows_y[e] = cols_y[e] = 0.0;
  __syncthreads();
  double a[kScalars] = {0, 0, 0, 0, 0, INFINITY, -INFINITY, INFINITY, -INFINITY, 0, 0, 0, 0, 0};
  for_each_pair(n, i0, j0, Gx, Gy, [&](const Pair& pr) {
    const double dx = rdm_value(rdm, pr.gx, nx[pr.i], nx[pr.j]), dy = rdm_value(rdm, pr.gy, ny[pr.i], ny[pr.j]);
    a[0] += dx, a[1] += dx * dx, a[2] += dy, a[3] += dy * dy, a[4] += dx * dy;
    a[5] = fmin(a[5], dx), a[6] = fmax(a[6], dx), a[7] = fmin(a[7], dy), a[8] = fmax(a[8], dy);
    a[9] = fmax(a[9], fabs(cosine(pr.gx, nx[pr.i], nx[pr.j]) - cosine(pr.gy, ny[pr.i], ny[pr.j])));
    if (rbf) {
      const double kx = exp(-gamma_x * squared_distance(pr.gx, nx[pr.i], nx[pr.j]));
      const double ky = exp(-gamma_y * squared_distance(pr.gy, ny[pr.i], ny[pr.j]));
      a[10] += kx * ky, a[11] += kx * kx, a[12] += ky * ky;
      atomicAdd(rows_x + (pr.i - i0), kx), atomicAdd(cols_x + (pr.j - j0), kx);
      atomicAdd(rows_y + (pr.i - i0), ky), atomicAdd(cols_y + (pr.j - j0), ky);
    }
    if (rank_x != nullptr) a[13] += rank_x[bin_of(dx, lo_x, sx, bins_x)] * rank_y[bin_of(dy, lo_y, sy, bins_y)];
  });
  // block reduction through shared memory (Gx is free again after the pairs were read)
  __syncthreads();
  if (rbf) {
    for (int e = threadIdx.x; e < kSide; e += kThreads) {
      if (i0 + e < n) atomicAdd(rkx + i0 + e, rows_x[e]), atomicAdd(rky + i0 + e, rows_y[e]);
      if (j0 + e < n) atomicAdd(rkx + j0 + e, cols_x[e]), atomicAdd(rky + j0 + e, cols_y[e]);
    }
  }
  double* red = &As[0][0];  // kSide·(kDepth+1) ≥ kThreads doubles
  for (int k = 0; k < kScalars; ++k) {
    red[threadIdx.x] = a[k];
    __syncthreads();
    for (int s = kThreads / 2; s > 0; s >>= 1) {
      if (threadIdx.x < s) {
        const double o = red[threadIdx.x + s];
        double& m = red[threadIdx.x];
        m = (k == 5 || k == 7) ? fmin(m, o) : (k == 6 || k == 8 || k == 9) ? fmax(m, o) : m + o;
      }
      __syncthreads();
    }
    if (threadIdx.x == 0) partial[blockIdx.x * kScalars + k] = red[0];
    __syncthreads();
  }
}

constexpr int64_t kSharedBins = int64_t{1} << 16;
constexpr int kFlushAfter = 65535 - kSide * kSide;  // pairs counted since the last flush, at most

// Adds a block's shared 16-bit counters (two per word) to the global counts and zeroes them.
__device__ void flush_counts(unsigned int* hist, int64_t words, unsigned long long* __restrict__ counts,
                             int64_t bins) {
  __syncthreads();
  for (int64_t w = threadIdx.x; w < words; w += kThreads) {
    const unsigned int v = hist[w];
    if (v == 0u) continue;
    hist[w] = 0u;
    if (v & 0xFFFFu) atomicAdd(counts + 2 * w, static_cast<unsigned long long>(v & 0xFFFFu));
    if ((v >> 16) && 2 * w + 1 < bins) atomicAdd(counts + 2 * w + 1, static_cast<unsigned long long>(v >> 16));
  }
  __syncthreads();
}

// The histogram of one side's RDM values over all pairs i < j (see the header). kShared: counts in shared
// memory (dynamic, (bins + 1) / 2 words), else global atomics.
template <bool kShared>
__global__ void side_histogram_kernel(const double* __restrict__ a, int64_t n, int64_t d,
                                      const double* __restrict__ na, int64_t rdm, double lo, double scale,
                                      int64_t bins, int64_t first, int64_t last,
                                      unsigned long long* __restrict__ counts, double* __restrict__ ext) {
  __shared__ double As[kSide][kDepth + 1], Bs[kSide][kDepth + 1], G[kSide][kSide + 1];
  extern __shared__ unsigned int hist[];
  const int64_t words = (bins + 1) / 2, nb = (n + kSide - 1) / kSide;
  if (kShared) {
    for (int64_t w = threadIdx.x; w < words; w += kThreads) hist[w] = 0u;
  }
  int since_flush = 0;  // the same in every thread of the block
  for (int64_t tile = first + blockIdx.x; tile < last; tile += gridDim.x) {
    int64_t ti, tj;
    tile_of(tile, nb, ti, tj);
    const int64_t i0 = ti * kSide, j0 = tj * kSide;
    if (kShared && since_flush > kFlushAfter) {
      flush_counts(hist, words, counts, bins);
      since_flush = 0;
    }
    gram_block(a, n, d, i0, j0, As, Bs, G);  // its syncs also end the reads of the previous tile's G
    for (int w = 0; w < kPerThread; ++w) {
      const int e = threadIdx.x + w * kThreads, u = e / kSide, v = e % kSide;
      const int64_t i = i0 + u, j = j0 + v;
      if (!(i < n && j < n && i < j)) continue;
      const double dv = rdm_value(rdm, G[u][v], na[i], na[j]);
      const int64_t b = bin_of(dv, lo, scale, bins);
      if (kShared) {
        atomicAdd(hist + (b >> 1), 1u << (16 * (b & 1)));
      } else {
        atomicAdd(counts + b, 1ULL);
      }
      atomic_min_double(ext + 2 * b, dv), atomic_max_double(ext + 2 * b + 1, dv);
    }
    since_flush += kSide * kSide;
  }
  if (kShared) flush_counts(hist, words, counts, bins);
}

// The inputs (../pairwise.h) and the grid of this file's kernels: one block per tile pair I ≤ J.
// A part of a pass (../pairwise.h's part_range) is the run of tile pairs [first, first + blocks).
struct Grid : Prepared {
  int64_t n, p, q, first, blocks;
};

Grid prepare_grid(const at::Tensor& x, const at::Tensor& y, int64_t part, int64_t parts) {
  Grid r;
  static_cast<Prepared&>(r) = prepare(x, y);
  r.n = r.x.size(0), r.p = r.x.size(1), r.q = r.y.size(1);
  const int64_t nb = (r.n + kSide - 1) / kSide;
  const auto [first, last] = part_range(nb * (nb + 1) / 2, part, parts);
  r.first = first, r.blocks = last - first;
  TORCH_CHECK(r.blocks < (int64_t{1} << 31), "pairwise (CUDA): N too large for one grid; pass parts > 1");
  return r;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pairwise_moments_cuda(
    const at::Tensor& x, const at::Tensor& y, int64_t rdm, double gamma_x, double gamma_y,
    const std::optional<at::Tensor>& rank_x, const std::optional<at::Tensor>& rank_y, double lo_x, double hi_x,
    double lo_y, double hi_y, int64_t part, int64_t parts) {
  const c10::cuda::CUDAGuard guard(x.device());
  TORCH_CHECK(rank_x.has_value() == rank_y.has_value(), "pairwise_moments: pass both rank tables or neither");
  const Grid r = prepare_grid(x, y, part, parts);
  const auto opts = r.x.options();
  at::Tensor rx, ry;
  int64_t bins_x = 1, bins_y = 1;
  if (rank_x.has_value()) {
    rx = rank_x->to(opts).contiguous(), ry = rank_y->to(opts).contiguous();
    bins_x = rx.numel(), bins_y = ry.numel();
    TORCH_CHECK(bins_x >= 1 && bins_y >= 1, "pairwise_moments: empty rank tables");
  }
  const double sx = bins_per_unit(lo_x, hi_x, bins_x), sy = bins_per_unit(lo_y, hi_y, bins_y);
  at::Tensor rkx = at::zeros({r.n}, opts), rky = at::zeros({r.n}, opts);
  at::Tensor scalars = at::zeros({kScalars}, opts);
  if (r.blocks == 0 || r.n < 2) {
    scalars.index_put_({at::indexing::Slice(5, 9)}, at::tensor({INFINITY, -INFINITY, INFINITY, -INFINITY}, opts));
    return {scalars, rkx, rky};
  }
  at::Tensor partial = at::empty({r.blocks, kScalars}, opts);
  moments_kernel<<<r.blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      r.x.data_ptr<double>(), r.y.data_ptr<double>(), r.n, r.p, r.q, r.nx.data_ptr<double>(),
      r.ny.data_ptr<double>(), rdm, gamma_x, gamma_y, rx.defined() ? rx.data_ptr<double>() : nullptr,
      ry.defined() ? ry.data_ptr<double>() : nullptr, lo_x, sx, bins_x, lo_y, sy, bins_y, r.first,
      partial.data_ptr<double>(), rkx.data_ptr<double>(), rky.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  using at::indexing::Slice;
  scalars = partial.sum(0);
  scalars.index_put_({Slice(5, 6)}, partial.select(1, 5).amin().reshape({1}));
  scalars.index_put_({Slice(6, 7)}, partial.select(1, 6).amax().reshape({1}));
  scalars.index_put_({Slice(7, 8)}, partial.select(1, 7).amin().reshape({1}));
  scalars.index_put_({Slice(8, 10)}, partial.narrow(1, 8, 2).amax(0));
  if (scalars[0].isnan().item<bool>() || scalars[2].isnan().item<bool>()) scalars.fill_(NAN);
  return {scalars, rkx, rky};
}

// One side's histogram: counts (int64, bins) and per-bin [min, max] (bins × 2) of its RDM values.
void side_histogram(const at::Tensor& a, const at::Tensor& na, int64_t n, int64_t first, int64_t blocks, int64_t rdm,
                    double lo, double scale, int64_t bins, at::Tensor& counts, at::Tensor& ext) {
  if (blocks == 0) return;
  const auto* props = at::cuda::getCurrentDeviceProperties();
  const size_t dynamic = static_cast<size_t>((bins + 1) / 2) * sizeof(unsigned int);
  const size_t fixed = sizeof(double) * kSide * ((kDepth + 1) * 2 + kSide + 1);
  const char* env = std::getenv("CLNSCL_PAIRWISE_GLOBAL_HISTOGRAMS");
  const bool forced_global = env != nullptr && env[0] != '\0' && env[0] != '0';
  const bool shared = !forced_global && bins <= kSharedBins && fixed + dynamic <= props->sharedMemPerBlockOptin;
  auto* cp = reinterpret_cast<unsigned long long*>(counts.data_ptr<int64_t>());
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t d = a.size(1);
  if (shared) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(side_histogram_kernel<true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(dynamic)));
    int per_sm = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, side_histogram_kernel<true>, kThreads,
                                                                 dynamic));
    const int64_t grid = std::min<int64_t>(blocks, std::max(per_sm, 1) * int64_t{props->multiProcessorCount});
    side_histogram_kernel<true><<<grid, kThreads, dynamic, stream>>>(
        a.data_ptr<double>(), n, d, na.data_ptr<double>(), rdm, lo, scale, bins, first, first + blocks, cp,
        ext.data_ptr<double>());
  } else {
    side_histogram_kernel<false><<<blocks, kThreads, 0, stream>>>(
        a.data_ptr<double>(), n, d, na.data_ptr<double>(), rdm, lo, scale, bins, first, first + blocks, cp,
        ext.data_ptr<double>());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> pairwise_histograms_cuda(
    const at::Tensor& x, const at::Tensor& y, int64_t rdm, double lo_x, double hi_x, double lo_y, double hi_y,
    int64_t bins, int64_t part, int64_t parts) {
  TORCH_CHECK(bins >= 1, "pairwise_histograms: bins must be >= 1");
  const c10::cuda::CUDAGuard guard(x.device());
  const Grid r = prepare_grid(x, y, part, parts);
  const auto lopts = r.x.options().dtype(at::kLong);
  at::Tensor cx = at::zeros({bins}, lopts), cy = at::zeros({bins}, lopts);
  at::Tensor ex = at::empty({bins, 2}, r.x.options()), ey = at::empty({bins, 2}, r.x.options());
  ex.select(1, 0).fill_(INFINITY), ex.select(1, 1).fill_(-INFINITY);
  ey.select(1, 0).fill_(INFINITY), ey.select(1, 1).fill_(-INFINITY);
  const double sx = bins_per_unit(lo_x, hi_x, bins), sy = bins_per_unit(lo_y, hi_y, bins);
  side_histogram(r.x, r.nx, r.n, r.first, r.blocks, rdm, lo_x, sx, bins, cx, ex);
  side_histogram(r.y, r.ny, r.n, r.first, r.blocks, rdm, lo_y, sy, bins, cy, ey);
  return {cx, cy, ex, ey};
}

}  // namespace

TORCH_LIBRARY_IMPL(clnscl, CUDA, m) {
  m.impl("pairwise_moments", &pairwise_moments_cuda);
  m.impl("pairwise_histograms", &pairwise_histograms_cuda);
}

}  // namespace clnscl
