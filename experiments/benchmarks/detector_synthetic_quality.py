"""Held-out quality of a trained detector on the synthetic benchmark (issue 6).

    python experiments/train.py experiment=gdino_synthetic_quality logger=csv
    python experiments/benchmarks/detector_synthetic_quality.py CHECKPOINT [--n-test 200]

Renders fresh test scenes with the run's scene parameters but another scene seed (``--seed``,
default 1; training and its validation used seed 0), so no test image, item image or caption
was seen while training or tuning. ``val_seen`` holds the 140 seen colour × object categories
(prompted with all of them, chunked), ``val_unseen`` only the 20 held-out compositions (a
zero-shot test of composition). Prints COCO box AP / AP50 per split.
"""

import argparse
import json
import os
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from experiments.checkpoints import load_checkpoint
from experiments.detect import load_model

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[2]))


def held_out_datamodule(run_config: dict, seed: int, n_test: int, data_dir: str | None):
    """The run's datamodule, rendering ``n_test`` images per evaluation split at scene ``seed``."""
    data = OmegaConf.create(run_config).data
    with open_dict(data):
        if data_dir:
            data.data_dir = data_dir
        data.synthetic.seed = seed
        data.synthetic.n_train = 1  # the rendered folder needs a training split; unused here
        data.synthetic.n_val = n_test
    return instantiate(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--n-test", type=int, default=200, help="images per split")
    parser.add_argument("--seed", type=int, default=1, help="scene seed of the test images")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-dir", default=os.environ.get("DATA_DIR"),
                        help="MNIST/Fashion-MNIST root (default: $DATA_DIR)")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ckpt = load_checkpoint(args.checkpoint)
    if ckpt["run_config"]["data"].get("synthetic") is None:
        raise SystemExit(f"{args.checkpoint} was not trained on the synthetic benchmark")
    module = load_model(args.checkpoint)
    datamodule = held_out_datamodule(ckpt["run_config"], args.seed, args.n_test, args.data_dir)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False)  # fmt: skip
    trainer.test(module, datamodule=datamodule, verbose=False)
    m = {k: float(v) for k, v in trainer.callback_metrics.items()}
    step = ckpt.get("global_step", "?")
    print(f"\ncheckpoint {args.checkpoint} (step {step}); test scenes: seed {args.seed}, "
          f"{args.n_test} images per split, {datamodule.synthetic_dir()}")  # fmt: skip
    print("\n| split | categories | AP | AP50 |\n|---|---|---|---|")
    for split, prefix in (("val_seen", "test"), ("val_unseen", "test_unseen")):
        coco = json.loads((datamodule.synthetic_dir() / f"{split}.coco.json").read_text())
        cats = len(coco["categories"])
        print(f"| {split} | {cats} | {m[f'{prefix}/mAP']:.3f} | {m[f'{prefix}/mAP_50']:.3f} |")


if __name__ == "__main__":
    main()
