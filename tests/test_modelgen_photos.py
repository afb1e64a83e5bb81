"""`peregrine-build-models --images DIR` (run by `make models`) writes the photographs the README and docs use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import skimage.data
from peregrine.modelgen.cli import main
from peregrine.modelgen.photos import PHOTOS
from PIL import Image


def test_build_models_writes_the_photographs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = tmp_path / "images"
    assert main(["--repository", str(tmp_path / "models"), "--model", "identity_fp32", "--images", str(images)]) == 0
    names = sorted(p.name for p in images.iterdir())
    assert names == sorted(p.filename for p in PHOTOS)
    assert names == ["astronaut.jpg", "chelsea.jpg", "coffee.jpg", "motorcycle.jpg", "rocket.jpg"]  # as the docs say
    with Image.open(images / "astronaut.jpg") as im:
        assert im.format == "JPEG"
        pixels = np.asarray(im.convert("RGB"), dtype=np.float64)
    source = skimage.data.astronaut().astype(np.float64)
    psnr = 10 * np.log10(255**2 / np.mean((pixels - source) ** 2))
    assert psnr > 30  # the photograph itself, JPEG-compressed at quality 92
    capsys.readouterr()
    before = (images / "coffee.jpg").stat().st_mtime_ns
    assert main(["--repository", str(tmp_path / "models"), "--model", "identity_fp32", "--images", str(images)]) == 0
    assert "skipped" in capsys.readouterr().out and (images / "coffee.jpg").stat().st_mtime_ns == before
