"""Test-side re-implementations of the foreign RRDBNet designs, written from their published key names.

Each module's own ``state_dict()`` produces that tool's key layout, and its forward pass is that tool's
computation, so "our loader + our RRDBNet" can be checked against an independent model, output for output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _lrelu() -> nn.LeakyReLU:
    return nn.LeakyReLU(0.2)


class EsrganRDB(nn.Module):
    """ESRGAN-repository RDB: conv1..conv5 as bare convs (keys RDB{k}.conv{j}.weight)."""

    def __init__(self, nf: int, gc: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(nf, gc, 3, 1, 1)
        self.conv2 = nn.Conv2d(nf + gc, gc, 3, 1, 1)
        self.conv3 = nn.Conv2d(nf + 2 * gc, gc, 3, 1, 1)
        self.conv4 = nn.Conv2d(nf + 3 * gc, gc, 3, 1, 1)
        self.conv5 = nn.Conv2d(nf + 4 * gc, nf, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        a = F.leaky_relu(self.conv1(x), 0.2)
        b = F.leaky_relu(self.conv2(torch.cat([x, a], 1)), 0.2)
        c = F.leaky_relu(self.conv3(torch.cat([x, a, b], 1)), 0.2)
        d = F.leaky_relu(self.conv4(torch.cat([x, a, b, c], 1)), 0.2)
        e = self.conv5(torch.cat([x, a, b, c, d], 1))
        return e * 0.2 + x


class EsrganRRDB(nn.Module):
    def __init__(self, nf: int, gc: int) -> None:
        super().__init__()
        self.RDB1 = EsrganRDB(nf, gc)
        self.RDB2 = EsrganRDB(nf, gc)
        self.RDB3 = EsrganRDB(nf, gc)

    def forward(self, x: Tensor) -> Tensor:
        return self.RDB3(self.RDB2(self.RDB1(x))) * 0.2 + x


class EsrganRepoNet(nn.Module):
    """ESRGAN repo / BSRGAN naming: conv_first, RRDB_trunk.i, trunk_conv, upconv{n}, HRconv, conv_last."""

    def __init__(self, in_nc: int, out_nc: int, nf: int, nb: int, gc: int, num_up: int) -> None:
        super().__init__()
        self.conv_first = nn.Conv2d(in_nc, nf, 3, 1, 1)
        self.RRDB_trunk = nn.Sequential(*[EsrganRRDB(nf, gc) for _ in range(nb)])
        self.trunk_conv = nn.Conv2d(nf, nf, 3, 1, 1)
        self.num_up = num_up
        for n in range(num_up):
            setattr(self, f"upconv{n + 1}", nn.Conv2d(nf, nf, 3, 1, 1))
        self.HRconv = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf, out_nc, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        fea = self.conv_first(x)
        fea = fea + self.trunk_conv(self.RRDB_trunk(fea))
        for n in range(self.num_up):
            conv = getattr(self, f"upconv{n + 1}")
            fea = F.leaky_relu(conv(F.interpolate(fea, scale_factor=2, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(self.HRconv(fea), 0.2))


class OldRDB(nn.Module):
    """Original ESRGAN (2018) block: each conv wrapped in a Sequential, so keys read conv{j}.0.weight. With `plus`,
    ESRGAN+'s block (Rakotonirina & Rasoanaivo 2020, as its code and the community's old-arch models have it): a
    bias-free 1x1 conv of the input added to the second conv's activated output, and that sum to the fourth's."""

    def __init__(self, nf: int, gc: int, plus: bool = False) -> None:
        super().__init__()
        self.conv1x1 = nn.Conv2d(nf, gc, 1, 1, 0, bias=False) if plus else None
        self.conv1 = nn.Sequential(nn.Conv2d(nf, gc, 3, 1, 1), _lrelu())
        self.conv2 = nn.Sequential(nn.Conv2d(nf + gc, gc, 3, 1, 1), _lrelu())
        self.conv3 = nn.Sequential(nn.Conv2d(nf + 2 * gc, gc, 3, 1, 1), _lrelu())
        self.conv4 = nn.Sequential(nn.Conv2d(nf + 3 * gc, gc, 3, 1, 1), _lrelu())
        self.conv5 = nn.Sequential(nn.Conv2d(nf + 4 * gc, nf, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        a = self.conv1(x)
        b = self.conv2(torch.cat((x, a), 1))
        if self.conv1x1 is not None:
            b = b + self.conv1x1(x)
        c = self.conv3(torch.cat((x, a, b), 1))
        d = self.conv4(torch.cat((x, a, b, c), 1))
        if self.conv1x1 is not None:
            d = d + b
        return self.conv5(torch.cat((x, a, b, c, d), 1)) * 0.2 + x


class OldRRDB(nn.Module):
    def __init__(self, nf: int, gc: int, plus: bool = False) -> None:
        super().__init__()
        self.RDB1 = OldRDB(nf, gc, plus)
        self.RDB2 = OldRDB(nf, gc, plus)
        self.RDB3 = OldRDB(nf, gc, plus)

    def forward(self, x: Tensor) -> Tensor:
        return self.RDB3(self.RDB2(self.RDB1(x))) * 0.2 + x


class Shortcut(nn.Module):
    def __init__(self, sub: nn.Module) -> None:
        super().__init__()
        self.sub = sub

    def forward(self, x: Tensor) -> Tensor:
        return x + self.sub(x)


class OldNet(nn.Module):
    """The original release wraps everything in `self.model`, hence the `model.` prefix on every key."""

    def __init__(self, model: nn.Sequential) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def old_sequential_net(
    in_nc: int, out_nc: int, nf: int, nb: int, gc: int, num_up: int, plus: bool = False
) -> OldNet:
    """model.0 conv, model.1 shortcut(RRDBs + conv), [Upsample, conv, LReLU] x num_up, HR conv, LReLU, last conv."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_nc, nf, 3, 1, 1),
        Shortcut(nn.Sequential(*[OldRRDB(nf, gc, plus) for _ in range(nb)], nn.Conv2d(nf, nf, 3, 1, 1))),
    ]
    for _ in range(num_up):
        layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(nf, nf, 3, 1, 1), _lrelu()]
    layers += [nn.Conv2d(nf, nf, 3, 1, 1), _lrelu(), nn.Conv2d(nf, out_nc, 3, 1, 1)]
    return OldNet(nn.Sequential(*layers))


def randomize(module: nn.Module, seed: int) -> nn.Module:
    """Weights large enough that a wrong wiring changes the output visibly (default init is near-identity here)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return module.eval()


class RealEsrganCompact(nn.Module):
    """Real-ESRGAN's SRVGGNetCompact as its published keys describe it (body as a ModuleList: conv, PReLU, ..., conv),
    with its forward written independently of esrgan.compact: the pixel shuffle by reshape/permute and the nearest
    upscale by repeat_interleave."""

    def __init__(self, num_in_ch: int, num_feat: int, num_conv: int, upscale: int) -> None:
        super().__init__()
        self.upscale = upscale
        self.body = nn.ModuleList(
            [nn.Conv2d(num_in_ch, num_feat, 3, 1, 1), nn.PReLU(num_parameters=num_feat)]
        )
        for _ in range(num_conv):
            self.body.append(nn.Conv2d(num_feat, num_feat, 3, 1, 1))
            self.body.append(nn.PReLU(num_parameters=num_feat))
        self.body.append(nn.Conv2d(num_feat, num_in_ch * upscale * upscale, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        n, c, h, w = x.shape
        s = self.upscale
        out = out.reshape(n, c, s, s, h, w).permute(0, 1, 4, 2, 5, 3).reshape(n, c, h * s, w * s)
        return out + x.repeat_interleave(s, dim=2).repeat_interleave(s, dim=3)
