"""One rank of the distributed-evaluation test (tests/train/test_ddp.py runs it under torchrun).

    torchrun --standalone --nproc_per_node=2 tests/support/train_eval_worker.py OUT_DIR CONFIG_JSON \
        [STOP_AFTER [resume]]

Joins the gloo group, builds `CoupledTrainer(Config(**json.loads(CONFIG_JSON)), OUT_DIR)`, trains through
`run(stop_after=STOP_AFTER)` (default 3; with `resume`, continuing from OUT_DIR/checkpoint.pt; rank 0 writes
OUT_DIR/metrics.jsonl), then every rank calls `evaluate()` once more and
writes the record to OUT_DIR/eval_rank{R}.json; rank 0 saves OUT_DIR/checkpoint.pt, the state that record
was computed from. The test evaluates that checkpoint in one process and compares. Errors go to
OUT_DIR/error_rank{R}.txt. The process ends with barrier, destroy_process_group and os._exit (a gloo worker
can abort in the interpreter's teardown): exit code 0 on success, 2 on an error.
"""
from __future__ import annotations

import datetime
import json
import os
import sys
import traceback
from pathlib import Path


def main(argv: list[str]) -> None:
    out, config = Path(argv[0]), json.loads(argv[1])
    stop_after = int(argv[2]) if len(argv) > 2 else 3
    resume = argv[3:4] == ["resume"]
    rank = int(os.environ.get("RANK", "0"))
    code = 0
    try:
        import torch
        import torch.distributed as dist

        torch.set_num_threads(1)
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
        from clnscl.train.config import Config
        from clnscl.train.loop import CoupledTrainer

        trainer = CoupledTrainer(Config(**config), out, log=lambda *_: None)
        trainer.run(resume=resume, stop_after=stop_after)
        rec = trainer.evaluate()
        (out / f"eval_rank{rank}.json").write_text(json.dumps({"step": trainer.step, "world": trainer.world,
                                                               "record": rec}))
        if rank == 0:
            trainer.save_checkpoint()
        dist.barrier()
        dist.destroy_process_group()
    except BaseException:  # noqa: BLE001
        out.mkdir(parents=True, exist_ok=True)
        (out / f"error_rank{rank}.txt").write_text(traceback.format_exc())
        traceback.print_exc()
        code = 2
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main(sys.argv[1:])
