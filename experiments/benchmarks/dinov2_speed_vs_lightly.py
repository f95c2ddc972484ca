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

Rows (``--variants``), all at the precision of ``--precision`` (fp32 by default; ``bf16-mixed``
runs every row's step, forward and backward, under the same ``torch.autocast("cpu", bfloat16)``,
as Lightning's ``precision="bf16-mixed"`` does, with fp32 parameters and optimizer state):

- ``ours``: ``DINOv2LitModule`` with its defaults (eager).
- ``ours-fast``: ``skip_unused_tokens`` (last block only for the CLS and masked-patch tokens the
  losses read), ``merge_head_calls`` (one head call on all rows) and ``fused_optimizer`` (AdamW
  ``fused=True``), eager.
- ``ours-fast-subset``: ``ours-fast`` plus ``drop_path_mode=batch_subset`` (the reference's
  efficient stochastic depth: each residual branch runs only on the ⌊(1−d)·B⌋ samples it keeps;
  with d = 0.1 that drops 12.5 % of the 32 global and 10.2 % of the 128 local crops per branch,
  against 10 % in expectation for timm's per-sample drop-path).
- ``ours-fast-compiled``: ``ours-fast`` plus ``compile`` (every ViT block through ``torch.compile``).
- ``ours-fast-subset-compiled``: ``ours-fast-subset`` plus ``compile`` (the subset drop-path
  lives in the block's ``forward``, so it is compiled with the block).
- ``ours-fast-subset-explicit`` (``-compiled``): ``ours-fast-subset`` (compiled) with
  ``fused_attention=False``: timm's explicit attention path (``softmax(q·kᵀ/√d)·v`` as batched
  matmuls) instead of ``F.scaled_dot_product_attention``, whose CPU bf16 backward is slow on
  these short sequences.
- ``lightly``: lightly's building blocks as its DINOv2 example wires them (eager).
- ``lightly-compiled``: the same with the generic switches any user can flip: every block of
  its (the same timm) ViT through the same ``torch.compile`` call, and AdamW ``fused=True``.
- ``lightly-explicit``: ``lightly`` with timm's explicit attention (``fused_attn=False`` on its
  timm ViT, the switch behind ``fused_attention=False``), eager.

Two phases. First each row runs alone in a child process for its memory (the peak resident
memory above the process's state before the first step, which for compiled rows includes
Inductor's compiler, and the resident memory above that start after ``--steps`` steps), its
FLOPs per step (``torch.utils.flop_counter`` on an eager run of the same step: forward,
backward, teacher) and its compile time (the first step's excess over a later step; the
children share a fresh Inductor cache, so this is a cold compile). Then one timing process
builds every row (compiled rows load that cache) and runs ``--rounds`` rounds of one step per
row, in a rotating order, so that all rows see the same load of this shared machine. Per row:
the median and quartiles of its interleaved wall-clock step times, the median CPU time of a
step (user + system of the process, 1 thread; a cross-check that does not count time slices
lost to other processes), images/s (``batch`` images, each 2 global + ``n_local`` local crops)
by wall clock, and the achieved GFLOP/s (by wall clock) next to the matmul peak of one thread
in the run's precision (wall clock too), measured in the timing process before and after the
rounds (the better is shown). Ratios against lightly are given by median wall clock, by the
median of the per-round wall-clock ratios (paired: the rows of one round run back to back) and
by median CPU time.

``--profile VARIANT`` instead profiles a few steps of one row with ``torch.profiler`` and
prints where the time goes (phases of the step, and aten operators by kind).

    python experiments/benchmarks/dinov2_speed_vs_lightly.py            # ~8-10 min on a quiet core
    python experiments/benchmarks/dinov2_speed_vs_lightly.py --variants ours lightly
    python experiments/benchmarks/dinov2_speed_vs_lightly.py --precision bf16-mixed
    python experiments/benchmarks/dinov2_speed_vs_lightly.py --profile ours
"""

import argparse
import contextlib
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

Step = Callable[[int], None]
PRECISIONS = {"fp32": torch.float32, "bf16-mixed": torch.bfloat16}
VARIANTS = (
    "ours", "ours-fast", "ours-fast-subset", "ours-fast-compiled", "ours-fast-subset-compiled",
    "ours-fast-subset-explicit", "ours-fast-subset-explicit-compiled",
    "lightly", "lightly-compiled", "lightly-explicit",
)  # fmt: skip
# aten operators by kind, for the profile's breakdown (self CPU time); the rest is "other"
_MATMUL = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::mkldnn_convolution",
           "aten::convolution_backward", "aten::_scaled_dot_product_flash_attention_for_cpu",
           "aten::_scaled_dot_product_flash_attention_for_cpu_backward"}  # fmt: skip
_ELEMENTWISE = {"aten::gelu", "aten::gelu_backward", "aten::native_layer_norm",
                "aten::native_layer_norm_backward", "aten::add", "aten::add_", "aten::mul",
                "aten::mul_", "aten::div", "aten::div_", "aten::sub", "aten::sum", "aten::exp",
                "aten::_softmax", "aten::_log_softmax", "aten::_softmax_backward_data",
                "aten::_log_softmax_backward_data", "aten::bernoulli_", "aten::where",
                "aten::sqrt", "aten::addcdiv_", "aten::addcmul_", "aten::lerp_", "aten::neg",
                "aten::linalg_vector_norm", "aten::clamp_min", "aten::log", "aten::mean",
                "aten::fill_", "aten::zero_", "aten::_foreach_mul_", "aten::_foreach_add_",
                "aten::_fused_adamw_", "aten::norm", "aten::_weight_norm_interface",
                "aten::_weight_norm_interface_backward"}  # fmt: skip
_DATA_MOVEMENT = {"aten::copy_", "aten::cat", "aten::index", "aten::index_put_", "aten::gather",
                  "aten::scatter_add_", "aten::clone", "aten::index_select", "aten::empty",
                  "aten::empty_strided", "aten::as_strided", "aten::view", "aten::t",
                  "aten::transpose", "aten::permute", "aten::_unsafe_view", "aten::reshape",
                  "aten::expand", "aten::slice", "aten::select", "aten::unbind", "aten::split",
                  "aten::detach", "aten::resize_", "aten::new_empty_strided",
                  "aten::split_with_sizes"}  # fmt: skip


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
    p.add_argument("--steps", type=int, default=3, help="steps of each memory child")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per row")
    p.add_argument("--rounds", type=int, default=24, help="interleaved timed steps per row")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="every row in fp32, or under bf16 autocast (bf16-mixed)")  # fmt: skip
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    p.add_argument("--profile", choices=VARIANTS, help="profile this row instead of timing")
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--timing-child", action="store_true", help=argparse.SUPPRESS)
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


def build_backbone(
    a: argparse.Namespace, drop_path_mode: str = "per_sample", fused_attention: bool = True
) -> nn.Module:
    from lightning_modules.components.vit import DINOv2Backbone

    torch.manual_seed(0)
    return DINOv2Backbone(
        img_size=a.global_size, patch_size=a.patch, embed_dim=a.embed_dim, depth=a.depth,
        num_heads=a.heads, layerscale_init=1e-5, drop_path=a.drop_path,
        drop_path_mode=drop_path_mode, fused_attention=fused_attention,
    )  # fmt: skip


def _phase(name: str) -> contextlib.AbstractContextManager:
    """A named ``torch.profiler`` region (free when no profiler runs)."""
    return torch.profiler.record_function(f"phase: {name}")


def ours(
    a: argparse.Namespace,
    batch: dict[str, Tensor],
    fast: bool,
    compiled: bool,
    subset: bool,
    explicit: bool = False,
) -> Step:
    """One optimizer step of ``DINOv2LitModule`` as its hooks run it, without the Trainer."""
    from lightning_modules.components.ema import update_momentum_foreach
    from lightning_modules.dinov2_module import DINOv2LitModule
    from lightning_modules.dinov2_schedules import DINOv2Schedules

    head = {"out_dim": a.prototypes, "hidden_dim": a.hidden, "bottleneck_dim": a.bottleneck}
    module = DINOv2LitModule(
        build_backbone(a, "batch_subset" if subset else "per_sample", fused_attention=not explicit),
        dino_head={**head, "nlayers": 3}, ibot={"weight": 1.0},
        koleo={"weight": 0.1}, teacher={"target_mode": "centering"}, optim={},
        batch_size=a.batch, compile=compiled, fused_optimizer=fast, skip_unused_tokens=fast,
        merge_head_calls=fast,
    )  # fmt: skip
    module.configure_model()  # compiles the blocks when compile=True (first call compiles)
    module.train()
    optimizer = module.build_optimizer()
    schedules = DINOv2Schedules.build(module.optim_cfg, module.teacher_cfg, 1000, a.batch)
    teacher_targets = module._teacher_targets

    def profiled_teacher(*args: Any) -> tuple[Tensor, Tensor]:
        with _phase("teacher forward + targets"):
            return teacher_targets(*args)

    module._teacher_targets = profiled_teacher  # an instance attribute: a profiler label only

    def step(i: int) -> None:
        values = schedules.apply(optimizer, i)
        with _phase("forward + losses"):
            losses = module.compute_losses(batch, values["teacher_temp"])
        with _phase("backward"):
            losses["loss"].backward()
        with _phase("gradient clipping"):
            for params in module._clip_groups().values():
                torch.nn.utils.clip_grad_norm_(params, module.clip_cfg["max_norm"])
        with _phase("optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        with _phase("EMA"):
            update_momentum_foreach(module.teacher, module.student, 0.996)

    return step


def lightly_step(
    a: argparse.Namespace, batch: dict[str, Tensor], compiled: bool, explicit: bool = False
) -> Step:
    """The same step written with lightly's DINOv2 building blocks (its example's structure)."""
    from lightly.loss import DINOLoss, IBOTPatchLoss, KoLeoLoss
    from lightly.models.modules import DINOv2ProjectionHead, MaskedVisionTransformerTIMM
    from lightly.models.utils import update_momentum

    vit = copy.deepcopy(build_backbone(a, fused_attention=not explicit).vit)
    student_backbone = MaskedVisionTransformerTIMM(  # keep the shared init ("skip")
        vit=vit, weight_initialization="skip", antialias=False, pos_embed_initialization="skip"
    )
    teacher_backbone = copy.deepcopy(student_backbone).requires_grad_(False).eval()
    if compiled:  # the same call as DINOv2Backbone.compile_blocks
        for block in [*student_backbone.vit.blocks, *teacher_backbone.vit.blocks]:
            block.compile(dynamic=False)
    sizes = {"input_dim": a.embed_dim, "hidden_dim": a.hidden, "bottleneck_dim": a.bottleneck}
    student_head = DINOv2ProjectionHead(**sizes, output_dim=a.prototypes)
    # its legacy weight_norm cannot be deep-copied: a second head takes the student's weights
    teacher_head = DINOv2ProjectionHead(**sizes, output_dim=a.prototypes)
    teacher_head.load_state_dict(student_head.state_dict())
    teacher_head.requires_grad_(False).eval()
    dino_loss, ibot_loss = DINOLoss(output_dim=a.prototypes), IBOTPatchLoss(a.prototypes)
    koleo_loss = KoLeoLoss()
    params = [*student_backbone.parameters(), *student_head.parameters()]
    fused = {"fused": True} if compiled else {}
    optimizer = torch.optim.AdamW(params, lr=5e-4, weight_decay=0.04, **fused)
    global_crops, local_crops = batch["global_crops"], batch["local_crops"]
    grid = a.global_size // a.patch
    block_mask = batch["masks"].view(-1, grid, grid)  # (2B, H, W), the same masks as ours
    token_mask = torch.cat([block_mask.new_zeros(len(block_mask), 1), block_mask.flatten(1)], 1)

    def step(i: int) -> None:
        with _phase("forward + losses"):
            with _phase("teacher forward + targets"), torch.no_grad():
                t_tokens = teacher_backbone.encode(global_crops)
                t_cls = teacher_head(t_tokens[:, 0])
                t_patch = teacher_head(t_tokens[token_mask])
            s_tokens = student_backbone.encode(global_crops, mask=token_mask)
            s_local = student_backbone.encode(local_crops)[:, 0]
            s_cls = student_head(torch.cat([s_tokens[:, 0], s_local]))
            loss = dino_loss(t_cls.chunk(2), s_cls.chunk(2 + a.n_local), teacher_temp=0.04)
            s_patch = student_head(s_tokens[token_mask])
            loss = loss + ibot_loss(t_patch, s_patch, block_mask, 0.04)
            loss = loss + 0.1 * sum(koleo_loss(c) for c in s_tokens[:, 0].chunk(2))
        with _phase("backward"):
            loss.backward()
        with _phase("gradient clipping"):
            torch.nn.utils.clip_grad_norm_(params, 3.0)
        with _phase("optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        with _phase("EMA"):
            update_momentum(student_backbone, teacher_backbone, m=0.996)
            update_momentum(student_head, teacher_head, m=0.996)

    return step


def build_step(a: argparse.Namespace, variant: str) -> Step:
    batch = make_batch(a)
    if variant.startswith("lightly"):
        step = lightly_step(
            a, batch, compiled=variant == "lightly-compiled", explicit="explicit" in variant
        )
    else:
        step = ours(
            a, batch, fast=variant != "ours", compiled=variant.endswith("compiled"),
            subset="subset" in variant, explicit="explicit" in variant,
        )  # fmt: skip
    if a.precision == "fp32":
        return step

    def mixed_step(i: int) -> None:
        with torch.autocast("cpu", dtype=PRECISIONS[a.precision]):
            step(i)

    return mixed_step


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@contextlib.contextmanager
def eager() -> Iterator[None]:
    """Run compiled modules eagerly (the FLOP counter needs the eager operators)."""
    with torch.compiler.set_stance("force_eager"):
        yield


def timed(step: Step, i: int) -> tuple[float, float]:
    """Wall-clock and CPU seconds of one step."""
    start, cpu = time.perf_counter(), time.process_time()
    step(i)
    return time.perf_counter() - start, time.process_time() - cpu


def run_child(a: argparse.Namespace) -> dict[str, Any]:
    """One row alone: compile time, one step's FLOPs, memory after ``steps`` more steps."""
    torch.set_num_threads(a.threads)
    step = build_step(a, a.child)
    rss_before, current_before = peak_rss_mib(), current_rss_mib()
    first = timed(step, 0)[0]  # compiles the compiled rows
    with FlopCounterMode(display=False) as counter, eager():
        step(1)
    times = [timed(step, i)[0] for i in range(2, 2 + a.steps)]
    return {
        "compile_s": first - min(times),
        "flops": counter.get_total_flops(),
        "peak_mib": peak_rss_mib() - rss_before,
        "steady_mib": current_rss_mib() - current_before,
    }


def run_timing(a: argparse.Namespace) -> dict[str, Any]:
    """Every row in this process, one step per row per round in a rotating order."""
    torch.set_num_threads(a.threads)
    dtype = PRECISIONS[a.precision]
    peaks = [matmul_peak_gflops(a.threads, dtype)]
    steps = {row: build_step(a, row) for row in a.variants}
    for step in steps.values():
        for i in range(1 + a.warmup):
            step(i)
    times: dict[str, list[float]] = {row: [] for row in steps}
    cpu_times: dict[str, list[float]] = {row: [] for row in steps}
    rows = list(steps)
    for r in range(a.rounds):
        for row in rows[r % len(rows) :] + rows[: r % len(rows)]:
            wall, cpu = timed(steps[row], 1 + a.warmup + r)
            times[row].append(wall)
            cpu_times[row].append(cpu)
    peaks.append(matmul_peak_gflops(a.threads, dtype))
    return {"times": times, "cpu_times": cpu_times, "peak": max(peaks)}


def profile(a: argparse.Namespace) -> None:
    """Print one row's time by phase and by kind of aten operator (self CPU time)."""
    torch.set_num_threads(a.threads)
    step = build_step(a, a.profile)
    for i in range(1 + a.warmup):
        step(i)
    n = max(a.steps, 1)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for i in range(1 + a.warmup, 1 + a.warmup + n):
            step(i)
        wall = (time.perf_counter() - start) / n
    events = prof.key_averages()
    print(f"{a.profile}: {n} profiled steps, {wall:.3f} s per step under the profiler")
    print(f"{'phase':<28}{'s/step':>9}{'share':>8}")
    phases = {e.key[7:]: e.cpu_time_total / 1e6 / n for e in events if e.key.startswith("phase: ")}
    for name in ("forward + losses", "teacher forward + targets", "backward",
                 "gradient clipping", "optimizer", "EMA"):  # fmt: skip
        print(f"{name:<28}{phases[name]:>9.3f}{phases[name] / wall:>8.1%}")
    kinds = {"matmul (mm/addmm/conv/SDPA)": 0.0, "elementwise & norms": 0.0,
             "copies, cat, indexing, views": 0.0, "other aten ops": 0.0,
             "compiled kernels (Inductor)": 0.0}  # fmt: skip
    total = 0.0
    for e in events:
        t = e.self_cpu_time_total / 1e6 / n
        total += t
        if e.key in _MATMUL:
            kinds["matmul (mm/addmm/conv/SDPA)"] += t
        elif e.key in _ELEMENTWISE:
            kinds["elementwise & norms"] += t
        elif e.key in _DATA_MOVEMENT:
            kinds["copies, cat, indexing, views"] += t
        elif e.key.startswith("aten::"):
            kinds["other aten ops"] += t
        elif e.key.startswith("## Call CompiledFxGraph"):  # the fused C++ kernels run inside
            kinds["compiled kernels (Inductor)"] += t
    kinds["Python, autograd engine, dispatch"] = total - sum(kinds.values())
    print(f"{'operator kind':<36}{'s/step':>9}{'share':>8}")
    for kind, t in kinds.items():
        print(f"{kind:<36}{t:>9.3f}{t / total:>8.1%}")
    print(events.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60))


def matmul_peak_gflops(
    threads: int, dtype: torch.dtype = torch.float32, n: int = 1024, repeats: int = 10
) -> float:
    """Best GFLOP/s of an n×n matmul in ``dtype`` on ``threads`` threads (the achievable peak)."""
    torch.set_num_threads(threads)
    x, y = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        x @ y
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def report(a: argparse.Namespace, results: dict[str, dict[str, Any]], peak: float) -> None:
    print(
        f"ViT {a.embed_dim}x{a.depth} (heads {a.heads}, patch {a.patch}), crops {a.global_size}/"
        f"{a.local_size} px x 2+{a.n_local}, batch {a.batch}, K={a.prototypes}, "
        f"{a.threads} thread(s), {a.precision}, {a.rounds} interleaved timed steps per row"
    )
    print(f"{'row':<27}{'wall s':>7}{'(q1-q3)':>13}{'CPU s':>7}{'images/s':>9}"
          f"{'peak MiB':>9}{'steady MiB':>11}{'GFLOP/step':>11}{'GFLOP/s':>8}{'of peak':>8}"
          f"{'compile s':>10}")  # fmt: skip
    for row, r in results.items():
        t, c = statistics.median(r["times"]), statistics.median(r["cpu_times"])
        q1, _, q3 = statistics.quantiles(r["times"], n=4)
        gflops = r["flops"] / 1e9
        compile_s = f"{r['compile_s']:.1f}" if row.endswith("compiled") else "-"
        print(f"{row:<27}{t:>7.3f}{f'({q1:.2f}-{q3:.2f})':>13}{c:>7.3f}{a.batch / t:>9.2f}"
              f"{r['peak_mib']:>9.0f}{r['steady_mib']:>11.0f}{gflops:>11.2f}"
              f"{gflops / t:>8.2f}{gflops / t / peak:>8.1%}{compile_s:>10}")  # fmt: skip
    dtype = str(PRECISIONS[a.precision]).removeprefix("torch.")
    print(f"{dtype} matmul peak ({a.threads} thread(s), 1024^3): {peak:.1f} GFLOP/s")
    for base in ("lightly", "lightly-compiled", "lightly-explicit"):
        if base not in results:
            continue
        for row in results:
            if not row.startswith("ours"):
                continue
            ours_r, base_r = results[row], results[base]
            wall = statistics.median(base_r["times"]) / statistics.median(ours_r["times"])
            paired = statistics.median(
                b / o for b, o in zip(base_r["times"], ours_r["times"], strict=True)
            )
            cpu = statistics.median(base_r["cpu_times"]) / statistics.median(ours_r["cpu_times"])
            print(f"throughput {row} / {base}: {wall:.2f}x wall, {paired:.2f}x paired wall, "
                  f"{cpu:.2f}x CPU")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    if a.child:
        print(json.dumps(run_child(a)))
        return
    if a.timing_child:
        print(json.dumps(run_timing(a)))
        return
    if a.profile:
        profile(a)
        return
    argv = list(sys.argv[1:] if argv is None else argv)
    # a fresh Inductor cache: the memory children compile cold, the timing process loads it
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": tempfile.mkdtemp(prefix="inductor-")}

    def child(*flags: str) -> dict[str, Any]:
        out = subprocess.run(
            [sys.executable, __file__, *argv, *flags],
            capture_output=True, text=True, check=True, env=env,
        ).stdout  # fmt: skip
        return json.loads(out.strip().splitlines()[-1])

    results = {row: child("--child", row) for row in a.variants}
    for row, r in results.items():
        print(f"{row}: peak {r['peak_mib']:.0f} MiB, compile {r['compile_s']:.1f} s", flush=True)
    timing = child("--timing-child")
    for row in results:
        results[row]["times"] = timing["times"][row]
        results[row]["cpu_times"] = timing["cpu_times"][row]
    report(a, results, timing["peak"])


if __name__ == "__main__":
    main()
