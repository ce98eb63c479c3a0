"""python -m collm_faissret.env: the machine report and the config checks."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from collm_faissret.env import main
from collm_faissret.retrieval import faiss_gpu_available

REPO = Path(__file__).resolve().parent.parent


def write_config(tmp_path, make_files=True, **run_keys) -> str:
    """A stage-1 config whose backbone, prompt and data exist (as empty stand-ins) when make_files."""
    llama, data = tmp_path / "llama", tmp_path / "data"
    if make_files:
        llama.mkdir()
        (llama / "config.json").write_text("{}")
        data.mkdir()
        for split in ("train", "valid", "test"):
            (data / f"{split}_ood2.pkl").write_bytes(b"")
    prompt = str(REPO / "prompt" / "stage1_movie.txt")
    cfg = {"model": {"arch": "collm", "llama_model": str(llama), "prompt_path": prompt},
           "datasets": {"ml100k_ood": {"path": str(data)}},
           "run": {"output_dir": str(tmp_path / "out"), **run_keys}}
    path = tmp_path / "cfg.yaml"
    OmegaConf.save(OmegaConf.create(cfg), path)
    return str(path)


def test_machine_report(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for name in ("torch:", "transformers:", "peft:", "faiss:", "omegaconf:", "CUDA devices:", "bf16", "defaults here:"):
        assert name in out
    assert f"faiss GPU support: {'yes' if faiss_gpu_available() else 'no'}" in out
    if not torch.cuda.is_available():  # the CPU machines tests run on: no faiss GPU, fp32 on CPU
        assert "CUDA devices: none" in out
        assert "faiss GPU support: no" in out
        assert "defaults here: device cpu, model dtype fp32" in out


def test_config_ok(tmp_path, capsys):
    assert main(["--cfg-path", write_config(tmp_path, device="cpu")]) == 0
    assert capsys.readouterr().out.strip().endswith(": OK")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a CUDA request on a machine without CUDA")
def test_config_needs_what_is_missing(tmp_path, capsys):
    cfg = write_config(tmp_path, make_files=False, device="cuda")
    assert main(["--cfg-path", cfg, "--options", "model.ckpt=/no/such.pth"]) == 1
    missing = [line for line in capsys.readouterr().out.splitlines() if line.startswith("missing: ")]
    assert len(missing) == 4
    for text in ("run.device is cuda but torch sees no CUDA device", "model.llama_model", "model.ckpt /no/such.pth",
                 "datasets.ml100k_ood.path"):
        assert any(text in line for line in missing), text


def test_missing_split_file_named(tmp_path, capsys):
    cfg = write_config(tmp_path, device="cpu")
    (tmp_path / "data" / "valid_ood2.pkl").unlink()
    assert main(["--cfg-path", cfg]) == 1
    assert "no valid_ood2.parquet or valid_ood2.pkl" in capsys.readouterr().out


def test_bad_config_one_line(tmp_path, capsys):
    assert main(["--cfg-path", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: config file not found") and err.count("\n") == 1


def test_env_does_not_import_peft():
    """The report reads package versions from metadata: no seconds-long peft / transformers import."""
    code = ("import sys\nfrom collm_faissret.env import main\nmain([])\n"
            "print(sorted(m for m in ('peft', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("[]")
