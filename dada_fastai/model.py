"""The DADA network: a timm backbone at output stride 8, the depth block, feature fusion, the DeepLab-v2
classifier, and the DCGAN-style discriminator (weight files and the reference's snapshots: `weights`)."""
from __future__ import annotations

import socket
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import Bottleneck, ResNet
from torch import nn

from .errors import WeightsError
from .weights import load_backbone_file
from .weights import load_official_state_dict  # a public name here too (`dada_fastai.model.load_official_state_dict`)

__all__ = ['DeepLabBottleneck', 'DeepLabResNet', 'REFERENCE_ARCH', 'REFERENCE_BGR_MEAN', 'create_backbone', 'DepthBlock',
           'DeepLabV2Classifier', 'DADA', 'Discriminator', 'official_deeplabv2_depth', 'official_deeplabv2',
           'load_official_state_dict', 'WeightsError', 'freeze_bn_affine',
           'revive_zero_bn', 'param_groups']

REFERENCE_ARCH = 'deeplabv2_resnet101'  # the timm name under which the reference backbone is registered


# ---------------------------------------------------------------------------------------------------------
# The reference DeepLab-v2 ResNet as a timm ResNet
# ---------------------------------------------------------------------------------------------------------
class DeepLabBottleneck(Bottleneck):
    """timm Bottleneck with the stride on the first 1x1 conv and the stage's dilation on every block."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 dilation: int = 1, first_dilation: int | None = None, **kwargs):
        # timm gives the first block of a dilated stage the previous stage's dilation: the reference does not
        super().__init__(inplanes, planes, 1, downsample, dilation=dilation, first_dilation=dilation, **kwargs)
        self.conv1 = nn.Conv2d(inplanes, self.conv1.out_channels, 1, stride=stride, bias=False)


class DeepLabResNet(ResNet):
    """timm ResNet with the reference's ceil-mode stem max-pool (a 96x160 input gives 13x21 features)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=True)


def _reference_cfg() -> dict:
    # the reference feeds BGR images in 0..255 with `reference_bgr_mean` subtracted and no std
    return dict(url='', num_classes=0, input_size=(3, 512, 1024), mean=(0., 0., 0.), std=(1 / 255,) * 3,
                first_conv='conv1', classifier='fc', license='see the DADA and DeepLab releases')


default_cfgs = generate_default_cfgs({REFERENCE_ARCH: _reference_cfg()})  # read by timm's register_model
REFERENCE_BGR_MEAN = (104.00698793, 116.66876762, 122.67891434)  # the reference's mean, BGR order, 0..255


@register_model
def deeplabv2_resnet101(pretrained: bool = False, layers: Sequence[int] = (3, 4, 23, 3), **kwargs) -> ResNet:
    """The reference DeepLab-v2 ResNet-101 backbone (set `layers` for smaller copies)."""
    kwargs.setdefault('output_stride', 8)
    return build_model_with_cfg(DeepLabResNet, REFERENCE_ARCH, pretrained,
                                block=DeepLabBottleneck, layers=tuple(layers), **kwargs)


def create_backbone(arch: str = 'resnet101', pretrained: bool = False, output_stride: int = 8,
                    weights: str | Path | None = None, **kwargs) -> nn.Module:
    """A timm `features_only` backbone returning its last feature map; channels in `.feature_info`."""
    if pretrained and weights is not None:
        raise ValueError('give either pretrained=True or a weights file, not both')
    if pretrained and arch == REFERENCE_ARCH:
        raise WeightsError(f'{REFERENCE_ARCH!r} has no downloadable weights: pass the reference ImageNet '
                           'initialisation with --weights FILE (DeepLab_resnet_pretrained_imagenet.pth), or train '
                           'from scratch with --no-pretrained')
    if pretrained:
        _check_weights_reachable(arch, kwargs.get('pretrained_cfg_overlay'))
    kw = dict(features_only=True, out_indices=(-1,), pretrained=pretrained, **kwargs)
    if arch == REFERENCE_ARCH:
        kw['out_indices'] = (4,)
    try:
        try:
            model = timm.create_model(arch, output_stride=output_stride, **kw)
        except TypeError as e:  # a family without output_stride: keep its native stride
            if 'output_stride' not in str(e):
                raise
            model = timm.create_model(arch, **kw)
    except RuntimeError as e:
        if arch not in timm.list_models():
            raise ValueError(f'unknown backbone {arch!r}: use a timm model name (timm.list_models()) '
                             f'or {REFERENCE_ARCH!r}') from None
        if pretrained and 'no pretrained weights' in str(e).lower():
            raise WeightsError(f'timm has no pretrained weights for {arch!r}: pass a local file with --weights '
                               'FILE, or train from scratch with --no-pretrained') from None
        if pretrained and ('download' in str(e).lower() or 'connect' in str(e).lower() or 'hub' in str(e).lower()):
            raise WeightsError(f'could not download pretrained weights for {arch!r} ({e}); pass a local file '
                               'with --weights FILE (a timm checkpoint or the reference .pth), or train from '
                               'scratch with --no-pretrained') from None
        raise
    except OSError as e:
        raise WeightsError(f'could not download pretrained weights for {arch!r} ({type(e).__name__}); pass a '
                           'local file with --weights FILE (a timm checkpoint or the reference .pth), or train '
                           'from scratch with --no-pretrained') from None
    if weights is not None:
        load_backbone_file(model, weights)
    return model


def _check_weights_reachable(arch: str, overlay: dict | None = None, timeout: float = 3.0) -> None:
    """Fail at once, with what to do, when timm's pretrained weights for `arch` are neither in the local
    cache nor reachable (offline machine): timm would otherwise retry for about a minute."""
    try:
        cfg = timm.get_pretrained_cfg(arch)
    except Exception:
        return  # unknown here: let timm report it
    if cfg is None or (overlay or {}).get('file') or (overlay or {}).get('state_dict') is not None:
        return  # local weights
    hub_id, url = (overlay or {}).get('hf_hub_id', cfg.hf_hub_id), (overlay or {}).get('url', cfg.url)
    import urllib.request
    proxies = urllib.request.getproxies()
    scheme = 'https' if hub_id else (urlparse(url).scheme if url else 'https')
    if proxies.get(scheme) or proxies.get('all'):
        return  # through a proxy: a direct probe would tell nothing
    from huggingface_hub import constants, try_to_load_from_cache
    if hub_id:
        if any(isinstance(try_to_load_from_cache(hub_id, f), str)
               for f in ('model.safetensors', 'pytorch_model.bin', 'open_clip_pytorch_model.bin')):
            return
        offline, where = constants.HF_HUB_OFFLINE, urlparse(constants.ENDPOINT)
    elif url:
        if (Path(torch.hub.get_dir()) / 'checkpoints' / Path(urlparse(url).path).name).is_file():
            return
        offline, where = False, urlparse(url)
    else:
        return  # no published weights: timm says so
    host, port = where.hostname, where.port or (80 if where.scheme == 'http' else 443)
    reason = 'HF_HUB_OFFLINE is set' if offline else None
    if reason is None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            return
        except OSError as e:
            reason = f'{host} is unreachable ({e.strerror or type(e).__name__})'
    raise WeightsError(f'cannot download pretrained weights for {arch!r}: {reason} and they are not in the local '
                       'cache; pass a local file with --weights FILE (a timm checkpoint or the reference .pth), '
                       'or train from scratch with --no-pretrained')


# ---------------------------------------------------------------------------------------------------------
# Heads
# ---------------------------------------------------------------------------------------------------------
def _normal_init(module: nn.Module, std: float = 0.01) -> nn.Module:
    """The reference's N(0, 0.01) init of every conv weight of a head (biases keep PyTorch's default)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0., std)
    return module


class DepthBlock(nn.Module):
    """DADA's depth block: three encoder convs, channel-mean inverse depth, and a decoder for feature fusion."""

    def __init__(self, in_ch: int = 2048, mid_ch: int | None = None, depth_ch: int | None = None,
                 fusion_bias: float | None = None):
        super().__init__()
        mid_ch = mid_ch or max(in_ch // 4, 16)  # 512 on the reference's 2048 channels
        depth_ch = depth_ch or max(in_ch // 16, 8)  # 128 on the reference's 2048 channels
        self.enc1 = nn.Conv2d(in_ch, mid_ch, 1)  # reference: enc4_1
        self.enc2 = nn.Conv2d(mid_ch, mid_ch, 3, padding=1)  # reference: enc4_2
        self.enc3 = nn.Conv2d(mid_ch, depth_ch, 1)  # reference: enc4_3
        self.dec = nn.Conv2d(depth_ch, in_ch, 1)  # reference: dec4
        _normal_init(self)
        if fusion_bias is not None:  # the fusion gate relu(dec(.)) then starts near this value, not near 0
            nn.init.constant_(self.dec.bias, fusion_bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(inverse depth (B,1,h,w), decoded features for fusion (B,in_ch,h,w))."""
        e = self.enc3(F.relu(self.enc2(F.relu(self.enc1(x)))))
        return e.mean(1, keepdim=True), F.relu(self.dec(e))


class DeepLabV2Classifier(nn.Module):
    """DeepLab-v2's classifier: four parallel dilated 3x3 convs whose outputs are summed."""

    def __init__(self, in_ch: int, n_classes: int, dilations: Sequence[int] = (6, 12, 18, 24)):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(in_ch, n_classes, 3, padding=d, dilation=d) for d in dilations)
        _normal_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.convs[0](x)
        for conv in self.convs[1:]:
            out = out + conv(x)
        return out


# ---------------------------------------------------------------------------------------------------------
# The segmenter
# ---------------------------------------------------------------------------------------------------------
class DADA(nn.Module):
    """DADA segmenter: `seg, depth = model(x)` at feature resolution; depth is inverse depth (None without
    the depth block). `depth_block=False` is plain DeepLab-v2 (AdvEnt, source-only); `feature_fusion=False`
    keeps the depth block but leaves the segmentation features untouched. `fusion_bias` initialises the bias of
    the fusion decoder (None: PyTorch's default, as the reference)."""

    def __init__(self, n_classes: int, arch: str = 'resnet101', pretrained: bool = False,
                 depth_block: bool = True, feature_fusion: bool = True, weights: str | Path | None = None,
                 freeze_bn: bool = True, fusion_bias: float | None = None, **backbone_kwargs):
        super().__init__()
        if feature_fusion and not depth_block:
            feature_fusion = False  # fusion needs the depth block: plain DeepLab-v2
        self.n_classes, self.arch = n_classes, arch
        self.backbone = create_backbone(arch, pretrained=pretrained, weights=weights, **backbone_kwargs)
        info = self.backbone.feature_info
        self.feat_ch, self.reduction = info.channels()[-1], info.reduction()[-1]
        self.depth = DepthBlock(self.feat_ch, fusion_bias=fusion_bias) if depth_block else None
        self.feature_fusion = feature_fusion
        self.classifier = DeepLabV2Classifier(self.feat_ch, n_classes)
        if freeze_bn:
            if not pretrained and weights is None:  # from scratch: no frozen scale may stay at zero
                revive_zero_bn(self.backbone)
            freeze_bn_affine(self.backbone)

    @property
    def has_depth(self) -> bool:
        return self.depth is not None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if type(x) is not torch.Tensor:  # fastai's TensorImage & co.: compiled parts need a plain tensor
            x = x.as_subclass(torch.Tensor)
        feats = self.backbone(x)[-1]
        if getattr(self.backbone, 'output_fmt', 'NCHW') == 'NHWC':  # e.g. Swin, MambaOut feature maps
            feats = feats.permute(0, 3, 1, 2)
        depth = None
        if self.depth is not None:
            depth, dec = self.depth(feats)
            if self.feature_fusion:
                feats = feats * dec
        return self.classifier(feats), depth

    def head_modules(self) -> list[nn.Module]:
        """Modules trained at 10x the backbone's learning rate in the reference recipe."""
        return [m for m in (self.classifier, self.depth) if m is not None]

    def compile_parts(self, **kwargs) -> DADA:
        """`torch.compile` the backbone, the depth block and the classifier in place (`forward` itself stays
        eager: it hands them plain tensors, which compiled code needs)."""
        for m in (self.backbone, self.depth, self.classifier):
            if m is not None:
                m.compile(**kwargs)
        return self


def freeze_bn_affine(module: nn.Module) -> nn.Module:
    """Freeze the affine parameters of every BatchNorm in `module` (the reference trains with them fixed)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            for p in m.parameters():
                p.requires_grad_(False)
    return module


def revive_zero_bn(module: nn.Module) -> nn.Module:
    """Set to one the scale of every BatchNorm in `module` whose scale is all zeros. timm starts each residual
    block's last BatchNorm at zero (`zero_init_last`) so that a network trained from scratch begins with identity
    blocks and learns that scale; frozen there (`freeze_bn_affine`, the reference's recipe), every residual branch
    would stay silent for good, leaving a backbone of its stem and shortcuts: from scratch, a frozen scale of one
    keeps each block a block."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None and not m.weight.any():
                m.weight.fill_(1.)
    return module


def param_groups(model: DADA) -> list[list[nn.Parameter]]:
    """[backbone params, head params] with frozen parameters left out (fastai `splitter`)."""
    head = [p for m in model.head_modules() for p in m.parameters() if p.requires_grad]
    ids = {id(p) for p in head}
    body = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    return [body, head]


def official_deeplabv2_depth(n_classes: int, layers: Sequence[int] = (3, 4, 23, 3), **kwargs) -> DADA:
    """The DADA model on the reference DeepLab-v2 ResNet backbone (the paper's network)."""
    return DADA(n_classes, arch=REFERENCE_ARCH, layers=tuple(layers), **kwargs)


def official_deeplabv2(n_classes: int, layers: Sequence[int] = (3, 4, 23, 3), **kwargs) -> DADA:
    """Plain DeepLab-v2 on the reference backbone (AdvEnt and source-only)."""
    return DADA(n_classes, arch=REFERENCE_ARCH, layers=tuple(layers), depth_block=False, **kwargs)


# ---------------------------------------------------------------------------------------------------------
# Discriminator
# ---------------------------------------------------------------------------------------------------------
class Discriminator(nn.Sequential):
    """DCGAN-style fully convolutional discriminator of AdvEnt/DADA; state-dict keys 0, 2, 4, 6, 8."""

    def __init__(self, n_classes: int, ndf: int = 64):
        chans = [n_classes, ndf, ndf * 2, ndf * 4, ndf * 8]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        layers.append(nn.Conv2d(chans[-1], 1, 4, stride=2, padding=1))
        super().__init__(*layers)
