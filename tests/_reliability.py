"""Helpers of the reliability tests (resume after SIGKILL, non-finite loss, DDP
failure, bad inputs, determinism).

The data set, tiny backbone and MF weights come from conftest's session
``env``; the configs are written here with every key the tests depend on
spelled out, so they do not change when conftest's own configs do.
"""
import hashlib
import os
from pathlib import Path

from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parent.parent

# Stage 1 (LoRA through the LLM) with a large LoRA dropout, so a resume that
# restored the RNG wrongly would show. 3 epochs x 6 micro-steps, an optimizer
# step every 2, checkpoint_last.pth every 2 micro-steps.
STAGE1_RUN = {"init_lr": 3e-3, "min_lr": 1e-4, "warmup_lr": 1e-4, "warmup_steps": 2, "max_epoch": 3,
              "iters_per_epoch": 6, "batch_size_train": 8, "batch_size_eval": 64, "accum_grad_iters": 2,
              "save_every_n_steps": 2, "patience": 5, "log_freq": 3, "device": "cpu", "seed": 7}
TOTAL_STEPS = STAGE1_RUN["max_epoch"] * STAGE1_RUN["iters_per_epoch"]


def stage1_dict(env, output_dir, **run_keys) -> dict:
    """A stage-1 config as a dict (output to ``output_dir``)."""
    return {
        "model": {"arch": "collm", "llama_model": str(env.backbone_dir), "max_txt_len": 128,
                  "prompt_path": str(REPO / "prompt" / "stage1_movie.txt"),
                  "freeze_lora": False, "freeze_proj": True, "freeze_rec": True,
                  "lora_config": {"use_lora": True, "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"],
                                  "dropout": 0.3}},
        "datasets": {"ml100k_ood": {"path": str(env.data_dir), "max_his": 5}},
        "run": {"output_dir": str(output_dir), **STAGE1_RUN, **run_keys},
    }


def stage2_dict(env, output_dir, **run_keys) -> dict:
    """Stage 2: the projector on the ID-slot prompt, fed by conftest's MF weights; LoRA frozen."""
    cfg = stage1_dict(env, output_dir, **run_keys)
    cfg["model"].update({"prompt_path": str(REPO / "prompt" / "stage2_movie.txt"), "freeze_lora": True,
                         "freeze_proj": False, "rec_model": "MF", "proj_token_num": 2, "proj_mid_times": 2,
                         "rec_config": {"embedding_size": 16, "pretrained_path": str(env.mf_weights)}})
    return cfg


def write_config(cfg: dict, path) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(cfg), path)
    return str(path)


def stage1_config(env, output_dir, path=None, **run_keys) -> str:
    """Write a stage-1 config (output to ``output_dir``); return its path."""
    path = path or Path(output_dir).parent / f"{Path(output_dir).name}.yaml"
    return write_config(stage1_dict(env, output_dir, **run_keys), path)


def subprocess_env(**extra) -> dict:
    """Environment of a child run: one thread (the in-process runs use one too,
    so both compute the same floating-point sums), no tokenizer threads."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.pop("COLLM_FAISSRET_TEST_KILL_AT_STEP", None)
    env.pop("COLLM_FAISSRET_TEST_KILL_RANK", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def error_line(stderr: str) -> str:
    """The single ``error: ...`` line of a refused run's stderr (asserting there is exactly one,
    that it is the last line, and that no traceback was printed)."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    assert lines[-1] == errors[0], stderr
    return errors[0]


def snapshot(directory) -> dict:
    """{relative path: sha256} of every file under ``directory``."""
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, directory)] = hashlib.sha256(fh.read()).hexdigest()
    return out
