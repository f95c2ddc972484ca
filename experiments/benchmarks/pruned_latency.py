"""CPU latency of dense vs channel-pruned networks, against their FLOP reduction.

    python experiments/benchmarks/pruned_latency.py --dense-ckpt DENSE.ckpt --pruned-ckpt A.ckpt B.ckpt
    python experiments/benchmarks/pruned_latency.py --arch VGG16BN --keep-frac 0.5 0.3

The second form times architectures only: the dense network against copies whose prunable
layers keep a uniform fraction of their channels (latency depends on the widths, not on which
channels a selector kept or on trained weights).

Dense and pruned forwards are interleaved (one of each per round), so load changes on a shared
machine hit both alike; the table reports medians over ``--repeats`` rounds after a warm-up.
"""

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from experiments.checkpoints import module_from_checkpoint
from lightning_modules.components.sparse.budget import counts_for_frac, widths_with_counts
from lightning_modules.components.sparse.channel_surgery import NETS, build_pruned
from lightning_modules.components.sparse.counting import count_model
from lightning_modules.components.sparse.prunable_pairs import expected_input_shape
from lightning_modules.components.sparse.prune_config import PruneConfig


@torch.no_grad()
def interleaved_ms(nets: list[torch.nn.Module], x: torch.Tensor, repeats: int) -> list[float]:
    """Median milliseconds per net of ``net(x)``, measured round-robin."""
    for net in nets:
        net.eval()
        for _ in range(3):
            net(x)
    times: list[list[float]] = [[] for _ in nets]
    for _ in range(repeats):
        for i, net in enumerate(nets):
            start = time.perf_counter()
            net(x)
            times[i].append(time.perf_counter() - start)
    return [1000.0 * statistics.median(t) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dense-ckpt")
    source.add_argument("--arch", choices=sorted(NETS), help="time widths only (random weights)")
    parser.add_argument("--pruned-ckpt", nargs="+", default=[])
    parser.add_argument("--keep-frac", type=float, nargs="+", default=[0.5, 0.25])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[2]))
    torch.set_num_threads(args.threads)
    if args.arch:
        dense = NETS[args.arch]().eval()
        cfg = PruneConfig(mode="budget", keep_frac=1.0)
        pruned = [build_pruned(dense, widths_with_counts(dense, counts_for_frac(dense, p, cfg)))
                  for p in args.keep_frac]  # fmt: skip
        names = [
            "dense",
            *(f"{args.arch} keep {p:g} of every prunable layer" for p in args.keep_frac),
        ]
    else:
        dense = module_from_checkpoint(args.dense_ckpt)[0].net
        pruned = [module_from_checkpoint(p)[0].net for p in args.pruned_ckpt]
        names = ["dense", *(Path(p).parent.name for p in args.pruned_ckpt)]
    shape = expected_input_shape(dense)
    macs = [count_model(n, shape).macs for n in [dense, *pruned]]
    print(f"threads={args.threads} repeats={args.repeats}\n")
    print("| model | MACs/img | FLOP reduction | batch | latency ms | speed-up |")
    print("|---|---|---|---|---|---|")
    for batch in args.batch_sizes:
        x = torch.randn(batch, *shape)
        ms = interleaved_ms([dense, *pruned], x, args.repeats)
        for name, m, t in zip(names, macs, ms, strict=True):
            print(f"| {name} | {m:,} | {macs[0] / m:.2f}x | {batch} "
                  f"| {t:.3f} | {ms[0] / t:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
