"""DINOv2LitModule wiring: twin student/teacher, optimizer groups, clipping, schedules, EMA callback."""

import math
import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import compose_config
from hydra.utils import instantiate

from callbacks.ema import EMATeacherCallback
from lightning_modules.dinov2_module import DINOv2LitModule, NonFiniteLossError
from lightning_modules.dinov2_schedules import DINOv2Schedules, OptimConfig, TeacherConfig


@pytest.fixture
def model(tiny, tmp_path: Path) -> DINOv2LitModule:
    overrides = [*tiny, "model.ibot.separate_head=true", "model.backbone.drop_path=0.2"]
    return instantiate(compose_config("train", overrides, tmp_path).model)


def test_student_and_teacher_are_twins(model: DINOv2LitModule) -> None:
    assert list(model.student) == list(model.teacher) == ["backbone", "dino_head", "ibot_head"]
    assert model.student.state_dict().keys() == model.teacher.state_dict().keys()
    assert not any(p.requires_grad for p in model.teacher.parameters())
    assert (
        model.teacher.backbone.drop_path_rate == 0.0
        and model.student_backbone.drop_path_rate == 0.2
    )
    model.train()
    assert model.student.training and not any(m.training for m in model.teacher.modules())
    assert model.eval_backbone is model.teacher.backbone
    assert model.student_backbone is model.student.backbone


def test_module_survives_pickle(model: DINOv2LitModule) -> None:
    """DDP start_method=spawn pickles the module (weight-normed prototypes included)."""
    clone = pickle.loads(pickle.dumps(model))
    for (key, a), b in zip(model.state_dict().items(), clone.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
    assert not any(p.requires_grad for p in clone.teacher.parameters())


def _with_grads(model: DINOv2LitModule, value: float) -> None:
    for p in model.student.parameters():
        p.grad = torch.full_like(p, value)


@pytest.mark.parametrize("mode", ["per_module", "global"])
def test_gradient_clipping(model: DINOv2LitModule, mode: str) -> None:
    model.clip_cfg["mode"] = mode
    model._trainer = SimpleNamespace(precision="32-true", global_step=0)
    _with_grads(model, 1.0)
    model.configure_gradient_clipping(None)
    norms = {
        name: torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in m.parameters()]))
        for name, m in model.student.items()
    }
    if mode == "per_module":
        assert all(n == pytest.approx(3.0, rel=1e-4) for n in norms.values())
    else:
        total = math.sqrt(sum(n.item() ** 2 for n in norms.values()))
        assert total == pytest.approx(3.0, rel=1e-4)
    _with_grads(model, float("nan"))
    with pytest.raises(NonFiniteLossError, match="non-finite gradient norm"):
        model.configure_gradient_clipping(None)


def test_schedules_are_pure_functions_of_the_step() -> None:
    optim = OptimConfig(base_lr=4e-3, warmup=0.1, freeze_last_layer=0.05, min_lr=1e-6)
    teacher = TeacherConfig(warmup_temp=0.04, temp=0.07, temp_warmup=0.3)
    s = DINOv2Schedules.build(optim, teacher, total_steps=100, global_batch=2048)
    peak = 4e-3 * math.sqrt(2)
    assert s.values(0)["lr"] == 0.0 and s.values(9)["lr"] == pytest.approx(peak)
    assert s.values(4)["last_layer_lr"] == 0.0 and s.values(5)["last_layer_lr"] == s.values(5)["lr"]
    assert s.values(100)["lr"] == pytest.approx(1e-6)
    assert s.values(0)["wd"] == pytest.approx(0.04) and s.values(100)["wd"] == pytest.approx(0.4)
    assert s.values(0)["teacher_temp"] == 0.04 and s.values(29)["teacher_temp"] == 0.07
    # written into the groups with their multipliers
    w = torch.nn.Parameter(torch.zeros(1))
    groups = [{"params": [w], "lr_multiplier": 0.5, "wd_multiplier": 0.0, "is_last_layer": False},
              {"params": [torch.nn.Parameter(torch.zeros(1))], "lr_multiplier": 1.0,
               "wd_multiplier": 1.0, "is_last_layer": True}]  # fmt: skip
    opt = torch.optim.AdamW(groups)
    values = s.apply(opt, 3)
    assert (
        opt.param_groups[0]["lr"] == 0.5 * values["lr"] and opt.param_groups[0]["weight_decay"] == 0
    )
    assert opt.param_groups[1]["lr"] == 0.0 and opt.param_groups[1]["weight_decay"] == values["wd"]


def test_optimizer_groups_hold_only_student_parameters(model: DINOv2LitModule) -> None:
    model._trainer = SimpleNamespace(
        estimated_stepping_batches=10, world_size=1, accumulate_grad_batches=1
    )
    optimizer = model.configure_optimizers()
    in_groups = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert in_groups == {id(p) for p in model.student.parameters()}
    last = [g for g in optimizer.param_groups if g["is_last_layer"]]
    assert last and all("last_layer" in n for g in last for n in g["param_names"])


def test_ema_momentum_is_a_cosine_of_the_step() -> None:
    ema = EMATeacherCallback(momentum_start=0.992, momentum_end=1.0)
    assert ema.momentum(0, 100) == pytest.approx(0.992)
    assert ema.momentum(50, 100) == pytest.approx(0.996)
    assert ema.momentum(100, 100) == 1.0
    assert set(vars(ema)) == {"momentum_start", "momentum_end", "total_steps"}  # no training state
    with pytest.raises(ValueError, match="momentum_start"):
        EMATeacherCallback(momentum_start=1.5)
