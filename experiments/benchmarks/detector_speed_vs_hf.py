"""CPU speed of this project's detector against HF ``GroundingDinoForObjectDetection``.

    python experiments/benchmarks/detector_speed_vs_hf.py --preset tiny --threads 1
    python experiments/benchmarks/detector_speed_vs_hf.py --preset tiny --precision bf16-mixed

Both models are built with identical dimensions and random weights (no download): the same timm
ResNet-18 backbone (strides 8/16/32; HF swaps its BatchNorm for a frozen one), the same BERT
text encoder shape (MiniLM-L6: 6 layers, width 384; HF builds its own from ``text_config``),
d_model, heads, encoder/decoder layers, FFN widths (HF ties text FFN and fusion width to half the
image FFN, as our presets do), queries, levels, points, image size, caption and batch. Our text
cache is off (one extra row shows it on, our default) and our denoising is off (HF has no CDN),
so both do the same work per step; HF's auxiliary losses are on (ours always are); both text
encoders are frozen and in eval mode.

Inference = text encoder + detector forward in eval mode under ``no_grad``; training step =
forward + loss (Hungarian matching included) + backward + AdamW step. Our model and HF's run
interleaved, one of each per round, so load changes on a shared machine hit both alike; the
tables give medians, then per-stage forward times (module hooks) showing where time goes.
``--precision bf16-mixed`` runs every measured call of both models under the same
``torch.autocast("cpu", bfloat16)`` (fp32 parameters and optimizer state).
"""

import argparse
import functools
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lightning_modules.components.detection.backbone import TimmBackbone
from lightning_modules.components.detection.detector import GroundingDetector
from lightning_modules.components.detection.matcher import HungarianMatcher
from lightning_modules.components.detection.text_encoder import TextEncoder
from lightning_modules.components.losses.set_criterion import SetCriterion

CAPTION_NAMES = ["red seven", "blue sneaker", "green ankle boot", "white t-shirt", "cyan two"]


@dataclass(frozen=True)
class Dims:
    """Shared dimensions of both models."""

    image_size: int
    d_model: int
    heads: int
    enc_layers: int
    dec_layers: int
    ffn: int
    queries: int
    levels: int = 4
    points: int = 4


PRESETS = {
    # spec §3.1 tiny-A transformer at 256 px
    "tiny": Dims(image_size=256, d_model=128, heads=8, enc_layers=2, dec_layers=2, ffn=512,
                 queries=100),
    # GD-T transformer widths (d 256, FFN 2048, fusion 1024, 6 + 6 layers, 900 queries), 320 px
    "gdt": Dims(image_size=320, d_model=256, heads=8, enc_layers=6, dec_layers=6, ffn=2048,
                queries=900),
}  # fmt: skip


def build_ours(dims: Dims) -> tuple[TextEncoder, GroundingDetector, SetCriterion]:
    text = TextEncoder.minilm(cache_size=0)
    detector = GroundingDetector(
        TimmBackbone("resnet18", out_indices=(2, 3, 4)), text_dim=text.hidden_size,
        d_model=dims.d_model, n_heads=dims.heads,
        layers={"encoder": dims.enc_layers, "decoder": dims.dec_layers},
        ffn={"image": dims.ffn, "text": dims.ffn // 2},
        fusion={"width": dims.ffn // 2, "heads": dims.heads // 2, "layer_scale_init": 1e-4,
                "drop_path": 0.1},
        text_heads=dims.heads // 2,
        queries={"num": dims.queries, "levels": dims.levels, "points": dims.points}, dn=None,
    )  # fmt: skip
    return text, detector, SetCriterion(HungarianMatcher(2.0, 5.0, 2.0))


def build_hf(dims: Dims, text: TextEncoder) -> nn.Module:
    from transformers import (
        BertConfig,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        TimmBackboneConfig,
    )

    bert = text.model.config.to_dict()
    config = GroundingDinoConfig(
        backbone_config=TimmBackboneConfig(backbone="resnet18", out_indices=(2, 3, 4)),
        text_config=BertConfig(**{k: v for k, v in bert.items() if k in BertConfig().to_dict()}),
        d_model=dims.d_model, encoder_layers=dims.enc_layers, decoder_layers=dims.dec_layers,
        encoder_ffn_dim=dims.ffn, decoder_ffn_dim=dims.ffn, encoder_attention_heads=dims.heads,
        decoder_attention_heads=dims.heads, num_queries=dims.queries,
        num_feature_levels=dims.levels, encoder_n_points=dims.points,
        decoder_n_points=dims.points, dropout=0.0, fusion_droppath=0.1, auxiliary_loss=True,
        class_cost=2.0,
    )  # fmt: skip
    model = GroundingDinoForObjectDetection(config)
    model.model.text_backbone.requires_grad_(False)  # frozen, like ours
    return model


def make_inputs(dims: Dims, batch: int, text: TextEncoder) -> dict:
    """Random images, one caption for every image, two boxes per image."""
    g = torch.Generator().manual_seed(0)
    caption = " . ".join(CAPTION_NAMES) + " ."
    tok = text.tokenizer([caption] * batch, return_tensors="pt")
    images = torch.randn(batch, 3, dims.image_size, dims.image_size, generator=g)
    boxes = torch.tensor([[0.3, 0.3, 0.2, 0.3], [0.7, 0.6, 0.3, 0.2]])
    posmap = torch.zeros(batch, len(CAPTION_NAMES), tok.input_ids.shape[1])
    pos = 1  # after [CLS]: each name's tokens, then "."
    for c, name in enumerate(CAPTION_NAMES):
        n = len(text.tokenizer(name, add_special_tokens=False).input_ids)
        posmap[:, c, pos : pos + n] = 1
        pos += n + 1
    return {
        "images": images, "pad_mask": torch.zeros(batch, dims.image_size, dims.image_size,
                                                  dtype=torch.bool),
        "input_ids": tok.input_ids, "attention_mask": tok.attention_mask,
        "targets": [{"boxes": boxes, "cat_index": torch.tensor([0, 1])} for _ in range(batch)],
        "positive_map": posmap,
    }  # fmt: skip


def ours_forward(text: TextEncoder, detector: GroundingDetector, x: dict):
    feats = text(x["input_ids"], x["attention_mask"])
    return detector(x["images"], x["pad_mask"], feats.feats, feats.text_token_mask,
                    feats.position_ids, feats.submask)  # fmt: skip


def hf_forward(model: nn.Module, x: dict, labels: list | None = None):
    return model(pixel_values=x["images"], pixel_mask=(~x["pad_mask"]).long(),
                 input_ids=x["input_ids"], attention_mask=x["attention_mask"], labels=labels)  # fmt: skip


def interleaved(fns: list[Callable[[], None]], repeats: int, warmup: int = 2) -> list[float]:
    """Median seconds of each fn, run round-robin after ``warmup`` rounds."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def stage_times(
    stages: list[tuple[str, nn.Module]], run: Callable[[], None], repeats: int
) -> dict[str, float]:
    """Median forward seconds per stage name (summed over its modules and their calls in one
    ``run``) over ``repeats`` calls of ``run``, and the median ``total`` of a whole ``run``."""
    spent: dict[str, list[float]] = defaultdict(list)
    starts: dict[str, float] = {}
    handles = []
    for i, (name, module) in enumerate(stages):

        def pre(_m, _a, key=i):
            starts[key] = time.perf_counter()

        def post(_m, _a, _o, key=i, name=name):
            spent[name].append(time.perf_counter() - starts[key])

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            spent["total"].append(time.perf_counter() - start)
    finally:
        for h in handles:
            h.remove()
    per_call = {"total": statistics.median(spent.pop("total"))}
    for name, values in spent.items():
        calls = len(values) // repeats  # a module may run several times per forward
        per_call[name] = statistics.median(
            sum(values[i * calls : (i + 1) * calls]) for i in range(repeats)
        )
    return per_call


def in_precision(fn: Callable[[], None], precision: str) -> Callable[[], None]:
    """``fn`` run under bf16 autocast for ``bf16-mixed``, unchanged for ``fp32``."""
    if precision == "fp32":
        return fn

    @functools.wraps(fn)
    def wrapped() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fn()

    return wrapped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", choices=["fp32", "bf16-mixed"], default="fp32",
                        help="both models in fp32, or both under bf16 autocast")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dims = PRESETS[args.preset]
    text, detector, criterion = build_ours(dims)
    hf = build_hf(dims, text)
    x = make_inputs(dims, args.batch, text)
    hf_labels = [{"class_labels": t["cat_index"], "boxes": t["boxes"]} for t in x["targets"]]
    n_ours = sum(p.numel() for p in detector.parameters())
    n_hf = sum(p.numel() for n, p in hf.named_parameters() if "text_backbone" not in n)
    print(f"preset {args.preset}: {dims}; batch {args.batch}; {args.threads} thread(s); "
          f"{args.precision}; caption tokens {x['input_ids'].shape[1]}")  # fmt: skip
    print(f"parameters excl. text encoder: ours {n_ours / 1e6:.2f}M, HF {n_hf / 1e6:.2f}M")

    detector.eval(), hf.eval()

    @torch.no_grad()
    def infer_ours() -> None:
        ours_forward(text, detector, x)

    @torch.no_grad()
    def infer_hf() -> None:
        hf_forward(hf, x)

    cached = TextEncoder.minilm(cache_size=16)  # our default: frozen features cached per caption

    @torch.no_grad()
    def infer_ours_cached() -> None:
        ours_forward(cached, detector, x)

    infer_ours, infer_hf, infer_ours_cached = (
        in_precision(f, args.precision) for f in (infer_ours, infer_hf, infer_ours_cached)
    )
    *inf, inf_cached = interleaved([infer_ours, infer_hf, infer_ours_cached], args.repeats)
    detector.train(), hf.train()
    hf.model.text_backbone.eval()  # frozen text encoders run in eval mode (no dropout), as ours
    opt_ours = torch.optim.AdamW([p for p in detector.parameters() if p.requires_grad], 1e-4)
    opt_hf = torch.optim.AdamW([p for p in hf.parameters() if p.requires_grad], 1e-4)

    def train_ours() -> None:
        out = ours_forward(text, detector, x)
        loss = criterion(out, x["targets"], x["positive_map"])["loss"]
        opt_ours.zero_grad(set_to_none=True)
        loss.backward()
        opt_ours.step()

    def train_hf() -> None:
        loss = hf_forward(hf, x, hf_labels).loss
        opt_hf.zero_grad(set_to_none=True)
        loss.backward()
        opt_hf.step()

    step = interleaved(
        [in_precision(train_ours, args.precision), in_precision(train_hf, args.precision)],
        args.repeats,
    )
    print("\n| measure | ours | HF | HF / ours |\n|---|---|---|---|")
    for name, (a, b) in (("inference, ms/image", inf), ("train step, s", step)):
        scale = 1000.0 / args.batch if "ms" in name else 1.0
        print(f"| {name} | {a * scale:.1f} | {b * scale:.1f} | {b / a:.2f}x |")
    a, b = inf_cached * 1000.0 / args.batch, inf[1] * 1000.0 / args.batch
    print(f"| inference with our text cache, ms/image | {a:.1f} | {b:.1f} | {b / a:.2f}x |")

    detector.eval(), hf.eval()
    ours_stages = [("text encoder", text), ("backbone", detector.backbone),
                   ("neck", detector.neck), ("encoder", detector.encoder),
                   ("query selection", detector.query_selection), ("decoder", detector.decoder)]  # fmt: skip
    m = hf.model
    hf_stages = [("text encoder", m.text_backbone), ("backbone", m.backbone),
                 *[("neck", proj) for proj in m.input_proj_vision], ("encoder", m.encoder),
                 ("decoder", m.decoder)]  # fmt: skip
    t_ours = stage_times(ours_stages, infer_ours, args.repeats)
    t_hf = stage_times(hf_stages, infer_hf, args.repeats)
    total_ours, total_hf = t_ours.pop("total"), t_hf.pop("total")
    print("\nInference forward by stage (ms per batch, median; rest = heads and glue)")
    print("| stage | ours | HF |\n|---|---|---|")
    for name, _ in ours_stages:
        a, b = t_ours.get(name), t_hf.get(name)
        print(f"| {name} | {a * 1000:.1f} | " + (f"{b * 1000:.1f} |" if b is not None else "— |"))
    rest_ours = total_ours - sum(t_ours.values())
    rest_hf = total_hf - sum(t_hf.values())
    print(f"| rest | {rest_ours * 1000:.1f} | {rest_hf * 1000:.1f} |")
    print(f"| total | {total_ours * 1000:.1f} | {total_hf * 1000:.1f} |")

    enc, dec = detector.encoder, detector.decoder
    blocks = [*[("enc: image-text fusion", m) for m in enc.fusion],
              *[("enc: text self-attention", m) for m in enc.text_layers],
              *[("enc: deformable self-attention", m.attn) for m in enc.image_layers],
              *[("enc: FFN", m.ffn) for m in enc.image_layers],
              *[("dec: self + text attention", m) for layer in dec.layers
                for m in (layer.self_attn, layer.text_attn)],
              *[("dec: deformable cross-attention", m.image_attn) for m in dec.layers],
              *[("dec: FFN", m.ffn) for m in dec.layers]]  # fmt: skip
    t_blocks = stage_times(blocks, infer_ours, args.repeats)
    t_blocks.pop("total")
    print("\nOur transformer by block (inference, ms per batch, median)")
    print("| block | ms |\n|---|---|")
    for name, value in t_blocks.items():
        print(f"| {name} | {value * 1000:.1f} |")


if __name__ == "__main__":
    main()
