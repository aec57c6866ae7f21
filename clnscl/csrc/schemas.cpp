// Op schemas of the clnscl library. Kernels live in cpu/ (C++/OpenMP) and cuda/ (CUDA).
//
// Loss primitive:
//
// masked_lse: lse_a = log Σ_{b ∈ D(a)} exp(scale · ⟨q_a, k_b⟩) for every row a of q, never forming q·kᵀ.
// The columns are k, or q itself when k is None. D(a) excludes b = a (column a + row_offset) and keeps the
// relations named by the bits of `include`: 1 = same instance, 2 = same class other instance,
// 4 = other class (instance and class ids per row and column). Rows with empty D(a) get -inf.
// `unit_rows` promises ‖q_a‖ ≤ 1, ‖k_b‖ ≤ 1 (normalised rows), which allows a fixed shift. `scale` is a
// one-element floating tensor (so that a learnable temperature reaches the op under torch.compile), finite
// and > 0, read once per call; its gradient is the autograd's (loss/ops.py), from dq.
#include <torch/library.h>

TORCH_LIBRARY(clnscl, m) {
  m.def(
      "masked_lse(Tensor q, Tensor? k, Tensor row_inst, Tensor row_cls, Tensor? col_inst, "
      "Tensor? col_cls, int row_offset, Tensor scale, int include, bool unit_rows) -> Tensor");
  // Gradients of Σ_a grad_a · lse_a with respect to q and k (dk is empty when k is None: dq then holds
  // the whole gradient of the shared rows; and when need_dk is false: columns without gradient, such as a
  // memory bank, cost no backward pass of their own).
  m.def(
      "masked_lse_backward(Tensor grad, Tensor lse, Tensor q, Tensor? k, Tensor row_inst, "
      "Tensor row_cls, Tensor? col_inst, Tensor? col_cls, int row_offset, Tensor scale, int include, "
      "bool unit_rows, bool need_dk=True) -> (Tensor, Tensor)");
  // masked_lse_cross: both log-sum-exps of the same tiles of separate rows q (N, d) and columns k (M, d) — the
  // rows' lse_a = log Σ_{b ∈ D(a)} exp(s_ab) and the columns' lse_b = log Σ_{a : b ∈ D(a)} exp(s_ab) (the
  // two directions of a two-tower loss, whose mask is symmetric) — in one pass over q·kᵀ; −inf where empty.
  m.def(
      "masked_lse_cross(Tensor q, Tensor k, Tensor row_inst, Tensor row_cls, Tensor col_inst, Tensor col_cls, "
      "int row_offset, Tensor scale, int include, bool unit_rows) -> (Tensor, Tensor)");
  // Gradients of Σ_a grad_rows_a · lse_a + Σ_b grad_cols_b · lse_b with respect to q and k (dk empty when
  // need_dk is false).
  m.def(
      "masked_lse_cross_backward(Tensor grad_rows, Tensor grad_cols, Tensor lse_rows, Tensor lse_cols, Tensor q, "
      "Tensor k, Tensor row_inst, Tensor row_cls, Tensor col_inst, Tensor col_cls, int row_offset, Tensor scale, "
      "int include, bool unit_rows, bool need_dk=True) -> (Tensor, Tensor)");

  // Pairwise engine: statistics over the pairs i < j of two feature sets x (N, p), y (N, q), rows paired, in
  // O(N + bins) memory. rdm: 0 = cosine (1 − cos), 1 = euclidean (‖x_i − x_j‖); computed in float64. Every pass
  // takes part `part` of `parts` equal runs of its tile pairs (the whole pass by default); the parts' results add
  // up to the whole pass's (sums and counts add, minima and maxima combine).
  // moments -> (scalars[14], rowsum_kx[N], rowsum_ky[N]): Σdx, Σdx², Σdy, Σdy², Σdx·dy, min dx, max dx, min dy,
  // max dy, max|cos_x − cos_y|, ΣKxKy, ΣKx², ΣKy² with K = exp(−γ‖·‖²) (skipped when a γ ≤ 0), and
  // Σ rank_x[bin(dx)]·rank_y[bin(dy)] with the bins of histograms over [lo, hi], one per rank entry (skipped
  // without rank tables); and the row sums Σ_{j≠i} K_ij.
  m.def(
      "pairwise_moments(Tensor x, Tensor y, int rdm, float gamma_x, float gamma_y, Tensor? rank_x=None, "
      "Tensor? rank_y=None, float lo_x=0., float hi_x=0., float lo_y=0., float hi_y=0., int part=0, int parts=1) "
      "-> (Tensor, Tensor, Tensor)");
  // histograms -> (counts_x[bins], counts_y[bins], range_x[bins, 2], range_y[bins, 2]): the RDM values in
  // equal-width bins over [lo, hi], with the smallest and largest value of every bin.
  m.def(
      "pairwise_histograms(Tensor x, Tensor y, int rdm, float lo_x, float hi_x, float lo_y, float hi_y, "
      "int bins, int part=0, int parts=1) -> (Tensor, Tensor, Tensor, Tensor)");
}
