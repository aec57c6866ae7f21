// Tile helpers of the CPU kernels of clnscl::masked_lse and clnscl::masked_lse_cross: the tile size, the
// fixed-shift bound, the tile GEMM into a per-thread buffer and the backward's
// accumulation (schemas and math in ../schemas.cpp).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "../masked_lse.h"
#include "vmath.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace clnscl {
namespace cpu {

constexpr int64_t kTile = 256;
// exp(s − m) ≥ exp(−2·scale) must stay a normal float: 2·32 = 64 < 87.
constexpr double kMaxFixedShift = 32.0;

// out[b] = [mask(row, column b)] · e^{s[b]·scale − shift} over the c columns from j0 (inst, cls their ids), in
// one loop that vectorises: the row's own values are arguments, nothing in the loop can alias, and with 32-bit
// ids (`dense_ids`) the comparisons are as wide as the floats, which AVX2 needs as much as AVX-512.
template <typename T, typename I>
inline void masked_exp(const T* __restrict__ s, int64_t c, T scale, T shift, Mask mask, I ri, I rc, I rg,
                       const I* __restrict__ inst, const I* __restrict__ cls, I j0, T* __restrict__ out) {
#pragma omp simd
  for (I b = 0; b < static_cast<I>(c); ++b) {
    const T e = exp_fast<T>(s[b] * scale - shift);
    out[b] = mask(ri, rc, rg, inst[b], cls[b], static_cast<I>(j0 + b)) ? e : T(0);
  }
}

// Instance and class ids as dense 32-bit codes (equal ids, equal codes), for masks compared at the floats' width.
struct DenseIds {
  at::Tensor inst, cls;  // int32
  SideOf<int32_t> side() const { return {inst.data_ptr<int32_t>(), cls.data_ptr<int32_t>(), 0}; }
};

inline DenseIds dense_ids(const at::Tensor& inst, const at::Tensor& cls) {
  TORCH_CHECK(inst.numel() < (int64_t{1} << 31), "masked_lse (CPU): at most 2^31 - 1 rows");
  auto code = [](const at::Tensor& t) {
    return std::get<1>(at::_unique2(t, /*sorted=*/true, /*return_inverse=*/true)).to(at::kInt).contiguous();
  };
  return {code(inst), code(cls)};
}

// NaN-propagating maximum: once a NaN enters, it stays.
template <typename T>
inline T max_nan(T a, T b) {
  return (b > a || b != b) ? b : a;
}

// S = a[i0:i0+r] · b[j0:j0+c]ᵀ by BLAS into buf, returned as a contiguous r × c view of it.
template <typename T>
at::Tensor scores(std::vector<T>& buf, const at::Tensor& a, int64_t i0, int64_t r, const at::Tensor& b, int64_t j0,
                  int64_t c) {
  at::Tensor s = at::from_blob(buf.data(), {r, c}, a.options());
  at::mm_out(s, a.narrow(0, i0, r), b.narrow(0, j0, c).t());
  return s;
}

// out[a] += scale · Σ_b P_ab · cols[b] with P_ab = [b ∈ D(a)] · (row term + column term):
// row term w_r[a]·e^{s_ab − lse_r[a]} if kRow, column term w_c[b]·e^{s_ab − lse_c[b]} if kCol.
// Rows whose D(a) is empty must come with weight 0 and lse = +inf, so that their terms vanish.
template <typename T, bool kRow, bool kCol>
void accumulate(const at::Tensor& rows, const at::Tensor& cols, Side rs, Side cs, Mask mask, T scale,
                const T* w_r, const T* lse_r, const T* w_c, const T* lse_c, T* out) {
  const int64_t nr = rows.size(0), nc = cols.size(0), d = rows.size(1);
  const int64_t nblocks = (nr + kTile - 1) / kTile;
  const auto opts = rows.options();
  at::parallel_for(0, nblocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<T> sbuf(kTile * kTile);
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t i0 = blk * kTile, r = std::min(kTile, nr - i0);
      at::Tensor out_i = at::from_blob(out + i0 * d, {r, d}, opts);
      for (int64_t j0 = 0; j0 < nc; j0 += kTile) {
        const int64_t c = std::min(kTile, nc - j0);
        at::Tensor s = scores(sbuf, rows, i0, r, cols, j0, c);
        const int64_t *ci = cs.inst + j0, *cc = cs.cls + j0;
        const int64_t cg0 = j0 + cs.offset;
        for (int64_t a = 0; a < r; ++a) {
          const int64_t ri = rs.inst[i0 + a], rc = rs.cls[i0 + a], rg = i0 + a + rs.offset;
          T* srow = sbuf.data() + a * c;
          const T wa = kRow ? w_r[i0 + a] : T(0), la = kRow ? lse_r[i0 + a] : T(0);
          for (int64_t b = 0; b < c; ++b) {
            const T x = srow[b] * scale;
            T p = 0;
            if (kRow) p += wa * exp_fast<T>(x - la);
            if (kCol) p += w_c[j0 + b] * exp_fast<T>(x - lse_c[j0 + b]);
            srow[b] = mask(ri, rc, rg, ci[b], cc[b], cg0 + b) ? p : T(0);
          }
        }
        out_i.addmm_(s, cols.narrow(0, j0, c), 1, scale);
      }
    }
  });
}

}  // namespace cpu
}  // namespace clnscl
