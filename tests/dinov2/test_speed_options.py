"""DINOv2 speed options: each gives the plain step's losses and keeps checkpoints unchanged.

``skip_unused_tokens`` (the last block only for the tokens the losses read), ``merge_head_calls``
(one call per head), ``fused_optimizer`` and ``compile`` (``torch.compile`` of every block) must
change the speed only: the same losses and gradients up to float rounding, the same state-dict
keys, and a plain (bit-identical) path when they are off. ``trainer.precision=bf16-mixed`` gives
them up to bf16 rounding, with the loss math in fp32.
"""

import copy
import math
from pathlib import Path

import pytest
import torch
from helpers import Crash, CrashAfterStep, compose_config, with_extra_callback

from datamodules.components.masking import BlockMaskGenerator
from datamodules.components.multicrop_collate import MultiCropCollate
from experiments.train import train
from lightning_modules.components.vit import DINOv2Backbone
from lightning_modules.dinov2_module import LOSS_TERMS, DINOv2LitModule

HEAD = {"out_dim": 64, "hidden_dim": 64, "bottleneck_dim": 32, "nlayers": 3}
BATCH, GLOBAL, LOCAL, N_LOCAL, PATCH = 4, 16, 8, 2, 4


def _batch() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    samples = [
        {
            "global_crops": [torch.randn(3, GLOBAL, GLOBAL, generator=gen) for _ in range(2)],
            "local_crops": [torch.randn(3, LOCAL, LOCAL, generator=gen) for _ in range(N_LOCAL)],
        }
        for _ in range(BATCH)
    ]
    grid = GLOBAL // PATCH
    return MultiCropCollate(BlockMaskGenerator(grid, max_num_patches=0.5 * grid**2), seed=0)(
        samples
    )


def _module(
    separate_head: bool = False,
    drop_path_mode: str = "per_sample",
    fused_attention: bool = True,
    **options: bool,
) -> DINOv2LitModule:
    torch.manual_seed(0)
    backbone = DINOv2Backbone(
        img_size=GLOBAL, patch_size=PATCH, embed_dim=32, depth=2, num_heads=2,
        layerscale_init=0.5, drop_path=0.2, drop_path_mode=drop_path_mode,
        fused_attention=fused_attention,
    )  # fmt: skip
    return DINOv2LitModule(
        backbone, dino_head=HEAD, ibot={"separate_head": separate_head, "head": HEAD},
        koleo={}, teacher={"target_mode": "centering"}, optim={}, batch_size=BATCH, **options,
    ).train()  # fmt: skip


def _step(module: DINOv2LitModule, batch: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """Losses and student gradients of one step with a fixed drop-path seed."""
    torch.manual_seed(1)
    losses = module.compute_losses(batch, teacher_temp=0.04)
    losses["loss"].backward()
    grads = {n: p.grad for n, p in module.student.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads


def _assert_close(a: tuple[dict, dict], b: tuple[dict, dict], tol: float) -> None:
    """Losses and gradients agree to ``tol`` relative to each tensor's largest entry."""
    assert a[0].keys() == b[0].keys() and a[1].keys() == b[1].keys()
    for key, value in [*a[0].items(), *a[1].items()]:
        other = b[0][key] if key in b[0] else b[1][key]
        scale = float(value.abs().max())
        torch.testing.assert_close(other, value, rtol=0, atol=tol * scale + 1e-12, msg=key)


@pytest.mark.parametrize(
    ("registers", "mode", "fused"),
    [(0, "per_sample", True), (2, "per_sample", True), (0, "batch_subset", True),
     (2, "batch_subset", False)],
)  # fmt: skip
def test_forward_selected_equals_the_selected_rows_of_the_full_forward(
    registers: int, mode: str, fused: bool
) -> None:
    torch.manual_seed(0)
    backbone = DINOv2Backbone(
        img_size=GLOBAL, patch_size=PATCH, embed_dim=32, depth=3, num_heads=2,
        num_register_tokens=registers, layerscale_init=0.5, drop_path=0.3, drop_path_mode=mode,
        fused_attention=fused,
    ).train().double()  # fmt: skip
    # float64: the batch-subset path runs smaller matmuls than the factor path, so float32
    # rounding differs by ~2e-5 relative; in float64 the paths must agree to 1e-10
    x = torch.randn(6, 3, GLOBAL, GLOBAL, dtype=torch.float64)
    masks = torch.rand(6, (GLOBAL // PATCH) ** 2, generator=torch.Generator().manual_seed(1)) < 0.4
    masks[0] = False  # a crop without selected patches
    index = masks.flatten().nonzero().flatten()
    outputs = []
    for forward in ("full", "selected"):
        backbone.zero_grad()
        torch.manual_seed(3)  # the same drop-path draws on both paths
        if forward == "full":
            out = backbone.forward_features(x, masks)
            cls, patch = out["cls"], out["patch"].flatten(0, 1)[index]
        else:
            out = backbone.forward_selected(x, masks, index)
            cls, patch = out["cls"], out["patch"]
        (cls.square().sum() + patch.sum()).backward()
        grads = {n: p.grad.clone() for n, p in backbone.named_parameters() if p.grad is not None}
        outputs.append(({"cls": cls.detach(), "patch": patch.detach()}, grads))
    _assert_close(outputs[0], outputs[1], tol=1e-10)
    # a different seed drops different samples: the equality above is not vacuous
    torch.manual_seed(4)
    assert not torch.equal(backbone.forward_selected(x, masks, index)["cls"], outputs[0][0]["cls"])
    assert backbone.forward_selected(x)["patch"].shape == (0, 32)


@pytest.mark.parametrize(
    ("separate_head", "mode"), [(False, "per_sample"), (True, "per_sample"), (True, "batch_subset")]
)
def test_skip_unused_tokens_and_merged_heads_give_the_plain_losses(
    separate_head: bool, mode: str
) -> None:
    batch = _batch()
    plain = _step(_module(separate_head, mode), batch)
    fast = _module(separate_head, mode, skip_unused_tokens=True, merge_head_calls=True)
    _assert_close(plain, _step(fast, batch), tol=1e-5)
    assert fast.state_dict().keys() == _module(separate_head).state_dict().keys()


def test_explicit_attention_gives_the_sdpa_losses_and_never_calls_sdpa(monkeypatch) -> None:
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counted_sdpa(*args, **kwargs) -> torch.Tensor:
        calls.append(1)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counted_sdpa)
    batch, options = _batch(), {"skip_unused_tokens": True, "merge_head_calls": True}
    fused = _step(_module(drop_path_mode="batch_subset", **options), batch)
    assert calls  # the default path is timm's SDPA, in the blocks and the selected last block
    calls.clear()
    explicit = _module(drop_path_mode="batch_subset", fused_attention=False, **options)
    _assert_close(fused, _step(explicit, batch), tol=1e-5)
    assert not calls
    assert explicit.state_dict().keys() == _module().state_dict().keys()


def test_fused_optimizer_takes_the_same_step() -> None:
    steps = []
    for fused in (False, True):
        module = _module(fused_optimizer=fused)
        optimizer = module.build_optimizer()
        assert optimizer.defaults["fused"] is (True if fused else None)
        for group in optimizer.param_groups:
            group["lr"], group["weight_decay"] = 1e-3, 0.04
        _step(module, _batch())
        optimizer.step()
        steps.append(module.student.state_dict())
    for key, value in steps[0].items():
        torch.testing.assert_close(steps[1][key], value, rtol=1e-6, atol=1e-7, msg=key)


@pytest.mark.slow  # compiling the blocks takes about a minute on this CPU
@pytest.mark.parametrize("mode", ["per_sample", "batch_subset"])
def test_compiled_blocks_give_the_eager_losses_and_keep_checkpoint_keys(mode: str) -> None:
    batch = _batch()
    eager = _module(drop_path_mode=mode)
    compiled = _module(drop_path_mode=mode, compile=True)
    compiled.configure_model()
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    # pin random ops to eager's kernels, so drop-path draws the same masks whatever Inductor does
    with torch._inductor.config.patch(fallback_random=True):
        _assert_close(_step(eager, batch), _step(compiled, batch), tol=1e-5)
    # student global and local crops (with grad) and the teacher's (no grad): three graphs
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 3
    keys = compiled.state_dict().keys()
    assert keys == eager.state_dict().keys()
    assert not any("_orig_mod" in key for key in keys)


@pytest.mark.slow  # three short trainings with compiled blocks (about 1.5 min here)
def test_resume_with_every_speed_option_is_bit_exact(
    tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """6 steps == 3 steps, crash, resume from last.ckpt, 3 steps; compiled and fast paths on."""
    n = 3
    overrides = [
        *tiny, "data.subset=40", "trainer=deterministic", f"trainer.max_steps={2 * n}",
        "trainer.max_epochs=-1", f"callbacks.periodic_checkpoint.every_n_train_steps={n}",
        "model.backbone.drop_path=0.2", "model.ibot.separate_head=true", "model.compile=true",
        "model.skip_unused_tokens=true", "model.merge_head_calls=true",
        "model.fused_optimizer=true", "model.backbone.fused_attention=false",
    ]  # fmt: skip
    torch._dynamo.utils.counters.clear()
    train(compose_config("train", overrides, tmp_path / "full"))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # the Trainer compiled
    monkeypatch.setattr(
        "experiments.train.instantiate_callbacks", with_extra_callback(CrashAfterStep(n))
    )
    with pytest.raises(Crash):
        train(compose_config("train", overrides, tmp_path / "first"))
    monkeypatch.undo()
    resumed = [*overrides, f"resume_dir={tmp_path / 'first'}"]
    train(compose_config("train", resumed, tmp_path / "resumed"))

    full, again = (
        torch.load(tmp_path / run / "checkpoints" / "last.ckpt", weights_only=True)
        for run in ("full", "resumed")
    )
    assert full["global_step"] == again["global_step"] == 2 * n
    assert not any("_orig_mod" in key for key in full["state_dict"])
    for key, value in full["state_dict"].items():
        assert torch.equal(value, again["state_dict"][key]), key
    for pid, tensors in full["optimizer_states"][0]["state"].items():
        for name, tensor in tensors.items():
            assert torch.equal(tensor, again["optimizer_states"][0]["state"][pid][name])


def test_bf16_autocast_step_matches_the_fp32_step_up_to_bf16_rounding() -> None:
    module = _module(drop_path_mode="batch_subset", skip_unused_tokens=True, merge_head_calls=True)
    twin = copy.deepcopy(module)
    batch = _batch()
    fp32_losses, fp32_grads = _step(module, batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16_losses, bf16_grads = _step(twin, batch)
    assert fp32_grads.keys() == bf16_grads.keys()
    for key, value in fp32_losses.items():
        assert bf16_losses[key].dtype == torch.float32, key  # the loss math is fp32 (spec §5.4)
        torch.testing.assert_close(bf16_losses[key], value, rtol=2e-2, atol=2e-3, msg=key)
    # autocast did engage: bf16 matmuls (8-bit mantissa) change the loss beyond fp32 rounding
    assert not torch.equal(bf16_losses["loss"], fp32_losses["loss"])
    for key, grad in fp32_grads.items():
        assert bf16_grads[key].dtype == torch.float32, key  # fp32 parameters and gradients
        scale = float(grad.abs().max())
        torch.testing.assert_close(bf16_grads[key], grad, rtol=0, atol=0.06 * scale + 1e-8, msg=key)


def test_fast_dev_run_in_bf16_mixed(tiny, tmp_path: Path) -> None:
    overrides = [*tiny, "debug=fast_dev_run", "trainer.precision=bf16-mixed",
                 "model.skip_unused_tokens=true", "model.merge_head_calls=true"]  # fmt: skip
    metrics = train(compose_config("train", overrides, tmp_path))
    for term in LOSS_TERMS:
        name = f"train/{'loss' if term == 'loss' else 'loss_' + term}"
        assert math.isfinite(metrics[name]), name
