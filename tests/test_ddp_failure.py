"""DDP: when one rank dies or hangs, the run ends in bounded time with an error.

Two CPU processes under torchrun (gloo). Rank 1 is made to fail at micro-step
3 by the test-only step hook of tests/fault_train.py, which first prints one
line; the bound is measured from that line, so slow process start-up on a
busy machine does not count against it.

* rank 1 SIGKILLed: torchrun's elastic agent sees a worker exit non-zero and
  SIGTERMs the survivors, then exits non-zero itself.
* rank 1 hung (alive, outside any collective): only the process-group timeout
  run.dist_timeout_s can end rank 0's wait; rank 0 then fails (without a
  second wait in the closing barrier) and the agent stops rank 1.
"""
import datetime
import subprocess
import sys
import threading
import time

import pytest
from _reliability import REPO, stage1_config, subprocess_env

FAULT_STEP = 3
DIST_TIMEOUT_S = 8
HARD_LIMIT_S = 300  # `timeout` around torchrun: a hang fails the test instead of blocking the suite


def run_torchrun(cfg: str, fault: str):
    """Run a 2-process torchrun with rank 1 failing; return (returncode, output, seconds from fault to exit)."""
    cmd = ["timeout", "-k", "15", str(HARD_LIMIT_S), sys.executable, "-m", "torch.distributed.run",
           "--standalone", "--nproc-per-node", "2", "tests/fault_train.py", "--cfg-path", cfg,
           "--options", f"run.dist_timeout_s={DIST_TIMEOUT_S}"]
    env = subprocess_env(COLLM_FAISSRET_TEST_KILL_AT_STEP=FAULT_STEP, COLLM_FAISSRET_TEST_KILL_RANK=1,
                         COLLM_FAISSRET_TEST_FAULT=fault)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, fault_at = [], []

    def read():
        for line in proc.stdout:
            if "fault injection:" in line and not fault_at:
                fault_at.append(time.monotonic())
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    proc.wait()
    ended = time.monotonic()
    reader.join(timeout=10)
    output = "".join(lines)
    assert fault_at, output[-4000:]
    return proc.returncode, output, ended - fault_at[0]


@pytest.fixture(scope="module")
def ddp_cfg(env, tmp_path_factory):
    return lambda name: stage1_config(env, tmp_path_factory.mktemp(name) / "run", max_epoch=1, iters_per_epoch=6)


def test_dead_rank_stops_the_others(ddp_cfg):
    rc, output, after_fault = run_torchrun(ddp_cfg("ddp_kill"), "kill")
    assert rc not in (0, 124, 137), output[-4000:]  # non-zero, and not our `timeout` firing
    assert f"fault injection: rank 1 kill at step {FAULT_STEP}" in output
    assert "exitcode  : -9" in output  # the agent reports rank 1's SIGKILL as the root cause
    assert after_fault < 60, output[-4000:]


def test_hung_rank_times_out_after_dist_timeout(ddp_cfg):
    rc, output, after_fault = run_torchrun(ddp_cfg("ddp_hang"), "hang")
    assert rc not in (0, 124, 137), output[-4000:]
    assert f"fault injection: rank 1 hang at step {FAULT_STEP}" in output
    assert "Timed out" in output or "timeout" in output.lower(), output[-4000:]
    # one timeout (not two: no closing barrier after a failure), plus the agent's shutdown
    assert DIST_TIMEOUT_S - 1 < after_fault < DIST_TIMEOUT_S + 45, output[-4000:]


def test_dist_timeout_reaches_the_process_group(monkeypatch):
    """run.dist_timeout_s is what init_process_group gets (no peers needed to check)."""
    from collm_faissret import dist

    seen = {}
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist.dist, "init_process_group", lambda backend, timeout: seen.update(b=backend, t=timeout))
    dist.init("cpu", 42)
    assert seen == {"b": "gloo", "t": datetime.timedelta(seconds=42)}


def test_cli_passes_dist_timeout(env, tmp_path, monkeypatch):
    from conftest import cli_args

    import train_collm
    from collm_faissret import dist

    seen = []
    original = dist.init
    monkeypatch.setattr(dist, "init", lambda pref, timeout_s: seen.append(timeout_s) or original(pref, timeout_s))
    out = tmp_path / "out"
    out.write_text("a file, so the run stops right after dist.init")
    assert train_collm.main(cli_args(stage1_config(env, out), "run.dist_timeout_s=77")) == 2
    assert seen == [77]
