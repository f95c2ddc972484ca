"""DINO-X extensions on the synthetic benchmark: one table row per checkpoint and split.

    python experiments/benchmarks/dinox_synthetic.py CKPT [CKPT ...]

Each checkpoint of ``experiments/train.py`` (a ``gdino_dinox_*`` run) is evaluated on its
``val_seen`` / ``val_unseen`` splits with ``experiments/evaluate.py`` (``trainer.test``), which
logs whatever that run's model evaluates: text box AP, visual-prompt AP next to text AP on the
same images and categories, prompt-free class-agnostic AP / AR@100, mask AP and keypoint OKS AP.
Metrics a run does not evaluate show as "-".
"""

import argparse
import tempfile
import time

import torch

from experiments.compose import compose_run_config
from experiments.evaluate import evaluate

COLUMNS = {
    "text AP50": "mAP_50", "visual AP50": "visual_mAP_50", "text AP50 (same imgs/cats)":
    "visual_text_mAP_50", "agnostic AP50": "agnostic_mAP_50", "agnostic AR@100":
    "agnostic_mAR_100", "mask AP": "mask_mAP", "keypoint OKS AP": "kpt_AP",
}  # fmt: skip


def rows(checkpoint: str) -> list[list[str]]:
    """Evaluates ``checkpoint``; one row per split (test = val_seen, test_unseen = val_unseen)."""
    with tempfile.TemporaryDirectory() as out:
        metrics = evaluate(compose_run_config("eval", [f"ckpt_path={checkpoint}"], out))
    table = []
    for split, prefix in (("val_seen", "test"), ("val_unseen", "test_unseen")):
        values = [metrics.get(f"{prefix}/{key}") for key in COLUMNS.values()]
        table.append([checkpoint, split, *("-" if v is None else f"{v:.3f}" for v in values)])
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoints", nargs="+")
    args = parser.parse_args()
    torch.set_num_threads(1)
    table = []
    for ckpt in args.checkpoints:
        start = time.perf_counter()
        table += rows(ckpt)
        print(f"evaluated {ckpt} in {time.perf_counter() - start:.0f} s")
    header = ["checkpoint", "split", *COLUMNS]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in table:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
