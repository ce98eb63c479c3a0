"""Registry lookups and config validation: every failure names what is wrong."""
import copy

import pytest
from conftest import cli_args
from omegaconf.errors import ReadonlyConfigError

from collm_faissret import (
    models,  # noqa: F401  (registers collm and the CF models)
    registry,
)
from collm_faissret.config_loader import ConfigError, load_config, parse_options
from collm_faissret.registry import RegistryError


@pytest.fixture
def scratch_registry(monkeypatch):
    """A private copy of the registry tables, so test registrations do not leak."""
    registry.fill()  # the built-in components first: they register into the tables copied here
    monkeypatch.setattr(registry, "_REGISTRY", copy.deepcopy(registry._REGISTRY))


def test_register_twice_raises(scratch_registry):
    class First:
        pass

    class Second:
        pass

    registry.register("lr_scheduler", "dup_sched")(First)
    with pytest.raises(RegistryError, match="lr_scheduler 'dup_sched' is already registered"):
        registry.register("lr_scheduler", "dup_sched")(Second)
    assert registry.get("lr_scheduler", "dup_sched") is First


def test_register_existing_builtin_name_raises(scratch_registry):
    with pytest.raises(RegistryError, match="already registered"):
        registry.register("cf_model", "MF")(object)


def test_unknown_name_lists_registered_names():
    with pytest.raises(RegistryError) as err:
        registry.get("cf_model", "NoSuchCF")
    msg = str(err.value)
    assert "NoSuchCF" in msg
    assert f"registered cf_models: {', '.join(registry.names('cf_model'))}" in msg
    assert {"DIN", "LightGCN", "MF", "SASRec"} <= set(registry.names("cf_model"))
    assert "\n" not in msg


def test_unknown_kind_raises():
    with pytest.raises(RegistryError, match="unknown registry kind 'widget'"):
        registry.get("widget", "x")


def test_get_returns_registered_class(scratch_registry):
    class Sched:
        pass

    registry.register("lr_scheduler", "my_sched")(Sched)
    assert registry.get("lr_scheduler", "my_sched") is Sched
    assert "my_sched" in registry.names("lr_scheduler")


def _write(tmp_path, text):
    """Write ``text`` as cfg.yaml under tmp_path; return its path."""
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return str(path)


BASE = """
model: {arch: collm, llama_model: llm, prompt_path: prompt.txt, lora_config: {r: 4}}
datasets: {ml100k_ood: {path: data}}
run: {output_dir: out}
"""


def test_valid_config_loads_with_overrides(tmp_path):
    cfg = load_config(_write(tmp_path, BASE), ["model.lora_config.r=16", "run.init_lr=3e-4"])
    assert cfg.model.lora_config.r == 16
    assert cfg.run.init_lr == pytest.approx(3e-4)
    assert cfg.model.lora_config.alpha == 16  # schema default
    assert cfg.datasets.ml100k_ood.max_his == 10


@pytest.mark.parametrize("options, key", [
    (["model.lora_config.rr=3"], "model.lora_config.rr"),
    (["run.no_such_key=1"], "run.no_such_key"),
    (["datasets.ml100k_ood.bogus=1"], "datasets.ml100k_ood.bogus"),
])
def test_unknown_key_in_options_names_path(tmp_path, options, key):
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, BASE), options)
    assert f"key {key}:" in str(err.value)
    assert str(err.value).startswith("--options")


@pytest.mark.parametrize("options, key", [
    (["model.lora_config.r=abc"], "model.lora_config.r"),
    (["run.max_epoch=1.5"], "run.max_epoch"),
    (["model.freeze_lora=maybe"], "model.freeze_lora"),
    (["datasets.ml100k_ood.max_his=ten"], "datasets.ml100k_ood.max_his"),
])
def test_wrong_type_names_path(tmp_path, options, key):
    with pytest.raises(ConfigError, match=f"key {key}: "):
        load_config(_write(tmp_path, BASE), options)


def test_unknown_and_wrong_type_keys_in_yaml_name_file_and_path(tmp_path):
    path = _write(tmp_path, BASE.replace("{r: 4}", "{r: four}"))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: key model.lora_config.r:")
    path = _write(tmp_path, BASE.replace("{r: 4}", "{rank: 4}"))
    with pytest.raises(ConfigError, match="key model.lora_config.rank:"):
        load_config(path)


def test_missing_required_keys_named(tmp_path):
    path = _write(tmp_path, "model: {arch: collm}\ndatasets: {ml100k_ood: {max_his: 3}}\nrun: {init_lr: 1.0}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "missing required key(s): datasets.ml100k_ood.path, run.output_dir" in str(err.value)


def test_missing_arch_named(tmp_path):
    with pytest.raises(ConfigError, match="model.arch"):
        load_config(_write(tmp_path, "datasets: {x: {path: d}}\nrun: {output_dir: o}\n"))


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="cannot parse YAML"):
        load_config(_write(tmp_path, "model: [unclosed\n"))


@pytest.mark.parametrize("bad", ["run.init_lr", "=3", "run.init_lr 3"])
def test_bad_options_syntax(tmp_path, bad):
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_options([bad])
    with pytest.raises(ConfigError, match="bad --options entry"):
        load_config(_write(tmp_path, BASE), [bad])


def test_config_is_read_only(tmp_path):
    cfg = load_config(_write(tmp_path, BASE))
    with pytest.raises(ReadonlyConfigError):
        cfg.run.init_lr = 1.0


def test_unknown_arch_one_stderr_line(env, tmp_path, capsys):
    import train_collm

    rc = train_collm.main(cli_args(env.config("stage1", tmp_path / "run"), "model.arch=nonexistent"))
    captured = capsys.readouterr()
    assert rc != 0
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "model.arch: unknown model 'nonexistent'; registered models: collm" in lines[0]


def test_unknown_option_key_through_cli_is_one_line(env, tmp_path, capsys):
    import train_collm

    rc = train_collm.main(cli_args(env.config("stage1", tmp_path / "run"), "model.lora_config.rr=2"))
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2
    assert len(lines) == 1 and "model.lora_config.rr" in lines[0]


def test_include_merges_base_files_in_order(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "common.yaml").write_text(BASE)
    (tmp_path / "base" / "lr.yaml").write_text("run: {init_lr: 0.5, max_epoch: 7}\n")
    (tmp_path / "run.yaml").write_text("include: [base/common.yaml, base/lr.yaml]\nrun: {max_epoch: 2}\n")
    cfg = load_config(str(tmp_path / "run.yaml"))
    assert (cfg.run.init_lr, cfg.run.max_epoch) == (0.5, 2)  # later files win, the including file last
    assert cfg.model.arch == "collm" and "include" not in cfg


def test_include_errors_name_the_file(tmp_path):
    (tmp_path / "a.yaml").write_text("include: b.yaml\n")
    (tmp_path / "b.yaml").write_text("include: a.yaml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_config(str(tmp_path / "a.yaml"))
    (tmp_path / "c.yaml").write_text("include: missing.yaml\n")
    with pytest.raises(ConfigError, match=r"missing.yaml \(included by .*c.yaml\)"):
        load_config(str(tmp_path / "c.yaml"))


def test_rec_config_follows_the_cf_models_schema(tmp_path):
    """A key of another CF model is refused; the model's own keys are typed and checked."""
    path = _write(tmp_path, BASE)
    with pytest.raises(ConfigError, match="model.rec_config.n_layers"):
        load_config(path, ["model.rec_model=MF", "model.rec_config.n_layers=2"])
    cfg = load_config(path, ["model.rec_model=LightGCN", "model.rec_config.n_layers=3"])
    assert cfg.model.rec_config.n_layers == 3 and cfg.model.rec_config.graph_edges == "positive"
