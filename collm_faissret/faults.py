"""Test-only fault injection: make a training process die at a chosen step.

Only the tests set these environment variables (tests/test_resume.py kills a
run to check that resuming reproduces it; the DDP test kills one rank to
check that the others do not hang); no config key reaches them.

  COLLM_FAISSRET_TEST_KILL_AT_STEP=k   SIGKILL this process right after the
                                       backward pass of global micro-step k
                                       (1-based), before its optimizer update
                                       and before any checkpoint of that step
  COLLM_FAISSRET_TEST_KILL_RANK=r      only rank r dies (default: every rank)

SIGKILL cannot be caught: no ``finally``, atexit handler or checkpoint write
runs, as with an out-of-memory kill or a preempted node.
"""
import os
import signal

KILL_STEP_VAR = "COLLM_FAISSRET_TEST_KILL_AT_STEP"
KILL_RANK_VAR = "COLLM_FAISSRET_TEST_KILL_RANK"


def kill_step(rank: int):
    """The micro-step at which this process must die, or None (the normal case)."""
    step = os.environ.get(KILL_STEP_VAR)
    if not step:
        return None
    only_rank = os.environ.get(KILL_RANK_VAR)
    if only_rank and int(only_rank) != rank:
        return None
    return int(step)


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
