"""Held-out quality of a trained detector on the synthetic benchmark (issue 6).

    python experiments/train.py experiment=gdino_synthetic_quality logger=csv
    python experiments/benchmarks/detector_synthetic_quality.py CHECKPOINT [--n-test 200]

Renders fresh test scenes with the run's scene parameters but another scene seed (``--seed``,
default 1; training and its validation used seed 0), so no test image, item image or caption
was seen while training or tuning. ``val_seen`` holds the 140 seen colour × object categories
(prompted with all of them, chunked), ``val_unseen`` only the 20 held-out compositions (a
zero-shot test of composition). Prints per split COCO box AP / AP50 (the validation metric), Fixed
AP and a class-agnostic AP50 that separates localisation from naming.
"""

import argparse
import os
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict
from torchmetrics.detection import MeanAveragePrecision
from torchvision.ops import box_convert

from experiments.checkpoints import load_checkpoint
from experiments.detect import load_model
from lightning_modules.components.detection.fixed_ap import FixedAP

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[2]))


def held_out_scenes(seed: int, n_test: int) -> dict[str, int]:
    """``data.synthetic`` settings of the held-out report: ``n_test`` images per evaluation split
    at scene ``seed``, and one training image (the rendered folder needs the split; not read)."""
    return {"seed": seed, "n_val": n_test, "n_train": 1}


def held_out_datamodule(run_config: dict, seed: int, n_test: int, data_dir: str | None):
    """The run's datamodule, rendering ``n_test`` images per evaluation split at scene ``seed``."""
    data = OmegaConf.create(run_config).data
    with open_dict(data):
        if data_dir:
            data.data_dir = data_dir
        for key, value in held_out_scenes(seed, n_test).items():
            data.synthetic[key] = value
    return instantiate(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--n-test", type=int, default=200, help="images per split")
    parser.add_argument("--seed", type=int, default=1, help="scene seed of the test images")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--nms-iou", type=float, default=None,
                        help="class-wise NMS IoU before the top-K (default: the run's, off)")  # fmt: skip
    parser.add_argument("--data-dir", default=os.environ.get("DATA_DIR"),
                        help="MNIST/Fashion-MNIST root (default: $DATA_DIR)")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ckpt = load_checkpoint(args.checkpoint)
    if ckpt["run_config"]["data"].get("synthetic") is None:
        raise SystemExit(f"{args.checkpoint} was not trained on the synthetic benchmark")
    module = load_model(args.checkpoint)
    if args.nms_iou is not None:
        module.hparams.nms_iou = args.nms_iou
    datamodule = held_out_datamodule(ckpt["run_config"], args.seed, args.n_test, args.data_dir)
    datamodule.prepare_data()
    datamodule.setup("test")
    step = ckpt.get("global_step", "?")
    print(f"\ncheckpoint {args.checkpoint} (step {step}); test scenes: seed {args.seed}, "
          f"{args.n_test} images per split, {datamodule.synthetic_dir()}")  # fmt: skip
    print("\n| split | categories | AP | AP50 | Fixed AP | class-agnostic AP50 |")
    print("|---|---|---|---|---|---|")
    for name, loader in zip(datamodule.val_names, datamodule.test_dataloader(), strict=True):
        m = evaluate(module, loader)
        cats = len(loader.dataset.base.records[0].categories)
        print(f"| {name} | {cats} | {m['map']:.3f} | {m['map_50']:.3f} | {m['fixed_map']:.3f} "
              f"| {m['agnostic_map_50']:.3f} |")  # fmt: skip


@torch.no_grad()
def evaluate(module, loader) -> dict[str, float]:
    """COCO AP / AP50 (top 100 per image), Fixed AP (no per-image cap) and class-agnostic AP50
    (each box once, at its best category's score: is localisation or naming the weak part?)."""
    standard = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")
    agnostic = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")
    standard.warn_on_many_detections = agnostic.warn_on_many_detections = False
    fixed = FixedAP()
    for batch in loader:
        sizes = [meta["orig_size"] for meta in batch["meta"]]
        preds = module.predict_batch(batch["images"], batch["pad_mask"], batch["prompts"], sizes)
        gts = []
        for t, (h, w) in zip(batch["targets"], sizes, strict=True):
            xyxy = box_convert(t["boxes"].float(), "cxcywh", "xyxy") * torch.tensor([w, h, w, h])
            gts.append({"boxes": xyxy, "labels": t["category_id"]})
        standard.update(preds, gts)
        fixed.update(preds, gts)
        agnostic.update([_one_box_per_query(p) for p in preds],
                        [{**g, "labels": torch.zeros_like(g["labels"])} for g in gts])  # fmt: skip
    s, a, f = standard.compute(), agnostic.compute(), fixed.compute()
    return {"map": float(s["map"]), "map_50": float(s["map_50"]),
            "fixed_map": float(f["map"]), "agnostic_map_50": float(a["map_50"])}  # fmt: skip


def _one_box_per_query(pred: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A query's (query, category) candidates share one box: keep it once, at its top score."""
    boxes, inverse = pred["boxes"].unique(dim=0, return_inverse=True)
    scores = (
        pred["scores"]
        .new_zeros(len(boxes))
        .scatter_reduce(0, inverse, pred["scores"], "amax", include_self=False)
    )
    return {"boxes": boxes, "scores": scores, "labels": torch.zeros(len(boxes), dtype=torch.long)}


if __name__ == "__main__":
    main()
