// CPU kernels of clnscl::masked_lse and its backward (schemas and math in ../schemas.cpp).
//
// Tiles of S = q·kᵀ (kTile × kTile) are made with BLAS into a per-thread buffer and reduced at once, so memory
// stays O(N·d + threads·kTile²). Two schedules:
//  - symmetric (k is None, unit rows, scale ≤ kMaxFixedShift): S is symmetric and |s| ≤ scale, so with the
//    fixed shift m = scale one tile (I, J), I ≤ J, serves the rows of I and of J; half the GEMMs and exps.
//  - general: online (running max) log-sum-exp over the columns, row blocks in parallel; the backward
//    recomputes each tile from the saved lse and accumulates dq = scale·G·k, dk = scale·Gᵀ·q row-parallel.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../masked_lse.h"
#include "tiles.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <utility>
#include <vector>

namespace clnscl {
namespace {

using namespace cpu;

// Per-thread dq buffers of the symmetric backward may use at most this many bytes in all.
constexpr double kMaxThreadBufferBytes = 1 << 30;

template <typename T>
void lse_general(const at::Tensor& q, const at::Tensor& k, Side rs, Side cs, Mask mask, T scale, T* lse) {
  const int64_t nq = q.size(0), nk = k.size(0);
  const int64_t nblocks = (nq + kTile - 1) / kTile;
  at::parallel_for(0, nblocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<T> sbuf(kTile * kTile), terms(kTile);
    T* ev = terms.data();
    std::vector<double> m(kTile), l(kTile);
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t i0 = blk * kTile, r = std::min(kTile, nq - i0);
      std::fill(m.begin(), m.end(), -std::numeric_limits<double>::infinity());
      std::fill(l.begin(), l.end(), 0.0);
      for (int64_t j0 = 0; j0 < nk; j0 += kTile) {
        const int64_t c = std::min(kTile, nk - j0);
        at::Tensor s = scores(sbuf, q, i0, r, k, j0, c);
        const int64_t *ci = cs.inst + j0, *cc = cs.cls + j0;
        const int64_t cg0 = j0 + cs.offset;
        for (int64_t a = 0; a < r; ++a) {
          const int64_t ri = rs.inst[i0 + a], rc = rs.cls[i0 + a], rg = i0 + a + rs.offset;
          const T* srow = sbuf.data() + a * c;
          T mx = -std::numeric_limits<T>::infinity();
          for (int64_t b = 0; b < c; ++b) {
            const T v = mask(ri, rc, rg, ci[b], cc[b], cg0 + b) ? srow[b] * scale
                                                                 : -std::numeric_limits<T>::infinity();
            mx = max_nan(mx, v);
          }
          if (mx == -std::numeric_limits<T>::infinity()) continue;
          const double nm = max_nan(m[a], static_cast<double>(mx));
          const T shift = static_cast<T>(nm);
          masked_exp(srow, c, scale, shift, mask, ri, rc, rg, ci, cc, cg0, ev);
          T sum = 0;
#pragma omp simd reduction(+ : sum)
          for (int64_t b = 0; b < c; ++b) sum += ev[b];
          l[a] = l[a] * std::exp(m[a] - nm) + sum;
          m[a] = nm;
        }
      }
      for (int64_t a = 0; a < r; ++a) {
        lse[i0 + a] = static_cast<T>(l[a] == 0.0 ? -std::numeric_limits<double>::infinity()
                                                 : m[a] + std::log(l[a]));
      }
    }
  });
}

std::vector<std::pair<int64_t, int64_t>> upper_tiles(int64_t n) {
  const int64_t nb = (n + kTile - 1) / kTile;
  std::vector<std::pair<int64_t, int64_t>> pairs;
  pairs.reserve(nb * (nb + 1) / 2);
  for (int64_t i = 0; i < nb; ++i)
    for (int64_t j = i; j < nb; ++j) pairs.emplace_back(i * kTile, j * kTile);
  return pairs;
}

template <typename T>
void lse_symmetric(const at::Tensor& z, SideOf<int32_t> side, Mask mask, T scale, T* lse) {
  const int64_t n = z.size(0);
  const auto pairs = upper_tiles(n);
  const int nt = at::get_num_threads();
  std::vector<double> partial(static_cast<size_t>(nt) * n, 0.0);
  const T shift = scale;
  at::parallel_for(0, static_cast<int64_t>(pairs.size()), 1, [&](int64_t p0, int64_t p1) {
    double* acc = partial.data() + static_cast<size_t>(at::get_thread_num()) * n;
    std::vector<T> sbuf(kTile * kTile), colsum(kTile), terms(kTile);
    for (int64_t p = p0; p < p1; ++p) {
      const auto [i0, j0] = pairs[p];
      const int64_t r = std::min(kTile, n - i0), c = std::min(kTile, n - j0);
      at::Tensor s = scores(sbuf, z, i0, r, z, j0, c);
      std::fill(colsum.begin(), colsum.end(), T(0));
      const int32_t *ci = side.inst + j0, *cc = side.cls + j0;
      T* cs = colsum.data();
      T* ev = terms.data();
      for (int64_t a = 0; a < r; ++a) {
        const int32_t ri = side.inst[i0 + a], rc = side.cls[i0 + a], rg = static_cast<int32_t>(i0 + a);
        const T* srow = sbuf.data() + a * c;
        masked_exp(srow, c, scale, shift, mask, ri, rc, rg, ci, cc, static_cast<int32_t>(j0), ev);
        T rowsum = 0;
#pragma omp simd reduction(+ : rowsum)
        for (int64_t b = 0; b < c; ++b) rowsum += ev[b];
#pragma omp simd
        for (int64_t b = 0; b < c; ++b) cs[b] += ev[b];
        acc[i0 + a] += rowsum;
      }
      if (i0 != j0)
        for (int64_t b = 0; b < c; ++b) acc[j0 + b] += colsum[b];
    }
  });
  at::parallel_for(0, n, 4096, [&](int64_t a0, int64_t a1) {
    for (int64_t a = a0; a < a1; ++a) {
      double sum = 0;
      for (int t = 0; t < nt; ++t) sum += partial[static_cast<size_t>(t) * n + a];
      lse[a] = static_cast<T>(sum == 0.0 ? -std::numeric_limits<double>::infinity()
                                         : static_cast<double>(shift) + std::log(sum));
    }
  });
}

// Symmetric backward with the fixed shift: P_ab = e^{s_ab − m}·(α_a + α_b), α_a = w_a·e^{m − lse_a}; a tile
// (I, J), I < J, adds P·z_J to rows I and Pᵀ·z_I to rows J, in per-thread buffers summed at the end.
template <typename T>
void backward_symmetric(const at::Tensor& z, SideOf<int32_t> side, Mask mask, T scale, const T* alpha,
                        at::Tensor& dz) {
  const int64_t n = z.size(0), d = z.size(1);
  const auto pairs = upper_tiles(n);
  const int nt = at::get_num_threads();
  at::Tensor bufs = at::zeros({nt, n, d}, z.options());
  const T shift = scale;
  at::parallel_for(0, static_cast<int64_t>(pairs.size()), 1, [&](int64_t p0, int64_t p1) {
    at::Tensor mine = bufs.select(0, at::get_thread_num());
    std::vector<T> sbuf(kTile * kTile), terms(kTile);
    T* ev = terms.data();
    for (int64_t p = p0; p < p1; ++p) {
      const auto [i0, j0] = pairs[p];
      const int64_t r = std::min(kTile, n - i0), c = std::min(kTile, n - j0);
      at::Tensor s = scores(sbuf, z, i0, r, z, j0, c);
      const int32_t *ci = side.inst + j0, *cc = side.cls + j0;
      const T* aj = alpha + j0;
      for (int64_t a = 0; a < r; ++a) {
        const int32_t ri = side.inst[i0 + a], rc = side.cls[i0 + a], rg = static_cast<int32_t>(i0 + a);
        const T ai = alpha[i0 + a];
        T* srow = sbuf.data() + a * c;
        masked_exp(srow, c, scale, shift, mask, ri, rc, rg, ci, cc, static_cast<int32_t>(j0), ev);
#pragma omp simd
        for (int64_t b = 0; b < c; ++b) srow[b] = ev[b] * (ai + aj[b]);
      }
      mine.narrow(0, i0, r).addmm_(s, z.narrow(0, j0, c), 1, scale);
      if (i0 != j0) mine.narrow(0, j0, c).addmm_(s.t(), z.narrow(0, i0, r), 1, scale);
    }
  });
  at::sum_out(dz, bufs, {0});
}

void check_dtype(const at::Tensor& q) {
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble,
              "masked_lse (CPU): q must be float32 or float64, got ", q.scalar_type());
}

bool use_symmetric(const Problem& p, bool unit_rows, double scale, bool backward) {
  if (!p.self_similarity || !unit_rows || scale > kMaxFixedShift) return false;
  const double buffer_bytes = static_cast<double>(at::get_num_threads()) * p.q.numel() * p.q.element_size();
  return !backward || buffer_bytes <= kMaxThreadBufferBytes;
}

at::Tensor masked_lse_cpu(const at::Tensor& q, const std::optional<at::Tensor>& k, const at::Tensor& row_inst,
                          const at::Tensor& row_cls, const std::optional<at::Tensor>& col_inst,
                          const std::optional<at::Tensor>& col_cls, int64_t row_offset, const at::Tensor& scale_t,
                          int64_t include, bool unit_rows) {
  at::NoGradGuard no_grad;  // the tile GEMMs write into buffers; autograd is the op's own
  check_dtype(q);
  const Problem p = make_problem(q, k, row_inst, row_cls, col_inst, col_cls, row_offset);
  const double scale = scale_value(scale_t);
  at::Tensor lse = at::empty({p.q.size(0)}, p.q.options());
  const Side rs{p.row_inst.data_ptr<int64_t>(), p.row_cls.data_ptr<int64_t>(), p.row_offset};
  const Side cs{p.col_inst.data_ptr<int64_t>(), p.col_cls.data_ptr<int64_t>(), 0};
  const Mask mask(include);
  AT_DISPATCH_FLOATING_TYPES(p.q.scalar_type(), "masked_lse_cpu", [&] {
    if (use_symmetric(p, unit_rows, scale, false))
      lse_symmetric<scalar_t>(p.q, dense_ids(p.row_inst, p.row_cls).side(), mask, static_cast<scalar_t>(scale),
                              lse.data_ptr<scalar_t>());
    else
      lse_general<scalar_t>(p.q, p.k, rs, cs, mask, static_cast<scalar_t>(scale), lse.data_ptr<scalar_t>());
  });
  return lse;
}

std::tuple<at::Tensor, at::Tensor> masked_lse_backward_cpu(
    const at::Tensor& grad, const at::Tensor& lse, const at::Tensor& q, const std::optional<at::Tensor>& k,
    const at::Tensor& row_inst, const at::Tensor& row_cls, const std::optional<at::Tensor>& col_inst,
    const std::optional<at::Tensor>& col_cls, int64_t row_offset, const at::Tensor& scale_t, int64_t include,
    bool unit_rows, bool need_dk) {
  at::NoGradGuard no_grad;
  check_dtype(q);
  const Problem p = make_problem(q, k, row_inst, row_cls, col_inst, col_cls, row_offset);
  const double scale = scale_value(scale_t);
  TORCH_CHECK(grad.numel() == p.q.size(0) && lse.numel() == p.q.size(0),
              "masked_lse_backward: grad and lse must have one entry per row of q");
  const auto opts = p.q.options();
  const auto [w, lse_safe, empty_row] = backward_weights(grad, lse, opts);
  const Side rs{p.row_inst.data_ptr<int64_t>(), p.row_cls.data_ptr<int64_t>(), p.row_offset};
  const Side cs{p.col_inst.data_ptr<int64_t>(), p.col_cls.data_ptr<int64_t>(), 0};
  const Mask mask(include);
  at::Tensor dq = at::zeros_like(p.q);
  at::Tensor dk = p.self_similarity || !need_dk ? at::empty({0, p.q.size(1)}, opts) : at::zeros_like(p.k);
  AT_DISPATCH_FLOATING_TYPES(p.q.scalar_type(), "masked_lse_backward_cpu", [&] {
    const auto sc = static_cast<scalar_t>(scale);
    const scalar_t* wp = w.data_ptr<scalar_t>();
    const scalar_t* lp = lse_safe.data_ptr<scalar_t>();
    if (use_symmetric(p, unit_rows, scale, true)) {
      // α_a = w_a·e^{m − lse_a}, 0 for empty rows (lse_safe = +inf)
      const at::Tensor alpha = (w * (scale - lse_safe).exp()).masked_fill(empty_row, 0).contiguous();
      backward_symmetric<scalar_t>(p.q, dense_ids(p.row_inst, p.row_cls).side(), mask, sc,
                                   alpha.data_ptr<scalar_t>(), dq);
    } else if (p.self_similarity) {
      accumulate<scalar_t, true, true>(p.q, p.q, rs, rs, mask, sc, wp, lp, wp, lp, dq.data_ptr<scalar_t>());
    } else {
      accumulate<scalar_t, true, false>(p.q, p.k, rs, cs, mask, sc, wp, lp, nullptr, nullptr,
                                        dq.data_ptr<scalar_t>());
      if (need_dk)
        accumulate<scalar_t, false, true>(p.k, p.q, cs, rs, mask, sc, nullptr, nullptr, wp, lp,
                                          dk.data_ptr<scalar_t>());
    }
  });
  return {dq, dk};
}

}  // namespace

TORCH_LIBRARY_IMPL(clnscl, CPU, m) {
  m.impl("masked_lse", &masked_lse_cpu);
  m.impl("masked_lse_backward", &masked_lse_backward_cpu);
}

}  // namespace clnscl
