// Shared by the CPU and CUDA kernels of the pairwise engine (schemas and math in schemas.cpp): the inputs in
// float64 with their squared row norms, and the per-pair values computed from a Gram entry. NaN in the
// features stays NaN in every value (the caller reports NaN), on both devices.
#pragma once

#include <ATen/ATen.h>
#include <c10/macros/Macros.h>

#include <cmath>
#include <utility>

namespace clnscl {

enum Rdm : int64_t { kCosine = 0, kEuclidean = 1 };

struct Prepared {
  at::Tensor x, y, nx, ny;  // float64 rows (contiguous) and squared row norms
};

inline Prepared prepare(const at::Tensor& x, const at::Tensor& y) {
  TORCH_CHECK(x.dim() == 2 && y.dim() == 2 && x.size(0) == y.size(0),
              "pairwise: x and y must be 2-D with the same number of rows");
  Prepared p;
  p.x = x.detach().to(at::kDouble).contiguous();
  p.y = y.detach().to(at::kDouble).contiguous();
  p.nx = p.x.square().sum(1).contiguous();
  p.ny = p.y.square().sum(1).contiguous();
  return p;
}

// ‖a − b‖² = ‖a‖² + ‖b‖² − 2⟨a, b⟩, rounding below 0 clamped to 0 (NaN stays NaN).
C10_HOST_DEVICE inline double squared_distance(double g, double na, double nb) {
  const double s = na + nb - 2.0 * g;
  return s < 0.0 ? 0.0 : s;
}

// cos(a, b); a zero row has cos 0 with everything; NaN stays NaN.
C10_HOST_DEVICE inline double cosine(double g, double na, double nb) {
  const double denom = sqrt(na) * sqrt(nb);
  return denom > 0.0 ? g / denom : (denom == denom ? 0.0 : denom);
}

// RDM value of a pair: 1 − cos or the Euclidean distance.
C10_HOST_DEVICE inline double rdm_value(int64_t rdm, double g, double na, double nb) {
  return rdm == kEuclidean ? sqrt(squared_distance(g, na, nb)) : 1.0 - cosine(g, na, nb);
}

// Bins per unit of value of `bins` equal-width bins over [lo, hi] (1 when the range is empty).
inline double bins_per_unit(double lo, double hi, int64_t bins) { return hi > lo ? bins / (hi - lo) : 1.0; }

// Index of v in the equal-width bins from lo, `scale` = bins_per_unit (clamped; NaN to bin 0, the caller sees NaN
// elsewhere), without branches or a division (the CPU's element loops vectorise; I = int32_t there, bins < 2^31).
template <typename I = int64_t>
C10_HOST_DEVICE inline I bin_of(double v, double lo, double scale, int64_t bins) {
  const double t = (v - lo) * scale, top = static_cast<double>(bins - 1);
  const double above = t > 0.0 ? t : 0.0;
  return static_cast<I>(above < top ? above : top);
}

// The run [first, last) of part `part` of `parts` equal runs of `total` items (the tile pairs of a pass): a pass
// cut into parts, for progress or for ranks, visits every tile pair once over its parts.
inline std::pair<int64_t, int64_t> part_range(int64_t total, int64_t part, int64_t parts) {
  TORCH_CHECK(parts >= 1 && part >= 0 && part < parts, "pairwise: need 0 <= part < parts, got part ", part,
              " of ", parts);
  return {total * part / parts, total * (part + 1) / parts};
}

}  // namespace clnscl
