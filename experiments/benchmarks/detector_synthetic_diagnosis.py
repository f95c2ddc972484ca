"""Where a synthetic-benchmark detector loses AP50: naming (colour vs object), localisation,
chunks, caption length (issue 6 diagnosis).

    python experiments/benchmarks/detector_synthetic_diagnosis.py CHECKPOINT [--chunk-tokens 28]
    python experiments/benchmarks/detector_synthetic_diagnosis.py CHECKPOINT --seed 2 --n-test 200

Runs on the run's own ``val_seen`` split (scene seed 0, the tuning split), or with ``--seed`` on
fresh held-out scenes rendered as ``detector_synthetic_quality.py`` renders them (its report uses
seed 1; diagnose on another seed). Categories are "<colour> <object>". Prints:

- AP50 under four label granularities: full name, object only (colour errors forgiven), colour
  only (object errors forgiven), class-agnostic. A (query, prompt pass) keeps its best score per
  merged label, so merging never creates duplicates.
- For each GT, the highest-scoring detection with IoU ≥ 0.5 ("top detection at the GT"): correct,
  wrong colour (same object), wrong object (same colour), both wrong, or no box at IoU 0.5; and
  whether it came from another prompt chunk than the GT's category.
- Localisation: the share of GTs whose best box (any query, any prompt pass) reaches IoU 0.5 /
  0.7, and the median best IoU. What the highest-scoring boxes are (class-agnostic, one box per
  query and pass at its best score; the 2·G + 2 highest of an image with G GTs, in score order):
  the first hit of a GT, a duplicate of a GT already hit, IoU 0.1–0.5 with a GT, or background.
- Object identity: per object, the share of GTs whose top detection names the right object, and
  the most frequent confusions (true → named object).
- With ``--chunk-tokens`` the same AP50s and outcomes with shorter prompt chunks (closer to the
  training captions), to measure the caption-length shift.
- The text path: mean cosine between the tokens of one phrase (and between the colour tokens of
  different phrases) after MiniLM, after ``feat_map`` and after the encoder, and the sigmoid
  token probabilities of the query best overlapping each GT, by phrase kind (the GT's own name,
  same colour, same object, unrelated) and by token (colour word, object words).
"""

import argparse
import os
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torchmetrics.detection import MeanAveragePrecision
from torchvision.ops import box_convert, box_iou

from datamodules.components.detection_collate import DetectionCollate
from experiments.benchmarks.detector_synthetic_quality import held_out_datamodule
from experiments.checkpoints import load_checkpoint
from experiments.detect import load_model

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[2]))
GRANULARITIES = ("name", "object", "colour", "agnostic")
OUTCOMES = ("correct", "wrong colour", "wrong object", "both wrong", "no box at IoU 0.5")
TOP_BOX_KINDS = ("first hit", "duplicate", "IoU 0.1-0.5", "background")


def _merge(pred: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Relabels detections and keeps each (pass, query, new label) once, at its best score."""
    key = torch.stack([pred["part"], pred["query"], labels], 1)
    uniq, inverse = key.unique(dim=0, return_inverse=True)
    scores = (
        pred["scores"]
        .new_zeros(len(uniq))
        .scatter_reduce(0, inverse, pred["scores"], "amax", include_self=False)
    )
    first = torch.full((len(uniq),), len(key), dtype=torch.long)
    first = first.scatter_reduce(0, inverse, torch.arange(len(key)), "amin")
    return {"boxes": pred["boxes"][first], "scores": scores, "labels": uniq[:, 2]}


def _relabel(labels: torch.Tensor, how: str, names: dict[int, tuple[str, str]]) -> torch.Tensor:
    """Category ids (N,) → ids at granularity ``how`` (name, object, colour or agnostic)."""
    if how == "name":
        return labels
    if how == "agnostic":
        return torch.zeros_like(labels)
    part = 0 if how == "colour" else 1
    values = sorted({n[part] for n in names.values()})
    return torch.tensor([values.index(names[int(x)][part]) for x in labels.tolist()],
                        dtype=torch.long)  # fmt: skip


def _outcome(pred: dict[str, torch.Tensor], gt_box: torch.Tensor, gt: tuple[str, str],
             names: dict[int, tuple[str, str]]) -> tuple[str, int, str | None]:  # fmt: skip
    """Outcome of the top detection at a GT box, the prompt pass it came from and the object it
    names (None without a box at IoU 0.5)."""
    iou = box_iou(gt_box[None], pred["boxes"])[0]
    hits = (iou >= 0.5).nonzero().flatten()
    if not len(hits):
        return OUTCOMES[4], -1, None
    best = hits[pred["scores"][hits].argmax()]
    colour, obj = names[int(pred["labels"][best])]
    same_colour, same_object = colour == gt[0], obj == gt[1]
    kind = {(True, True): 0, (False, True): 1, (True, False): 2, (False, False): 3}
    return OUTCOMES[kind[(same_colour, same_object)]], int(pred["part"][best]), obj


def _top_box_kinds(boxes: dict[str, torch.Tensor], gt_boxes: torch.Tensor) -> Counter:
    """Kinds of the 2·G + 2 highest-scoring boxes (one per query and pass) of an image, in score
    order: first hit of a GT (IoU ≥ 0.5), duplicate of a GT already hit, IoU 0.1–0.5, background."""
    order = boxes["scores"].argsort(descending=True)[: 2 * len(gt_boxes) + 2]
    iou = box_iou(gt_boxes, boxes["boxes"][order])  # (G, K)
    kinds, hit = Counter(), set()
    for k in range(iou.shape[1]):
        best, gt = iou[:, k].max(0) if len(gt_boxes) else (torch.tensor(0.0), -1)
        if best >= 0.5:
            kinds[TOP_BOX_KINDS[1] if int(gt) in hit else TOP_BOX_KINDS[0]] += 1
            hit.add(int(gt))
        else:
            kinds[TOP_BOX_KINDS[2] if best >= 0.1 else TOP_BOX_KINDS[3]] += 1
    return kinds


@torch.no_grad()
def diagnose(module, loader) -> dict:
    """Accumulates the granularity AP50s, the GT outcomes and the chunk statistics."""
    maps = {g: MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")
            for g in GRANULARITIES}  # fmt: skip
    for m in maps.values():
        m.warn_on_many_detections = False
    outcomes, other_chunk, n_chunks = Counter(), 0, 0
    best_iou: list[float] = []
    top_boxes, per_object, object_right, confusions = Counter(), Counter(), Counter(), Counter()
    names: dict[int, tuple[str, str]] = {}
    for batch in loader:
        chunk_of: dict[int, int] = {}
        for k, prompt in enumerate(batch["prompts"]):
            for ids, nm in zip(prompt.label_ids, prompt.names, strict=True):
                for i, n in zip(ids.tolist(), nm, strict=True):
                    names[i] = tuple(n.split(" ", 1))
                    chunk_of[i] = k
        n_chunks = max(n_chunks, len(batch["prompts"]))
        sizes = [meta["orig_size"] for meta in batch["meta"]]
        preds = module.predict_batch(batch["images"], batch["pad_mask"], batch["prompts"], sizes)
        for pred, t, (h, w) in zip(preds, batch["targets"], sizes, strict=True):
            gt_boxes = box_convert(t["boxes"].float(), "cxcywh", "xyxy") * torch.tensor(
                [w, h, w, h]
            )
            for how, metric in maps.items():
                metric.update([_merge(pred, _relabel(pred["labels"], how, names))],
                              [{"boxes": gt_boxes,
                                "labels": _relabel(t["category_id"], how, names)}])  # fmt: skip
            agnostic = _merge(pred, torch.zeros_like(pred["labels"]))
            top_boxes += _top_box_kinds(agnostic, gt_boxes)
            best_iou += (box_iou(gt_boxes, agnostic["boxes"]).max(1).values.tolist()
                         if len(agnostic["boxes"]) else [0.0] * len(gt_boxes))  # fmt: skip
            for box, cid in zip(gt_boxes, t["category_id"].tolist(), strict=True):
                kind, part, named = _outcome(pred, box, names[cid], names)
                outcomes[kind] += 1
                other_chunk += int(part >= 0 and part != chunk_of[cid])
                true_object = names[cid][1]
                per_object[true_object] += 1
                object_right[true_object] += int(named == true_object)
                if named is not None and named != true_object:
                    confusions[(true_object, named)] += 1
    return {"ap50": {g: float(m.compute()["map_50"]) for g, m in maps.items()},
            "outcomes": outcomes, "other_chunk": other_chunk, "chunks": n_chunks,
            "best_iou": torch.tensor(best_iou), "top_boxes": top_boxes,
            "per_object": per_object, "object_right": object_right,
            "confusions": confusions}  # fmt: skip


PHRASE_KINDS = ("own name", "same colour", "same object", "unrelated")


def _token_cosines(x: torch.Tensor, positive_map: torch.Tensor) -> tuple[float, float]:
    """Mean cosine of token pairs within a phrase, and of colour tokens across phrases.

    x: (T, d) token features; positive_map: (C, T) 0/1, one phrase per row.
    """
    sim = F.normalize(x, dim=-1) @ F.normalize(x, dim=-1).T
    tokens = [row.nonzero().flatten() for row in positive_map]
    within = torch.cat([sim[t][:, t][torch.triu_indices(len(t), len(t), 1).unbind()]
                        for t in tokens])  # fmt: skip
    colour = torch.stack([t[0] for t in tokens])
    across = sim[colour][:, colour][torch.triu_indices(len(colour), len(colour), 1).unbind()]
    return float(within.mean()), float(across.mean())


@torch.no_grad()
def text_path(module, loader) -> tuple[dict[str, tuple[float, float]], dict]:
    """Token similarity at each text stage and the token probabilities of the best-IoU query
    per GT by phrase kind, averaged over every image and prompt chunk of the split."""
    stages: dict[str, list[tuple[float, float]]] = {}
    probs: dict[tuple[str, str], list[float]] = {}
    for batch in loader:
        feats = module.detector.image_features(batch["images"], batch["pad_mask"])
        for prompt in batch["prompts"]:
            text = module.text_encoder(prompt.input_ids, prompt.attention_mask)
            memory = module.encode_prompt(prompt)
            out = module.detector.forward_features(feats.select(prompt.image_index), memory)
            for k, b in enumerate(prompt.image_index.tolist()):
                ids, names = prompt.label_ids[k].tolist(), prompt.names[k]
                pmap = prompt.positive_map[k, : len(ids)]
                for stage, x in (("MiniLM", text.feats), ("feat_map", memory.memory_text),
                                 ("encoder", out.memory_text)):  # fmt: skip
                    stages.setdefault(stage, []).append(_token_cosines(x[k], pmap))
                target = batch["targets"][b]
                iou = box_iou(box_convert(target["boxes"].float(), "cxcywh", "xyxy"),
                              box_convert(out.boxes[k], "cxcywh", "xyxy"))  # fmt: skip
                p = out.logits[k].sigmoid()
                for g, cid in enumerate(target["category_id"].tolist()):
                    if cid not in ids:
                        continue
                    q = int(iou[g].argmax())
                    gt_colour, gt_object = names[ids.index(cid)].split(" ", 1)
                    for c, name in enumerate(names):
                        colour, obj = name.split(" ", 1)
                        kind = PHRASE_KINDS[0 if ids[c] == cid else 1 if colour == gt_colour
                                            else 2 if obj == gt_object else 3]  # fmt: skip
                        tokens = pmap[c].nonzero().flatten()
                        probs.setdefault((kind, "colour"), []).append(float(p[q, tokens[0]]))
                        probs.setdefault((kind, "object"), []).append(
                            float(p[q, tokens[1:]].mean())
                        )
    mean = {stage: tuple(torch.tensor(v).mean(0).tolist()) for stage, v in stages.items()}
    return mean, {key: (sum(v) / len(v), len(v)) for key, v in probs.items()}


def load_run(checkpoint: str, data_dir: str | None = None, stage: str = "validate") -> tuple:
    """A training checkpoint → (checkpoint dict, LitModule in eval mode, its run's datamodule
    set up for ``stage``; ``data_dir`` overrides the run's item root)."""
    ckpt = load_checkpoint(checkpoint)
    module = load_model(checkpoint)
    data_cfg = OmegaConf.create(ckpt["run_config"]).data
    if data_dir:
        data_cfg.data_dir = data_dir
    datamodule = instantiate(data_cfg)
    datamodule.prepare_data()
    datamodule.setup(stage)
    return ckpt, module, datamodule


def print_localisation_and_objects(r: dict) -> None:
    """The localisation, top-box and object-identity tables of one ``diagnose`` result."""
    iou = r["best_iou"]
    print(f"\nGTs whose best box reaches IoU 0.5 / 0.7: {(iou >= 0.5).float().mean():.3f} / "
          f"{(iou >= 0.7).float().mean():.3f}; median best IoU {iou.median():.3f} "
          f"({len(iou)} GTs)")  # fmt: skip
    print("highest-scoring boxes (2·G + 2 per image): "
          + ", ".join(f"{k} {r['top_boxes'][k]}" for k in TOP_BOX_KINDS))  # fmt: skip
    print("\n| object | top detection names it | GTs |\n|---|---|---|")
    right, n = r["object_right"], r["per_object"]
    for obj in sorted(n, key=lambda o: right[o] / n[o]):
        print(f"| {obj} | {right[obj] / n[obj]:.2f} | {n[obj]} |")
    print("most frequent confusions (true → named): "
          + ", ".join(f"{a} → {b} {c}" for (a, b), c in r["confusions"].most_common(10)))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--chunk-tokens", type=int, nargs="*", default=[],
                        help="also evaluate with prompt chunks of at most this many tokens")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-dir", default=os.environ.get("DATA_DIR"))
    parser.add_argument("--seed", type=int, default=None,
                        help="held-out scenes of this scene seed instead of the run's val split")  # fmt: skip
    parser.add_argument("--n-test", type=int, default=200, help="held-out images (with --seed)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.seed is None:
        ckpt, module, datamodule = load_run(args.checkpoint, args.data_dir)
        loader = datamodule.val_dataloader()[datamodule.val_names.index("val_seen")]
    else:
        ckpt, module = load_checkpoint(args.checkpoint), load_model(args.checkpoint)
        datamodule = held_out_datamodule(ckpt["run_config"], args.seed, args.n_test, args.data_dir)
        datamodule.prepare_data()
        datamodule.setup("test")
        loader = datamodule.test_dataloader()[datamodule.val_names.index("val_seen")]
    scenes = "the run's val split" if args.seed is None else f"held-out scene seed {args.seed}"
    print(f"\ncheckpoint {args.checkpoint} (step {ckpt.get('global_step', '?')}), val_seen, "
          f"{len(loader.dataset)} images, {scenes}")  # fmt: skip
    print(
        "\n| prompt chunks | AP50 name | object only | colour only | class-agnostic | "
        + " | ".join(OUTCOMES)
        + " | top det. from another chunk |"
    )
    print("|---" * (6 + len(OUTCOMES)) + "|")
    full: dict | None = None  # the result with the run's own prompt chunks
    for tokens in [datamodule.max_tokens, *args.chunk_tokens]:
        loader.collate_fn = DetectionCollate(datamodule.tokenizer, tokens,
                                             datamodule.size_divisibility)  # fmt: skip
        r = diagnose(module, loader)
        total = sum(r["outcomes"].values())
        shares = " | ".join(f"{r['outcomes'][k] / total:.2f}" for k in OUTCOMES)
        ap = " | ".join(f"{r['ap50'][g]:.3f}" for g in GRANULARITIES)
        print(f"| {r['chunks']} (≤ {tokens} tokens) | {ap} | {shares} | "
              f"{r['other_chunk'] / total:.2f} |")  # fmt: skip
        full = full or r
    print_localisation_and_objects(full)
    loader.collate_fn = DetectionCollate(datamodule.tokenizer, datamodule.max_tokens,
                                         datamodule.size_divisibility)  # fmt: skip
    similarity, probs = text_path(module, loader)
    print("\n| text stage | cosine within a phrase | cosine of colour tokens across phrases |")
    print("|---|---|---|")
    for stage, (within, across) in similarity.items():
        print(f"| {stage} | {within:.3f} | {across:.3f} |")
    print("\n| phrase (best-IoU query of each GT) | p colour token | p object tokens | pairs |")
    print("|---|---|---|---|")
    for kind in PHRASE_KINDS:
        (pc, n), (po, _) = probs[(kind, "colour")], probs[(kind, "object")]
        print(f"| {kind} | {pc:.4f} | {po:.4f} | {n} |")


if __name__ == "__main__":
    main()
