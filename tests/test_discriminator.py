"""The discriminators: ESRGAN's VGG-style one and Real-ESRGAN's U-Net with spectral norm (architectures counted by
hand, input checks, gradients, spectral norm), and loading Real-ESRGAN's and BasicSR's discriminator files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from esrgan.discriminator import UNetDiscriminatorSN, VGGStyleDiscriminator
from esrgan.errors import CheckpointError, ConfigError

# conv0_0 (3x3, bias) + conv0_1 (4x4) + four (3x3, 4x4) pairs 64->128->256->512->512, BN after all but conv0_0,
# Linear(8192, 100), Linear(100, 1): summed layer by layer from the recipe
PAPER_PARAMS = (
    (3 * 64 * 9 + 64) + (64 * 64 * 16 + 128)
    + (64 * 128 * 9 + 256) + (128 * 128 * 16 + 256)
    + (128 * 256 * 9 + 512) + (256 * 256 * 16 + 512)
    + (256 * 512 * 9 + 1024) + (512 * 512 * 16 + 1024)
    + (512 * 512 * 9 + 1024) + (512 * 512 * 16 + 1024)
    + (8192 * 100 + 100) + (100 + 1)
)  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def test_paper_architecture() -> None:
    d = VGGStyleDiscriminator()
    assert sum(p.numel() for p in d.parameters()) == PAPER_PARAMS == 14_499_401
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 10
    assert [c.kernel_size[0] for c in convs] == [3, 4] * 5
    assert [c.stride[0] for c in convs] == [1, 2] * 5
    assert convs[0].bias is not None and all(c.bias is None for c in convs[1:])
    assert sum(isinstance(m, nn.BatchNorm2d) for m in d.modules()) == 9
    assert d.linear1.in_features == 8192


def test_logits_for_real_photo_patches(photo: np.ndarray) -> None:
    d = VGGStyleDiscriminator(num_feat=8, input_size=128)
    x = torch.from_numpy(photo[:256:2, :256:2].copy()).permute(2, 0, 1)[None].float() / 255
    x = torch.cat([x, x.flip(-1)]).requires_grad_(True)
    out = d(x)
    assert out.shape == (2, 1)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # the generator needs gradients through D
    assert all(p.grad is not None for p in d.parameters())


def test_other_multiples_of_32() -> None:
    d = VGGStyleDiscriminator(num_feat=8, input_size=96)
    assert d.linear1.in_features == 8 * 8 * 3 * 3
    assert d(torch.rand(2, 3, 96, 96)).shape == (2, 1)


def test_wrong_input_size_is_a_clear_error() -> None:
    d = VGGStyleDiscriminator(num_feat=8, input_size=128)
    with pytest.raises(ValueError, match=r"expects \(N, 3, 128, 128\).*got \(1, 3, 96, 96\)"):
        d(torch.rand(1, 3, 96, 96))
    with pytest.raises(ValueError, match="multiple of 32"):
        VGGStyleDiscriminator(input_size=100)


# --- Real-ESRGAN's U-Net discriminator with spectral norm --------------------------------------------------------
# conv0 3->64 (3x3, bias); conv1-3 4x4 stride 2 64->128->256->512; conv4-6 3x3 512->256->128->64; conv7-8 3x3 64->64;
# conv9 3x3 64->1 (bias); all but conv0 and conv9 without bias: summed layer by layer from Real-ESRGAN's definition
UNET_PARAMS = (
    (3 * 64 * 9 + 64) + 64 * 128 * 16 + 128 * 256 * 16 + 256 * 512 * 16
    + 512 * 256 * 9 + 256 * 128 * 9 + 128 * 64 * 9 + 64 * 64 * 9 + 64 * 64 * 9 + (64 * 9 + 1)
)  # fmt: skip
# the key names of Real-ESRGAN's RealESRGAN_x4plus_netD.pth (torch.nn.utils.spectral_norm's weight_orig/_u/_v)
UNET_KEYS = ["conv0.weight", "conv0.bias"] + [
    f"conv{i}.{leaf}" for i in range(1, 9) for leaf in ("weight_orig", "weight_u", "weight_v")
] + ["conv9.weight", "conv9.bias"]  # fmt: skip


def photo_batch(photo: np.ndarray, size: int) -> torch.Tensor:
    x = (
        torch.from_numpy(photo[100 : 100 + size, 150 : 150 + size].copy()).permute(2, 0, 1)[None].float()
        / 255
    )
    return torch.cat([x, x.flip(-1)])


def test_unet_architecture_and_key_names_are_real_esrgans() -> None:
    d = UNetDiscriminatorSN()
    assert sum(p.numel() for p in d.parameters()) == UNET_PARAMS == 4_376_897
    assert list(d.state_dict()) == UNET_KEYS
    assert not any(isinstance(m, nn.BatchNorm2d) for m in d.modules())


def test_unet_gives_a_logit_per_pixel_and_gradients(photo: np.ndarray) -> None:
    d = UNetDiscriminatorSN(num_feat=8)
    x = photo_batch(photo, 72).requires_grad_(True)  # a multiple of 8, not of 32
    out = d(x)
    assert out.shape == (2, 1, 72, 72)
    out.mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in d.parameters())
    with pytest.raises(ValueError, match=r"divisible by 8, got \(1, 3, 60, 64\)"):
        d(torch.rand(1, 3, 60, 64))


def unet_reference_forward(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Real-ESRGAN's UNetDiscriminatorSN.forward (eval mode) written out from its state dict with functional ops:
    a spectral-normed weight is weight_orig / (u . W v) with the stored vectors."""

    def conv(h: torch.Tensor, name: str, stride: int = 1) -> torch.Tensor:
        if f"{name}.weight_orig" in sd:
            orig = sd[f"{name}.weight_orig"]
            weight = orig / torch.dot(sd[f"{name}.weight_u"], orig.flatten(1) @ sd[f"{name}.weight_v"])
        else:
            weight = sd[f"{name}.weight"]
        return F.conv2d(h, weight, sd.get(f"{name}.bias"), stride=stride, padding=1)

    def act(h: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(h, 0.2)

    def up(h: torch.Tensor) -> torch.Tensor:
        return F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)

    x0 = act(conv(x, "conv0"))
    x1 = act(conv(x0, "conv1", 2))
    x2 = act(conv(x1, "conv2", 2))
    x3 = act(conv(x2, "conv3", 2))
    x4 = act(conv(up(x3), "conv4")) + x2
    x5 = act(conv(up(x4), "conv5")) + x1
    x6 = act(conv(up(x5), "conv6")) + x0
    return conv(act(conv(act(conv(x6, "conv7")), "conv8")), "conv9")


def test_unet_computes_real_esrgans_forward_from_its_weights(photo: np.ndarray) -> None:
    torch.manual_seed(0)
    d = UNetDiscriminatorSN(num_feat=8)
    for _ in range(3):
        d(photo_batch(photo, 32))  # training-mode forwards move the power-iteration vectors
    x = photo_batch(photo, 48)
    with torch.no_grad():
        out = d.eval()(x)
    torch.testing.assert_close(out, unet_reference_forward(d.state_dict(), x), rtol=1e-5, atol=1e-5)
    torch.manual_seed(0)
    without = UNetDiscriminatorSN(num_feat=8, skip_connection=False)
    without.load_state_dict(d.state_dict())
    with torch.no_grad():
        assert not torch.allclose(without.eval()(x), out, atol=1e-3)  # the skip connections carry the encoder


def test_spectral_norm_runs_in_float32_under_autocast(
    photo: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The power iteration and sigma (torch.mv) run with autocast off (CUDA autocast would run them in bf16/fp16);
    the convolutions still run under it."""
    seen: list[bool] = []
    mv = torch.mv

    def cpu_autocast_on() -> bool:
        try:
            return torch.is_autocast_enabled("cpu")  # torch >= 2.4
        except TypeError:  # torch 2.3
            return torch.is_autocast_cpu_enabled()

    def watching_mv(*args: object, **kwargs: object) -> torch.Tensor:
        seen.append(cpu_autocast_on())
        return mv(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch, "mv", watching_mv)
    d = UNetDiscriminatorSN(num_feat=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = d(photo_batch(photo, 32))
    assert len(seen) == 8 * 3 and not any(seen)  # 8 normalised convs: v, u, sigma each
    assert out.dtype == torch.bfloat16 and d.conv1.weight.dtype == torch.float32


def test_spectral_norm_holds_each_conv_near_unit_spectral_norm(photo: np.ndarray) -> None:
    torch.manual_seed(0)
    d = UNetDiscriminatorSN(num_feat=8)
    with torch.no_grad():
        d.conv3.weight_orig.mul_(25.0)  # a large raw weight: the normalised one must not grow
        for _ in range(60):  # one power iteration per training-mode forward, as in Real-ESRGAN
            d(photo_batch(photo, 32))
    for name in ("conv1", "conv3", "conv6"):
        w = getattr(d, name).weight.flatten(1)
        assert torch.linalg.matrix_norm(w, ord=2).item() == pytest.approx(1.0, abs=0.05), name
    assert torch.linalg.matrix_norm(d.conv0.weight.flatten(1), ord=2).item() != pytest.approx(1.0, abs=0.02)


def test_a_real_esrgan_netd_file_loads_and_scores_the_same(photo: np.ndarray, tmp_path: Path) -> None:
    """Real-ESRGAN (BasicSR's save_network) writes {"params": state_dict}; the power-iteration vectors come along."""
    from esrgan.train import _load_pretrained_discriminator

    torch.manual_seed(1)
    trained = UNetDiscriminatorSN(num_feat=8)
    for _ in range(3):
        trained(photo_batch(photo, 32))  # moves weight_u / weight_v away from their initial values
    torch.save({"params": {k: v.clone() for k, v in trained.state_dict().items()}}, tmp_path / "netD.pth")
    fresh = UNetDiscriminatorSN(num_feat=8)
    _load_pretrained_discriminator(str(tmp_path / "netD.pth"), fresh, "unet")
    x = photo_batch(photo, 48)
    torch.testing.assert_close(fresh.eval()(x), trained.eval()(x), rtol=0, atol=0)


def basicsr_vgg_state(num_feat: int = 8) -> dict[str, torch.Tensor]:
    """BasicSR's VGGStyleDiscriminator (input 128) under its own names, random values: conv0_0 (3x3, bias), conv0_1
    (4x4) + bn0_1, then per stage 1-4 conv{i}_0 (3x3) + bn{i}_0, conv{i}_1 (4x4) + bn{i}_1, linear1, linear2."""
    gen = torch.Generator().manual_seed(0)
    widths = [num_feat, num_feat * 2, num_feat * 4, num_feat * 8, num_feat * 8]
    sd: dict[str, torch.Tensor] = {}

    def conv(name: str, cin: int, cout: int, k: int, bias: bool) -> None:
        sd[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=gen) * (1 / (cin * k * k)) ** 0.5
        if bias:
            sd[f"{name}.bias"] = torch.randn(cout, generator=gen) * 0.1

    def bn(name: str, ch: int) -> None:
        sd[f"{name}.weight"] = 1 + 0.1 * torch.randn(ch, generator=gen)
        sd[f"{name}.bias"] = 0.1 * torch.randn(ch, generator=gen)
        sd[f"{name}.running_mean"] = 0.1 * torch.randn(ch, generator=gen)
        sd[f"{name}.running_var"] = 1 + torch.rand(ch, generator=gen)
        sd[f"{name}.num_batches_tracked"] = torch.tensor(7)

    conv("conv0_0", 3, widths[0], 3, True)
    conv("conv0_1", widths[0], widths[0], 4, False)
    bn("bn0_1", widths[0])
    for i in range(1, 5):
        conv(f"conv{i}_0", widths[i - 1], widths[i], 3, False)
        bn(f"bn{i}_0", widths[i])
        conv(f"conv{i}_1", widths[i], widths[i], 4, False)
        bn(f"bn{i}_1", widths[i])
    sd["linear1.weight"] = torch.randn(100, widths[4] * 16, generator=gen) * 0.01
    sd["linear1.bias"] = torch.zeros(100)
    sd["linear2.weight"] = torch.randn(1, 100, generator=gen) * 0.1
    sd["linear2.bias"] = torch.zeros(1)
    return sd


def basicsr_vgg_forward(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """BasicSR's VGGStyleDiscriminator.forward in eval mode, written out from its names with functional ops."""

    def block(h: torch.Tensor, conv: str, norm: str | None, stride: int) -> torch.Tensor:
        h = F.conv2d(h, sd[f"{conv}.weight"], sd.get(f"{conv}.bias"), stride=stride, padding=1)
        if norm is not None:
            h = F.batch_norm(h, sd[f"{norm}.running_mean"], sd[f"{norm}.running_var"], sd[f"{norm}.weight"],
                             sd[f"{norm}.bias"], training=False, eps=1e-5)  # fmt: skip
        return F.leaky_relu(h, 0.2)

    h = block(x, "conv0_0", None, 1)
    h = block(h, "conv0_1", "bn0_1", 2)
    for i in range(1, 5):
        h = block(h, f"conv{i}_0", f"bn{i}_0", 1)
        h = block(h, f"conv{i}_1", f"bn{i}_1", 2)
    h = F.leaky_relu(F.linear(h.flatten(1), sd["linear1.weight"], sd["linear1.bias"]), 0.2)
    return F.linear(h, sd["linear2.weight"], sd["linear2.bias"])


def test_a_basicsr_vgg_style_net_d_file_loads_renamed(photo: np.ndarray, tmp_path: Path) -> None:
    from esrgan.train import _load_pretrained_discriminator

    sd = basicsr_vgg_state()
    torch.save({"params": sd}, tmp_path / "net_d_5000.pth")
    d = VGGStyleDiscriminator(num_feat=8, input_size=128)
    _load_pretrained_discriminator(str(tmp_path / "net_d_5000.pth"), d, "vgg")
    x = photo_batch(photo, 128)
    torch.testing.assert_close(d.eval()(x), basicsr_vgg_forward(sd, x), rtol=1e-5, atol=1e-5)


def test_a_discriminator_file_of_another_kind_is_one_line(photo: np.ndarray, tmp_path: Path) -> None:
    from esrgan.train import _load_pretrained_discriminator

    torch.save({"params": UNetDiscriminatorSN(num_feat=8).state_dict()}, tmp_path / "unet.pth")
    with pytest.raises(
        CheckpointError, match=r"unet\.pth: not a discriminator of model\.discriminator: vgg"
    ) as info:
        _load_pretrained_discriminator(str(tmp_path / "unet.pth"), VGGStyleDiscriminator(num_feat=8), "vgg")
    assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match=r"with d_num_feat 16 .*size mismatch"):
        _load_pretrained_discriminator(str(tmp_path / "unet.pth"), UNetDiscriminatorSN(num_feat=16), "unet")
    with pytest.raises(ConfigError, match=r"train\.pretrained_d: .*missing\.pth not found"):
        _load_pretrained_discriminator(str(tmp_path / "missing.pth"), UNetDiscriminatorSN(num_feat=8), "unet")


class Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("unpickled!",))


def test_a_discriminator_file_holding_code_is_refused_unrun(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from esrgan.train import _load_pretrained_discriminator

    torch.save({"params": {"conv0.weight": Payload()}}, tmp_path / "evil_netD.pth")
    with pytest.raises(CheckpointError, match=r"evil_netD\.pth") as info:
        _load_pretrained_discriminator(
            str(tmp_path / "evil_netD.pth"), UNetDiscriminatorSN(num_feat=8), "unet"
        )
    assert "\n" not in str(info.value) and "weights_only" not in str(info.value)
    assert "unpickled!" not in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["unet", "basicsr-vgg", "ours-vgg"])
def test_a_discriminator_given_as_a_model_says_what_it_is(kind: str, tmp_path: Path) -> None:
    """People download RealESRGAN_x4plus_netD.pth beside the generator and try to upscale with it."""
    from esrgan.checkpoints import load_weights

    sd = {
        "unet": lambda: UNetDiscriminatorSN(num_feat=8).state_dict(),
        "basicsr-vgg": basicsr_vgg_state,
        "ours-vgg": lambda: VGGStyleDiscriminator(num_feat=8).state_dict(),
    }[kind]()
    torch.save({"params": sd}, tmp_path / "netD.pth")
    with pytest.raises(
        CheckpointError, match=r"netD\.pth: .*a GAN discriminator \(.*\), not a generator"
    ) as info:
        load_weights(tmp_path / "netD.pth")
    assert "train.pretrained_d" in str(info.value) and "\n" not in str(info.value)
