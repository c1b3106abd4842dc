"""VGG19 for the perceptual loss: torchvision-format weight files, conv5_4 before the ReLU, where weights come from."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import QuietHandler, http_server

from esrgan.errors import CheckpointError, ModelNotAvailableError
from esrgan.vgg import VGGFeatureExtractor, load_vgg19_state
from esrgan.zoo import NO_PERCEPTUAL, VGG19_FILENAME, VGG19_URL, resolve_vgg_weights

# torchvision's vgg19().features: (index, in, out) of the 16 convs; ReLU after each, max pool at 4, 9, 18, 27, 36
CONVS = [(0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256), (14, 256, 256),
         (16, 256, 256), (19, 256, 512), (21, 512, 512), (23, 512, 512), (25, 512, 512), (28, 512, 512),
         (30, 512, 512), (32, 512, 512), (34, 512, 512)]  # fmt: skip
POOL_BEFORE = {5, 10, 19, 28}  # a pool sits right before these convs


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A torchvision-format VGG19 file: random weights under the published key names and shapes, plus a classifier."""
    gen = torch.Generator().manual_seed(0)
    sd: dict[str, torch.Tensor] = {}
    for idx, cin, cout in CONVS:
        sd[f"features.{idx}.weight"] = torch.randn(cout, cin, 3, 3, generator=gen) * (2 / (9 * cin)) ** 0.5
        sd[f"features.{idx}.bias"] = torch.randn(cout, generator=gen) * 0.01
    sd["classifier.6.weight"] = torch.zeros(1000, 4096)  # ignored (the real classifier.0 is 400 MB)
    sd["classifier.6.bias"] = torch.zeros(1000)
    path = tmp_path_factory.mktemp("vgg") / VGG19_FILENAME
    torch.save(sd, path)
    return path


def reference_conv5_4(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """conv5_4 pre-activation computed straight from the weight file with functional ops."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    h = (x - mean) / std
    for idx, _, _ in CONVS:
        if idx in POOL_BEFORE or idx == 28:
            h = F.max_pool2d(h, 2)
        h = F.conv2d(h, sd[f"features.{idx}.weight"], sd[f"features.{idx}.bias"], padding=1)
        if idx != 34:
            h = F.relu(h)
    return h


def test_conv5_4_before_relu_matches_the_weight_file(vgg_file: Path, photo: np.ndarray) -> None:
    extractor = VGGFeatureExtractor(weights=vgg_file)
    x = torch.from_numpy(photo[100:164, 200:264].copy()).permute(2, 0, 1)[None].float() / 255
    (out,) = extractor(x)
    sd = torch.load(vgg_file, weights_only=True)
    assert out.shape == (1, 512, 4, 4)
    torch.testing.assert_close(out, reference_conv5_4(sd, x), rtol=1e-4, atol=1e-4)
    assert (out < 0).any()  # before the ReLU: negative responses survive
    assert not any(p.requires_grad for p in extractor.parameters())
    extractor.train()
    assert not extractor.training  # a fixed feature space


def test_missing_and_misshapen_keys_are_named(vgg_file: Path, tmp_path: Path) -> None:
    sd = torch.load(vgg_file, weights_only=True)
    del sd["features.34.weight"]
    torch.save(sd, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing features\.34\.weight"):
        load_vgg19_state(tmp_path / "missing.pth")
    sd["features.34.weight"] = torch.zeros(512, 512, 1, 1)
    torch.save(sd, tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match=r"features\.34\.weight has shape \(512, 512, 1, 1\)"):
        load_vgg19_state(tmp_path / "shape.pth")


class Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("unpickled!",))


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"features.0.weight": Payload()}, path)
    with pytest.raises(CheckpointError, match="cannot read as a VGG19 weight file") as info:
        load_vgg19_state(path)
    msg = str(info.value)  # one line naming the file, without PyTorch's advice to unpickle it after all
    assert "\n" not in msg and str(path) in msg and "weights_only" not in msg, msg


def test_a_zip_bomb_is_refused_unread(tmp_path: Path) -> None:
    """The model files' defences (the safe reader): a small file whose tensor record inflates hugely is refused."""
    from test_hostile_checkpoints import _zip_bomb

    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "small.pth")
    bomb = _zip_bomb(tmp_path / "small.pth", tmp_path / "bomb.pth")
    with pytest.raises(CheckpointError, match="compressed") as info:
        load_vgg19_state(bomb)
    assert "\n" not in str(info.value) and str(bomb) in str(info.value)


def test_sources_in_order(vgg_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(ModelNotAvailableError) as info:
        resolve_vgg_weights(None, download=False)
    msg = str(info.value)
    assert msg.count(VGG19_URL) == 1 and "--vgg-weights PATH" in msg and "\n" not in msg
    assert msg.count(str(tmp_path / "torch" / "hub" / "checkpoints" / VGG19_FILENAME)) == 1
    assert msg.endswith(NO_PERCEPTUAL)
    with pytest.raises(ModelNotAvailableError, match="not found"):
        resolve_vgg_weights(str(tmp_path / "nope.pth"))
    assert resolve_vgg_weights(str(vgg_file)) == vgg_file
    cached = tmp_path / "torch" / "hub" / "checkpoints" / VGG19_FILENAME
    cached.parent.mkdir(parents=True)
    cached.write_bytes(vgg_file.read_bytes())
    digest = hashlib.sha256(vgg_file.read_bytes()).hexdigest()
    assert resolve_vgg_weights(None, download=False, sha256=digest) == cached
    # the hub file is checked on every use: a damaged one is refused (a download replaces it)
    cached.write_bytes(vgg_file.read_bytes()[:-1])
    with pytest.raises(ModelNotAvailableError, match="not the published"):
        resolve_vgg_weights(None, download=False, sha256=digest)


def test_random_is_explicit_and_loud(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="esrgan.zoo"):
        assert resolve_vgg_weights("random") is None
    assert "UNTRAINED" in caplog.text


@pytest.fixture()
def server(vgg_file: Path) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 serving the weight file at /models/<name> (and 404 elsewhere)."""
    body = vgg_file.read_bytes()

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            if self.path != f"/models/{VGG19_FILENAME}":
                self.send_error(404)
                return
            self.send_body(200, body)

    with http_server(Handler) as httpd:
        yield httpd.url


def test_download_into_the_hub_cache(
    server: str, vgg_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    digest = hashlib.sha256(vgg_file.read_bytes()).hexdigest()
    path = resolve_vgg_weights(None, url=f"{server}/models/{VGG19_FILENAME}", sha256=digest[:8])
    assert path == tmp_path / "torch" / "hub" / "checkpoints" / VGG19_FILENAME
    assert path.read_bytes() == vgg_file.read_bytes()
    VGGFeatureExtractor(weights=path)


def test_failed_download_says_how_to_get_the_file(
    server: str, vgg_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    url = f"{server}/models/missing.pth"
    with pytest.raises(ModelNotAvailableError, match="404") as info:
        resolve_vgg_weights(None, url=url)
    # one line: what is missing, the URL once, where to put the file or --vgg-weights, or training without VGG19
    # (it said the URL three times and the cache path twice)
    cached = tmp_path / "torch" / "hub" / "checkpoints" / VGG19_FILENAME
    assert str(info.value) == (
        f"VGG19 weights for the perceptual loss are not available: download of {url} failed: HTTP 404 Not Found; "
        f"download it by hand (575 MB, SHA-256 starting dcbb9e9d) to {cached} or pass --vgg-weights PATH; "
        "or train without the perceptual loss (not the paper's recipe): --set losses.perceptual_weight=0 "
        "--set losses.pixel_weight=1 --set losses.gan_reduction=mean"
    )
    # a body that does not match the published hash is refused and leaves nothing in the cache
    with pytest.raises(ModelNotAvailableError, match="SHA-256"):
        resolve_vgg_weights(None, url=f"{server}/models/{VGG19_FILENAME}", sha256="dcbb9e9d")
    assert not (tmp_path / "torch" / "hub" / "checkpoints" / VGG19_FILENAME).exists()


def reference_taps(sd: dict[str, torch.Tensor], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every conv's output before and after its ReLU, named as BasicSR names them, straight from the weight file."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    h = (x - mean) / std
    out: dict[str, torch.Tensor] = {}
    block, conv = 1, 1
    for idx, _, _ in CONVS:
        if idx in POOL_BEFORE or idx == 28:
            h = F.max_pool2d(h, 2)
            block, conv = block + 1, 1
        h = F.conv2d(h, sd[f"features.{idx}.weight"], sd[f"features.{idx}.bias"], padding=1)
        out[f"conv{block}_{conv}"] = h
        h = F.relu(h)
        out[f"relu{block}_{conv}"] = h
        conv += 1
    return out


def test_real_esrgans_five_layers_match_the_weight_file(vgg_file: Path, photo: np.ndarray) -> None:
    layers = ["conv1_2", "conv2_2", "conv3_4", "conv4_4", "conv5_4"]  # Real-ESRGAN's, before their ReLUs
    extractor = VGGFeatureExtractor(weights=vgg_file, layers=layers)
    x = torch.from_numpy(photo[100:164, 200:264].copy()).permute(2, 0, 1)[None].float() / 255
    feats = extractor(x)
    ref = reference_taps(torch.load(vgg_file, weights_only=True), x)
    assert [f.shape[1:] for f in feats] == [
        (64, 64, 64),
        (128, 32, 32),
        (256, 16, 16),
        (512, 8, 8),
        (512, 4, 4),
    ]
    for name, f in zip(layers, feats, strict=True):
        torch.testing.assert_close(f, ref[name], rtol=1e-4, atol=1e-4)
        assert (f < 0).any(), name  # the in-place ReLU after a tapped conv did not overwrite it


def test_a_shallow_layer_set_stops_early_and_relu_names_are_after_the_relu(
    vgg_file: Path, photo: np.ndarray
) -> None:
    extractor = VGGFeatureExtractor(weights=vgg_file, layers=["relu2_2", "conv1_1"])
    assert len(extractor.features) == 9  # up to relu2_2 (index 8): conv4 and 5 are not computed
    x = torch.from_numpy(photo[100:132, 200:232].copy()).permute(2, 0, 1)[None].float() / 255
    relu2_2, conv1_1 = extractor(x)
    ref = reference_taps(torch.load(vgg_file, weights_only=True), x)
    torch.testing.assert_close(relu2_2, ref["relu2_2"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(conv1_1, ref["conv1_1"], rtol=1e-4, atol=1e-4)
    assert relu2_2.min() >= 0
    with pytest.raises(ValueError, match=r"unknown VGG19 layer\(s\) \['conv6_1'\]"):
        VGGFeatureExtractor(weights=None, layers=["conv6_1"])


def test_a_grey_batch_has_the_features_of_its_three_equal_channels(vgg_file: Path) -> None:
    """A grey model's SR and HR (N, 1, H, W) reach VGG19 as the same photo saved in colour would; other channel
    counts are one clear error, not a broadcast."""
    extractor = VGGFeatureExtractor(weights=vgg_file, layers=["conv3_4", "conv5_4"])
    grey = torch.rand(2, 1, 48, 40)
    for a, b in zip(extractor(grey), extractor(grey.expand(-1, 3, -1, -1)), strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    with pytest.raises(ValueError, match=r"RGB or grey images \(C = 3 or 1\), got \(2, 2, 48, 40\)"):
        extractor(torch.rand(2, 2, 48, 40))
