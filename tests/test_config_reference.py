"""docs/config_reference.md: up to date, and it documents every key the shipped configs use."""
import re
from pathlib import Path

import pytest
import yaml

from collm_faissret import config_reference
from collm_faissret.config_loader import load_config

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted((REPO / "train_configs").glob("*.yaml"))


def documented_keys() -> set:
    text = (REPO / "docs" / "config_reference.md").read_text()
    return set(re.findall(r"^\| `([^`]+)` \|", text, flags=re.M))


def used_keys(node, prefix="") -> list:
    """Dotted paths of the leaves of a YAML mapping; the data set entry's name reads as <name>."""
    keys = []
    for key, value in node.items():
        path = f"{prefix}{key}"
        if prefix == "datasets.":
            path = "datasets.<name>"
        if isinstance(value, dict):
            keys += used_keys(value, path + ".")
        else:
            keys.append(path)
    return keys


def test_reference_is_up_to_date(capsys):
    rc = config_reference.main(["--check"])
    assert rc == 0, capsys.readouterr().err


def test_shipped_configs_exist():
    assert len(SHIPPED) >= 5


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_config_validates(path):
    cfg = load_config(str(path))
    assert cfg.run.output_dir


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_used_key_documented(path):
    raw = yaml.safe_load(path.read_text())
    raw.pop("include", None)  # base files: documented in the header, checked by their own entries
    keys = used_keys(raw)
    assert keys
    undocumented = sorted(set(keys) - documented_keys())
    assert not undocumented, f"{path.name}: keys missing from docs/config_reference.md: {undocumented}"


def test_check_fails_on_stale_file(tmp_path, capsys):
    stale = tmp_path / "ref.md"
    stale.write_text("# old\n")
    assert config_reference.main(["--check", "--path", str(stale)]) == 1
    assert "out of date" in capsys.readouterr().err
    assert config_reference.main(["--path", str(stale)]) == 0
    assert config_reference.main(["--check", "--path", str(stale)]) == 0


def test_undocumented_field_is_an_error(monkeypatch):
    import dataclasses

    from collm_faissret import config

    @dataclasses.dataclass
    class Bare(config.RunConfig):
        extra: int = 3  # no setting(): no help text

    monkeypatch.setattr(config.Config, "__annotations__", dict(config.Config.__annotations__, run=Bare))
    with pytest.raises(config_reference.ReferenceError, match="Bare.extra"):
        config_reference.sections(config.Config)


def test_setting_requires_help():
    from collm_faissret.schema import setting

    with pytest.raises(ValueError, match="help"):
        setting(3)


def test_each_cf_schema_documented_once():
    """Common rec_config keys once; each CF model's own keys in its own section."""
    titles = [s["title"] for s in config_reference.sections()]
    assert titles.count("model.rec_config") == 1
    assert any("LightGCN" in t for t in titles) and any("SASRec" in t for t in titles)
