"""Where a synthetic-benchmark detector loses colour and object: linear probes per stage (issue 6).

    python experiments/benchmarks/detector_naming_probe.py CHECKPOINT [--n-train 600]

Every image (training-split scenes for fitting, the run's ``val_seen`` / ``val_unseen`` for
scoring) is prompted as in evaluation: the 140 seen names in chunks of ≤ 256 tokens. For each GT
box the script collects, from the prompt pass holding the GT's name:

- ``backbone``: the three backbone maps RoI-pooled in the GT box (``roi_align``; 3×3 / 2×2 / 1×1
  bins at strides 8 / 16 / 32, concatenated);
- ``neck``: the channel-mapper levels (before the encoder) pooled the same way (4th level 1×1);
- ``encoder roi`` / ``encoder centre``: the encoder memory pooled the same way, and sampled
  bilinearly at the box centre on every level (concatenated);
- ``decoder last`` / ``decoder before last``: the hidden state (after the shared norm) of the
  query whose final box overlaps the GT best, after the last and the second-to-last layer.

Scikit-learn ``LogisticRegression`` probes (standardised features) for colour (8-way), object
(20-way) and name (140-way) are fitted on the training scenes and scored on val_seen, plus
colour / object on val_unseen (held-out compositions). The detector's own answer at the same
query (the best-scored of all prompted names) is scored alongside.

Text side: per seen name its vector (mean of its tokens) after ``feat_map`` and after the
encoder, averaged over val images; their nearest-neighbour cosine and effective rank; the
*oracle query* accuracy (query = the name's own vector, scored by the trained head over all
names); and a *text-bound probe*: a learned linear map A on the decoder state, scored only by
⟨A·h, t_name⟩ against the fixed name vectors (is the text side separable enough for the
queries' content?).
"""

import argparse
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torchvision.ops import box_convert, box_iou, roi_align

from experiments.benchmarks.detector_synthetic_diagnosis import load_run
from lightning_modules.components.detection.postprocess import category_scores

STAGES = ("backbone", "neck", "encoder roi", "encoder centre", "decoder before last",
          "decoder last")  # fmt: skip
BINS = (3, 2, 1, 1)  # roi_align output side per level, finest first


@dataclass
class Collected:
    """Per GT: stage features, its name, and the detector's own top name at the best query."""

    feats: dict[str, list[np.ndarray]] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)
    predicted: list[str] = field(default_factory=list)
    iou: list[float] = field(default_factory=list)
    text: dict[str, dict[str, list[torch.Tensor]]] = field(default_factory=dict)

    def add(self, stage: str, x: torch.Tensor) -> None:
        self.feats.setdefault(stage, []).append(x.float().numpy())


def _pool(maps: list[torch.Tensor], boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """maps[l] (1, C_l, h_l, w_l) of one image, boxes (G, 4) xyxy pixels of the padded image of
    ``size`` (H, W) → (G, Σ_l C_l·bins_l²) RoI-pooled features."""
    out = []
    for lvl, m in enumerate(maps):
        scale = m.shape[-1] / size[1]
        side = BINS[min(lvl, len(BINS) - 1)]
        pooled = roi_align(m, [boxes], side, spatial_scale=scale, sampling_ratio=2, aligned=True)
        out.append(pooled.flatten(1))
    return torch.cat(out, 1)


def _levels(flat: torch.Tensor, shapes: torch.Tensor) -> list[torch.Tensor]:
    """flat (S, d) tokens of one image → per level (1, d, h_l, w_l)."""
    sizes = [int(h * w) for h, w in shapes.tolist()]
    return [x.T.reshape(1, -1, int(h), int(w))
            for x, (h, w) in zip(flat.split(sizes), shapes.tolist(), strict=True)]  # fmt: skip


def _centre(levels: list[torch.Tensor], centres: torch.Tensor) -> torch.Tensor:
    """levels (1, d, h, w), centres (G, 2) normalised (x, y) → (G, L·d) bilinear samples."""
    grid = (2 * centres - 1)[None, :, None]  # (1, G, 1, 2)
    return torch.cat([F.grid_sample(m, grid, align_corners=False)[0, :, :, 0].T
                      for m in levels], 1)  # fmt: skip


@torch.no_grad()
def collect(module, batches, text_stats: bool = False) -> Collected:
    """Runs the detector stage by stage on every batch and gathers the per-GT features."""
    det, out = module.detector, Collected()
    for batch, gt_names in batches:
        maps = det.backbone(batch["images"])
        feats = det.neck(maps, batch["pad_mask"])
        size = batch["images"].shape[-2:]
        neck_maps = [_levels(feats.src[b], feats.spatial_shapes) for b in range(len(gt_names))]
        per_gt: dict[tuple[int, int], dict] = {}
        for prompt in batch["prompts"]:
            text = module.encode_prompt(prompt)
            sel = feats.select(prompt.image_index)
            memory, memory_text = det.encoder(sel, text)
            mask = text.text_token_mask
            head_text = det.head_text(memory_text, mask)
            tgt, ref, _ = det.query_selection(memory, sel, head_text, mask)
            layers = det.decoder(tgt, ref, memory, sel, memory_text, mask)
            logits = det._class_head(len(layers) - 1)(layers[-1][0], head_text)
            for k, b in enumerate(prompt.image_index.tolist()):
                names = prompt.names[k]
                pmap = prompt.positive_map[k, : len(names)]
                if text_stats:
                    stages = [("feat_map", text.memory_text[k]), ("encoder", memory_text[k])]
                    if det.center_text:
                        stages.append(("head (centred)", head_text[k]))
                    for stage, x in stages:
                        vec = (pmap @ x) / pmap.sum(1, keepdim=True)
                        for n, v in zip(names, vec, strict=True):
                            out.text.setdefault(stage, {}).setdefault(n, []).append(v)
                _gather(per_gt, b, k, batch, gt_names[b], names, pmap, logits, layers, memory,
                        sel, maps, neck_maps[b], size, mask)  # fmt: skip
        for (_, _), rec in sorted(per_gt.items()):
            for stage in STAGES:
                out.add(stage, rec[stage])
            out.names.append(rec["name"])
            out.predicted.append(max(rec["scores"], key=rec["scores"].get))
            out.iou.append(rec["iou"])
    return out


def _gather(per_gt: dict, b: int, k: int, batch: dict, gt_names: list[str], names: list[str],
            pmap: torch.Tensor, logits: torch.Tensor, layers: list, memory: torch.Tensor,
            sel, maps: list[torch.Tensor], neck_maps: list[torch.Tensor],
            size: torch.Size, mask: torch.Tensor) -> None:  # fmt: skip
    """Adds one prompt pass's view of image b's GTs: features from the pass holding the GT's
    name, and the pass's best-IoU query's name scores (all passes compete for the top name)."""
    h, w = batch["meta"][b]["size"]
    boxes = box_convert(batch["targets"][b]["boxes"].float(), "cxcywh", "xyxy")
    pixels = boxes * torch.tensor([w, h, w, h])
    iou = box_iou(boxes, box_convert(layers[-1][1][k].float(), "cxcywh", "xyxy"))
    scores = category_scores(logits[k], mask[k], pmap)  # (Q, C)
    for g, gt_name in enumerate(gt_names):
        q = int(iou[g].argmax())
        rec = per_gt.setdefault((b, g), {"scores": {}, "name": gt_name})
        rec["scores"].update(dict(zip(names, scores[q].tolist(), strict=True)))
        if gt_name not in names:
            continue
        ratio = sel.valid_ratios[k, 0]
        centre = (boxes[g, :2] + boxes[g, 2:]) / 2 * ratio
        enc_maps = _levels(memory[k], sel.spatial_shapes)
        rec.update({
            "iou": float(iou[g, q]),
            "backbone": _pool([m[b : b + 1] for m in maps[-3:]], pixels[g : g + 1], size)[0],
            "neck": _pool(neck_maps, pixels[g : g + 1], size)[0],
            "encoder roi": _pool(enc_maps, pixels[g : g + 1], size)[0],
            "encoder centre": _centre(enc_maps, centre[None])[0],
            "decoder before last": layers[-2][0][k, q],
            "decoder last": layers[-1][0][k, q],
        })  # fmt: skip


def batches(collate, samples, names: list[str], ids: list[int], batch_size: int = 10):
    """(image, target) samples → (collated batch prompted with ``names``, GT names per image)."""
    for i in range(0, len(samples), batch_size):
        chunk = samples[i : i + batch_size]
        items = [{"image": im, "target": t, "names": names, "label_ids": ids} for im, t in chunk]
        gt = [[t["categories"][c] for c in t["cat_index"].tolist()] for _, t in chunk]
        yield collate(items), gt


def name_part(name: str, part: str) -> str:
    """The ``part`` of a name: for "red seven", "red" (colour), "seven" (object) or all (name)."""
    return name if part == "name" else name.split(" ", 1)[part == "object"]


def part_accuracy(predicted: list[str], true: list[str], part: str) -> float:
    """How often a predicted name is right in ``part`` (colour, object, name)."""
    return float(np.mean([name_part(p, part) == name_part(n, part)
                          for p, n in zip(predicted, true, strict=True)]))  # fmt: skip


def probe(train: Collected, test: Collected, stage: str, part: str) -> float:
    """Accuracy on ``test`` of a logistic-regression probe of ``part`` (colour, object, name)."""
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=3000))
    clf.fit(np.stack(train.feats[stage]), [name_part(n, part) for n in train.names])
    pred = clf.predict(np.stack(test.feats[stage]))
    return float(np.mean([p == name_part(n, part) for p, n in zip(pred, test.names, strict=True)]))


def name_vectors(c: Collected, stage: str, names: list[str]) -> torch.Tensor:
    """(N, d): each name's mean-token vector at ``stage``, averaged over images and passes."""
    return torch.stack([torch.stack(c.text[stage][n]).mean(0) for n in names])


def text_table(c: Collected, names: list[str]) -> list[tuple[str, float, float, float, float]]:
    """Per text stage: mean nearest-other-name cosine, effective rank, oracle-query accuracy of
    the name and of its colour / object (query = the name's vector, argmax of ⟨q, t_j⟩)."""
    rows = []
    for stage in c.text:
        t = name_vectors(c, stage, names)
        cos = F.normalize(t, dim=-1) @ F.normalize(t, dim=-1).T
        nearest = cos.fill_diagonal_(-2).max(1).values.mean()
        s = torch.linalg.svdvals(t - t.mean(0))
        rank = s.pow(2).sum() ** 2 / s.pow(4).sum()
        top = [names[j] for j in (t @ t.T).argmax(1).tolist()]
        acc = [part_accuracy(top, names, part) for part in ("name", "colour", "object")]
        rows.append((stage, float(nearest), float(rank), *acc))
    return rows


def text_bound_probe(train: Collected, test: Collected, t: torch.Tensor, names: list[str],
                     steps: int = 400) -> tuple[float, float, float]:  # fmt: skip
    """Learns A (d × d) so that argmax_j ⟨A·h, t_j⟩ names the GT, with the name vectors t (N, d)
    fixed; → test accuracy of (name, colour, object). h: the last decoder state."""
    index = {n: i for i, n in enumerate(names)}
    h_tr = torch.from_numpy(np.stack(train.feats["decoder last"]))
    y_tr = torch.tensor([index[n] for n in train.names])
    a = torch.nn.Parameter(torch.eye(t.shape[1]))
    opt = torch.optim.Adam([a], lr=1e-2)
    t = t / t.norm(dim=1).mean()
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(h_tr @ a.T @ t.T, y_tr).backward()
        opt.step()
    h_te = torch.from_numpy(np.stack(test.feats["decoder last"]))
    top = (h_te @ a.detach().T @ t.T).argmax(1).tolist()
    pred = [names[j] for j in top]
    return tuple(part_accuracy(pred, test.names, part) for part in ("name", "colour", "object"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--n-train", type=int, default=600, help="training scenes to fit on")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-dir", default=os.environ.get("DATA_DIR"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.process_time()
    ckpt, module, dm = load_run(args.checkpoint, args.data_dir, stage="fit")
    seen_set = dm.val_sets[dm.val_names.index("val_seen")]
    unseen_set = dm.val_sets[dm.val_names.index("val_unseen")]
    seen, unseen = seen_set[0], unseen_set[0]
    pairs = lambda ds: [(s["image"], s["target"]) for s in (ds[i] for i in range(len(ds)))]  # noqa: E731
    train_samples = [dm.train_set.base[(i, i)] for i in range(args.n_train)]
    fit = collect(module, batches(dm._collate, train_samples, seen["names"], seen["label_ids"]))
    val = collect(module, batches(dm._collate, pairs(seen_set), seen["names"],
                                  seen["label_ids"]), text_stats=True)  # fmt: skip
    held = collect(module, batches(dm._collate, pairs(unseen_set), unseen["names"],
                                   unseen["label_ids"]))  # fmt: skip
    print(f"\ncheckpoint {args.checkpoint} (step {ckpt.get('global_step', '?')}): fit on "
          f"{len(fit.names)} GTs of {args.n_train} training scenes, scored on {len(val.names)} "
          f"val_seen / {len(held.names)} val_unseen GTs; best query IoU ≥ 0.5 for "
          f"{np.mean(np.array(val.iou) >= 0.5):.2f} of val_seen GTs")  # fmt: skip
    print("\n| stage | dims | colour (8) | object (20) | name (140) | unseen: colour | object |")
    print("|---|---|---|---|---|---|---|")
    for stage in STAGES:
        accs = [probe(fit, val, stage, p) for p in ("colour", "object", "name")]
        accs += [probe(fit, held, stage, p) for p in ("colour", "object")]
        cells = " | ".join(f"{a:.2f}" for a in accs)
        print(f"| {stage} | {len(fit.feats[stage][0])} | {cells} |")
    own = [part_accuracy(val.predicted, val.names, p) for p in ("colour", "object", "name")]
    own += [part_accuracy(held.predicted, held.names, p) for p in ("colour", "object")]
    print(f"| detector's top name at that query | – | {' | '.join(f'{a:.2f}' for a in own)} |")
    names = list(seen["names"])
    print("\n| text stage (140 seen names) | nearest-name cosine | effective rank | oracle query: "
          "name | colour | object |\n|---|---|---|---|---|---|")  # fmt: skip
    for stage, *vals in text_table(val, names):
        print(f"| {stage} | " + " | ".join(f"{v:.2f}" for v in vals) + " |")
    print("\n| text-bound probe on the last decoder state (fixed name vectors) | name | colour | "
          "object |\n|---|---|---|---|")  # fmt: skip
    for stage in val.text:
        acc = text_bound_probe(fit, val, name_vectors(val, stage, names), names)
        print(f"| name vectors after {stage} | " + " | ".join(f"{a:.2f}" for a in acc) + " |")
    print(f"\n{time.process_time() - start:.0f} CPU-s (this process)")


if __name__ == "__main__":
    main()
