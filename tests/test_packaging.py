"""Packaging: the three dependency lists agree, and the console scripts, the
repository's scripts and ``python -m`` entry points reach one implementation."""
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
tomllib = pytest.importorskip("tomllib")  # Python >= 3.11


def _normalized(specs) -> dict:
    """{normalized name: specifier set as text}: "faiss_cpu >=1.15" and "faiss-cpu>=1.15" agree."""
    out = {}
    for spec in specs:
        req = Requirement(spec)
        name = req.name.lower().replace("_", "-")
        assert name not in out, f"{name} listed twice"
        out[name] = str(req.specifier)
    return out


def requirements_txt() -> dict:
    lines = (REPO / "requirements.txt").read_text().splitlines()
    return _normalized(line.split("#")[0].strip() for line in lines if line.split("#")[0].strip())


def pyproject() -> dict:
    with open(REPO / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)["project"]


def test_pyproject_matches_requirements():
    project = pyproject()
    deps = _normalized(project["dependencies"])
    dev = _normalized(project["optional-dependencies"]["dev"])
    assert not set(deps) & set(dev)
    assert {**deps, **dev} == requirements_txt()
    assert "pytest" in dev and "pytest" not in deps  # tests are not a runtime dependency


def test_environment_yml_matches_requirements():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_lists = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_lists) == 1
    assert _normalized(pip_lists[0]) == requirements_txt()
    assert "pip" in env["dependencies"]


def test_torch_pinned_and_gpu_extra():
    assert requirements_txt()["torch"].startswith("==")  # never an unpinned torch
    gpu = _normalized(pyproject()["optional-dependencies"]["gpu"])
    assert set(gpu) == {"faiss-gpu"}
    assert gpu["faiss-gpu"] == requirements_txt()["faiss-cpu"]  # the same faiss release line


def test_console_scripts_are_the_repository_entry_points():
    scripts = pyproject()["scripts"]
    assert set(scripts) == {"collm-train", "collm-baseline", "collm-prepare", "collm-recommend"}
    targets = {}
    for name, target in scripts.items():
        module, func = target.split(":")
        targets[name] = getattr(importlib.import_module(module), func)
    import baseline_train
    import train_collm

    assert train_collm.main is targets["collm-train"]
    assert baseline_train.main is targets["collm-baseline"]
    from collm_faissret import recommend_cli

    assert recommend_cli.main is targets["collm-recommend"]  # what the demo runs with python -m


@pytest.mark.parametrize("name", ["ml1m", "ml100k", "amazon_book", "bookcrossing"])
def test_dataset_scripts_wrap_the_package(name):
    wrapper = importlib.import_module(f"dataset.prepare_{name}")
    assert wrapper.main is importlib.import_module(f"collm_faissret.data_prep.{name}").main


def test_collm_prepare_dispatch(capsys):
    from collm_faissret.data_prep import main

    with pytest.raises(SystemExit) as exit_info:
        main(["ml1m", "--help"])
    assert exit_info.value.code == 0 and "--raw" in capsys.readouterr().out
    assert main(["--help"]) == 0 and "ml100k" in capsys.readouterr().out
    assert main(["netflix"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: unknown command 'netflix'")
    assert main([]) == 2


def test_train_help_is_light():
    """--help answers without importing torch / transformers / peft (seconds each)."""
    code = ("import sys, runpy; sys.argv = ['train_collm.py', '--help']\n"
            "try:\n    runpy.run_path('train_collm.py', run_name='__main__')\n"
            "except SystemExit as e:\n    assert e.code == 0\n"
            "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "--cfg-path" in out and out.strip().endswith("[]")


def test_quiet_third_party_filters_known_noise(monkeypatch):
    import warnings

    from collm_faissret.cli import quiet_third_party

    # Set here so that what quiet_third_party sets is undone after the test.
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "error")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party()
        for _ in range(3):
            warnings.warn_explicit("deprecated alias", FutureWarning, "modeling_utils.py", 1,
                                   module="transformers.modeling_utils", registry={})
            # registry None: "once" then keys on (text, category) alone, whatever the call site
            warnings.warn_explicit("peft target module notice", UserWarning, "peft_model.py", 2,
                                   module="peft.peft_model", registry=None)
            warnings.warn_explicit("ours", UserWarning, "x.py", 3, module="collm_faissret.x", registry={})
    texts = [str(w.message) for w in caught]
    assert "deprecated alias" not in texts
    assert texts.count("peft target module notice") == 1  # once per run, not per step
    assert texts.count("ours") == 3  # our own warnings are left alone
