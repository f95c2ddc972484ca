"""DINOv2 losses and teacher targets (spec §4): plain PyTorch, softmax/SK/KoLeo in fp32."""

from lightning_modules.components.losses.centering import Centering
from lightning_modules.components.losses.dino_loss import DINOLoss
from lightning_modules.components.losses.ibot_loss import iBOTPatchLoss
from lightning_modules.components.losses.koleo_loss import KoLeoLoss
from lightning_modules.components.losses.sinkhorn_knopp import SinkhornKnopp, sinkhorn_knopp
from lightning_modules.components.losses.teacher_targets import build_teacher_targets

__all__ = [
    "Centering",
    "DINOLoss",
    "KoLeoLoss",
    "SinkhornKnopp",
    "build_teacher_targets",
    "iBOTPatchLoss",
    "sinkhorn_knopp",
]
