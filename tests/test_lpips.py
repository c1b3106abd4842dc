"""LPIPS v0.1: torchvision-format backbone files, v0.1 lin-layer files, where they are found, and the metric itself.

The weight files here hold random values under the published key names and shapes, so only properties that hold
for ANY weights are asserted (plus an exact hand computation); a comparison with the published weights runs only
when they are on this machine.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from esrgan.errors import CheckpointError, ModelNotAvailableError
from esrgan.lpips import LPIPS, load_lpips
from esrgan.zoo import lpips_available, resolve_lpips_weights

ALEX_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
LIN_URL = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/alex.pth"

# torchvision's alexnet().features and vgg16().features as a program: conv (index, in, out, kernel, stride, pad),
# each followed by a ReLU; "pool" = max pool (kernel, stride 2); "tap" = a ReLU output LPIPS compares.
ALEX = [("conv", 0, 3, 64, 11, 4, 2), ("tap",), ("pool", 3), ("conv", 3, 64, 192, 5, 1, 2), ("tap",), ("pool", 3),
        ("conv", 6, 192, 384, 3, 1, 1), ("tap",), ("conv", 8, 384, 256, 3, 1, 1), ("tap",),
        ("conv", 10, 256, 256, 3, 1, 1), ("tap",)]  # fmt: skip
VGG16 = [("conv", 0, 3, 64, 3, 1, 1), ("conv", 2, 64, 64, 3, 1, 1), ("tap",), ("pool", 2),
         ("conv", 5, 64, 128, 3, 1, 1), ("conv", 7, 128, 128, 3, 1, 1), ("tap",), ("pool", 2),
         ("conv", 10, 128, 256, 3, 1, 1), ("conv", 12, 256, 256, 3, 1, 1), ("conv", 14, 256, 256, 3, 1, 1), ("tap",),
         ("pool", 2), ("conv", 17, 256, 512, 3, 1, 1), ("conv", 19, 512, 512, 3, 1, 1), ("conv", 21, 512, 512, 3, 1, 1),
         ("tap",), ("pool", 2), ("conv", 24, 512, 512, 3, 1, 1), ("conv", 26, 512, 512, 3, 1, 1),
         ("conv", 28, 512, 512, 3, 1, 1), ("tap",)]  # fmt: skip
PROGRAMS = {"alex": ALEX, "vgg": VGG16}
CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}
FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def make_files(folder: Path, net: str, seed: int = 0) -> tuple[Path, Path]:
    """A torchvision-format backbone file (plus a classifier, as the real ones have) and a v0.1 lin file."""
    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for op in PROGRAMS[net]:
        if op[0] == "conv":
            _, idx, cin, cout, k, _, _ = op
            sd[f"features.{idx}.weight"] = (
                torch.randn(cout, cin, k, k, generator=gen) * (2 / (k * k * cin)) ** 0.5
            )
            sd[f"features.{idx}.bias"] = torch.randn(cout, generator=gen) * 0.1
    sd["classifier.6.weight"] = torch.zeros(1000, 16)  # ignored by the loader
    lin = {
        f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=gen) for k, c in enumerate(CHANNELS[net])
    }
    folder.mkdir(parents=True, exist_ok=True)
    # the published files predate torch 1.6, so they use the legacy (non-zip) format; the tests that rewrite a
    # file below use the current one, so both are read
    torch.save(sd, folder / FILES[net], _use_new_zipfile_serialization=False)
    torch.save(lin, folder / f"{net}.pth", _use_new_zipfile_serialization=False)
    return folder / FILES[net], folder / f"{net}.pth"


@pytest.fixture(scope="module")
def alex_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_files(tmp_path_factory.mktemp("alex"), "alex")


@pytest.fixture(scope="module")
def vgg_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_files(tmp_path_factory.mktemp("vgg"), "vgg")


@pytest.fixture(scope="module")
def alex(alex_files: tuple[Path, Path]) -> LPIPS:
    return load_lpips("alex", backbone_weights=alex_files[0], lin_weights=alex_files[1])


def to_nchw(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img.astype(np.float32) / 255).permute(2, 0, 1)[None].contiguous()


def reference_taps(net: str, sd: dict[str, torch.Tensor], x: torch.Tensor) -> list[torch.Tensor]:
    """The five ReLU outputs computed straight from the weight file with functional ops, LPIPS's input scaling."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    h = ((x * 2 - 1) - shift) / scale
    taps = []
    for op in PROGRAMS[net]:
        if op[0] == "conv":
            _, idx, _, _, _, stride, pad = op
            w, b = sd[f"features.{idx}.weight"], sd[f"features.{idx}.bias"]
            h = F.relu(F.conv2d(h, w, b, stride=stride, padding=pad))
        elif op[0] == "pool":
            h = F.max_pool2d(h, op[1], stride=2)
        else:
            taps.append(h)
    return taps


def hand_lpips(taps0: list[torch.Tensor], taps1: list[torch.Tensor], lin: dict[str, torch.Tensor]) -> float:
    """Pixel by pixel in float64: unit vectors over channels, weighted squared difference, mean over pixels, sum."""
    total = 0.0
    for k, (f0, f1) in enumerate(zip(taps0, taps1, strict=True)):
        a, b = f0[0].double().numpy(), f1[0].double().numpy()
        w = lin[f"lin{k}.model.1.weight"].double().numpy().reshape(-1)
        _, height, width = a.shape
        layer = 0.0
        for i in range(height):
            for j in range(width):
                u = a[:, i, j] / (math.sqrt(float(a[:, i, j] @ a[:, i, j])) + 1e-10)
                v = b[:, i, j] / (math.sqrt(float(b[:, i, j] @ b[:, i, j])) + 1e-10)
                layer += float(w @ (u - v) ** 2)
        total += layer / (height * width)
    return total


@pytest.mark.parametrize(("net", "size"), [("alex", (35, 40)), ("vgg", (16, 20))])
def test_matches_a_hand_computation_on_a_tiny_input(
    net: str,
    size: tuple[int, int],
    alex_files: tuple[Path, Path],
    vgg_files: tuple[Path, Path],
    photo: np.ndarray,
) -> None:
    backbone, lin = alex_files if net == "alex" else vgg_files
    metric = load_lpips(net, backbone_weights=backbone, lin_weights=lin)
    h, w = size
    x = to_nchw(photo[100 : 100 + h, 200 : 200 + w])
    y = to_nchw(photo[300 : 300 + h, 150 : 150 + w])
    sd = torch.load(backbone, weights_only=True)
    ref_x, ref_y = reference_taps(net, sd, x), reference_taps(net, sd, y)
    for ours, ref in zip(metric.layer_features(x), ref_x, strict=True):
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    expected = hand_lpips(ref_x, ref_y, torch.load(lin, weights_only=True))
    got = float(metric(x, y).item())
    assert expected > 0
    assert got == pytest.approx(expected, rel=1e-4)


def test_unit_normalisation_makes_feature_magnitude_irrelevant(
    alex_files: tuple[Path, Path], tmp_path: Path, photo: np.ndarray
) -> None:
    """Scaling conv1's weights and every bias by c scales every ReLU output by c (ReLU and max pool are positively
    homogeneous); the channel normalisation must cancel it, where a plain feature distance would grow by c^2."""
    sd = torch.load(alex_files[0], weights_only=True)
    c = 7.0
    for key in sd:
        if key == "features.0.weight" or key.endswith(".bias"):
            sd[key] = sd[key] * c
    torch.save(sd, tmp_path / "scaled.pth")
    plain = load_lpips("alex", backbone_weights=alex_files[0], lin_weights=alex_files[1])
    scaled = load_lpips("alex", backbone_weights=tmp_path / "scaled.pth", lin_weights=alex_files[1])
    x, y = photo[:64, :64], photo[200:264, 200:264]
    f_plain = plain.layer_features(to_nchw(x))
    f_scaled = scaled.layer_features(to_nchw(x))
    torch.testing.assert_close(f_scaled[-1], c * f_plain[-1], rtol=1e-4, atol=1e-4)
    assert scaled(x, y) == pytest.approx(plain(x, y), rel=1e-4)


def test_lin_weights_weight_linearly(
    alex_files: tuple[Path, Path], tmp_path: Path, photo: np.ndarray
) -> None:
    lin = torch.load(alex_files[1], weights_only=True)
    torch.save({k: 3 * v for k, v in lin.items()}, tmp_path / "lin3.pth")
    plain = load_lpips("alex", backbone_weights=alex_files[0], lin_weights=alex_files[1])
    tripled = load_lpips("alex", backbone_weights=alex_files[0], lin_weights=tmp_path / "lin3.pth")
    x, y = photo[:48, :48], photo[48:96, 48:96]
    assert tripled(x, y) == pytest.approx(3 * plain(x, y), rel=1e-5)


def test_metric_properties_on_a_real_photo(alex: LPIPS, photo: np.ndarray) -> None:
    ref = photo[100:228, 150:278]
    shifted = np.clip(ref.astype(np.int16) + 3, 0, 255).astype(np.uint8)
    other = photo[300:428, 300:428]
    x = to_nchw(ref)
    blurred = F.avg_pool2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
    assert alex(ref, ref) == 0.0
    assert alex(x, x).item() == 0.0
    for img in (shifted, other):
        d = alex(ref, img)
        assert d > 0
        assert alex(img, ref) == pytest.approx(d, rel=1e-6)  # symmetric: squared differences of unit vectors
    # unit vectors differ by at most 2, so no layer can add more than 4 x its largest lin weight
    bound = 4 * sum(float(lin.max()) for lin in alex.lins)
    assert 0 < alex(ref, other) < bound
    # batches: each pair scored on its own
    batch = alex(torch.cat([x, x, x]), torch.cat([to_nchw(shifted), blurred, to_nchw(other)]))
    assert batch.shape == (3,)
    assert batch[0].item() == pytest.approx(alex(ref, shifted), rel=1e-5)
    assert batch[2].item() == pytest.approx(alex(ref, other), rel=1e-5)
    assert batch[1].item() == pytest.approx(alex(x, blurred).item(), rel=1e-5)


def test_usable_as_a_loss(alex: LPIPS, photo: np.ndarray) -> None:
    x = to_nchw(photo[:64, :64])
    y = to_nchw(photo[64:128, 64:128]).requires_grad_(True)
    alex(x, y).sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in alex.parameters())
    alex.train()
    assert not alex.training


def test_numpy_inputs_all_mean_the_same_image(alex: LPIPS, photo: np.ndarray) -> None:
    a, b = photo[:64, :80], photo[100:164, 100:180]
    expected = alex(to_nchw(a), to_nchw(b)).item()
    assert alex(a, b) == pytest.approx(expected, rel=1e-6)
    assert alex(a.astype(np.uint16) * 257, b.astype(np.uint16) * 257) == pytest.approx(expected, rel=1e-5)
    assert alex(a / 255.0, b / 255.0) == pytest.approx(expected, rel=1e-5)
    grey_a, grey_b = a[:, :, 1], b[:, :, 1]
    rgb = alex(np.repeat(grey_a[:, :, None], 3, axis=2), np.repeat(grey_b[:, :, None], 3, axis=2))
    assert alex(grey_a, grey_b) == pytest.approx(rgb, rel=1e-6)


def test_refuses_what_it_cannot_score(alex: LPIPS, photo: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"at least 31x31, got 30x40"):
        alex(photo[:30, :40], photo[:30, :40])
    with pytest.raises(ValueError, match="one shape"):
        alex(photo[:40, :40], photo[:40, :41])
    with pytest.raises(ValueError, match="HxWx3"):
        alex(np.zeros((40, 40, 4), np.uint8), np.zeros((40, 40, 4), np.uint8))
    with pytest.raises(ValueError, match="unknown LPIPS network"):
        lpips_available("squeeze")


def test_loads_the_files_it_is_given(alex_files: tuple[Path, Path], alex: LPIPS) -> None:
    sd = torch.load(alex_files[0], weights_only=True)
    lin = torch.load(alex_files[1], weights_only=True)
    assert torch.equal(alex.features[10].weight, sd["features.10.weight"])
    assert torch.equal(alex.features[3].bias, sd["features.3.bias"])
    for k, param in enumerate(alex.lins):
        assert torch.equal(param, lin[f"lin{k}.model.1.weight"])


@pytest.fixture()
def empty_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """TORCH_HOME pointed at an empty folder; returns its hub/checkpoints directory."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_found_in_the_hub_cache(alex_files: tuple[Path, Path], empty_hub: Path, photo: np.ndarray) -> None:
    assert not lpips_available("alex")
    empty_hub.mkdir(parents=True)
    (empty_hub / "alexnet-owt-7be5be79.pth").write_bytes(alex_files[0].read_bytes())
    (empty_hub / "lpips_v0.1_alex.pth").write_bytes(alex_files[1].read_bytes())
    assert lpips_available("alex")
    assert resolve_lpips_weights("alex") == (
        empty_hub / "alexnet-owt-7be5be79.pth",
        empty_hub / "lpips_v0.1_alex.pth",
    )
    from_hub = load_lpips("alex")
    explicit = load_lpips("alex", backbone_weights=alex_files[0], lin_weights=alex_files[1])
    a, b = photo[:64, :64], photo[64:128, :64]
    assert from_hub(a, b) == explicit(a, b)


def test_lin_layers_found_in_an_installed_lpips_package_without_importing_it(
    alex_files: tuple[Path, Path], empty_hub: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "site" / "lpips"
    (package / "weights" / "v0.1").mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('the lpips package must not be imported')\n")
    (package / "weights" / "v0.1" / "alex.pth").write_bytes(alex_files[1].read_bytes())
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    empty_hub.mkdir(parents=True)
    (empty_hub / "alexnet-owt-7be5be79.pth").write_bytes(alex_files[0].read_bytes())
    assert resolve_lpips_weights("alex")[1] == package / "weights" / "v0.1" / "alex.pth"
    load_lpips("alex")


def test_absent_weights_name_every_missing_file(alex_files: tuple[Path, Path], empty_hub: Path) -> None:
    if _installed_lpips_has_weights():
        pytest.skip("an installed lpips package provides the lin weights on this machine")
    with pytest.raises(ModelNotAvailableError) as info:
        load_lpips("alex")
    msg = str(info.value)
    assert "\n" not in msg
    assert "alexnet-owt-7be5be79.pth" in msg and ALEX_URL in msg
    assert str(empty_hub / "alexnet-owt-7be5be79.pth") in msg
    assert "alex.pth (LPIPS v0.1 lin layers)" in msg and LIN_URL in msg
    assert str(empty_hub / "lpips_v0.1_alex.pth") in msg
    # only the lin layers missing: the message names only them
    with pytest.raises(ModelNotAvailableError) as info:
        load_lpips("alex", backbone_weights=alex_files[0])
    assert "alexnet-owt" not in str(info.value) and LIN_URL in str(info.value)
    # an explicit path that does not exist is named as such
    with pytest.raises(
        ModelNotAvailableError, match=r"nope\.pth \(--lpips-backbone, backbone_weights=\) does not exist"
    ):
        load_lpips("alex", backbone_weights=empty_hub / "nope.pth", lin_weights=alex_files[1])
    with pytest.raises(ModelNotAvailableError, match=r"vgg16-397923af\.pth"):
        load_lpips("vgg")


def _installed_lpips_has_weights() -> bool:
    spec = importlib.util.find_spec("lpips")
    locations = (spec.submodule_search_locations or []) if spec else []
    return any((Path(p) / "weights" / "v0.1" / "alex.pth").is_file() for p in locations)


class Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("unpickled!",))


def test_bad_files_are_refused_with_the_key_named(alex_files: tuple[Path, Path], tmp_path: Path) -> None:
    sd = torch.load(alex_files[0], weights_only=True)
    lin = torch.load(alex_files[1], weights_only=True)
    del sd["features.8.weight"]
    torch.save(sd, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing features\.8\.weight"):
        load_lpips("alex", backbone_weights=tmp_path / "missing.pth", lin_weights=alex_files[1])
    lin["lin2.model.1.weight"] = torch.zeros(1, 256, 1, 1)
    torch.save(lin, tmp_path / "shape.pth")
    with pytest.raises(
        CheckpointError, match=r"lin2\.model\.1\.weight has shape \(1, 256, 1, 1\).*\(1, 384, 1, 1\)"
    ):
        load_lpips("alex", backbone_weights=alex_files[0], lin_weights=tmp_path / "shape.pth")
    # the VGG16 file is not an AlexNet file
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "vgg.pth")
    with pytest.raises(CheckpointError, match=r"features\.0\.weight has shape \(64, 3, 3, 3\)"):
        load_lpips("alex", backbone_weights=tmp_path / "vgg.pth", lin_weights=alex_files[1])
    torch.save({"features.0.weight": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="cannot read as a torchvision alex weight file"):
        load_lpips("alex", backbone_weights=tmp_path / "evil.pth", lin_weights=alex_files[1])


@pytest.mark.skipif(
    not lpips_available("alex"), reason="published LPIPS alex weights are not on this machine"
)
def test_published_weights(photo: np.ndarray) -> None:
    """No published LPIPS value on inputs available here is known to us, so this checks the published files and
    the behaviour only trained weights have."""
    backbone, _ = resolve_lpips_weights("alex")
    if (
        backbone.name == "alexnet-owt-7be5be79.pth"
    ):  # torchvision names files by the first 8 hex of the SHA-256
        assert hashlib.sha256(backbone.read_bytes()).hexdigest().startswith("7be5be79")
    metric = load_lpips("alex")
    assert all(float(lin.min()) >= 0 for lin in metric.lins)  # v0.1 training clamps the lin weights at zero
    ref = photo[100:228, 150:278]
    x = to_nchw(ref)
    blurred = F.avg_pool2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
    shifted = (x + 2 / 255).clamp(0, 1)
    # with trained weights a 5x5 box blur is perceptually far worse than a 2/255 brightness change
    assert metric(x, blurred).item() > 10 * metric(x, shifted).item()
