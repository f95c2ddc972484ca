"""ONNX export of the image path (decision P10): onnxruntime matches PyTorch (slow)."""

from pathlib import Path

import pytest
import torch

from experiments.detect import export_onnx


@pytest.mark.slow
def test_onnx_matches_pytorch(tmp_path: Path, make_detector, tiny_text_encoder) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    detector = make_detector().eval()
    path = export_onnx(detector, tmp_path / "detector.onnx", image_size=(128, 128), num_tokens=8)
    text = tiny_text_encoder.encode(["red zero . blue shirt ."])
    assert text.feats.shape[1] == 8
    g = torch.Generator().manual_seed(0)
    images = torch.randn(1, 3, 128, 128, generator=g)
    pad_mask = torch.zeros(1, 128, 128, dtype=torch.bool)
    pad_mask[:, :, 96:] = True
    inputs = (images, pad_mask, text.feats, text.text_token_mask, text.position_ids, text.submask)
    with torch.no_grad():
        out = detector(*inputs)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    logits, boxes = session.run(None, {n: x.numpy() for n, x in zip(names, inputs, strict=True)})
    torch.testing.assert_close(torch.from_numpy(logits), out.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.from_numpy(boxes), out.boxes, atol=1e-4, rtol=1e-4)
