"""The demo's --data / --backbone / --out reach every step's config (not only the files it prepares)."""
from argparse import Namespace
from pathlib import Path

from collm_faissret import demo
from collm_faissret.config_loader import load_config

REPO = Path(__file__).resolve().parent.parent


def test_every_demo_step_reads_and_writes_where_it_is_told(tmp_path):
    args = Namespace(data=str(tmp_path / "data"), backbone=str(tmp_path / "backbone"), out=str(tmp_path / "out"))
    seen = {}
    for key, _, cfg_path in demo.STEPS:
        cfg = load_config(str(REPO / cfg_path), demo.step_options(key, args))
        assert next(iter(cfg.datasets.values())).path == args.data, key
        assert cfg.run.output_dir == str(tmp_path / "out" / demo.RUN_DIRS[key]), key
        seen[key] = cfg
    for key in ("stage1", "stage2", "evaluate_only"):
        assert seen[key].model.llama_model == args.backbone, key
    mf_weights = str(tmp_path / "out" / "mf" / "cf_model.pth")
    assert seen["stage2"].model.rec_config.pretrained_path == mf_weights
    assert seen["evaluate_only"].model.rec_config.pretrained_path == mf_weights
    assert seen["stage2"].model.ckpt == str(tmp_path / "out" / "stage1" / "checkpoint_best.pth")
    assert seen["evaluate_only"].model.ckpt == str(tmp_path / "out" / "stage2" / "checkpoint_best.pth")
