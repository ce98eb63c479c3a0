"""The documentation's commands against the code: every fenced shell command in README.md and
docs/*.md names a Makefile target, console script, module or script that exists; its subcommand
and flags parse (argparse runs and is stopped right after parsing: nothing trains or loads);
and every train_configs/*.yaml the docs name exists and validates, with the command's --options.
"""
import argparse
import contextlib
import importlib
import importlib.util
import inspect
import io
import re
import shlex
import sys
from pathlib import Path

import pytest
from conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_FENCES = {"bash", "sh", "shell", "console"}
# Tools of the system or of other packages that the docs may show (not checked further).
EXTERNAL = {"source", "cd", "pip", "unzip", "git", "nvidia-smi", "tensorboard", "conda", "hf", "export", "ls", "cat"}
PYTHONS = {"python", "python3", ".venv/bin/python"}
CONFIG_RE = re.compile(r"(?<![\w/.-])train_configs/[\w.-]+\.yaml")
TRAIN_SCRIPTS = {"train_collm.py": "train", "baseline_train.py": "baseline"}


class Parsed(Exception):
    """Raised instead of returning from ArgumentParser.parse_args: the command line parsed."""


def shell_commands(path: Path):
    """(line number, command tokens) of every command in the file's shell fences."""
    lang, start, buf = None, 0, ""
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fence = re.match(r"^\s*```(\w*)", line)
        if fence:
            lang = None if lang is not None else fence.group(1) or ""
            continue
        if lang not in SHELL_FENCES:
            continue
        if not buf:
            start = n
        buf += line.rstrip()
        if buf.endswith("\\"):
            buf = buf[:-1] + " "
            continue
        tokens, buf = shlex.split(buf, comments=True), ""
        command = []
        for tok in tokens + [";"]:
            if tok in ("&&", "||", ";", "|"):
                if command:
                    yield start, command
                command = []
            else:
                command.append(tok)


def makefile_targets() -> set:
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([\w.-]+):", text, flags=re.M))


def console_scripts() -> dict:
    """[project.scripts] of pyproject.toml: name -> "module:function" (read without tomllib: Python 3.10)."""
    text = (REPO / "pyproject.toml").read_text()
    section = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    return dict(re.findall(r'^([\w-]+)\s*=\s*"([\w.:]+)"', section, flags=re.M))


@contextlib.contextmanager
def stop_after_parse():
    original = argparse.ArgumentParser.parse_args

    def parse(self, args=None, namespace=None):
        raise Parsed(original(self, args, namespace))

    argparse.ArgumentParser.parse_args = parse
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_args = original


def parses(main, prog: str, args: list) -> str:
    """'' when ``main(args)`` gets through argparse; else the reason (argparse's error line)."""
    err = io.StringIO()
    saved = sys.argv
    sys.argv = [prog, *args]
    try:
        with stop_after_parse(), contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            takes_argv = bool(inspect.signature(main).parameters)
            code = main(list(args)) if takes_argv else main()
    except Parsed:
        return ""
    except SystemExit as exit_:
        code = exit_.code
    finally:
        sys.argv = saved
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    return f"exit {code} before parsing finished: {lines[-1] if lines else 'no message'}"


def script_main(path: Path):
    """main() of a Python file (the repository's scripts are import-safe)."""
    spec = importlib.util.spec_from_file_location(f"_doc_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    for p in (str(path.parent), str(REPO)):
        if p not in sys.path:
            sys.path.insert(0, p)
    spec.loader.exec_module(module)
    return module.main


def entry_main(target: str):
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def config_problem(args: list, kind: str) -> str:
    """'' when --cfg-path (a train_configs/ file) validates with the command's --options."""
    from collm_faissret.config_loader import ConfigError, load_config

    if "--cfg-path" not in args:
        return ""
    cfg = args[args.index("--cfg-path") + 1]
    if not CONFIG_RE.fullmatch(cfg):
        return ""  # a file an earlier command writes (e.g. collm-prepare config --out)
    options = []
    if "--options" in args:
        for tok in args[args.index("--options") + 1:]:
            if tok.startswith("--"):
                break
            options.append(tok)
    if kind == "baseline":
        options.append("run.task=cf_rec")
    try:
        load_config(str(REPO / cfg), options)
    except (ConfigError, ValueError, OSError) as err:
        return f"{cfg} does not validate: {err}"
    return ""


def check(tokens: list) -> str:
    """'' when the command is sound; else what is wrong with it."""
    while tokens and re.match(r"^[A-Z_][A-Z0-9_]*=", tokens[0]):  # VAR=value prefixes
        tokens = tokens[1:]
    head, args = tokens[0], tokens[1:]
    scripts = console_scripts()
    if head == "make":
        missing = [t for t in args if not t.startswith("-") and t not in makefile_targets()]
        return f"no Makefile target {missing}" if missing else ""
    if head.startswith(".venv/bin/") and head != ".venv/bin/python":
        head = head[len(".venv/bin/"):]
    if head in scripts:
        kind = {"collm-train": "train", "collm-baseline": "baseline"}.get(head)
        return parses(entry_main(scripts[head]), head, args) or (config_problem(args, kind) if kind else "")
    if head == "torchrun":
        from torch.distributed.run import get_args_parser

        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                ns = get_args_parser().parse_args(args)
        except SystemExit:
            return f"torchrun options: {err.getvalue().strip().splitlines()[-1]}"
        return check(["python", ns.training_script, *ns.training_script_args])
    if head == "bash":
        path = REPO / args[0]
        if not path.is_file():
            return f"no script {args[0]}"
        text = path.read_text()
        unknown = [a for a in args[1:] if a.startswith("-") and not re.search(rf"^\s*{re.escape(a)}[|)]", text, re.M)]
        return f"{args[0]} has no option {unknown}" if unknown else ""
    if head in PYTHONS:
        if args[:1] == ["-m"]:
            name = args[1]
            if importlib.util.find_spec(name) is None:
                return f"no module {name}"
            return parses(importlib.import_module(name).main, name, args[2:])
        path = REPO / args[0]
        if not path.is_file():
            return f"no script {args[0]}"
        problem = parses(script_main(path), args[0], args[1:])
        kind = TRAIN_SCRIPTS.get(args[0])
        return problem or (config_problem(args[1:], kind) if kind else "")
    if head in EXTERNAL:
        return ""
    return f"unknown command {head!r} (not a Makefile target, console script, module or script)"


def all_commands():
    for doc in DOCS:
        for line, tokens in shell_commands(doc):
            yield pytest.param(tokens, id=f"{doc.relative_to(REPO)}:{line}")


@pytest.mark.parametrize("tokens", list(all_commands()))
def test_documented_command(tokens):
    problem = check(tokens)
    assert not problem, f"`{shlex.join(tokens)}`: {problem}"


def test_every_named_config_exists_and_validates():
    from collm_faissret.config_loader import load_config

    named = {m for doc in DOCS for m in CONFIG_RE.findall(doc.read_text(encoding="utf-8"))}
    assert named, "the docs name no config: the pattern is wrong"
    for cfg in sorted(named):
        assert (REPO / cfg).is_file(), f"{cfg} is named in the docs but does not exist"
        load_config(str(REPO / cfg), ["run.task=cf_rec"] if "baseline" in cfg else [])


def test_the_checker_catches_what_it_should(tmp_path):
    """A wrong flag, subcommand, script, module, target or config key each gives a reason."""
    doc = tmp_path / "x.md"
    doc.write_text("```bash\n"
                   "collm-train --cfg-path train_configs/collm_stage1_ml1m.yaml --no-such-flag\n"
                   "collm-prepare no_such_converter --out x\n"
                   "python bench/no_such_bench.py\n"
                   "python -m collm_faissret.no_such_module\n"
                   "make no-such-target\n"
                   "python train_collm.py --cfg-path train_configs/collm_stage1_ml1m.yaml \\\n"
                   "    --options model.no_such_key=1\n"
                   "torchrun --nproc-per-node 2 train_collm.py --cfg-path train_configs/collm_stage1_ml1m.yaml\n"
                   "bash bench/gpu_check.sh --no-such-option\n"
                   "```\n")
    found = [(line, check(tokens)) for line, tokens in shell_commands(doc)]
    assert [line for line, _ in found] == [2, 3, 4, 5, 6, 7, 9, 10]
    problems = [p for _, p in found]
    assert "unrecognized arguments: --no-such-flag" in problems[0]
    assert problems[1] and problems[2] == "no script bench/no_such_bench.py"
    assert problems[3] == "no module collm_faissret.no_such_module"
    assert "no Makefile target" in problems[4]
    assert "does not validate" in problems[5] and "no_such_key" in problems[5]
    assert problems[6] == ""  # a sound torchrun line
    assert "has no option ['--no-such-option']" in problems[7]
