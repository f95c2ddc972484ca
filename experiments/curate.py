"""Curate an uncurated image pool as for LVD-142M (spec §8, decision D8).

    python experiments/curate.py                                  # small-scale replication
    python experiments/curate.py work_dir=logs/curate/run1        # resume: finished stages skip
    python experiments/curate.py curation.ckpt_path=PATH          # embed with a DINOv2 checkpoint

Stages, each a directory of ``work_dir`` committed atomically (``datamodules/curation/stages``):
``replication`` (pool / evaluation / query manifests, when ``curation.replication.enabled``),
``embed_*``, ``self_dedup``, ``relative_dedup``, ``pool_clusters`` (cluster-based retrieval
only), ``retrieve_<query set>``, ``manifest`` (``curated.csv``: unique images with reasons).
"""

import os
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from torch import nn

from datamodules.curated_datamodule import ManifestImageSource
from datamodules.curation.embed import Embeddings, ResizeNormalize, embed_images, load_embeddings
from datamodules.curation.errors import CurationError
from datamodules.curation.replication import ReplicationConfig, build_replication
from datamodules.curation.selection import run_selection, score_replication
from datamodules.curation.stages import run_stage, write_json_atomic
from experiments.checkpoints import load_checkpoint
from experiments.errors import CheckpointError, UserFacingError, exit_on_user_error
from experiments.summary import format_summary

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))


@dataclass
class Inputs:
    """Manifest paths of the pool, evaluation, query and as-is sets (by name)."""

    pool: Path
    eval: dict[str, Path] = field(default_factory=dict)
    queries: dict[str, Path] = field(default_factory=dict)
    as_is: dict[str, Path] = field(default_factory=dict)
    ground_truth: Path | None = None
    params: dict = field(default_factory=dict)  # of the stage that made them (replication)


def curate(cfg: DictConfig) -> dict[str, float]:
    """Run (or resume) every stage; returns the summary metrics (rank 0; {} on other ranks)."""
    L.seed_everything(cfg.seed, workers=True)
    work = Path(cfg.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    main = rank_zero_only.rank == 0
    try:
        inputs = _inputs(cfg, work, main)
        embeddings = _embed_all(cfg, work, inputs, main)
        if not main:
            return {}
        out = run_selection(cfg.curation, work, embeddings, inputs.as_is)
        metrics = dict(out.metrics)
        if inputs.ground_truth is not None:
            metrics.update(score_replication(inputs.ground_truth, embeddings["pool"], out))
    except CurationError as err:
        raise UserFacingError(str(err)) from err
    write_json_atomic(work / "summary.json", metrics)
    print(format_summary(metrics, {"curated manifest": str(out.manifest), "work dir": str(work)}))
    return metrics


def _inputs(cfg: DictConfig, work: Path, main: bool) -> Inputs:
    """The replication set-up's manifests (its stage), or the configured ones."""
    c = cfg.curation
    if c.replication.enabled:
        params = OmegaConf.to_container(c.replication, resolve=True)
        params.pop("enabled")
        rep = ReplicationConfig(**params)
        stage = run_stage(
            work, "replication", lambda d: build_replication(d, cfg.paths.data_dir, rep),
            params, is_main_process=main,
        )  # fmt: skip
        p = stage.path
        return Inputs(p / "pool.csv", {"fashion_mnist_test": p / "eval.csv"},
                      {"fashion_mnist": p / "queries.csv"}, {}, p / "ground_truth.npz",
                      {"replication": params})  # fmt: skip
    if not c.inputs.pool:
        raise CurationError(
            "set curation.inputs.pool=<manifest.csv> (or curation.replication.enabled=true)"
        )
    paths = {
        k: {n: Path(p) for n, p in (c.inputs.get(k) or {}).items()}
        for k in ("eval", "queries", "as_is")
    }
    return Inputs(Path(c.inputs.pool), **paths)


def _embed_all(cfg: DictConfig, work: Path, inputs: Inputs, main: bool) -> dict[str, Embeddings]:
    """Embeddings ``pool``, ``eval:<name>`` (dedup backbone), ``pool_retrieval``, ``query:<name>``."""
    c = cfg.curation
    dedup_bb, retrieval_bb = c.backbone, c.get("retrieval_backbone") or c.backbone
    jobs = [("pool", "embed_pool", inputs.pool, dedup_bb)]
    jobs += [(f"eval:{n}", f"embed_eval_{n}", p, dedup_bb) for n, p in inputs.eval.items()]
    if c.get("retrieval_backbone"):
        jobs.append(("pool_retrieval", "embed_pool_retrieval", inputs.pool, retrieval_bb))
    jobs += [(f"query:{n}", f"embed_query_{n}", p, retrieval_bb) for n, p in inputs.queries.items()]
    out = {}
    for key, stage, manifest, backbone_cfg in jobs:
        result = _embed(cfg, work, stage, manifest, backbone_cfg, inputs.params, main)
        if main:
            out[key] = load_embeddings(result)
    out.setdefault("pool_retrieval", out.get("pool"))
    return out


def _embed(
    cfg: DictConfig, work: Path, stage: str, manifest: Path, backbone_cfg: DictConfig,
    upstream: dict, main: bool,
) -> Path:  # fmt: skip
    """Stage ``stage``: embed the images of ``manifest`` with the backbone (on every rank)."""
    c, e = cfg.curation, cfg.curation.embed
    trainer_kwargs = OmegaConf.to_container(e.trainer, resolve=True)
    params = {
        **upstream,
        "manifest": str(manifest),
        "backbone": OmegaConf.to_container(backbone_cfg, resolve=True),
        "ckpt_path": c.ckpt_path,
        "image_size": e.image_size, "mean": list(e.mean), "std": list(e.std),
        "precision": trainer_kwargs.get("precision"),
    }  # fmt: skip

    def run(out_dir: Path) -> dict:
        images = ManifestImageSource(manifest, cfg.paths.data_dir)
        transform = ResizeNormalize(e.image_size, tuple(e.mean), tuple(e.std))
        backbone = build_backbone(backbone_cfg, c.ckpt_path, c.checkpoint_attribute, cfg.seed)
        return embed_images(backbone, images, out_dir, transform, e.batch_size, e.num_workers,
                            trainer_kwargs)  # fmt: skip

    return run_stage(work, stage, run, params, is_main_process=main, collective=True).path


def build_backbone(
    backbone_cfg: DictConfig, ckpt_path: str | None, attribute: str, seed: int
) -> nn.Module:
    """``backbone_cfg`` instantiated (seeded, so every stage gets the same random init), or the
    ``attribute`` (e.g. ``eval_backbone``) of the LightningModule stored in ``ckpt_path``."""
    if not ckpt_path:
        L.seed_everything(seed, verbose=False)
        return instantiate(backbone_cfg)
    checkpoint = load_checkpoint(ckpt_path)
    if "run_config" not in checkpoint:
        raise CheckpointError(f"Checkpoint {ckpt_path} has no run config (not from train.py).")
    model = instantiate(OmegaConf.create(checkpoint["run_config"]).model)
    model.load_state_dict(checkpoint["state_dict"])
    if not isinstance(getattr(model, attribute, None), nn.Module):
        raise CheckpointError(
            f"{type(model).__name__} from {ckpt_path} has no module '{attribute}'; "
            "set curation.checkpoint_attribute"
        )
    return getattr(model, attribute)


@hydra.main(version_base="1.3", config_path="../configs", config_name="curate")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        curate(cfg)


if __name__ == "__main__":
    main()
