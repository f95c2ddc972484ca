"""Pretrains the detector's CNN backbone as a colour × object classifier (issue 6).

Crop-size curriculum (the recipe since session 7; RESULTS.md, issue 6): tight crops first, where
the item fills the frame and its shape is learned ~10× faster, then the scene-scale crops:

    python experiments/benchmarks/detector_backbone_pretrain.py --steps 1500 --batch 64 --lr 2e-3 \
        --crop-size 32 --min-scale 28 --max-scale 32 --out logs/backbone_c32.pt
    python experiments/benchmarks/detector_backbone_pretrain.py --steps 1500 --batch 64 --lr 1e-3 \
        --crop-size 64 --min-scale 28 --max-scale 48 --init logs/backbone_c32.pt \
        --start-index 200000 --out logs/backbone_c32_c64.pt
    python experiments/train.py experiment=gdino_synthetic_quality_pretrained \
        model.detector.backbone.checkpoint=logs/backbone_c32_c64.pt

Grounding DINO starts from an ImageNet-pretrained backbone; there is no ImageNet here, so the
stand-in is a classifier pretrained on single-item crops rendered the way the synthetic scene
generator renders its items (``datamodules/components/synthetic_scenes.py``): a textured random
canvas, one MNIST / Fashion-MNIST item resized to the scenes' item scale, its grey value the
alpha, tinted with its colour ± the generator's jitter. Two heads on the globally pooled last
stage: colour (8-way) and object (20-way).

No held-out information leaks: crops use **only the seen colour × object pairs** (the 20
held-out compositions of the scene generator never appear) and **only train-split items**.
Evaluation crops use test-split items; their accuracy on the held-out pairs is reported as a
zero-shot composition check only.

The saved file is ``{"state_dict": <timm model weights without heads>, "meta": {...}}``; its
keys are those of the ``features_only`` timm model, so ``TimmBackbone(checkpoint=...)`` loads it.
"""

import argparse
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from datamodules.components.detection_collate import IMAGENET_MEAN, IMAGENET_STD
from datamodules.components.synthetic_scenes import (
    COLOURS,
    SceneConfig,
    SyntheticScenes,
    _texture,
    load_items,
)

_SEED_STRIDE = 1_000_003


class CropRenderer:
    """Single-item crops of the synthetic scenes' categories: ``render(i)`` → (image (3, S, S)
    uint8, colour index, object index), a pure function of (seed, split, i).

    ``split="train"`` draws only the seen colour × object pairs and train-split items;
    ``"val_seen"`` the seen pairs with test-split items; ``"val_unseen"`` the held-out pairs with
    test-split items (evaluation only).
    """

    def __init__(
        self,
        data_root: str | None,
        split: str = "train",
        seed: int = 0,
        crop_size: int = 64,
        min_scale: int = 28,
        max_scale: int = 48,
        colour_jitter: int = SceneConfig.colour_jitter,
    ) -> None:
        if min_scale > crop_size or max_scale > crop_size:
            raise ValueError(f"item scales {min_scale}-{max_scale} exceed the crop {crop_size}")
        self.scenes = SyntheticScenes(data_root, seed=seed)
        self.split, self.seed = split, seed
        self.crop_size, self.min_scale, self.max_scale = crop_size, min_scale, max_scale
        self.colour_jitter = colour_jitter
        self.labels = self.scenes.split_labels(split)  # category = object · n_colours + colour
        self.bank = load_items(self.scenes.data_root, split == "train")
        self.n_colours, self.n_objects = len(self.scenes.colours), len(self.scenes.objects)

    def render(self, index: int) -> tuple[torch.Tensor, int, int]:
        key = (self.seed * _SEED_STRIDE + 7 + ("train", "val_seen", "val_unseen").index(
            self.split)) * _SEED_STRIDE + index  # fmt: skip
        g = torch.Generator().manual_seed(key % (2**62))
        size = self.crop_size
        canvas = _texture(size, g)
        label = self.labels[int(torch.randint(len(self.labels), (), generator=g))]
        obj, colour = divmod(label, self.n_colours)
        pool = self.bank[obj]
        item = pool[int(torch.randint(len(pool), (), generator=g))].float()[None, None]
        s = int(torch.randint(self.min_scale, self.max_scale + 1, (), generator=g))
        y, x = torch.randint(0, size - s + 1, (2,), generator=g).tolist()
        patch = F.interpolate(item, size=(s, s), mode="bilinear", antialias=True)[0, 0]
        alpha = (patch / 255.0).clamp(0, 1)
        base = torch.tensor(COLOURS[self.scenes.colours[colour]], dtype=torch.float32)
        jitter = (torch.rand(3, generator=g) * 2 - 1) * self.colour_jitter
        tint = (base + jitter).clamp(0, 255)[:, None, None]
        region = canvas[:, y : y + s, x : x + s]
        region.mul_(1 - alpha).add_(tint * alpha)
        return canvas.round().clamp(0, 255).to(torch.uint8), colour, obj

    def batch(self, start: int, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Crops start..start+n-1 → ImageNet-normalised (n, 3, S, S), colours (n,), objects (n,)."""
        crops = [self.render(i) for i in range(start, start + n)]
        images = torch.stack([c[0] for c in crops]).float() / 255.0
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        colours = torch.tensor([c[1] for c in crops])
        objects = torch.tensor([c[2] for c in crops])
        return (images - mean) / std, colours, objects


class ColourObjectClassifier(nn.Module):
    """A timm CNN (global average pool) with a colour head and an object head."""

    def __init__(self, n_colours: int, n_objects: int, name: str = "resnet18", **timm_kwargs):
        super().__init__()
        import timm

        self.body = timm.create_model(name, num_classes=0, **timm_kwargs)
        self.colour_head = nn.Linear(self.body.num_features, n_colours)
        self.object_head = nn.Linear(self.body.num_features, n_objects)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.body(x)
        return self.colour_head(f), self.object_head(f)


@torch.no_grad()
def accuracy(model: nn.Module, renderer: CropRenderer, n: int, bs: int = 200) -> dict[str, float]:
    model.eval()
    hits = torch.zeros(3)
    for start in range(0, n, bs):
        x, c, o = renderer.batch(start, min(bs, n - start))
        lc, lo = model(x)
        pc, po = lc.argmax(1) == c, lo.argmax(1) == o
        hits += torch.stack([pc.sum(), po.sum(), (pc & po).sum()]).float()
    model.train()
    colour, obj, both = (hits / n).tolist()
    return {"colour": colour, "object": obj, "both": both}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="logs/bench_s4/backbone_pretrained.pt")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--crop-size", type=int, default=64)
    parser.add_argument("--min-scale", type=int, default=28)
    parser.add_argument("--max-scale", type=int, default=48)
    parser.add_argument("--n-eval", type=int, default=1000)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--init", help="continue from this script's output (body weights; "
                        "the heads are saved too and restored when present)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start-index", type=int, default=0,
                        help="first crop index (a continuation uses fresh crops)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-dir", default=os.environ.get("DATA_DIR"),
                        help="MNIST/Fashion-MNIST root (default: $DATA_DIR)")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    crop = dict(crop_size=args.crop_size, min_scale=args.min_scale, max_scale=args.max_scale)
    train = CropRenderer(args.data_dir, "train", args.seed, **crop)
    evals = {
        s: CropRenderer(args.data_dir, s, args.seed, **crop) for s in ("val_seen", "val_unseen")
    }
    timm_kwargs = dict(channels=[32, 64, 128, 256], stem_width=32)  # the detector's half width
    model = ColourObjectClassifier(train.n_colours, train.n_objects, "resnet18", **timm_kwargs)
    if args.init:
        saved = torch.load(args.init, map_location="cpu", weights_only=True)
        model.body.load_state_dict(saved["state_dict"])
        for name, head in saved.get("heads", {}).items():
            getattr(model, name).load_state_dict(head)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    warmup = min(100, args.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + torch.cos(
            torch.tensor(torch.pi * s / args.steps)).item()))  # fmt: skip
    print(f"pretraining on {len(train.labels)} seen pairs (held out: "
          f"{sorted(train.scenes.held_out)}), {args.steps} steps × {args.batch} crops")  # fmt: skip
    t0, cpu0 = time.time(), time.process_time()
    for step in range(args.steps):
        x, c, o = train.batch(args.start_index + step * args.batch, args.batch)
        lc, lo = model(x)
        loss = F.cross_entropy(lc, c) + F.cross_entropy(lo, o)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % 50 == 0:
            print(f"step {step + 1} loss {loss.item():.3f} ({time.time() - t0:.0f} s)", flush=True)
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            accs = {s: accuracy(model, r, args.n_eval) for s, r in evals.items()}
            print(f"step {step + 1} accuracy (colour / object / both): " + "; ".join(
                f"{s} {a['colour']:.3f} / {a['object']:.3f} / {a['both']:.3f}"
                for s, a in accs.items()), flush=True)  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(vars(args), timm_name="resnet18", timm_kwargs=timm_kwargs, accuracy=accs,
                held_out=sorted(train.scenes.held_out), wall_s=time.time() - t0,
                cpu_s=time.process_time() - cpu0)  # fmt: skip
    heads = {n: getattr(model, n).state_dict() for n in ("colour_head", "object_head")}
    torch.save({"state_dict": model.body.state_dict(), "heads": heads, "meta": meta}, out)
    print(f"saved {out} ({meta['wall_s']:.0f} s wall, {meta['cpu_s']:.0f} CPU-s)")


if __name__ == "__main__":
    main()
