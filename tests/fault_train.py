"""``train_collm.py`` with test-only fault injection: make a training process die at a chosen step.

The tests run this script instead of train_collm.py (tests/test_resume.py kills a
run to check that resuming reproduces it; the DDP test kills one rank to check
that the others do not hang). It installs a hook in ``RunnerBase.step_hooks``;
the package itself has no fault injection and no config key reaches it.

  COLLM_FAISSRET_TEST_KILL_AT_STEP=k   SIGKILL this process right after the
                                       backward pass of global micro-step k
                                       (1-based), before its optimizer update
                                       and before any checkpoint of that step
  COLLM_FAISSRET_TEST_KILL_RANK=r      only rank r dies (default: every rank)
  COLLM_FAISSRET_TEST_FAULT=hang       hang there instead of dying (a rank stuck
                                       outside any collective: its peers must
                                       give up after run.dist_timeout_s)

SIGKILL cannot be caught: no ``finally``, atexit handler or checkpoint write
runs, as with an out-of-memory kill or a preempted node.
"""
import os
import signal
import sys
import time
from pathlib import Path

KILL_STEP_VAR = "COLLM_FAISSRET_TEST_KILL_AT_STEP"
KILL_RANK_VAR = "COLLM_FAISSRET_TEST_KILL_RANK"
FAULT_VAR = "COLLM_FAISSRET_TEST_FAULT"


def kill_step(rank: int):
    """The micro-step at which this process must die, or None."""
    step = os.environ.get(KILL_STEP_VAR)
    if not step:
        return None
    only_rank = os.environ.get(KILL_RANK_VAR)
    if only_rank and int(only_rank) != rank:
        return None
    return int(step)


def die(rank: int, step: int) -> None:
    """SIGKILL this process, or with FAULT=hang sleep until something else ends it.

    One line on stderr first: tests time how long the other ranks take from here.
    """
    mode = "hang" if os.environ.get(FAULT_VAR) == "hang" else "kill"
    print(f"fault injection: rank {rank} {mode} at step {step}", file=sys.stderr, flush=True)
    if mode == "hang":
        while True:
            time.sleep(3600)
    os.kill(os.getpid(), signal.SIGKILL)


def fault_hook(runner, step: int) -> None:
    """RunnerBase step hook: die at the chosen step of this rank."""
    from collm_faissret import dist

    at = kill_step(dist.rank())
    if at is not None and step == at:
        die(dist.rank(), at)


def main(argv=None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from collm_faissret.entry import train_main
    from collm_faissret.runners.runner_base import RunnerBase

    RunnerBase.step_hooks = (fault_hook,)
    return train_main(argv)


if __name__ == "__main__":
    sys.exit(main())
