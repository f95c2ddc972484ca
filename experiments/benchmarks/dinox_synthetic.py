"""DINO-X extensions on the synthetic benchmark: one table row per checkpoint and split.

    python experiments/benchmarks/dinox_synthetic.py CKPT [CKPT ...] [--n-test 200] [--seed 1]

Each checkpoint of ``experiments/train.py`` (a ``gdino_dinox_*`` run) is evaluated on held-out
``val_seen`` / ``val_unseen`` splits: the run's scene parameters, ``--n-test`` fresh images per
split rendered at scene ``--seed`` (default 200 at seed 1, the held-out report of issue 6;
training and its validation use seed 0), or with ``--own-splits`` the run's own validation
splits. ``experiments/evaluate.py`` (``trainer.test``) logs whatever that run's model
evaluates: text box AP, visual-prompt AP next to text AP on the same images and categories,
prompt-free class-agnostic AP / AR@100, mask AP and keypoint OKS AP.
Metrics a run does not evaluate show as "-".
"""

import argparse
import tempfile
import time
from collections.abc import Sequence

import torch

from experiments.benchmarks.detector_synthetic_quality import held_out_scenes
from experiments.compose import compose_run_config
from experiments.evaluate import evaluate

COLUMNS = {
    "text AP": "mAP", "text AP50": "mAP_50", "visual AP50": "visual_mAP_50",
    "text AP50 (same imgs/cats)": "visual_text_mAP_50", "agnostic AP50": "agnostic_mAP_50",
    "agnostic AR@100": "agnostic_mAR_100", "mask AP": "mask_mAP", "mask AP50": "mask_mAP_50",
    "keypoint OKS AP": "kpt_AP", "keypoint OKS AP50": "kpt_AP_50",
}  # fmt: skip


def held_out_overrides(seed: int, n_test: int) -> list[str]:
    """``experiments/evaluate.py`` data overrides for the held-out report's scenes
    (``held_out_scenes``)."""
    return [
        f"+data.synthetic.{key}={value}" for key, value in held_out_scenes(seed, n_test).items()
    ]


def rows(checkpoint: str, overrides: Sequence[str] = ()) -> list[list[str]]:
    """Evaluates ``checkpoint`` with ``evaluate.py`` ``overrides``; one row per split
    (test = val_seen, test_unseen = val_unseen)."""
    with tempfile.TemporaryDirectory() as out:
        cfg = compose_run_config("eval", [f"ckpt_path={checkpoint}", *overrides], out)
        metrics = evaluate(cfg)
    table = []
    for split, prefix in (("val_seen", "test"), ("val_unseen", "test_unseen")):
        values = [metrics.get(f"{prefix}/{key}") for key in COLUMNS.values()]
        table.append([checkpoint, split, *("-" if v is None else f"{v:.3f}" for v in values)])
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--n-test", type=int, default=200, help="held-out images per split")
    parser.add_argument("--seed", type=int, default=1, help="scene seed of the held-out images")
    parser.add_argument("--own-splits", action="store_true",
                        help="evaluate on the run's own validation splits instead")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(1)
    overrides = [] if args.own_splits else held_out_overrides(args.seed, args.n_test)
    print("splits:", "the runs' own validation splits" if args.own_splits
          else f"{args.n_test} held-out images per split at scene seed {args.seed}")  # fmt: skip
    table = []
    for ckpt in args.checkpoints:
        start = time.perf_counter()
        table += rows(ckpt, overrides)
        print(f"evaluated {ckpt} in {time.perf_counter() - start:.0f} s")
    header = ["checkpoint", "split", *COLUMNS]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in table:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
