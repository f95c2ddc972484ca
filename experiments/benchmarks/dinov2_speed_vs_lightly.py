"""DINOv2 training-step speed: this project's ``DINOv2LitModule`` against lightly's DINOv2 blocks.

Both sides train the same timm ``VisionTransformer`` (one instance built by
``DINOv2Backbone``, deep-copied for lightly) on the same batch of multi-crop tensors and block
masks, with the same head sizes, prototypes, temperatures and loss weights:
DINO (centering) + iBOT (masked patches, shared head) + 0.1·KoLeo on both global crops,
AdamW, gradient clipping at 3.0, and an EMA teacher update per step. Data loading is excluded.

lightly (``lightly.loss.DINOLoss / IBOTPatchLoss / KoLeoLoss``, ``DINOv2ProjectionHead``,
``MaskedVisionTransformerTIMM``, ``update_momentum``) has no Sinkhorn-Knopp targets, no
step-indexed lr / wd / last-layer schedules and no per-module clipping; its side uses
centering, fixed values and one global clipping norm (lightly's own choice), so it does
slightly less work per step than ours (schedules and three clipping groups).

Each implementation runs in its own child process (so its peak memory is its own), the two
alternate ``--rounds`` times to share the machine's load, and the table reports the median
step time over all timed steps, images/s (``batch`` images, each 2 global + ``n_local`` local
crops), the peak resident memory above the process's state before the first step, FLOPs of one
step (``torch.utils.flop_counter``: forward, backward, teacher) and achieved GFLOP/s, next to
the fp32 matmul peak of one thread measured in the same run.

    python experiments/benchmarks/dinov2_speed_vs_lightly.py            # ~5 min on 2 busy cores
    python experiments/benchmarks/dinov2_speed_vs_lightly.py --depth 12 --batch 32
"""

import argparse
import copy
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

Step = Callable[[int], None]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--embed-dim", type=int, default=192)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--patch", type=int, default=4)
    p.add_argument("--global-size", type=int, default=32)
    p.add_argument("--local-size", type=int, default=16)
    p.add_argument("--n-local", type=int, default=8)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--prototypes", type=int, default=1024)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--bottleneck", type=int, default=256)
    p.add_argument("--drop-path", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=8, help="timed steps per round")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--child", choices=["ours", "lightly"], help=argparse.SUPPRESS)
    return p.parse_args(argv)


def make_batch(a: argparse.Namespace) -> dict[str, Tensor]:
    """Random crops and stratified block masks through this project's multi-crop collate."""
    from datamodules.components.masking import BlockMaskGenerator
    from datamodules.components.multicrop_collate import MultiCropCollate

    gen = torch.Generator().manual_seed(0)
    g, loc = a.global_size, a.local_size
    samples = [
        {
            "global_crops": [torch.randn(3, g, g, generator=gen) for _ in range(2)],
            "local_crops": [torch.randn(3, loc, loc, generator=gen) for _ in range(a.n_local)],
        }
        for _ in range(a.batch)
    ]
    grid = g // a.patch
    collate = MultiCropCollate(BlockMaskGenerator(grid, max_num_patches=0.5 * grid**2), seed=0)
    return collate(samples)


def build_backbone(a: argparse.Namespace) -> nn.Module:
    from lightning_modules.components.vit import DINOv2Backbone

    torch.manual_seed(0)
    return DINOv2Backbone(
        img_size=a.global_size, patch_size=a.patch, embed_dim=a.embed_dim, depth=a.depth,
        num_heads=a.heads, layerscale_init=1e-5, drop_path=a.drop_path,
    )  # fmt: skip


def ours(a: argparse.Namespace, batch: dict[str, Tensor]) -> Step:
    """One optimizer step of ``DINOv2LitModule`` as its hooks run it, without the Trainer."""
    from lightning_modules.components.ema import update_momentum_foreach
    from lightning_modules.components.param_groups import build_param_groups
    from lightning_modules.dinov2_module import DINOv2LitModule
    from lightning_modules.dinov2_schedules import DINOv2Schedules

    head = {"out_dim": a.prototypes, "hidden_dim": a.hidden, "bottleneck_dim": a.bottleneck}
    module = DINOv2LitModule(
        build_backbone(a), dino_head={**head, "nlayers": 3}, ibot={"weight": 1.0},
        koleo={"weight": 0.1}, teacher={"target_mode": "centering"}, optim={},
        batch_size=a.batch,
    )  # fmt: skip
    module.train()
    cfg = module.optim_cfg
    groups = build_param_groups(module.student, module.student.backbone.num_blocks)
    optimizer = torch.optim.AdamW(groups, lr=0.0, betas=cfg.betas)
    total = 1000
    schedules = DINOv2Schedules.build(cfg, module.teacher_cfg, total, a.batch)

    def step(i: int) -> None:
        values = schedules.apply(optimizer, i)
        losses = module.compute_losses(batch, values["teacher_temp"])
        losses["loss"].backward()
        for params in module._clip_groups().values():
            torch.nn.utils.clip_grad_norm_(params, module.clip_cfg["max_norm"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        update_momentum_foreach(module.teacher, module.student, 0.996)

    return step


def lightly_step(a: argparse.Namespace, batch: dict[str, Tensor]) -> Step:
    """The same step written with lightly's DINOv2 building blocks (its example's structure)."""
    from lightly.loss import DINOLoss, IBOTPatchLoss, KoLeoLoss
    from lightly.models.modules import DINOv2ProjectionHead, MaskedVisionTransformerTIMM
    from lightly.models.utils import update_momentum

    vit = copy.deepcopy(build_backbone(a).vit)
    student_backbone = MaskedVisionTransformerTIMM(  # keep the shared init ("skip")
        vit=vit, weight_initialization="skip", antialias=False, pos_embed_initialization="skip"
    )
    teacher_backbone = copy.deepcopy(student_backbone).requires_grad_(False).eval()
    sizes = {"input_dim": a.embed_dim, "hidden_dim": a.hidden, "bottleneck_dim": a.bottleneck}
    student_head = DINOv2ProjectionHead(**sizes, output_dim=a.prototypes)
    # its legacy weight_norm cannot be deep-copied: a second head takes the student's weights
    teacher_head = DINOv2ProjectionHead(**sizes, output_dim=a.prototypes)
    teacher_head.load_state_dict(student_head.state_dict())
    teacher_head.requires_grad_(False).eval()
    dino_loss, ibot_loss = DINOLoss(output_dim=a.prototypes), IBOTPatchLoss(a.prototypes)
    koleo_loss = KoLeoLoss()
    params = [*student_backbone.parameters(), *student_head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=5e-4, weight_decay=0.04)
    global_crops, local_crops = batch["global_crops"], batch["local_crops"]
    grid = a.global_size // a.patch
    block_mask = batch["masks"].view(-1, grid, grid)  # (2B, H, W), the same masks as ours
    token_mask = torch.cat([block_mask.new_zeros(len(block_mask), 1), block_mask.flatten(1)], 1)

    def step(i: int) -> None:
        with torch.no_grad():
            t_tokens = teacher_backbone.encode(global_crops)
            t_cls = teacher_head(t_tokens[:, 0])
            t_patch = teacher_head(t_tokens[token_mask])
        s_tokens = student_backbone.encode(global_crops, mask=token_mask)
        s_local = student_backbone.encode(local_crops)[:, 0]
        s_cls = student_head(torch.cat([s_tokens[:, 0], s_local]))
        loss = dino_loss(t_cls.chunk(2), s_cls.chunk(2 + a.n_local), teacher_temp=0.04)
        loss = loss + ibot_loss(t_patch, student_head(s_tokens[token_mask]), block_mask, 0.04)
        loss = loss + 0.1 * sum(koleo_loss(c) for c in s_tokens[:, 0].chunk(2))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 3.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        update_momentum(student_backbone, teacher_backbone, m=0.996)
        update_momentum(student_head, teacher_head, m=0.996)

    return step


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_child(a: argparse.Namespace) -> dict[str, Any]:
    """Build one implementation, count one step's FLOPs, time ``steps`` steps after a warmup."""
    torch.set_num_threads(a.threads)
    batch = make_batch(a)
    step = (ours if a.child == "ours" else lightly_step)(a, batch)
    rss_before = peak_rss_mib()
    with FlopCounterMode(display=False) as counter:
        step(0)
    for i in range(1, a.warmup):
        step(i)
    times = []
    for i in range(a.warmup, a.warmup + a.steps):
        start = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - start)
    return {
        "times": times,
        "flops": counter.get_total_flops(),
        "peak_mib": peak_rss_mib() - rss_before,
    }


def matmul_peak_gflops(threads: int, n: int = 1024, repeats: int = 10) -> float:
    """Best fp32 GFLOP/s of an n×n matmul on ``threads`` threads (the achievable peak)."""
    torch.set_num_threads(threads)
    x, y = torch.randn(n, n), torch.randn(n, n)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        x @ y
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    if a.child:
        print(json.dumps(run_child(a)))
        return
    argv = list(sys.argv[1:] if argv is None else argv)
    results: dict[str, dict[str, Any]] = {}
    for _ in range(a.rounds):
        for impl in ("ours", "lightly"):
            out = subprocess.run(
                [sys.executable, __file__, *argv, "--child", impl],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            got = json.loads(out.strip().splitlines()[-1])
            r = results.setdefault(impl, {"times": [], "peak_mib": 0.0})
            r["times"] += got["times"]
            r["flops"] = got["flops"]
            r["peak_mib"] = max(r["peak_mib"], got["peak_mib"])
    peak = matmul_peak_gflops(a.threads)
    print(
        f"ViT {a.embed_dim}x{a.depth} (heads {a.heads}, patch {a.patch}), crops {a.global_size}/"
        f"{a.local_size} px x 2+{a.n_local}, batch {a.batch}, K={a.prototypes}, "
        f"{a.threads} thread(s), {a.rounds}x{a.steps} timed steps each"
    )
    print(f"{'implementation':<16}{'step s':>9}{'images/s':>10}{'peak MiB':>10}"
          f"{'GFLOP/step':>12}{'GFLOP/s':>9}{'of peak':>9}")  # fmt: skip
    for impl, r in results.items():
        t = statistics.median(r["times"])
        gflops = r["flops"] / 1e9
        print(f"{impl:<16}{t:>9.3f}{a.batch / t:>10.2f}{r['peak_mib']:>10.0f}{gflops:>12.2f}"
              f"{gflops / t:>9.2f}{gflops / t / peak:>9.1%}")  # fmt: skip
    ratio = statistics.median(results["lightly"]["times"]) / statistics.median(
        results["ours"]["times"]
    )
    print(f"fp32 matmul peak ({a.threads} thread(s), 1024^3): {peak:.1f} GFLOP/s")
    print(f"throughput ours / lightly: {ratio:.2f}x")


if __name__ == "__main__":
    main()
