"""Coupled trainer: a CL model trained together with its supervised counterparts (NSCL, SupCon, CE) under
shared randomness — same initial weights, same batches, same augmented views — recording how aligned their
representations stay and how far their weights drift (DESIGN.md §1, issue 4).

Submodules: `data` (the embedded digits dataset, seeded splits and class subsets, generator-driven
augmentations, resumable samplers) and `config` (the run configuration, YAML + `--set key=value`).
"""
