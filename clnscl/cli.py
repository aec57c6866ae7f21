"""Command line: `clnscl train` (the coupled trainer), `clnscl report DIR`, `clnscl align A B`, `clnscl sweep`,
`clnscl info`.

`clnscl train` with no arguments trains a CL model and its supervised counterparts (NSCL, SupCon, CE) on the
handwritten digits that ship inside scikit-learn (no download), under shared randomness, and records their
alignment, weight divergence and loss gap in RUN_DIR/metrics.jsonl (and .csv), then writes the report:
PNG figures and a summary table that says whether the paper's qualitative findings hold in the run.
"""
from __future__ import annotations

import argparse
import os
import sys


def _init_distributed() -> None:
    """Under torchrun (WORLD_SIZE > 1): join the process group (NCCL on GPUs, else gloo). After an elastic
    restart the workers meet in keys of their own attempt: the store outlives the workers of the attempt before,
    whose addresses would otherwise be read as those of the new ones."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    import torch
    import torch.distributed as dist

    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if attempt == "0":
        dist.init_process_group(backend)
        return
    store, rank, world = next(dist.rendezvous("env://"))
    dist.init_process_group(backend, store=dist.PrefixStore(f"clnscl/attempt_{attempt}", store), rank=rank,
                            world_size=world)


def _finish_distributed(code: int) -> int:
    """End a torchrun process cleanly: barrier, destroy the group, then leave without the interpreter's
    teardown (a gloo worker can abort there)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _distributed(command, *args) -> int:
    """Run a command that may be started by torchrun: every process joins the group, runs it, and ends cleanly."""
    _init_distributed()
    return _finish_distributed(command(*args))


def _train(args) -> int:
    """0 when the run ends; 2 for a bad config, data or checkpoint; 3 when a loss or gradient is not finite;
    75 (clnscl.train.PREEMPTED_EXIT_CODE) after SIGTERM / SIGUSR1, its checkpoint written (rerun with --resume)."""
    from .train import NonFiniteError, Preempted
    from .train.config import load_config
    from .train.run import train

    try:
        cfg = load_config(args.config, args.set)
        train(cfg, args.out or cfg.out, resume=args.resume, overwrite=args.overwrite)
    except (ValueError, FileNotFoundError, ImportError) as exc:  # bad config, data or checkpoint
        print(f"clnscl train: {exc}", file=sys.stderr)
        return 2
    except NonFiniteError as exc:
        print(f"clnscl train: {exc}", file=sys.stderr)
        return 3
    except Preempted as exc:
        return exc.code
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "sweep":  # subcommands with their own parsers
        from .train.sweep import main as sweep_main

        return _distributed(sweep_main, argv[1:])
    if argv and argv[0] == "align":
        from .train.align import main as align_main

        return align_main(argv[1:])
    parser = argparse.ArgumentParser(prog="clnscl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    from .train.config import describe
    from .train.run import add_run_dir_flags

    tr = sub.add_parser(
        "train", help="train CL and its supervised counterparts under shared randomness",
        description=__doc__.split("\n\n")[1], epilog="configuration keys (--set KEY=VALUE):\n" + describe(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tr.add_argument("--config", metavar="FILE.yaml", help="YAML file of configuration keys")
    tr.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                    help="override one key (repeatable; dotted keys for nested ones)")
    tr.add_argument("--out", metavar="DIR", help="run directory (default: the config's `out`)")
    add_run_dir_flags(tr)
    rep = sub.add_parser("report", help="figures (PNG) and a summary table of a run directory")
    rep.add_argument("run_dir", metavar="DIR", help="a run directory written by `clnscl train`")
    sub.add_parser("sweep", help="repeat the coupled run over temperature, classes or batch size (see --help)")
    sub.add_parser("align", help="alignment between models of two runs, or of one run (see --help)")
    sub.add_parser("info", help="versions and available backends")
    args = parser.parse_args(argv)
    if args.command == "info":
        from .info import report

        print(report())
        return 0
    if args.command == "report":
        from .train.report_sweep import main as report_main

        return report_main([args.run_dir])
    return _distributed(_train, args)


if __name__ == "__main__":
    sys.exit(main())
