"""experiments/detect.py: JSON + overlays, grayscale/RGBA input, and bad input (spec §15)."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from experiments.detect import main, parse_args, parse_prompt, run
from experiments.errors import UserFacingError


@pytest.fixture
def micro_args(tmp_path: Path, micro_overrides: list[str]) -> list[str]:
    args = ["--experiment", "gdino_tiny_synthetic", "--size", "128", "--max-size", "192"]
    for o in micro_overrides[1:]:
        args += ["--override", o]
    return [*args, "--output-dir", str(tmp_path / "out")]


def _write(path: Path, mode: str, size: tuple[int, int]) -> Path:
    rng = np.random.default_rng(0)
    channels = {"L": (), "RGBA": (4,), "RGB": (3,)}[mode]
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], *channels), dtype=np.uint8), mode).save(
        path
    )
    return path


def test_json_and_overlays_for_grayscale_and_rgba(tmp_path: Path, micro_args) -> None:
    gray = _write(tmp_path / "gray.png", "L", (150, 100))
    rgba = _write(tmp_path / "rgba.png", "RGBA", (128, 128))
    args = [str(gray), str(rgba), "--prompt", "red zero . blue shirt .", "--prompt", "cat .",
            "--box-threshold", "0", "--output-json", str(tmp_path / "out.json")]  # fmt: skip
    doc = run(parse_args(args + micro_args))
    assert json.loads((tmp_path / "out.json").read_text()) == doc
    first, second = doc["images"]
    assert first["prompt"] == "red zero . blue shirt ." and second["prompt"] == "cat ."
    assert {d["phrase"] for d in first["detections"]} <= {"red zero", "blue shirt"}
    assert {d["phrase"] for d in second["detections"]} == {"cat"}
    for entry, (w, h) in zip(doc["images"], [(150, 100), (128, 128)], strict=True):
        assert entry["detections"], "threshold 0 keeps the top detections"
        for d in entry["detections"]:
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h
        scores = [d["score"] for d in entry["detections"]]
        assert scores == sorted(scores, reverse=True)
        overlay = Image.open(entry["overlay"])
        assert overlay.size == (w, h) and overlay.mode == "RGB"


def test_empty_prompt_is_rejected(capsys) -> None:
    with pytest.raises(UserFacingError, match="empty prompt"):
        parse_prompt(" . . ")
    with pytest.raises(SystemExit) as exit_info:
        main(["whatever.png", "--prompt", " "])
    assert exit_info.value.code == 2
    assert "empty prompt" in capsys.readouterr().err


def test_missing_image_is_named(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "no_such_image.jpg"
    with pytest.raises(SystemExit) as exit_info:
        main([str(missing), "--prompt", "cat ."])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "Traceback" not in err


def test_prompt_counts_must_match_images(tmp_path: Path, capsys) -> None:
    img = _write(tmp_path / "a.png", "RGB", (64, 64))
    with pytest.raises(SystemExit):
        main([str(img), str(img), str(img), "--prompt", "cat .", "--prompt", "dog ."])
    assert "one per image" in capsys.readouterr().err


def test_over_long_prompt(tmp_path: Path, capsys, micro_args) -> None:
    """A single name over the 256-token budget cannot be chunked: a clear error."""
    img = _write(tmp_path / "a.png", "RGB", (64, 64))
    long_name = " ".join(["word"] * 300)
    with pytest.raises(SystemExit) as exit_info:
        main([str(img), "--prompt", f"cat . {long_name} .", *micro_args])
    assert exit_info.value.code == 2
    assert "tokens" in capsys.readouterr().err
