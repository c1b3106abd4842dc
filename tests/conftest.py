"""Shared fixtures: real photographs and the shared benchmark data (tests skip cleanly when it is absent)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "data" / "benchmarks").is_dir():
        pytest.skip(f"{SHARED} not present (it sits beside the repository in CI)")
    return SHARED


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """A real RGB photograph (scikit-image's astronaut, 512x512, uint8 HxWx3)."""
    data = pytest.importorskip("skimage.data")
    return np.ascontiguousarray(data.astronaut())


@pytest.fixture(scope="session")
def photo_small(photo: np.ndarray) -> np.ndarray:
    """A 48x40 crop of the real photograph (face and background), for quick model runs."""
    return np.ascontiguousarray(photo[60:108, 180:220])


@pytest.fixture()
def one_thread() -> Iterator[None]:
    """One torch thread for the test (training-type tests): the CI machine has 2 cores, and oversubscribed OpenMP
    threads crawl. Use as pytestmark = pytest.mark.usefixtures("one_thread")."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_photos(root: Path) -> tuple[Path, Path]:
    """Training folder: 128x128 crops of four of scikit-image's photographs; validation: two 48x48 crops."""
    skdata = pytest.importorskip("skimage.data")
    (root / "train").mkdir()
    (root / "val").mkdir()
    images = {"astronaut": skdata.astronaut(), "coffee": skdata.coffee(), "chelsea": skdata.chelsea(),
              "rocket": skdata.rocket()}  # fmt: skip
    for name, img in images.items():
        h, w = img.shape[:2]
        Image.fromarray(img[h // 2 - 64 : h // 2 + 64, w // 2 - 64 : w // 2 + 64]).save(
            root / "train" / f"{name}.png"
        )
    Image.fromarray(images["astronaut"][40:88, 180:228]).save(root / "val" / "face.png")
    Image.fromarray(images["coffee"][100:148, 300:348]).save(root / "val" / "cup.png")
    return root / "train", root / "val"


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """make_photos in a temporary folder: (training folder, validation folder)."""
    return make_photos(tmp_path_factory.mktemp("photos"))
