"""Shared fixtures: real photographs and the shared benchmark data (tests skip cleanly when it is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

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
