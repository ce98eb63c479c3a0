"""Plots of finished runs: learning curves and a test-metric comparison.

  python -m collm_faissret.report OUTPUT_DIR [OUTPUT_DIR ...] [--out DIR] [--split test]

Reads what every run directory holds and writes PNG files into --out (default:
the run directory, or the runs' common parent directory for several runs):

* ``learning_curves.png``: training loss per log interval (x: training step)
  and validation AUC / UAUC per epoch, one line per run, from ``metrics.jsonl``
  (evaluate-only runs have none and are left out);
* ``test_metrics.png``, for two runs or more: bars of AUC / UAUC overall, on
  warm and on cold rows of the ``--split`` block of each ``metrics.json``.

An undefined metric (``null``, e.g. a split without cold rows) gets no bar.
"""
import argparse
import json
import os
import sys

BAR_METRICS = (("AUC", None, "auc"), ("UAUC", None, "uauc"), ("warm AUC", "warm", "auc"),
               ("warm UAUC", "warm", "uauc"), ("cold AUC", "cold", "auc"), ("cold UAUC", "cold", "uauc"))


class ReportError(ValueError):
    """A run directory the report cannot read; the message names the file."""


def read_jsonl(path: str) -> list:
    records = []
    with open(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ReportError(f"{path}:{lineno}: invalid JSON ({err.msg})") from None
    return records


def read_run(run_dir: str) -> dict:
    """{"curves": metrics.jsonl records or None, "final": metrics.json or None}."""
    if not os.path.isdir(run_dir):
        raise ReportError(f"{run_dir}: no such run directory")
    jsonl, final = os.path.join(run_dir, "metrics.jsonl"), os.path.join(run_dir, "metrics.json")
    run = {"curves": read_jsonl(jsonl) if os.path.isfile(jsonl) else None, "final": None}
    if os.path.isfile(final):
        with open(final) as fh:
            try:
                run["final"] = json.load(fh)
            except json.JSONDecodeError as err:
                raise ReportError(f"{final}:{err.lineno}: invalid JSON ({err.msg})") from None
    if run["curves"] is None and run["final"] is None:
        raise ReportError(f"{run_dir}: neither metrics.jsonl nor metrics.json (not a finished run?)")
    return run


def run_labels(run_dirs: list) -> list:
    """Each run's directory name, or its path below the common parent when names repeat."""
    names = [os.path.basename(os.path.normpath(d)) for d in run_dirs]
    if len(set(names)) == len(names):
        return names
    base = os.path.commonpath([os.path.abspath(d) for d in run_dirs])
    return [os.path.relpath(os.path.abspath(d), base) for d in run_dirs]


def loss_points(records: list) -> list:
    """(step, loss) per log interval; runs older than ``train_loss_steps`` give one per epoch."""
    points = []
    for rec in records:
        pairs = rec.get("train_loss_steps")
        if pairs is None:
            pairs = [[rec.get("step"), rec.get("train_loss")]]
        points += [(step, loss) for step, loss in pairs if step is not None and loss is not None]
    return points


def _values(records: list, key: str) -> tuple:
    pairs = [(r["epoch"], r.get(key)) for r in records if r.get(key) is not None]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def plot_curves(runs: dict, path: str) -> None:
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_auc) = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, records in runs.items():
        points = loss_points(records)
        if points:
            ax_loss.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=label)
        line = ax_auc.plot(*_values(records, "auc"), marker="o", label=f"{label} AUC")[0]
        ax_auc.plot(*_values(records, "uauc"), marker="s", linestyle="--", color=line.get_color(),
                    label=f"{label} UAUC")
    ax_loss.set(title="training loss (per log interval)", xlabel="step", ylabel="loss")
    split = next((r.get("split") for recs in runs.values() for r in recs if r.get("split")), "valid")
    ax_auc.set(title=f"{split} AUC / UAUC (per epoch)", xlabel="epoch", ylabel="AUC")
    for ax in (ax_loss, ax_auc):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_bars(finals: dict, split: str, path: str) -> None:
    import matplotlib.pyplot as plt

    n_runs = len(finals)
    width = 0.8 / n_runs
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(BAR_METRICS) * max(1, n_runs / 3)), 4.5))
    for i, (label, block) in enumerate(finals.items()):
        xs, heights = [], []
        for j, (_, part, key) in enumerate(BAR_METRICS):
            value = (block.get(part) or {}).get(key) if part else block.get(key)
            if value is not None:
                xs.append(j + (i - (n_runs - 1) / 2) * width)
                heights.append(value)
        ax.bar(xs, heights, width=width, label=label)
    ax.set_xticks(range(len(BAR_METRICS)), [name for name, _, _ in BAR_METRICS])
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")  # chance level of AUC
    ax.set(title=f"{split}: AUC / UAUC overall, warm and cold rows", ylabel="AUC", ylim=(0, 1))
    ax.legend(fontsize="small", ncol=min(n_runs, 4))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def default_out(run_dirs: list) -> str:
    if len(run_dirs) == 1:
        return run_dirs[0]
    common = os.path.commonpath([os.path.abspath(d) for d in run_dirs])
    if common == os.path.dirname(common):  # the filesystem root: no shared parent worth writing into
        raise ReportError("the runs share no parent directory; pass --out")
    return common


def make_report(run_dirs: list, out_dir: str = None, split: str = "test") -> list:
    """Write the PNG files for ``run_dirs``; return their paths."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    runs = {label: read_run(d) for label, d in zip(run_labels(run_dirs), run_dirs)}
    out_dir = out_dir or default_out(run_dirs)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    curves = {label: run["curves"] for label, run in runs.items() if run["curves"]}
    if curves:
        written.append(os.path.join(out_dir, "learning_curves.png"))
        plot_curves(curves, written[-1])
    finals = {label: run["final"][split] for label, run in runs.items()
              if run["final"] and isinstance(run["final"].get(split), dict)}
    if len(finals) >= 2:
        written.append(os.path.join(out_dir, "test_metrics.png" if split == "test" else f"{split}_metrics.png"))
        plot_bars(finals, split, written[-1])
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dirs", nargs="+", metavar="OUTPUT_DIR", help="run directories (run.output_dir)")
    ap.add_argument("--out", default=None, help="where the PNG files go (default: see above)")
    ap.add_argument("--split", default="test", help="block of metrics.json compared in the bar chart")
    args = ap.parse_args(argv)
    try:
        written = make_report(args.run_dirs, args.out, args.split)
    except (ReportError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not written:
        print(f"error: nothing to plot: no metrics.jsonl, and fewer than two runs with a {args.split!r} block",
              file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
