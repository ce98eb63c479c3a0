"""Bad inputs end a run with one ``error: ...`` line naming the problem, a
non-zero exit, and nothing destroyed in the output directory.

Every case runs against an output directory that already holds an earlier
run's files (a sentinel, checkpoint_best.pth, checkpoint_last.pth and
config.yaml); all of them must be byte-identical afterwards. Most cases call
``train_collm.main`` / ``baseline_train.main`` in-process; a few go through
a real process to check the exit status and the whole stderr.
"""
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
import pandas as pd
import pytest
import torch
from _reliability import REPO, error_line, snapshot, stage1_dict, stage2_dict, subprocess_env, write_config
from conftest import cli_args

import baseline_train
import train_collm
from collm_faissret.checkpoint import save_atomic

SHORT = {"max_epoch": 1, "iters_per_epoch": 2, "save_every_n_steps": 0}


@pytest.fixture(scope="module")
def assets(env, tmp_path_factory):
    """Short real stage-1 and stage-2 runs: their checkpoints seed the output
    directories and serve as checkpoints of another model shape."""
    root = tmp_path_factory.mktemp("bad_inputs")
    s1, s2 = root / "stage1", root / "stage2"
    assert train_collm.main(cli_args(write_config(stage1_dict(env, s1, **SHORT), root / "s1.yaml"))) == 0
    assert train_collm.main(cli_args(write_config(stage2_dict(env, s2, **SHORT), root / "s2.yaml"))) == 0
    return SimpleNamespace(stage1_dir=s1, stage1_ckpt=s1 / "checkpoint_best.pth",
                           stage2_ckpt=s2 / "checkpoint_best.pth")


class Ctx:
    """One case's workspace: a pre-populated output dir and config writers."""

    def __init__(self, env, assets, tmp: Path):
        self.env, self.assets, self.tmp = env, assets, tmp
        self.out = tmp / "out"
        shutil.copytree(assets.stage1_dir, self.out, ignore=shutil.ignore_patterns("adapter", "log.txt"))
        (self.out / "sentinel.txt").write_text("results of an earlier run\n")

    def argv(self, cfg: dict, *options, name="cfg.yaml"):
        return cli_args(write_config(cfg, self.tmp / name), *options)

    def stage1(self, *options, **run):
        return self.argv(stage1_dict(self.env, self.out, **{**SHORT, **run}), *options)

    def stage2(self, *options, **run):
        return self.argv(stage2_dict(self.env, self.out, **{**SHORT, **run}), *options)

    def evaluate2(self, *options):
        """Evaluate-only of a stage-2 model."""
        cfg = stage2_dict(self.env, self.out, **SHORT)
        cfg["model"].update(freeze_proj=True, ckpt=str(self.assets.stage2_ckpt))
        cfg["run"]["evaluate"] = True
        return self.argv(cfg, *options)

    def mf(self, *options):
        cfg = {"model": {"arch": "MF", "rec_config": {"embedding_size": 16}},
               "datasets": {"ml100k_ood": {"path": str(self.env.data_dir)}},
               "run": {"output_dir": str(self.out), "max_epoch": 1, "device": "cpu", "batch_size_train": 64}}
        return self.argv(cfg, *options)

    def data(self, split: str, mutate: Callable):
        """A copy of the data set with ``split`` replaced by mutate(df) (None: file removed)."""
        path = self.tmp / "data"
        path.mkdir()
        for name in ("train", "valid", "test"):
            df = pd.read_pickle(self.env.data_dir / f"{name}_ood2.pkl")
            df = mutate(df.copy()) if name == split else df
            if df is not None:
                df.to_pickle(path / f"{name}_ood2.pkl")
        return f"datasets.ml100k_ood.path={path}"

    def file(self, name: str, content: str) -> Path:
        path = self.tmp / name
        path.write_text(content)
        return path

    def mf_weights_variant(self, **changes) -> Path:
        payload = torch.load(self.env.mf_weights, weights_only=True)
        payload.update(changes)
        path = self.tmp / "cf_model.pth"
        save_atomic(payload, str(path))
        return path

    def backbone_without_tokenizer(self) -> Path:
        path = self.tmp / "llm"
        shutil.copytree(self.env.backbone_dir, path,
                        ignore=shutil.ignore_patterns("tokenizer*", "special_tokens_map.json", "vocab*"))
        return path

    def truncated_copy(self, src: Path) -> Path:
        data = Path(src).read_bytes()
        path = self.tmp / ("damaged_" + Path(src).name)
        path.write_bytes(data[: len(data) // 3])
        return path


def set_cell(col, row, value):
    def mutate(df):
        df[col] = df[col].astype(object)
        df.at[row, col] = value
        return df
    return mutate


@dataclass
class Case:
    name: str
    build: Callable  # Ctx -> argv
    expect: str  # text the error line must contain
    main: Callable = train_collm.main


CASES = [
    # registry names
    Case("unknown_model_arch", lambda c: c.stage1("model.arch=collm_v9"), "unknown model 'collm_v9'"),
    Case("unknown_task", lambda c: c.stage1("run.task=ranking"), "unknown task 'ranking'"),
    Case("unknown_runner", lambda c: c.stage1("run.runner=runner_fast"), "unknown runner 'runner_fast'"),
    Case("unknown_lr_sched", lambda c: c.stage1("run.lr_sched=step_lr"), "unknown lr_scheduler 'step_lr'"),
    Case("unknown_rec_model", lambda c: c.stage2("model.rec_model=NCF"), "unknown cf_model 'NCF'"),
    Case("unknown_baseline_arch", lambda c: c.mf("model.arch=BPR"), "model.arch: unknown model 'BPR'",
         baseline_train.main),
    Case("unknown_dataset_name",
         lambda c: c.argv({**stage1_dict(c.env, c.out, **SHORT),
                           "datasets": {"netflix_ood": {"path": str(c.env.data_dir)}}}),
         "unknown dataset 'netflix_ood'"),
    # config keys, types, syntax, files
    Case("unknown_option_key", lambda c: c.stage1("run.init_lrr=1e-3"), "run.init_lrr"),
    Case("mistyped_yaml_key",
         lambda c: c.argv({**stage1_dict(c.env, c.out, **SHORT),
                           "model": {**stage1_dict(c.env, c.out)["model"], "lora_config": {"rank": 8}}}),
         "model.lora_config.rank"),
    Case("wrong_value_type", lambda c: c.stage1("run.max_epoch=two"), "run.max_epoch"),
    Case("wrong_bool_type", lambda c: c.stage1("model.freeze_lora=maybe"), "model.freeze_lora"),
    Case("bad_options_syntax", lambda c: c.stage1("run.init_lr"), "bad --options entry 'run.init_lr'"),
    Case("missing_config_file", lambda c: cli_args(c.tmp / "no_such.yaml"), "config file not found"),
    Case("yaml_syntax_error", lambda c: cli_args(c.file("broken.yaml", "model: [arch: collm\nrun: {")),
         "cannot parse YAML"),
    Case("two_dataset_entries",
         lambda c: c.argv({**stage1_dict(c.env, c.out, **SHORT),
                           "datasets": {"ml100k_ood": {"path": "a"}, "movielens_ood": {"path": "b"}}}),
         "expected exactly one dataset entry, found 2"),
    Case("zero_batch_size", lambda c: c.stage1("run.batch_size_train=0"), "run.batch_size_train must be >= 1"),
    Case("negative_save_interval", lambda c: c.stage1("run.save_every_n_steps=-1"), "run.save_every_n_steps"),
    Case("unknown_nonfinite_mode", lambda c: c.stage1("run.nonfinite=ignore"),
         "run.nonfinite: Invalid value 'ignore', expected one of [stop, skip]"),
    Case("unknown_device", lambda c: c.stage1("run.device=tpu"), "run.device: Invalid value 'tpu'"),
    Case("unknown_optimizer", lambda c: c.stage1("run.optimizer=sgd"),
         "run.optimizer: Invalid value 'sgd', expected one of [adamw, adam]"),
    Case("unknown_dtype", lambda c: c.stage1("model.dtype=fp64"), "model.dtype: Invalid value 'fp64'"),
    Case("retrieve_rank_training", lambda c: c.stage1("run.task=retrieve_rank"), "retrieve_rank only evaluates"),
    # data
    Case("missing_data_dir", lambda c: c.stage1(f"datasets.ml100k_ood.path={c.tmp / 'nowhere'}"),
         "data directory not found"),
    Case("missing_data_file", lambda c: c.stage1(c.data("test", lambda df: None)), "data file not found"),
    Case("missing_column", lambda c: c.stage1(c.data("train", lambda df: df.drop(columns=["title"]))),
         "missing column(s) title"),
    Case("negative_user_id", lambda c: c.stage1(c.data("valid", set_cell("uid", 3, -1))),
         "row 3: uid -1 is not an id >= 0"),
    Case("non_numeric_item_id", lambda c: c.stage1(c.data("train", set_cell("iid", 0, "abc"))),
         "row 0: iid 'abc' is not an id >= 0"),
    Case("empty_split", lambda c: c.stage1(c.data("test", lambda df: df.iloc[0:0])), "the split is empty"),
    Case("non_binary_label", lambda c: c.stage1(c.data("train", set_cell("label", 5, 2))),
         "row 5: label 2 is not 0 or 1"),
    Case("negative_history_id", lambda c: c.stage1(c.data("train", set_cell("his", 1, [0, 4, -3]))),
         "his holds a negative item id"),
    Case("unknown_eval_split", lambda c: c.stage1("run.valid_splits=[dev]"), "split 'dev' is not in the data"),
    # stage / model shape
    Case("stage2_flags_stage1_prompt", lambda c: c.stage1("model.freeze_proj=false"),
         "model.freeze_proj is false but"),
    Case("nothing_trainable", lambda c: c.stage1("model.freeze_lora=true"), "nothing is trainable"),
    Case("lora_trained_but_disabled", lambda c: c.stage1("model.lora_config.use_lora=false"), "no LoRA to train"),
    Case("frozen_cf_without_weights", lambda c: c.stage2("model.rec_config.pretrained_path=null"),
         "model.rec_config.pretrained_path is not set"),
    Case("ckpt_lora_rank_differs",
         lambda c: c.stage2(f"model.ckpt={c.assets.stage1_ckpt}", "model.lora_config.r=8"), "has shape"),
    Case("ckpt_proj_token_num_differs", lambda c: c.evaluate2("model.proj_token_num=3"), "has shape"),
    Case("stage2_ckpt_into_stage1_model", lambda c: c.stage1(f"model.ckpt={c.assets.stage2_ckpt}"),
         "does not exist in this model"),
    Case("pretrained_for_other_cf_model", lambda c: c.stage2("model.rec_model=LightGCN"),
         "model.rec_model: the config says LightGCN"),
    Case("pretrained_faked_lightgcn_payload",
         lambda c: c.stage2(f"model.rec_config.pretrained_path={c.mf_weights_variant(cf_model='LightGCN')}"),
         "model.rec_model: the config says MF"),
    Case("pretrained_other_n_users",
         lambda c: c.stage2(f"model.rec_config.pretrained_path={c.mf_weights_variant(n_users=99)}"),
         "weights do not fit this MF configuration"),
    Case("pretrained_tables_smaller_than_the_data",
         lambda c: c.stage2(f"model.rec_config.pretrained_path={c.mf_weights_variant(n_users=5)}"),
         "the data's largest user id is 29, beyond the CF model's user table (5 rows"),
    Case("pretrained_other_dim", lambda c: c.stage2("model.rec_config.embedding_size=32"),
         "model.rec_config.embedding_size: the config says 32"),
    Case("pretrained_truncated",
         lambda c: c.stage2(f"model.rec_config.pretrained_path={c.truncated_copy(c.env.mf_weights)}"),
         "is truncated or corrupt"),
    Case("pretrained_missing", lambda c: c.stage2(f"model.rec_config.pretrained_path={c.tmp / 'none.pth'}"),
         "pretrained_path not found"),
    Case("backbone_without_tokenizer", lambda c: c.stage1(f"model.llama_model={c.backbone_without_tokenizer()}"),
         "missing tokenizer.model"),
    Case("backbone_missing", lambda c: c.stage1(f"model.llama_model={c.tmp / 'vicuna'}"), "directory not found"),
    Case("lightgcn_bad_graph_edges",
         lambda c: c.mf("model.arch=LightGCN", "model.rec_config.graph_edges=both"),
         "model.rec_config.graph_edges: Invalid value 'both'", baseline_train.main),
    Case("sasrec_heads_do_not_divide",
         lambda c: c.mf("model.arch=SASRec", "model.rec_config.n_heads=3"), "not divisible by n_heads 3",
         baseline_train.main),
    Case("din_empty_history",
         lambda c: c.mf("model.arch=DIN", "model.rec_config.max_len=0"), "model.rec_config: max_len must be >= 1",
         baseline_train.main),
    # output dir, checkpoints, prompts
    Case("output_dir_is_a_file", lambda c: c.stage1(f"run.output_dir={c.out / 'sentinel.txt'}"),
         "exists and is not a directory"),
    Case("resume_ckpt_truncated",
         lambda c: c.stage1(f"run.resume_ckpt_path={c.truncated_copy(c.out / 'checkpoint_last.pth')}"),
         "is truncated or corrupt"),
    Case("resume_ckpt_missing", lambda c: c.stage1(f"run.resume_ckpt_path={c.tmp / 'gone.pth'}"),
         "run.resume_ckpt_path not found"),
    Case("resume_ckpt_not_a_checkpoint", lambda c: c.stage1(f"run.resume_ckpt_path={c.env.mf_weights}"),
         "no 'model' entry"),
    Case("evaluate_without_ckpt",
         lambda c: c.stage2("run.evaluate=true", "model.freeze_proj=true"), "model.ckpt is not set"),
    Case("model_ckpt_missing", lambda c: c.stage1(f"model.ckpt={c.tmp / 'best.pth'}"), "model.ckpt not found"),
    Case("template_without_target_title",
         lambda c: c.stage1(f"model.prompt_path={c.file('p.txt', 'Liked <ItemTitleList>. Answer:')}"),
         "needs <TargetItemTitle> exactly once, found 0"),
    Case("template_slot_twice",
         lambda c: c.stage1(f"model.prompt_path={c.file('p.txt', '<UserID> <UserID> <TargetItemTitle>')}"),
         "<UserID> appears 2 times"),
    Case("prompt_file_missing", lambda c: c.stage1(f"model.prompt_path={c.tmp / 'p.txt'}"), "prompt file not found"),
    Case("max_txt_len_too_small", lambda c: c.stage1("model.max_txt_len=8"), "more than max_txt_len=8"),
]


def _check_refused(capsys_err: str, rc: int, case: Case):
    assert rc != 0
    line = error_line(capsys_err)
    assert case.expect in line, line
    return line


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_in_process(case, env, assets, tmp_path, capsys):
    ctx = Ctx(env, assets, tmp_path)
    argv = case.build(ctx)
    before = snapshot(ctx.out)
    capsys.readouterr()
    rc = case.main(argv)
    _check_refused(capsys.readouterr().err, rc, case)
    after = snapshot(ctx.out)
    assert {k: after.get(k) for k in before} == before


def test_cuda_requested_without_gpu(env, assets, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    case = Case("cuda_without_gpu", lambda c: c.stage1("run.device=cuda"), "no CUDA device is available")
    test_bad_input_in_process(case, env, assets, tmp_path, capsys)


SUBPROCESS_CASES = ["unknown_option_key", "backbone_missing", "resume_ckpt_truncated"]


@pytest.fixture(scope="module")
def process_runs(env, assets, tmp_path_factory):
    """name -> (ctx, snapshot before, finished process); the processes run at once."""
    started = {}
    for name in SUBPROCESS_CASES:
        case = next(c for c in CASES if c.name == name)
        ctx = Ctx(env, assets, tmp_path_factory.mktemp(name))
        argv = case.build(ctx)
        before = snapshot(ctx.out)
        proc = subprocess.Popen([sys.executable, "train_collm.py", *map(str, argv)], cwd=REPO, env=subprocess_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        started[name] = (case, ctx, before, proc)
    done = {}
    for name, (case, ctx, before, proc) in started.items():
        _, stderr = proc.communicate(timeout=300)
        done[name] = (case, ctx, before, proc.returncode, stderr)
    return done


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_bad_input_as_a_process(name, process_runs):
    """The real command line: exit status 2, and the error is the last line of stderr."""
    case, ctx, before, returncode, stderr = process_runs[name]
    assert returncode == 2
    _check_refused(stderr, returncode, case)
    after = snapshot(ctx.out)
    assert {k: after.get(k) for k in before} == before


def test_item_index_for_other_embeddings(tmp_path):
    """No command loads a saved index yet: the API names the mismatch in one line."""
    from collm_faissret.retrieval.index import ItemIndex, RetrievalConfig
    from collm_faissret.retrieval.index_files import IndexMismatchError

    emb = np.random.RandomState(0).normal(size=(50, 8)).astype(np.float32)
    ItemIndex.build(emb, np.arange(1, 51), RetrievalConfig(index_type="flat", use_gpu=False)).save(str(tmp_path))
    for kwargs, text in (({"expected_dim": 16}, "built for dim 8, the embeddings have dim 16"),
                         ({"expected_n_items": 40}, "built for n_items 50, the catalog has n_items 40")):
        with pytest.raises(IndexMismatchError) as err:
            ItemIndex.load(str(tmp_path), use_gpu=False, **kwargs)
        assert text in str(err.value) and "\n" not in str(err.value)


def test_case_names_unique():
    assert len({c.name for c in CASES}) == len(CASES) >= 20
