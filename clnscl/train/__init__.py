"""The coupled trainer: a CL model trained together with its supervised counterparts (NSCL, SupCon, CE) under
shared randomness — same initial weights, same batches, same augmented views — recording how aligned their
representations stay and how far their weights drift (docs/design.md, "The coupled trainer").

config (the run's settings, on the generic engine of overrides), datasets, splits, augment, samplers, models,
optim, global_bn; loop (CoupledTrainer), checkpoint and records (the run directory's files), run (one run
from config to run directory), report, align and sweep (the commands behind `clnscl report|align|sweep`).
"""
