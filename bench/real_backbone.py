"""SmolLM2 CoLLM on CoLLM's ML-1M split: every CF encoder, against each CF model alone.

Each row of the table is the framework's own entry points run in subprocesses
(train_collm.py, baseline_train.py) with --options on the shipped ML-1M
configs, and is scored by an evaluate-only run on the full test split (7,331
rows) and the full validation split (10,401 rows) unless --test-rows /
--valid-rows sample them:

  cf          each CF model alone (--cf), from <cf-dir>/<name>/ (baseline_train.py on the
              whole training split; trained here first when its cf_model.pth is absent)
  zero-shot   stage-1 prompt, the backbone as loaded (no checkpoint)
  stage1      text-only LoRA on the training subset (collm_stage1_ml1m.yaml)
  collm       CoLLM stage 2 on each CF encoder, for every combination of the variants:
                --proj-tokens  LLM tokens per ID embedding (model.proj_token_num)
                --tune         what stage 2 tunes: proj (the FECE projector), proj+lora
                               (projector and LoRA), proj+cf (projector and the CF encoder)
                --train-rows   seeded training subset (0: all 33,891 rows)
                --epochs       passes over it
                --init         base (the backbone as loaded) or stage1 (stage 1's LoRA, frozen)
                --run-seed     run.seed: initialisation and batch order (several values: a row each)
  cold        the collm rows' checkpoints scored with model.cold_start on (cold users get
              vectors borrowed from their nearest warm users)
  hybrid      the collm settings trained and scored with model.answer_score hybrid (the LLM's
              log-odds plus a learned weight times the CF model's own logit): CoLLM-<cf> (hybrid);
              with --cf-oof K the training rows' CF logits come from K CF models, each trained
              without a fold of them (<cf-dir>/<cf>-oof<K>), not from the one that saw them;
              with --hybrid-llm-weight W the LLM's log-odds are times a learned weight from W
              (0: training starts from the CF model's scores); with --hybrid-cf X the logit is
              CF model X's, while the LLM reads the --cf encoder's vectors: CoLLM-<cf> (hybrid on X)
  blend       a hybrid score over each collm setting's checkpoint (trained first when absent) whose
              two weights are fitted on the validation split after training (run.fit_blend valid;
              the CF logit is --hybrid-cf's, else the encoder's): a hybrid row whose validation AUC
              is in-sample (the rows the weights were fitted on); its test split is held out
  rank        retrieve-then-rank at K=50 (retrieve_rank_ml1m.yaml) with the checkpoint of each
              setting's row (collm; hybrid with --rows hybrid; both with both): recall, NDCG and
              hit rate of the LLM's order against the retriever's, as the row's "ranking"; not
              for target-aware encoders (DIN: its user vector cannot query an item index)

Settings are chosen on validation, never on test: per CF encoder the CoLLM row
with the best validation AUC is named CoLLM-<cf> (the others keep their
setting in the name, "selected": false). During training a seeded sample of
--curve-valid-rows validation rows is scored every --curve-every training rows
(early stopping, best checkpoint, learning curve).

Writes --json (default <out>/results.json): a list of rows with name, test_auc,
test_uauc, test_warm_auc, test_cold_auc, test_rows, valid_auc, train_rows, epochs,
cpu_hours (CPU time of the row's own runs: training and scoring; a CF row counts its
scoring only), command (the real_backbone.py command line that reproduces it), commits
(the git commit each of the row's runs was made with, "+dirty" when the checkout had
uncommitted changes), the CF model's AUC on the same rows (cf_test_auc, cf_valid_auc),
cf_reads (the sha256 of the CF files the row's runs read) and cf_other_build (true when the row
read another build of its CF model than its CF row was scored from),
the learning curve, "seeds" (on a setting run with several run seeds: each seed's test and
validation AUC) and "ranking" (rank rows); beside it <json stem>.png (validation AUC against
training rows seen) and <json stem>.md (the table). Rows of an earlier --json whose run
directories are not in <out> are kept (bench/study_table.py). Finished runs are kept in <out>/<row>/ and reused
when the same command asks for them again, also from another checkout with the same
layout (--rerun: run anyway). A training step stopped before it finished (a session's end)
resumes from its checkpoint_last.pth, written at least every --save-every-min minutes, when
the same command runs again; --collect only rebuilds the JSON, PNG and table from
<out>. A finished or stopped step whose CF file has changed since is refused, not reused or
resumed. Paths in the JSON are relative to the repository root (absolute when outside it).

Time on 2 idle CPU cores, fp32 (SmolLM2, ML-1M prompts of ~150 tokens): training
2.3 samples/s (2.1 with --proj-tokens 8). A full-split evaluation of SmolLM2 took, before
shared-prefix scoring (5.6-6.1 rows/s), about 20-22 minutes for the test split (7,331
rows) and 30 minutes for the validation split (10,401); with it (run.shared_prefix: auto,
the default) the test split took 13 min 42 s (8.9 rows/s, timed whole, CoLLM-SASRec), so
the validation split about 20 minutes. A CoLLM row of 1,600 training rows x 1 epoch
with its learning curve and both full splits: about 55 minutes of an idle machine, its
cold-start row another 34 (CPU hours about twice the wall time). CoLLM-DIN scores on the plain
path (DIN is target-aware: no shared prefix), about 22 + 30 minutes. On a busy machine 2-8x
that (docs/benchmarks.md). On CUDA the defaults are the whole training split and batch sizes
16/64; `bash bench/gpu_check.sh smollm2` runs the study there.

  python bench/real_backbone.py --rows cf collm --cf MF --proj-tokens 8 --train-rows 1600
  python bench/real_backbone.py --dry-run                            # print the commands only
  python bench/real_backbone.py --collect --json docs/results/smollm2_ml1m.json
"""
import argparse
import os
import sys
from dataclasses import replace

if os.path.dirname(os.path.abspath(__file__)) not in sys.path:  # bench/: the study_* modules (after all else)
    sys.path.append(os.path.dirname(os.path.abspath(__file__)))
from study_rows import CF_NAMES, DEFAULT_RUN_SEED  # noqa: E402
from study_runner import TUNES, Bench  # noqa: E402
from study_table import collect  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROW_KINDS = ("cf", "zero-shot", "stage1", "collm", "cold", "hybrid", "blend", "rank")
DEFAULT_ROWS = ("cf", "zero-shot", "stage1", "collm", "cold")


def parse_args(argv=None):
    import torch

    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/ml-1m", help="CoLLM's ML-1M split (unzipped ml-1m.zip)")
    ap.add_argument("--backbone", default="data/smollm2",
                    help="backbone directory; built with `collm-prepare backbone smollm2` when absent")
    ap.add_argument("--cf-dir", default="data/cf",
                    help="<cf-dir>/<name in lower case>/ holds each CF baseline's run (cf_model.pth, "
                         "checkpoint_best.pth, config.yaml); trained with train_configs/baseline_<name>_ml1m.yaml "
                         "on the whole training split when absent")
    ap.add_argument("--out", default="outputs/smollm2_study", help="run directories (one per row)")
    ap.add_argument("--json", default=None, help="rows as JSON (default <out>/results.json); the learning-curve "
                                                 "PNG and the markdown table are written beside it")
    ap.add_argument("--rows", nargs="+", default=list(DEFAULT_ROWS), choices=ROW_KINDS,
                    help=f"kinds of rows to run (default: {' '.join(DEFAULT_ROWS)}); see above")
    ap.add_argument("--cf", nargs="+", default=list(CF_NAMES), choices=CF_NAMES,
                    help="CF encoders: their rows alone, CoLLM on each, CoLLM + cold start")
    ap.add_argument("--proj-tokens", nargs="+", type=int, default=[8],
                    help="model.proj_token_num values to try (LLM tokens per ID embedding)")
    ap.add_argument("--tune", nargs="+", default=["proj"], choices=list(TUNES),
                    help="what stage 2 tunes: proj, proj+lora, proj+cf (values to try)")
    ap.add_argument("--train-rows", nargs="+", type=int, default=[0] if cuda else [1600],
                    help="training-subset sizes to try (seeded sample; 0: all 33,891 rows; default 0 on CUDA, "
                         "1600 on CPU)")
    ap.add_argument("--epochs", nargs="+", type=int, default=[1], help="passes over the training subset (values)")
    ap.add_argument("--lr", nargs="+", type=float, default=[1e-3], help="stage-2 peak learning rates (values)")
    ap.add_argument("--init", default="base", choices=["base", "stage1"],
                    help="stage 2 starts from the backbone as loaded, or from stage 1's checkpoint (LoRA frozen "
                         "unless --tune proj+lora)")
    ap.add_argument("--stage1-rows", type=int, default=None, help="stage 1's training subset (default: the first "
                                                                  "--train-rows)")
    ap.add_argument("--stage1-epochs", type=int, default=1, help="stage 1's passes over its subset")
    ap.add_argument("--stage1-lr", type=float, default=3e-4, help="stage 1's peak learning rate (LoRA)")
    ap.add_argument("--test-rows", type=int, default=0, help="test rows scored; 0: all 7,331 (the default)")
    ap.add_argument("--valid-rows", type=int, default=0, help="validation rows scored; 0: all 10,401 (the default)")
    ap.add_argument("--eval-splits", nargs="+", default=["test", "valid"], choices=["test", "valid"],
                    help="splits the scoring runs score (a run per split, test first)")
    ap.add_argument("--curve-every", type=int, default=0 if cuda else 400,
                    help="training rows between validation points (learning curve, early stopping); 0: once per "
                         "pass over the subset")
    ap.add_argument("--curve-valid-rows", type=int, default=0 if cuda else 1000,
                    help="seeded validation sample scored at each point; 0: the whole split")
    ap.add_argument("--patience", type=int, default=2, help="validation points without improvement before stopping")
    ap.add_argument("--batch-size", type=int, default=16 if cuda else 4, help="training rows per step")
    ap.add_argument("--eval-batch-size", type=int, default=64 if cuda else 16, help="rows per scoring batch")
    ap.add_argument("--answer-score", default="yes_minus_no", choices=["yes_logit", "yes_minus_no"],
                    help="model.answer_score of every LLM row but the hybrid ones")
    ap.add_argument("--train-precision", default="bf16" if cuda else "fp32", choices=["fp32", "bf16"],
                    help="training precision: fp32 (run.amp=false; every CPU row made before 6 December 2026) or "
                         "bf16 (run.amp=true run.cpu_amp=true: autocast on CUDA and on CPUs with bf16 units); "
                         "default bf16 on CUDA, fp32 on CPU; scoring as --eval-dtype / --eval-amp say")
    ap.add_argument("--train-negatives", type=int, default=0,
                    help="datasets.*.train_negatives of the CoLLM rows' training: per training row, this many "
                         "extra rows labelled 0 of items the user never rated (0: the rated rows only, as CoLLM)")
    ap.add_argument("--cf-oof", type=int, default=0,
                    help="hybrid rows: the training rows' CF logits out of fold, from this many CF models each "
                         "trained without one fold (baseline_train.py run.oof_folds; datasets.*.cf_logits); 0: "
                         "the CF model's own")
    ap.add_argument("--hybrid-cf", choices=CF_NAMES, default=None,
                    help="hybrid rows: the score adds this CF model's logit (model.hybrid_cf_path; its out-of-fold "
                         "logits with --cf-oof) instead of the --cf encoder's, whose vectors the LLM reads: "
                         "CoLLM-<cf> (hybrid on <this>)")
    ap.add_argument("--hybrid-llm-weight", type=float, default=None,
                    help="hybrid rows: model.hybrid_llm_weight, a learned weight on the LLM's log-odds starting at "
                         "this value (0: training starts from the CF model's scores); default: none")
    ap.add_argument("--eval-amp", default="auto", choices=["auto", "off", "on"],
                    help="run.amp_scoring of the scoring runs: auto (bf16 autocast on CUDA, fp32 on CPU), on, off")
    ap.add_argument("--frozen-prefix", default="auto", choices=["auto", "off"],
                    help="run.frozen_prefix of training (stage 2 with LoRA frozen: the prompt before the first ID "
                         "slot without gradients; equal gradients, less time)")
    ap.add_argument("--compile", default="off", choices=["auto", "on", "off"], help="run.compile of training")
    ap.add_argument("--save-every-min", type=float, default=30.0,
                    help="training writes checkpoint_last.pth at least this often (run.save_every_minutes); a row "
                         "whose training was stopped resumes from it when the same command runs again")
    ap.add_argument("--eval-dtype", default="auto",
                    help="model.dtype of the scoring runs (auto: fp32 on CPU, bf16 on CUDA)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--run-seed", nargs="+", type=int, default=[DEFAULT_RUN_SEED],
                    help="run.seed of training (initialisation, batch order); several values: a row each, named "
                         "with its seed; stage 1 uses the first")
    ap.add_argument("--seed", type=int, default=0, help="seed of the row samples (training subset, validation/test "
                                                        "samples)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads of each step (OMP_NUM_THREADS); 0: torch's default")
    ap.add_argument("--rerun", action="store_true", help="run steps again even when <out> holds them finished")
    ap.add_argument("--dry-run", action="store_true", help="print each step's command; run nothing")
    ap.add_argument("--collect", action="store_true",
                    help="run nothing: rebuild the JSON, PNG and table from every row in --out")
    args = ap.parse_args(argv)
    args.cuda = cuda
    if args.cf_oof and (args.cf_oof < 2 or "hybrid" not in args.rows):
        ap.error("--cf-oof: 2 or more folds, for --rows hybrid (the logits a hybrid score trains on)")
    if args.hybrid_cf and (not {"hybrid", "blend"} & set(args.rows) or args.hybrid_cf in args.cf):
        ap.error("--hybrid-cf: for --rows hybrid or blend, with --cf naming the encoders the LLM reads, all other than "
                 "the --hybrid-cf model (with the same one it is the plain hybrid), e.g. --cf MF --hybrid-cf SASRec")
    if "blend" in args.rows and args.answer_score != "yes_minus_no":
        ap.error("--rows blend weighs the log-odds of checkpoints trained with --answer-score yes_minus_no")
    if args.hybrid_llm_weight is not None and "hybrid" not in args.rows:
        ap.error("--hybrid-llm-weight: for --rows hybrid (the weight is on a hybrid score's LLM part)")
    for flag in ("train_rows", "epochs", "proj_tokens", "lr"):
        if any(v < 0 or (v == 0 and flag != "train_rows") for v in getattr(args, flag)):
            ap.error(f"--{flag.replace('_', '-')} values must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.collect:
        return collect(args)
    if not os.path.isdir(args.backbone) and set(args.rows) - {"cf"}:
        sys.path.insert(0, REPO)
        from collm_faissret.data_prep.backbone import build

        build("smollm2", args.backbone)
    bench = Bench(args)
    os.makedirs(bench.out, exist_ok=True)
    kinds = set(args.rows)
    if "cf" in kinds:
        for cf in args.cf:
            bench.cf_row(cf)
    if "zero-shot" in kinds:
        bench.zero_shot_row()
    if "stage1" in kinds:
        bench.stage1_row()
    for s in bench.settings():
        if "collm" in kinds:
            bench.collm_row(s)
        if "cold" in kinds:
            bench.cold_row(s)
        hybrid = replace(s, score="hybrid", oof=args.cf_oof, llm_weight=args.hybrid_llm_weight,
                         hybrid_cf=args.hybrid_cf)
        if "hybrid" in kinds:
            bench.collm_row(hybrid)
        if "blend" in kinds:
            bench.blend_row(s)
        if "rank" in kinds:
            for t in [s] if "hybrid" not in kinds else [s, hybrid] if "collm" in kinds else [hybrid]:
                bench.rank_row(t)
    return 0 if args.dry_run else collect(args)


if __name__ == "__main__":
    sys.exit(main())
