"""The README's multi-node recipe on one machine: two node ranks of one process each, started
separately (as on two machines) with --nnodes 2 --node-rank {0,1} --master-addr 127.0.0.1."""
import json
import os
import subprocess

from conftest import REPO, cli_args
from test_distributed import _free_port, _torchrun


def test_two_node_ranks_on_the_loopback_address(env, tmp_path):
    out = tmp_path / "run"
    cfg = env.config("stage2", out)
    port = str(_free_port())
    environ = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false")
    procs = []
    for rank in (0, 1):
        cmd = ["timeout", "300", *_torchrun(), "--nnodes", "2", "--node-rank", str(rank), "--nproc-per-node", "1",
               "--master-addr", "127.0.0.1", "--master-port", port, str(REPO / "train_collm.py"),
               *cli_args(cfg, "run.iters_per_epoch=2")]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outputs = [p.communicate(timeout=330)[0] for p in procs]
    # the rendezvous waits for both node ranks: a rank that did not join would leave the other
    # waiting until `timeout` ends it with a non-zero status
    for rank, (p, text) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"node rank {rank}: exit {p.returncode}\n{text[-3000:]}"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["n_rows"] == len(env.frames["test"])  # every row scored once across the two nodes
