"""Import-compatible front ends for code written against other contrastive-loss libraries: the peer's class
names, constructor arguments and defaults, call signature and return convention, on clnscl's fused ops. What
a shim cannot honour raises, naming the argument. One module per peer: `clnscl.compat.supcon` (SupContrast),
`clnscl.compat.lightly`, `clnscl.compat.pml` (pytorch-metric-learning), `clnscl.compat.open_clip` (its ClipLoss)
and `clnscl.compat.nscl_authors` (the NSCL authors' classes)."""
