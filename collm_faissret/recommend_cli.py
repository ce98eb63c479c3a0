"""``collm-recommend``: print what a trained run recommends (``Recommender``, recommend/).

Known bad input (an unknown user, a title matching no item, a run directory without its
checkpoint, ...) ends the process with one line on stderr and exit status 2; ``--help`` loads
no torch (the package is imported after parsing, as in cli.py).
"""
import argparse
import json
import logging
import math
import sys

from .cli import known_errors, quiet_third_party

DOC = """Rank a user's top-K items with a trained run: the run's CF model retrieves --candidates items
(Faiss), the LLM scores each prompt (user, history, item) and the best k are printed.

  collm-recommend outputs/demo/stage2 --user 1 -k 5
  collm-recommend RUN_DIR --user 42 --user 7 --format json
  collm-recommend RUN_DIR --history "Toy Story (1995)" 1210 -k 10 --candidates 50

The table shows each user's last history titles, then the list with the LLM's score and the
retriever's score and rank: how the LLM reordered the retriever's list. A CF baseline run
directory ranks by its own scores (no LLM).
"""
HISTORY_SHOWN = 5  # history titles the table prints per user (the most recent)
TITLE_WIDTH = 48  # longer titles are cut in the table (json and csv keep them whole)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="collm-recommend", description=DOC,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (collm-train or collm-baseline output)")
    ap.add_argument("--user", type=int, action="extend", nargs="+", metavar="UID",
                    help="known user id(s); repeat or list several: scored in one pass")
    ap.add_argument("--history", nargs="+", metavar="ITEM",
                    help="item ids (digits) or exact titles, oldest first: a new user's history, or, with "
                         "--user, another history for that user")
    ap.add_argument("-k", type=int, default=10, help="items per list (default 10)")
    ap.add_argument("--candidates", type=int, default=50, help="items retrieved per user and scored by the LLM "
                                                               "(default 50)")
    ap.add_argument("--format", choices=("table", "json", "csv"), default="table", help="output (default table)")
    ap.add_argument("--include-seen", action="store_true", help="keep items the user has already interacted with")
    ap.add_argument("--options", nargs="+", default=[], metavar="KEY=VALUE",
                    help="override keys of the run's config, e.g. datasets.ml100k_ood.path=data/ml-100k "
                         "run.device=cpu")
    ap.add_argument("-v", "--verbose", action="store_true", help="log loading and scoring steps to stderr")
    args = ap.parse_args(argv)
    if args.user is None and args.history is None:
        ap.error("give --user, --history, or both")
    return args


def history_entry(text: str):
    """An entry of --history: digits are an item id, anything else a title."""
    return int(text) if text.isdigit() else text


def main(argv=None) -> int:
    args = parse_args(argv)
    quiet_third_party()
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logging.getLogger("collm_faissret").setLevel(logging.INFO if args.verbose else logging.WARNING)
    from .config_loader import parse_options  # deferred, as in cli.py: torch loads below
    from .recommend import Recommender, check_sizes

    try:
        check_sizes(args.k, args.candidates)  # before the model loads
        options = parse_options(args.options)
        rec = Recommender.from_run(args.run_dir, **dict(o.split("=", 1) for o in options))
        history = None if args.history is None else [history_entry(h) for h in args.history]
        users = list(dict.fromkeys(args.user)) if args.user else [None]  # one list per user
        frame = rec.recommend(user=users, history=history, k=args.k, candidates=args.candidates,
                              exclude_seen=not args.include_seen)
        given = None if history is None else rec.resolve(history)
        lists = [(user, given if given is not None else rec.history(user),
                  frame[frame["user"].isna()] if user is None else frame[frame["user"] == user]) for user in users]
    except known_errors() as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.format == "csv":
        sys.stdout.write(frame.to_csv(index=False, float_format="%.9g"))
    elif args.format == "json":
        print(json.dumps(as_json(rec, args, lists), indent=2))
    else:
        print(as_table(rec, args, lists))
    return 0


def _clean(value):
    """JSON-safe: NaN (a CF run's LLM score) as null, numpy scalars as Python numbers."""
    if hasattr(value, "item"):
        value = value.item()
    return None if isinstance(value, float) and not math.isfinite(value) else value


def as_json(rec, args, lists) -> dict:
    """{"run", "model", "retriever", "ranked_by", "k", "candidates", "lists": [{"user", "history", "items"}]}."""
    def records(frame):
        return [{key: _clean(v) for key, v in row.items()} for row in frame.to_dict("records")]

    return {"run": args.run_dir, "model": rec.cfg.model.arch, "retriever": rec.retriever_name,
            "ranked_by": "llm" if rec.uses_llm else "retriever", "k": args.k, "candidates": args.candidates,
            "lists": [{"user": user, "history": records(his), "items": records(items.drop(columns="user"))}
                      for user, his, items in lists]}


def _cut(title: str) -> str:
    return title if len(title) <= TITLE_WIDTH else title[:TITLE_WIDTH - 3] + "..."


def _score(value) -> str:
    """Four decimals, or four significant digits for scores too small for them (a CF model with
    small vectors gives dot products near 1e-6: shown as 0.0000 they would hide the order)."""
    return f"{value:.4f}" if value == 0 or abs(value) >= 1e-3 else f"{value:.3e}"


def as_table(rec, args, lists) -> str:
    how = (f"retrieved by {rec.retriever_name}, re-ranked by the LLM" if rec.uses_llm
           else f"ranked by {rec.retriever_name} (a CF run: no LLM)")
    out = [f"{args.run_dir} ({rec.cfg.model.arch}): top {args.k} of {args.candidates} candidates {how}"]
    for user, his, items in lists:
        who = "new user" if user is None else f"user {user}"
        shown = his["title"].tolist()[-HISTORY_SHOWN:]
        out += ["", f"{who}: last {len(shown)} of {len(his)} history items, oldest first"]
        out += [f"  {_cut(t)}" for t in shown]
        width = max([len(_cut(t)) for t in items["title"]] + [5])
        head = f"{'rank':>4}  {'item':>6}  {'title':<{width}}"
        head += f"  {'LLM score':>9}" if rec.uses_llm else ""
        out += [head + f"  {'retriever score':>15}  {'retriever rank':>14}"]
        for row in items.itertuples(index=False):
            line = f"{row.rank:>4}  {row.item_id:>6}  {_cut(row.title):<{width}}"
            line += f"  {row.llm_score:>9.4f}" if rec.uses_llm else ""
            out.append(line + f"  {_score(row.retriever_score):>15}  {row.retriever_rank:>14}")
        if items.empty:
            out.append("  (no unseen item left to retrieve)")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
