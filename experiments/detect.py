"""Text-prompted detection: ``python experiments/detect.py IMAGE... --prompt "cat . dog ."``.

Writes one JSON document (boxes in original-image pixels xyxy, phrases, scores per image) to
stdout or ``--output-json`` and an overlay PNG per image into ``--output-dir``. One ``--prompt``
applies to every image; several (one per image) give each image its own prompt. Category lists
over the 256-token budget are chunked and merged (spec §10). ``--checkpoint`` loads a training
checkpoint of ``experiments/train.py`` (its stored run config rebuilds the model); without it the
``--experiment`` config is built with random weights (a smoke test of the pipeline).

DINO-X models (``experiment=gdino_dinox_*``) also detect without text: ``--prompt-free`` uses
the universal prompt (every object, phrase "object"; ``--prompt "<prompt_free>"`` too); ``--visual-prompt IMAGE:x1,y1,x2,y2`` (or
``IMAGE:x,y`` for a point; append ``:name`` to name the category; repeatable, prompts of one name
are averaged) shows the category by example boxes on other images. Their masks and keypoints are
drawn in the overlay; keypoints also go to the JSON.

Python API: ``load_model``, ``GroundingPredictor`` (batched, one prompt per image; equal to
per-image calls), ``export_onnx`` (the image path, decision P10).
"""

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torchvision.io import ImageReadMode, decode_image, write_png
from torchvision.transforms.v2 import functional as TF
from torchvision.utils import draw_bounding_boxes, draw_keypoints, draw_segmentation_masks

from datamodules.components.detection_collate import build_prompt_chunks, pad_images
from experiments.errors import UserFacingError, exit_on_user_error
from lightning_modules.components.detection.prompts import PROMPT_FREE

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass
class Detection:
    """One detection: box [x1, y1, x2, y2] in original-image pixels, its phrase and score."""

    box: list[float]
    phrase: str
    score: float
    category_index: int
    keypoints: list[list[float]] | None = None  # (x, y, visibility probability) per keypoint
    mask: torch.Tensor | None = field(default=None, repr=False)  # (H, W) bool; overlay only


def parse_prompt(prompt: str) -> list[str]:
    """``"Cat . hot dog ."`` → ``["cat", "hot dog"]``; an empty prompt raises ``UserFacingError``."""
    names = [p.strip().lower() for p in prompt.split(".")]
    names = [n for n in names if n]
    if not names:
        raise UserFacingError(
            f"empty prompt {prompt!r}: give category names separated by ' . ', e.g. 'cat . dog .'"
        )
    return names


def load_image(path: str | Path) -> torch.Tensor:
    """An image file → (3, H, W) uint8 RGB (grayscale and RGBA are converted)."""
    path = Path(path)
    if not path.is_file():
        raise UserFacingError(f"image file {path} not found")
    try:
        return decode_image(str(path), mode=ImageReadMode.RGB)
    except RuntimeError as err:
        raise UserFacingError(f"cannot decode image {path}: {err}") from err


def load_model(checkpoint: str | None = None, experiment: str = "gdino_tiny_synthetic",
               overrides: Sequence[str] = ()):  # fmt: skip
    """The LitModule of a training checkpoint (architecture from its run config), or of an
    experiment config with random weights when ``checkpoint`` is None. Eval mode."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from experiments.checkpoints import check_state_dict_compatible, load_checkpoint

    if checkpoint:
        ckpt = load_checkpoint(checkpoint)
        if "run_config" not in ckpt:
            raise UserFacingError(f"checkpoint {checkpoint} has no run config (not from train.py)")
        model_cfg = OmegaConf.create(ckpt["run_config"]).model
        backbone_cfg = OmegaConf.select(model_cfg, "detector.backbone")
        if backbone_cfg is not None and backbone_cfg.get("checkpoint"):
            backbone_cfg.checkpoint = None  # the trained weights below replace the init file
        model = instantiate(model_cfg)
        check_state_dict_compatible(ckpt, model, checkpoint)
        model.load_state_dict(ckpt["state_dict"])
    else:
        import tempfile

        from experiments.compose import compose_run_config

        overrides = [f"experiment={experiment}", *overrides]
        cfg = compose_run_config("train", overrides, tempfile.gettempdir())
        warnings.warn(f"no --checkpoint: {experiment} with random weights", stacklevel=2)
        model = instantiate(cfg.model)
    return model.eval()


class GroundingPredictor:
    """Batched text-prompted inference with one prompt (category list) per image.

    Images are resized (short side ``size``, long ≤ ``max_size``) and batched with images of the
    same resized size only, so padding never changes a result: a batch equals per-image calls.

    Args:
        module: a ``GroundingDetectorLitModule`` (eval mode).
        size, max_size: inference resize. max_tokens: caption budget (longer lists are chunked).
        box_threshold: minimum score kept. num_select: candidates per image before thresholding.
    """

    def __init__(self, module, size: int = 256, max_size: int = 320, max_tokens: int = 256,
                 box_threshold: float = 0.3, num_select: int = 300) -> None:  # fmt: skip
        self.module, self.size, self.max_size = module, size, max_size
        self.max_tokens, self.box_threshold, self.num_select = max_tokens, box_threshold, num_select

    def _shape(self, h: int, w: int) -> list[int]:
        """Short side ``size``, long side at most ``max_size``."""
        scale = min(self.size / min(h, w), self.max_size / max(h, w))
        return [max(1, round(h * scale)), max(1, round(w * scale))]

    @property
    def device(self) -> torch.device:
        return self.module.device

    @torch.no_grad()
    def __call__(
        self, images: Sequence[torch.Tensor], prompts: Sequence[list[str]] | None = None,
        prompt_free: bool = False, visual: "VisualCategories | None" = None,
    ) -> list[list[Detection]]:  # fmt: skip
        """images[b] (3, H, W) uint8 RGB; prompts[b] category names → detections, best first.

        Without text: ``prompt_free`` (universal prompt) or ``visual`` (``visual_categories``).
        """
        if (prompts is not None) + prompt_free + (visual is not None) != 1:
            raise UserFacingError(
                "give exactly one prompt source: text prompts, prompt_free=True (--prompt-free) "
                "or visual prompts (--visual-prompt IMAGE:x1,y1,x2,y2)"
            )
        text = prompts is not None
        if prompts is None:
            self._require("detect", "prompt-free and visual prompts need a DINO-X model "
                                    "(experiment=gdino_dinox_tiny_synthetic)")  # fmt: skip
            names = visual.names if visual is not None else ["object"]
            prompts = [names] * len(images)
        if len(images) != len(prompts):
            raise UserFacingError(f"{len(images)} images but {len(prompts)} prompts")
        resized = [TF.resize(im, self._shape(*im.shape[-2:]), antialias=True) for im in images]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(resized):
            groups.setdefault(tuple(im.shape[-2:]), []).append(i)
        results: list[list[Detection]] = [[] for _ in images]
        for index in groups.values():
            for i, dets in zip(index, self._batch([resized[i] for i in index],
                               [prompts[i] for i in index],
                               [tuple(images[i].shape[-2:]) for i in index], text, visual),
                               strict=True):  # fmt: skip
                results[i] = dets
        return results

    def _require(self, method: str, message: str) -> None:
        if not hasattr(self.module, method):
            raise UserFacingError(message)

    def _batch(self, images: list[torch.Tensor], prompts: list[list[str]],
               sizes: list[tuple[int, int]], text: bool = True,
               visual: "VisualCategories | None" = None) -> list[list[Detection]]:  # fmt: skip
        """text: ``prompts`` are captions; else the universal prompt or ``visual`` categories."""
        batch, pad_mask = pad_images(images, self.module.detector.size_divisibility)
        batch, pad_mask = batch.to(self.device), pad_mask.to(self.device)
        chunks = None
        if text:
            try:
                chunks = build_prompt_chunks(
                    self.module.text_encoder.tokenizer, prompts, max_tokens=self.max_tokens
                )
            except ValueError as err:
                raise UserFacingError(str(err)) from err
            chunks = [_to(c, self.device) for c in chunks]
        if hasattr(self.module, "detect"):  # DINO-X: also masks and keypoints
            feats = self.module.detector.image_features(batch, pad_mask)
            image_sizes = [tuple(im.shape[-2:]) for im in images]
            vis = None if visual is None else (visual.ids.to(self.device), visual.vectors)
            preds = self.module.detect(feats, chunks, sizes, image_sizes, vis, self.num_select)
        else:
            preds = self.module.predict_batch(batch, pad_mask, chunks, sizes, self.num_select)
        return [self._detections(pred, names) for pred, names in zip(preds, prompts, strict=True)]

    def _detections(self, pred: dict[str, torch.Tensor], names: list[str]) -> list[Detection]:
        """Detections with score ≥ box_threshold; masks/keypoints where the heads ran."""
        out = []
        for i in (pred["scores"] >= self.box_threshold).nonzero().flatten().tolist():
            label = int(pred["labels"][i])
            det = Detection(
                pred["boxes"][i].tolist(), names[label], float(pred["scores"][i]), label
            )
            if "keypoints" in pred:
                det.keypoints = [[round(v, 2) for v in k] for k in pred["keypoints"][i].tolist()]
            if "masks" in pred and i < len(pred["masks"]):
                det.mask = pred["masks"][i].cpu()
            out.append(det)
        return out

    @torch.no_grad()
    def visual_categories(self, prompts: Sequence["VisualPromptArg"]) -> "VisualCategories":
        """Example boxes/points on example images → one averaged prompt vector per name."""
        self._require("visual_prompt_bank", "visual prompts need a DINO-X model "
                                            "(experiment=gdino_dinox_tiny_synthetic)")  # fmt: skip
        from lightning_modules.components.detection.visual_prompt import prompt_boxes_from_pixels

        names = list(dict.fromkeys(p.name for p in prompts))
        files = list(dict.fromkeys(p.image for p in prompts))
        images = [load_image(f) for f in files]
        boxes: list[list[torch.Tensor]] = [[] for _ in files]
        keys: list[list[int]] = [[] for _ in files]
        for p in prompts:
            i = files.index(p.image)
            try:
                boxes[i].append(prompt_boxes_from_pixels(p.coords, tuple(images[i].shape[-2:]),
                                                         str(p.image)))  # fmt: skip
            except ValueError as err:
                raise UserFacingError(str(err)) from err
            keys[i].append(names.index(p.name))
        resized = [TF.resize(im, self._shape(*im.shape[-2:]), antialias=True) for im in images]
        batch, pad_mask = pad_images(resized, self.module.detector.size_divisibility)
        feats = self.module.detector.image_features(batch.to(self.device), pad_mask.to(self.device))
        ids, vectors = self.module.visual_prompt_bank(
            feats, [torch.cat(b).to(self.device) for b in boxes],
            [torch.tensor(k, device=self.device) for k in keys],
        )  # fmt: skip
        return VisualCategories(names, ids, vectors)


@dataclass
class VisualPromptArg:
    """One ``--visual-prompt``: image file, coords (4,) box x1,y1,x2,y2 or (2,) point, name."""

    image: str
    coords: torch.Tensor
    name: str = "visual prompt"


@dataclass
class VisualCategories:
    """Visual prompt categories: names (C,), ids (C,) into names, vectors (C, d)."""

    names: list[str]
    ids: torch.Tensor
    vectors: torch.Tensor


def parse_visual_prompt(text: str) -> VisualPromptArg:
    """``IMAGE:x1,y1,x2,y2[:name]`` or ``IMAGE:x,y[:name]`` → ``VisualPromptArg``."""
    parts = text.split(":")
    for n_tail in (2, 1):
        if len(parts) > n_tail:
            coords = parts[-n_tail].split(",")
            try:
                values = [float(v) for v in coords]
            except ValueError:
                continue
            if len(values) in (2, 4):
                name = parts[-1].strip().lower() if n_tail == 2 else "visual prompt"
                return VisualPromptArg(":".join(parts[:-n_tail]), torch.tensor(values), name)
    raise UserFacingError(
        f"bad --visual-prompt {text!r}: expected IMAGE:x1,y1,x2,y2 or IMAGE:x,y (optionally :name)"
    )


def _to(prompt, device: torch.device):
    from dataclasses import replace

    return replace(prompt, input_ids=prompt.input_ids.to(device),
                   attention_mask=prompt.attention_mask.to(device),
                   positive_map=prompt.positive_map.to(device))  # fmt: skip


def draw_overlay(image: torch.Tensor, detections: list[Detection]) -> torch.Tensor:
    """(3, H, W) uint8 with masks (translucent), boxes, "phrase score" labels and keypoints."""
    if not detections:
        return image
    masks = [d.mask for d in detections if d.mask is not None]
    if masks:
        image = draw_segmentation_masks(image, torch.stack(masks), alpha=0.4)
    boxes = torch.tensor([d.box for d in detections])
    labels = [f"{d.phrase} {d.score:.2f}" for d in detections]
    image = draw_bounding_boxes(image, boxes, labels=labels, width=2, colors="red")
    points = [d.keypoints for d in detections if d.keypoints is not None]
    if points:
        xy = torch.tensor(points)[..., :2]
        image = draw_keypoints(image, xy, colors="yellow", radius=2)
    return image


def export_onnx(detector, path: str | Path, image_size: tuple[int, int] = (256, 256),
                num_tokens: int = 16, opset: int = 17) -> Path:  # fmt: skip
    """Exports the image path ``(images, pad_mask, text_feats, text_token_mask, position_ids,
    submask) → (logits, boxes)`` of a ``GroundingDetector`` with static shapes (batch 1)."""
    from lightning_modules.components.detection.detector import ExportableImagePath

    h, w = image_size
    inputs = (
        torch.randn(1, 3, h, w), torch.zeros(1, h, w, dtype=torch.bool),
        torch.randn(1, num_tokens, detector.text_dim), torch.ones(1, num_tokens, dtype=torch.bool),
        torch.arange(num_tokens)[None], torch.ones(1, num_tokens, num_tokens, dtype=torch.bool),
    )  # fmt: skip
    names = ["images", "pad_mask", "text_feats", "text_token_mask", "position_ids", "submask"]
    module = ExportableImagePath(detector).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, inputs, str(path), dynamo=False, opset_version=opset,
                          input_names=names, output_names=["logits", "boxes"])  # fmt: skip
    return Path(path)


def _json(det: Detection) -> dict:
    """A detection as JSON (the mask is drawn, not written; keypoints only when predicted)."""
    doc = asdict(replace(det, mask=None))
    del doc["mask"]
    if doc["keypoints"] is None:
        del doc["keypoints"]
    return doc


def run(args: argparse.Namespace) -> dict:
    """The CLI's work: returns the JSON document it prints."""
    if args.prompt == [PROMPT_FREE]:  # the DINO-X API's special prompt text
        args.prompt, args.prompt_free = [], True
    visual_args = [parse_visual_prompt(v) for v in args.visual_prompt]
    if bool(args.prompt) + args.prompt_free + bool(visual_args) != 1:
        raise UserFacingError("give exactly one of --prompt, --prompt-free or --visual-prompt")
    prompts = None
    if args.prompt:
        prompts = [parse_prompt(p) for p in args.prompt]
        if len(prompts) not in (1, len(args.images)):
            raise UserFacingError(f"give one --prompt, or one per image ({len(args.images)})")
        prompts = prompts * len(args.images) if len(prompts) == 1 else prompts
    images = [load_image(p) for p in args.images]
    module = load_model(args.checkpoint, args.experiment, args.override)
    if args.device:
        module = module.to(args.device)
    predictor = GroundingPredictor(
        module, args.size, args.max_size, box_threshold=args.box_threshold
    )
    visual = predictor.visual_categories(visual_args) if visual_args else None
    results = predictor(images, prompts, args.prompt_free, visual)
    if prompts is None:
        prompts = [visual.names if visual else ["object"]] * len(images)
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {"images": []}
    for path, image, names, dets in zip(args.images, images, prompts, results, strict=True):
        overlay = out_dir / f"{Path(path).stem}_detections.png"
        write_png(draw_overlay(image, dets), str(overlay))
        doc["images"].append({"file": str(path), "prompt": " . ".join(names) + " .",
                              "overlay": str(overlay), "detections": [_json(d) for d in dets]})  # fmt: skip
    text = json.dumps(doc, indent=2)
    if args.output_json:
        Path(args.output_json).write_text(text)
    else:
        print(text)
    return doc


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("images", nargs="+", help="image files (RGB, grayscale or RGBA)")
    p.add_argument("--prompt", action="append", default=[],
                   help='"cat . dog ." once for all images, or once per image')  # fmt: skip
    p.add_argument("--prompt-free", action="store_true",
                   help="detect every object with the universal prompt (DINO-X models)")  # fmt: skip
    p.add_argument("--visual-prompt", action="append", default=[],
                   help="IMAGE:x1,y1,x2,y2 (box) or IMAGE:x,y (point) in pixels of IMAGE, "
                        "optionally :name; repeatable (DINO-X models)")  # fmt: skip
    p.add_argument("--checkpoint", help="a checkpoint of experiments/train.py")
    p.add_argument("--experiment", default="gdino_tiny_synthetic",
                   help="config to build without --checkpoint (random weights)")  # fmt: skip
    p.add_argument("--override", action="append", default=[], help="Hydra override, repeatable")
    p.add_argument("--output-dir", default="detections", help="overlay PNGs go here")
    p.add_argument("--output-json", help="write the JSON here instead of stdout")
    p.add_argument("--box-threshold", type=float, default=0.3)
    p.add_argument("--size", type=int, default=256, help="short side at inference")
    p.add_argument("--max-size", type=int, default=320, help="long side at most")
    p.add_argument("--device", help="e.g. cuda; default cpu")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    with exit_on_user_error():
        run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
