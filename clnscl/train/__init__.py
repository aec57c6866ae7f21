"""The coupled trainer: a CL model trained together with its supervised counterparts (NSCL, SupCon, CE) under
shared randomness — same initial weights, same batches, same augmented views — recording how aligned their
representations stay and how far their weights drift (docs/design.md, "The coupled trainer").

The library: `Coupled` (coupled.py: the models, their shared-randomness steps, their evaluation) and `fit`
(fit.py: the loop into a run directory, preemption and non-finite steps; loggers.py, checkpoint.py, records.py).
They know only nn.Modules, optimisers and batches. The command line's batteries: config (OmegaConf structured
configs), datasets, splits, augment, samplers, models, optim, global_bn; loop (CoupledTrainer), run (one run
from config to run directory), report, align and sweep (the commands behind `clnscl report|align|sweep`).
"""
from .coupled import Coupled, NonFiniteError
from .fit import PREEMPTED_EXIT_CODE, Preempted, fit

__all__ = ["Coupled", "fit", "NonFiniteError", "Preempted", "PREEMPTED_EXIT_CODE"]
