"""End-to-end layer-wise pruning with every selector on small random networks."""

import json

import pytest
import torch
from torch import nn

from lightning_modules.components.cnn import VGG16BN, LeNet5, ResNet18
from lightning_modules.components.sparse.channel_surgery import widths_of
from lightning_modules.components.sparse.counting import count_params, sparsity_report
from lightning_modules.components.sparse.pipeline import (
    entropic_sparsify,
    kept_counts,
    report_to_json,
)
from lightning_modules.components.sparse.prune_config import PruneConfig

SMALL_LENET = (6, 8, 30, 20)
FAST = {"restarts": 1, "max_iter": 30}


def _images(n: int, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed)).double()


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_entropic_sparsify_lenet5_end_to_end():
    torch.manual_seed(0)
    model = LeNet5().double()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    images = _images(128, (1, 28, 28))
    pruned, report = entropic_sparsify(model, images, PruneConfig(restarts=2, max_iter=40))
    assert count_params(pruned) < count_params(model)
    assert pruned(images[:4]).shape == model(images[:4]).shape == (4, 10)
    assert [r.producer for r in report] == [
        "features.0", "features.3", "classifier.1", "classifier.3"
    ]  # fmt: skip
    assert widths_of(pruned) == [r.n_kept for r in report]
    for r in report:
        assert r.kept == sorted(r.kept) and len(r.kept) == r.n_kept <= r.n_channels
        assert r.iterations >= 1 and r.objective is not None and r.seconds > 0
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # untouched


@pytest.mark.parametrize(
    ("make", "shape", "n_images"),
    [
        (lambda: LeNet5(widths=SMALL_LENET), (1, 28, 28), 400),
        (lambda: VGG16BN(plan=[8, "M", 8, "M", 16, "M", 16, "M", 16, "M"]), (3, 32, 32), 200),
        (lambda: ResNet18(internal_widths=[4] * 8), (3, 32, 32), 8),
    ],
)
def test_keeping_every_channel_reproduces_the_network(make, shape, n_images):
    """With all channels kept, the plain refit must give back the original layer and bias
    (intercept into the bias, or folded into the consumer BN for ResNet's bias-free conv2)."""
    torch.manual_seed(0)
    model = make().double().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 1.5)
    images = _images(n_images, shape)
    cfg = PruneConfig(mode="budget", keep_frac=1.0, max_rows=50_000, **FAST)
    pruned, _ = entropic_sparsify(model, images, cfg, selector="l1_norm")
    with torch.no_grad():
        assert _rel_err(pruned(images), model(images)) < 1e-4


@pytest.mark.parametrize("selector", ["group_lasso", "l1_norm", "random"])
def test_baselines_match_widths_of_an_entropic_run(selector, tmp_path):
    torch.manual_seed(0)
    model = LeNet5(widths=SMALL_LENET).double()
    images = _images(96, (1, 28, 28))
    _, report = entropic_sparsify(model, images, PruneConfig(**FAST))
    path = tmp_path / "widths.json"
    report_to_json(report, path)
    assert json.loads(path.read_text())["kept_counts"] == kept_counts(report)
    pruned, base = entropic_sparsify(model, images, PruneConfig(), selector, widths_from=path)
    assert [r.n_kept for r in base] == [r.n_kept for r in report]
    assert all(r.selector == selector for r in base)
    assert pruned(images[:2]).shape == (2, 10)


def test_budget_target_param_sparsity_is_reached():
    torch.manual_seed(0)
    model = LeNet5().double()
    cfg = PruneConfig(mode="budget", target_param_sparsity=0.6, **FAST)
    pruned, _ = entropic_sparsify(model, _images(64, (1, 28, 28)), cfg, selector="random")
    sparsity = sparsity_report(pruned, model, (1, 28, 28)).param_sparsity
    assert 60.0 <= sparsity < 66.0


@pytest.mark.parametrize(
    "flags",
    [
        {"refit": "weighted"},
        {"refit": "none", "input_source": "original"},
        {"init": "corr", "restarts": 3, "max_iter": 10, "entropy_sign": -1},
        {"w_solver": "newton", "keep_rule": "mass", "normalise": False},
    ],
)
def test_flag_variants_run(flags):
    torch.manual_seed(0)
    model = LeNet5(widths=SMALL_LENET).double()
    images = _images(48, (1, 28, 28))
    cfg = PruneConfig(**{**FAST, **flags})
    pruned, report = entropic_sparsify(model, images, cfg)
    assert pruned(images[:2]).shape == (2, 10)
    assert all(r.n_kept >= 1 for r in report)


def test_calibration_loader_with_labels_is_accepted():
    torch.manual_seed(0)
    model = LeNet5(widths=SMALL_LENET).double()
    images = _images(32, (1, 28, 28))
    dataset = torch.utils.data.TensorDataset(images, torch.zeros(32, dtype=torch.long))
    loader = torch.utils.data.DataLoader(dataset, batch_size=16)
    cfg = PruneConfig(mode="budget", keep_frac=0.5)
    from_loader, r1 = entropic_sparsify(model, loader, cfg, selector="l1_norm")
    from_tensor, r2 = entropic_sparsify(model, images, cfg, selector="l1_norm", batch_size=16)
    assert [r.kept for r in r1] == [r.kept for r in r2]
    torch.testing.assert_close(from_loader(images), from_tensor(images))


def test_refit_beats_keeping_the_original_columns():
    torch.manual_seed(0)
    model = VGG16BN(plan=[8, "M", 8, "M", 16, "M", 16, "M", 16, "M"]).double().eval()
    images = _images(64, (3, 32, 32))
    errors = {}
    for refit in ("plain", "none"):
        cfg = PruneConfig(mode="budget", keep_frac=0.75, refit=refit)
        pruned, _ = entropic_sparsify(model, images, cfg, selector="l1_norm")
        with torch.no_grad():
            errors[refit] = _rel_err(pruned(images), model(images))
    assert errors["plain"] < 0.5 * errors["none"], errors


@pytest.mark.slow
@pytest.mark.parametrize(("make", "selector"), [(ResNet18, "entropic"), (VGG16BN, "l1_norm")])
def test_full_size_cifar_networks_end_to_end(make, selector):
    """Full ResNet-18 / VGG-16-BN (D up to 4608): minutes on a 2-core CPU."""
    torch.manual_seed(0)
    model = make().eval()
    images = _images(8, (3, 32, 32)).float()
    cfg = PruneConfig(mode="budget", keep_frac=0.25, restarts=1, max_iter=3, max_rows=6000)
    pruned, report = entropic_sparsify(model, images, cfg, selector=selector)
    assert all(r.n_kept == -(-r.n_channels // 4) for r in report)
    assert pruned(images).shape == (8, 10)
    assert sparsity_report(pruned, model, (3, 32, 32)).param_sparsity > 70.0
