"""U-Net family for binary lesion segmentation: one class, variants chosen by constructor arguments.

Every model maps a normalised float image [B, 3, H, W] to logits [B, 1, H, W] at the input
resolution. The registry entries are the three factories at the bottom (``unet``, ``unet_strided``,
``unet_dilated``); their keyword arguments are what search spaces set (``model.width: 16``).
"""

import torch
import torch.nn.functional as F
from torch import nn


class ConvBlock(nn.Sequential):
    """Two 3x3 convolutions, each followed by BatchNorm and ReLU, then optional Dropout2d.

    Args:
        in_channels: channels in.
        out_channels: channels out.
        dilation: dilation of both convolutions (padding follows, so the size is kept).
        dropout: Dropout2d probability after the block; 0 disables it.
    """

    def __init__(self, in_channels: int, out_channels: int, *, dilation: int = 1, dropout: float = 0.0):
        layers: list[nn.Module] = []
        for c_in in (in_channels, out_channels):
            layers += [
                nn.Conv2d(c_in, out_channels, 3, padding=dilation, dilation=dilation, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            ]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        super().__init__(*layers)


def _downsample(down: str, channels: int) -> nn.Module:
    """Halve the resolution: 2x2 max pooling, or a learned stride-2 3x3 convolution."""
    if down == "pool":
        return nn.MaxPool2d(2)
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True),
    )


def _upsample(down: str, in_channels: int, out_channels: int, scale: int) -> nn.Module:
    """Undo one encoder level: double the resolution (unless ``scale`` is 1) and reduce channels."""
    if scale == 1:
        return nn.Conv2d(in_channels, out_channels, 1)
    if down == "strided":
        return nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
        nn.Conv2d(in_channels, out_channels, 1),
    )


class UNet(nn.Module):
    """U-Net (Ronneberger et al. 2015) with BatchNorm; channels double at each encoder level.

    Inputs of any size work: the image is zero-padded (zero is the mean after normalisation) to a
    multiple of ``2**(number of halvings)`` and the logits are cropped back.

    Args:
        in_channels: image channels.
        out_channels: logit channels (1 for binary segmentation).
        width: channels of the first level.
        depth: number of encoder levels below the first (down-steps).
        dropout: Dropout2d probability after every conv block.
        down: ``"pool"`` (max pooling, bilinear upsampling) or ``"strided"`` (stride-2 convolutions,
            transposed convolutions).
        dilated: only the first level halves the resolution; the deeper levels keep it and dilate
            their convolutions by 2, 4, ... instead, so the receptive field still grows.
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        out_channels: int = 1,
        width: int = 16,
        depth: int = 3,
        dropout: float = 0.0,
        down: str = "pool",
        dilated: bool = False,
    ):
        super().__init__()
        if down not in ("pool", "strided"):
            raise ValueError(f"unknown U-Net down '{down}'; valid: pool, strided")
        if depth < 1 or width < 1:
            raise ValueError(f"U-Net needs depth >= 1 and width >= 1, got {depth=}, {width=}")
        channels = [width * 2**level for level in range(depth + 1)]
        scales = [2 if level == 1 or not dilated else 1 for level in range(1, depth + 1)]
        self.multiple = 2 ** scales.count(2)
        self.stem = ConvBlock(in_channels, width, dropout=dropout)
        self.downs = nn.ModuleList()
        self.encoders = nn.ModuleList()
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level, scale in enumerate(scales, start=1):
            c_in, c_out = channels[level - 1], channels[level]
            self.downs.append(_downsample(down, c_in) if scale == 2 else nn.Identity())
            dilation = 1 if scale == 2 else 2 ** (level - 1)
            self.encoders.append(ConvBlock(c_in, c_out, dilation=dilation, dropout=dropout))
        for level in range(depth, 0, -1):
            c_in, c_out = channels[level], channels[level - 1]
            self.ups.append(_upsample(down, c_in, c_out, scales[level - 1]))
            self.decoders.append(ConvBlock(2 * c_out, c_out, dropout=dropout))
        self.head = nn.Conv2d(width, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map [B, C, H, W] to logits [B, out_channels, H, W]."""
        h, w = x.shape[-2:]
        x = F.pad(x, (0, -w % self.multiple, 0, -h % self.multiple))
        skips = [self.stem(x)]
        for down, encoder in zip(self.downs, self.encoders):
            skips.append(encoder(down(skips[-1])))
        y = skips.pop()
        for up, decoder in zip(self.ups, self.decoders):
            y = decoder(torch.cat([up(y), skips.pop()], dim=1))
        return self.head(y)[..., :h, :w]


def unet(*, width: int = 16, depth: int = 3, dropout: float = 0.0) -> nn.Module:
    """U-Net with max pooling and bilinear upsampling (see ``UNet`` for the arguments)."""
    return UNet(width=width, depth=depth, dropout=dropout)


def unet_strided(*, width: int = 16, depth: int = 3, dropout: float = 0.0) -> nn.Module:
    """U-Net with stride-2 convolutions down and transposed convolutions up."""
    return UNet(width=width, depth=depth, dropout=dropout, down="strided")


def unet_dilated(*, width: int = 16, depth: int = 3, dropout: float = 0.0) -> nn.Module:
    """U-Net that halves the resolution once and uses dilated convolutions below that."""
    return UNet(width=width, depth=depth, dropout=dropout, dilated=True)
