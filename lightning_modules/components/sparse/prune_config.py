"""The ``prune.*`` flags of entropic sparsification with the spec's defaults (spec §4, §5).

Field names match the Hydra flags (``prune.entropy_sign``, ``prune.rho``, ...), so a config group
can be turned into ``PruneConfig(**cfg.prune)``. Values are validated on construction.
"""

from dataclasses import dataclass

_CHOICES = {
    "keep_rule": ("threshold", "mass"),
    "mode": ("auto", "budget"),
    "refit": ("plain", "weighted", "none"),
    "w_solver": ("mirror", "newton"),
    "init": ("uniform", "corr"),
    "input_source": ("pruned", "original"),
    "selector": ("entropic", "group_lasso", "l1_norm", "random"),
    "resnet_stage": ("internal", "joint"),
}


@dataclass
class PruneConfig:
    """Hyperparameters of the layer-wise entropic pruning (defaults: spec §4/§5).

    Solver: ``entropy_sign`` s ∈ {+1, −1}; ``eps_entropy`` ε_E; ``rho`` ρ (λ₂ = ρ·v_x/C_in² when
    ``normalise``, else λ₂ = ρ and ε_E raw); ``w_solver``; ``init`` + ``restarts`` (uniform,
    correlation, then Dirichlet draws); ``max_iter`` / ``tol`` (relative decrease of J);
    ``inner_max_iter`` / ``eta0`` for the mirror w-step; ``boxes`` (only 1 is implemented).
    Selection: ``mode`` auto (``keep_rule`` threshold τ on C_in·w_c, or mass 1 − δ) or budget
    (top ⌈``keep_frac``·C_in⌉, or a uniform fraction bisected to ``target_param_sparsity``);
    never fewer than max(``min_channels``, ⌈``min_keep_frac``·C_in⌉) channels.
    Pipeline: ``refit``, ``input_source``, ``selector``, ``max_rows``, ``holdout_frac``,
    ``group_lasso_alpha`` (automatic group-LASSO), ``seed``; ``resnet_stage`` internal (keep
    ResNet's residual-tied stage channels) or joint (one w per stage, entropic + auto mode only).
    """

    entropy_sign: int = 1
    rho: float = 1.0
    eps_entropy: float = 1e-3
    tau: float = 0.05
    keep_rule: str = "threshold"
    keep_mass_delta: float = 0.01
    mode: str = "auto"
    keep_frac: float | None = None
    target_param_sparsity: float | None = None
    refit: str = "plain"
    w_solver: str = "mirror"
    init: str = "uniform"
    restarts: int = 3
    max_iter: int = 200
    tol: float = 1e-8
    inner_max_iter: int = 500
    eta0: float = 1.0
    normalise: bool = True
    min_channels: int = 1
    min_keep_frac: float = 0.0
    boxes: int = 1
    input_source: str = "pruned"
    selector: str = "entropic"
    max_rows: int = 200_000
    holdout_frac: float = 0.1
    group_lasso_alpha: float | None = None
    seed: int = 0
    resnet_stage: str = "internal"

    def __post_init__(self) -> None:
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"prune.{name} must be one of {allowed}, got {getattr(self, name)!r}"
                )
        if self.boxes != 1:
            raise ValueError(
                f"prune.boxes={self.boxes}: only one box (K = 1) is implemented; "
                "SPARTAn's discretisation into several boxes is out of scope (spec §2.3)"
            )
        if self.entropy_sign not in (1, -1):
            raise ValueError(f"prune.entropy_sign must be +1 or -1, got {self.entropy_sign}")
        if self.resnet_stage == "joint" and (self.selector != "entropic" or self.mode != "auto"):
            raise ValueError(
                "prune.resnet_stage=joint is implemented for selector=entropic in mode=auto "
                f"(got selector={self.selector}, mode={self.mode})"
            )
        if self.w_solver == "newton" and self.entropy_sign != 1:
            raise ValueError("prune.w_solver=newton needs entropy_sign=+1 (convex w-step)")
        self._check_fractions()
        self._check_positive()

    def _check_fractions(self) -> None:
        if self.keep_frac is not None and not 0.0 < self.keep_frac <= 1.0:
            raise ValueError(f"prune.keep_frac must lie in (0, 1], got {self.keep_frac}")
        tps = self.target_param_sparsity
        if tps is not None and not 0.0 <= tps < 1.0:
            raise ValueError(f"prune.target_param_sparsity must lie in [0, 1), got {tps}")
        if self.mode == "budget" and (self.keep_frac is None) == (tps is None):
            raise ValueError(
                "prune.mode=budget needs exactly one of keep_frac, target_param_sparsity"
            )
        for name in ("min_keep_frac", "holdout_frac", "keep_mass_delta"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"prune.{name} must lie in [0, 1), got {getattr(self, name)}")

    def _check_positive(self) -> None:
        if self.min_channels < 1:
            raise ValueError(f"prune.min_channels must be >= 1, got {self.min_channels}")
        for name in ("rho", "eps_entropy", "tau", "tol"):
            if getattr(self, name) < 0:
                raise ValueError(f"prune.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("restarts", "max_iter", "inner_max_iter", "max_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"prune.{name} must be >= 1, got {getattr(self, name)}")
        if self.eta0 <= 0:
            raise ValueError(f"prune.eta0 must be > 0, got {self.eta0}")
        if self.group_lasso_alpha is not None and self.group_lasso_alpha <= 0:
            raise ValueError(f"prune.group_lasso_alpha must be > 0, got {self.group_lasso_alpha}")
