"""Feature extractors with one interface: four named stages, ``layer1`` .. ``layer4``.

Every few-shot method reads features by stage name, so any method runs on any backbone.
Output channels / stride with respect to the input image:

======  ================================  ===========================  ===========================
stage   ``vgg16`` (as in PANet)           ``resnet50``, ``resnet101``  ``smallcnn``
======  ================================  ===========================  ===========================
layer1  conv1_x, pool1, conv2_x: 128/2    stem + layer1: 256/4         2 convs: 32/2
layer2  pool2, conv3_x: 256/4             layer2: 512/8                2 convs: 64/4
layer3  pool3, conv4_x: 512/8             layer3 (dilation 2): 1024/8  2 convs: 128/8
layer4  pool4 (stride 1), conv5_x: 512/8  layer4 (dilation 4): 2048/8  2 convs (dilation 2): 256/8
======  ================================  ===========================  ===========================

All built-in backbones end at output stride 8, as the FSS papers use them. The torchvision networks
keep their torchvision submodule names, so a :class:`Backbone`'s state dict is the torchvision
classification network's state dict minus the classifier, and a stage is a list of submodule
paths rather than a re-packed ``nn.Sequential``.

timm backbones: ``"timm:<model name>"``
---------------------------------------

Any ``timm`` model name (``"timm:resnet50"``, ``"timm:convnext_tiny"``,
``"timm:vit_small_patch14_dinov2.lvd142m"``) builds a backbone from the optional ``timm`` package
(``pip install timm``; ``timm.list_models("*pattern*")`` lists the names). Its state dict keeps
timm's keys, so a timm state dict (``timm.create_model(name).state_dict()``) loads with
:meth:`Backbone.load_weights`, its classifier dropped.

* **CNNs** (models timm builds with ``features_only=True``): built at ``output_stride=8`` where the
  model accepts it (dilated later stages, as above), else at its native strides; ``layer1`` ..
  ``layer4`` are timm's last four feature levels (for a ResNet: stem + layer1, layer2, layer3,
  layer4; for a ConvNeXt: stem + stage 0, stages 1, 2, 3). A stage runs the modules of the
  features-only network after the previous level's up to its own, so ``forward`` returns exactly
  timm's features-only outputs. Channels and strides are timm's ``feature_info``.
* **ViTs** (``timm.models.vision_transformer.VisionTransformer``, DINOv2 included): the stages end
  after four evenly spaced blocks (depth 12: blocks 2, 5, 8, 11, counting from 0). Each stage's
  output is its patch tokens after the model's final norm, as a map ``[B, C, H / p, W / p]``
  (p = patch size = every stage's stride; an input whose sides are not multiples of p is first
  resized up to the next multiples, so the patch grid spans exactly the image). ``forward``
  runs the whole token sequence, class and register tokens included, exactly as timm does; only
  :meth:`TimmViTBackbone.run_stage` departs from it (see there).

Models timm wraps differently for ``features_only`` (hooks, its EfficientNet/MobileNet feature
classes, channels-last outputs such as Swin's) and other transformers raise a ``ValueError``
saying so. The images are normalised by fsslib (ImageNet statistics), not by the model's
``pretrained_cfg``.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlparse

import torch
import torchvision
from torch import Tensor, nn

__all__ = ["BACKBONE_NAMES", "TIMM_PREFIX", "Backbone", "TimmViTBackbone", "build_backbone"]

#: The built-in backbones; any ``"timm:<model name>"`` is accepted besides (see the module docstring).
BACKBONE_NAMES = ("vgg16", "resnet50", "resnet101", "smallcnn")
TIMM_PREFIX = "timm:"

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class Backbone(nn.Module):
    """An image encoder split into named stages that can be run one at a time.

    Args:
        modules: submodules to register, by name (torchvision's names for torchvision networks).
        layout: for each stage, in execution order, the paths of the submodules it runs in order
            (``"features.4"`` addresses item 4 of ``self.features``).
        out_channels: channels of each stage's output.
        stride: input-to-output stride of each stage.
        head_prefixes: state-dict key prefixes of the classifier of the full network the modules
            come from (``"fc."`` for torchvision ResNets); dropped when loading such a checkpoint.

    Attributes:
        stage_names: ``("layer1", ..., "layer4")``.
        out_channels, stride: ``dict[str, int]`` keyed by stage name.
        frozen_stages: stages whose parameters were frozen by :meth:`freeze`.
        bn_frozen: whether BatchNorm layers are held in eval mode (see :meth:`freeze`).
        spatially_local: True when each stage computes an output cell from a bounded
            neighbourhood of its input (convolutions and poolings only), so a stage may run on a
            crop of its input map (:func:`fsslib.models.fast.run_stage_in_box`). False for timm
            backbones: attention, and the squeeze-excitation many timm CNNs contain, see the
            whole map.
    """

    spatially_local: bool = True

    def __init__(
        self,
        modules: Mapping[str, nn.Module],
        layout: Mapping[str, Sequence[str]],
        out_channels: Mapping[str, int],
        stride: Mapping[str, int],
        head_prefixes: Sequence[str] = (),
    ) -> None:
        super().__init__()
        for name, module in modules.items():
            self.add_module(name, module)
        self.stage_names: tuple[str, ...] = tuple(layout)
        self._layout = {stage: tuple(paths) for stage, paths in layout.items()}
        self.out_channels = dict(out_channels)
        self.stride = dict(stride)
        self.head_prefixes = tuple(head_prefixes)
        self.frozen_stages: tuple[str, ...] = ()
        self.bn_frozen = False
        for path in (p for paths in self._layout.values() for p in paths):
            self.get_submodule(path)  # fail at construction, not at the first forward

    # ------------------------------------------------------------------ running stages
    def stage_modules(self, name: str) -> list[nn.Module]:
        """The modules that make up stage ``name``, in execution order."""
        self._check_stage(name)
        return [self.get_submodule(path) for path in self._layout[name]]

    def run_stage(self, name: str, x: Tensor) -> Tensor:
        """Run one stage on the output of the previous one.

        ``run_stage("layer4", layer3_features * mask)`` is how PFENet and MSPF obtain high-level
        support features of the masked object. Shapes: ``[B, C_in, h, w] -> [B, C_out, h', w']``.
        """
        for module in self.stage_modules(name):
            x = module(x)
        return x

    def stage_blocks(self, name: str) -> list[nn.Module]:
        """The stage's modules with ``nn.Sequential`` containers opened one level: residual
        blocks for a ResNet stage, layers for VGG, conv-BN-ReLU units for the small CNN (the units
        :func:`fsslib.models.fast.run_stage_in_box` crops one at a time)."""
        blocks = []
        for module in self.stage_modules(name):
            blocks.extend(module.children() if isinstance(module, nn.Sequential) else [module])
        return blocks

    def forward(self, images: Tensor, upto: str = "layer4") -> dict[str, Tensor]:
        """Run the stages in order up to and including ``upto``.

        Args:
            images: normalised images ``[B, 3, H, W]``.
            upto: last stage to compute; later stages are skipped, saving their compute.

        Returns:
            ``{stage: features}`` for ``layer1`` .. ``upto``, each
            ``[B, out_channels[stage], ~H / stride[stage], ~W / stride[stage]]``.
        """
        self._check_stage(upto)
        features: dict[str, Tensor] = {}
        x = images
        for name in self.stage_names:
            x = self.run_stage(name, x)
            features[name] = x
            if name == upto:
                break
        return features

    def remove_final_relu(self, name: str) -> Backbone:
        """Drop the ReLU that ends stage ``name`` (parameter-free; weights load as before).

        Metric-learning methods match features by cosine similarity, which cannot be negative
        between ReLU outputs; SSP's authors therefore remove layer3's last ReLU (their
        ``last_relu=False``), as PANet's VGG has none after conv5_3. Handles a stage ending in
        a torchvision ``Bottleneck`` (its residual sum is returned un-rectified), a timm ResNet
        ``BasicBlock`` or ``Bottleneck`` (its last activation, a ReLU, becomes an identity), or
        a ``ReLU`` module (the small CNN's conv-BN-ReLU blocks).
        """
        last = self.stage_modules(name)[-1]
        while isinstance(last, nn.Sequential) and not isinstance(last[-1], nn.ReLU):
            last = last[-1]
        if isinstance(last, nn.Sequential):
            last[-1] = nn.Identity()
        elif isinstance(last, torchvision.models.resnet.Bottleneck):
            last.__class__ = _BottleneckWithoutFinalReLU
        elif (activation := _timm_resnet_final_activation(last)) is not None:
            setattr(last, activation, nn.Identity())
        else:
            raise ValueError(f"stage '{name}' does not end in a ReLU this method knows how to remove")
        return self

    # ------------------------------------------------------------------ freezing
    def stage_parameters(self, name: str) -> list[nn.Parameter]:
        """The parameters of stage ``name`` (e.g. to give them their own learning rate)."""
        return [p for module in self.stage_modules(name) for p in module.parameters()]

    def freeze(
        self, frozen_stages: Iterable[str] | str = "all", freeze_bn: bool = True
    ) -> Backbone:
        """Stop gradients through some stages and/or hold BatchNorm statistics fixed.

        Args:
            frozen_stages: ``"all"``, one stage name, or several; their parameters get
                ``requires_grad = False``. Stages frozen by an earlier call stay frozen.
            freeze_bn: when True, every BatchNorm layer of the backbone stays in eval mode, even
                after ``.train()``: it normalises with its running statistics and never updates
                them. FSS training batches are a few episodes of one class, whose statistics
                would overwrite ImageNet's. The affine BN weights still train unless their stage
                is frozen. False lets BatchNorm follow the train/eval mode again.

        Returns:
            ``self``, so ``build(...).freeze(...)`` chains.
        """
        if isinstance(frozen_stages, str):
            stages = self.stage_names if frozen_stages == "all" else (frozen_stages,)
        else:
            stages = tuple(frozen_stages)
        for name in stages:  # all names checked before anything changes
            self._check_stage(name)
        for name in stages:
            for parameter in self.stage_parameters(name):
                parameter.requires_grad_(False)
        frozen = set(self.frozen_stages) | set(stages)
        self.frozen_stages = tuple(s for s in self.stage_names if s in frozen)
        self.bn_frozen = bool(freeze_bn)
        return self.train(self.training)

    def train(self, mode: bool = True) -> Backbone:
        """Set train/eval mode; BatchNorm stays in eval mode while :attr:`bn_frozen`.

        ``nn.Module.train`` recurses through children by calling their ``train``, so this also
        holds when the backbone sits inside a larger model that is switched to training.
        """
        super().train(mode)
        if self.bn_frozen:
            for module in self.modules():
                if isinstance(module, _BATCH_NORMS):
                    module.eval()
        return self

    # ------------------------------------------------------------------ loading
    def load_weights(self, path: str | os.PathLike) -> Backbone:
        """Load a local checkpoint file; see :meth:`load_checkpoint` for the accepted layouts.

        Raises:
            FileNotFoundError: ``path`` is not a file.
            ValueError: the file is not a weights-only checkpoint, or does not fit.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"backbone weights file not found: '{path}'")
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise ValueError(
                f"'{path}' is not a weights-only checkpoint (tensors and plain containers); "
                f"save `model.state_dict()` on its own ({error})"
            ) from error
        return self.load_checkpoint(checkpoint, source=f"'{path}'")

    def load_checkpoint(self, checkpoint: Mapping, source: str = "the checkpoint") -> Backbone:
        """Load weights after checking that they cover exactly this backbone.

        Accepted, detected from the keys:

        * a torchvision classification network's state dict, or a timm model's for a ``timm:``
          backbone (the classifier is dropped);
        * a state dict saved from a :class:`Backbone` (``backbone.state_dict()``);
        * a state dict of a model that contains the backbone under a prefix
          (``"backbone."``, ``"module.backbone."``, ...), also wrapped as
          ``{"model": state_dict, ...}`` or ``{"state_dict": state_dict, ...}``.

        Args:
            checkpoint: as loaded by ``torch.load``.
            source: names the checkpoint in error messages (e.g. its path).

        Raises:
            ValueError: keys or tensor shapes do not match this backbone; nothing is loaded.
        """
        state = _strip_prefix(_unwrap_state_dict(checkpoint, source), self.state_dict())
        state = {k: v for k, v in state.items() if not k.startswith(self.head_prefixes)}
        self._check_state_dict(state, source)
        # A plain dict carries no BatchNorm version metadata, so BatchNorm fills in a missing
        # ``num_batches_tracked`` itself instead of reporting it missing under strict=True.
        self.load_state_dict(state, strict=True)
        return self

    def _check_state_dict(self, state: Mapping[str, Tensor], source: str) -> None:
        own = self.state_dict()
        # Checkpoints written before BatchNorm had this buffer (torchvision's ImageNet files
        # among them) lack it; loading then starts the counter at zero, which is harmless.
        missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
        unexpected = [k for k in state if k not in own]
        mismatched = [
            f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
            for k in own
            if k in state and state[k].shape != own[k].shape
        ]
        if not (missing or unexpected or mismatched):
            return
        lines = [
            f"weights in {source} do not fit this backbone ({self.extra_repr()}). Expected a "
            "classification checkpoint of the same architecture (torchvision's, or timm's for a "
            "'timm:' backbone) or a state dict saved from fsslib's Backbone."
        ]
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        ):
            if keys:
                shown = ", ".join(keys[:5]) + (", ..." if len(keys) > 5 else "")
                lines.append(f"  {len(keys)} {label}: {shown}")
        raise ValueError("\n".join(lines))

    # ------------------------------------------------------------------ helpers
    def extra_repr(self) -> str:
        """Stage channels and strides, shown by ``print(backbone)``."""
        return ", ".join(
            f"{s}: {self.out_channels[s]}ch/s{self.stride[s]}" for s in self.stage_names
        )

    def _check_stage(self, name: str) -> None:
        if name not in self._layout:
            raise ValueError(f"unknown stage '{name}'; stages are {list(self.stage_names)}")


def _unwrap_state_dict(checkpoint: object, source: str) -> Mapping[str, Tensor]:
    """Return the flat ``{key: tensor}`` mapping inside a loaded checkpoint."""
    if isinstance(checkpoint, Mapping):
        if any(isinstance(v, Tensor) for v in checkpoint.values()):
            return checkpoint
        for key in ("model", "state_dict"):
            if isinstance(checkpoint.get(key), Mapping):
                return _unwrap_state_dict(checkpoint[key], source)
    raise ValueError(
        f"{source} holds no state dict (a mapping from parameter names to tensors, or one "
        "under the key 'model' or 'state_dict')"
    )


def _strip_prefix(checkpoint: Mapping[str, Tensor], own: Mapping[str, Tensor]) -> dict:
    """Remove the prefix under which ``checkpoint`` stores the keys of ``own``, if any.

    The prefix is found from the keys that end in the backbone's first key at a ``.``
    boundary; when several do (``"backbone.conv1.weight"`` and ``"head.conv1.weight"``), the one
    under which most of the backbone's keys exist wins.
    """
    anchor = next(iter(own))
    candidates = {
        key[: len(key) - len(anchor)]
        for key in checkpoint
        if key == anchor or key.endswith("." + anchor)
    }
    if not candidates:
        return dict(checkpoint)
    prefix = max(sorted(candidates), key=lambda p: sum(p + k in checkpoint for k in own))
    return {k[len(prefix) :]: v for k, v in checkpoint.items() if k.startswith(prefix)}


class _BottleneckWithoutFinalReLU(torchvision.models.resnet.Bottleneck):
    """torchvision's Bottleneck returning ``bn3(conv3(.)) + identity`` without the last ReLU."""

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out)) + identity


class TimmViTBackbone(Backbone):
    """A timm ``VisionTransformer`` split into four stages of consecutive transformer blocks.

    Built by ``build_backbone("timm:<ViT name>")``. For depth D, stage k (1..4) ends after block
    ``k * D // 4 - 1`` (D = 12: blocks 2, 5, 8, 11); ``layer1`` also holds the patch embedding,
    the class/register tokens and the position embedding, ``layer4`` also the final norm. Every
    stage's output is its patch tokens after the model's final norm (as DINOv2's feature
    extraction does, so all four stages have the same scale), reshaped to a map
    ``[B, embed_dim, ceil(H / p), ceil(W / p)]``, p the patch size (each stage's ``stride``).

    The state dict has the timm model's keys, its classifier (``head``, ``fc_norm``,
    ``attn_pool``) dropped. The timm model itself is kept, unregistered, to run its own patch and
    position embedding; it always uses this backbone's current parameters and modules.

    Args:
        model: the timm ``VisionTransformer`` (built with ``dynamic_img_size=True``).
        head_prefixes: state-dict key prefixes of the classifier of the full timm network.
    """

    spatially_local = False
    _HEAD = ("attn_pool", "fc_norm", "head_drop", "head")

    def __init__(self, model: nn.Module, head_prefixes: Sequence[str] = ()) -> None:
        depth = len(model.blocks)
        if depth < 4:
            raise ValueError(f"a ViT backbone needs at least 4 blocks for 4 stages; this one has {depth}")
        patch = tuple(model.patch_embed.patch_size)
        if len(set(patch)) != 1:
            raise ValueError(f"ViT backbones need square patches; this model's are {patch}")
        ends = [k * depth // 4 for k in (1, 2, 3, 4)]  # one past each stage's last block
        ranges = dict(zip(("layer1", "layer2", "layer3", "layer4"), zip([0, *ends[:-1]], ends)))
        for name in self._HEAD:  # the classifier is not part of the backbone
            if getattr(model, name, None) is not None:
                setattr(model, name, nn.Identity())
        modules = {name: module for name, module in model.named_children() if name not in self._HEAD}
        # Any other module sits before the blocks (the embedding); only "blocks" and "norm" follow.
        embedding = [name for name in modules if name not in ("blocks", "norm")]
        layout = {
            stage: [f"blocks.{i}" for i in range(start, end)] for stage, (start, end) in ranges.items()
        }
        layout["layer1"] = embedding + layout["layer1"]
        layout["layer4"] = layout["layer4"] + ["norm"]
        channels = model.embed_dim
        super().__init__(
            modules=modules,
            layout=layout,
            out_channels=dict.fromkeys(layout, channels),
            stride=dict.fromkeys(layout, patch[0]),
            head_prefixes=head_prefixes,
        )
        self._block_ranges = ranges
        # The class/register tokens and the position embedding are the model's own parameters.
        for name, parameter in model.named_parameters(recurse=False):
            self.register_parameter(name, parameter)
        for name, buffer in model.named_buffers(recurse=False):
            self.register_buffer(name, buffer, persistent=name not in model._non_persistent_buffers_set)
        object.__setattr__(self, "_vit", model)  # a plain attribute: not a submodule, not in the state dict

    def _model(self) -> nn.Module:
        """The timm model, pointed at this backbone's current parameters, buffers and modules
        (``.to(device)`` or an assignment may have replaced them on the backbone only)."""
        model = self._vit
        for named in (self.named_parameters(recurse=False), self.named_buffers(recurse=False), self.named_children()):
            for name, value in named:
                if getattr(model, name, None) is not value:
                    setattr(model, name, value)
        return model

    def forward(self, images: Tensor, upto: str = "layer4") -> dict[str, Tensor]:
        """Run the full token sequence (class and register tokens included, as timm's
        ``forward_features`` does) through the blocks up to the end of stage ``upto``.

        Returns:
            ``{stage: [B, embed_dim, ceil(H / p), ceil(W / p)]}`` for ``layer1`` .. ``upto``: each
            stage's patch tokens after the final norm; ``layer4``'s are exactly timm's
            ``forward_features`` output without the prefix tokens.
        """
        self._check_stage(upto)
        model = self._model()
        patch = self.stride[self.stage_names[0]]
        size = [-(-side // patch) * patch for side in images.shape[-2:]]
        if list(images.shape[-2:]) != size:
            # Resized, not padded: the patch grid then spans exactly the image, so features
            # resized back to the image's size line up with its masks.
            images = torch.nn.functional.interpolate(images, size=size, mode="bilinear", align_corners=False)
        x = model.patch_embed(images)  # [B, h, w, C] (dynamic_img_size)
        grid = x.shape[1:3] if x.ndim == 4 else model.patch_embed.dynamic_feat_size(images.shape[-2:])
        x = model.norm_pre(model.patch_drop(model._pos_embed(x)))  # prefix tokens prepended
        features: dict[str, Tensor] = {}
        for name in self.stage_names:
            for block in self.stage_blocks(name):
                x = block(x)
            features[name] = self._to_map(x[:, model.num_prefix_tokens :], grid)
            if name == upto:
                break
        return features

    def run_stage(self, name: str, x: Tensor) -> Tensor:
        """Run stage ``name``'s blocks on the map ``x [B, C, h, w]`` of the previous stage.

        The one departure from :meth:`forward`: a map carries no class or register tokens, so the
        blocks attend among the patch tokens only, and they start from the previous stage's output,
        which has passed through the final norm. ``run_stage("layer4", features["layer3"])`` is
        therefore close to, not equal to, ``features["layer4"]``. PFENet-family heads use it for
        ``layer4`` of masked ``layer3`` features. ``run_stage("layer1", images)`` is
        ``forward(images, "layer1")["layer1"]``.
        """
        self._check_stage(name)
        if name == self.stage_names[0]:
            return self.forward(x, upto=name)[name]
        tokens = x.flatten(2).transpose(1, 2)  # [B, h * w, C]
        for block in self.stage_blocks(name):
            tokens = block(tokens)
        return self._to_map(tokens, x.shape[-2:])

    def _to_map(self, tokens: Tensor, grid: Sequence[int]) -> Tensor:
        """Patch tokens ``[B, h * w, C]`` -> final norm -> map ``[B, C, h, w]``."""
        return self.norm(tokens).transpose(1, 2).unflatten(2, tuple(grid)).contiguous()

    def stage_blocks(self, name: str) -> list[nn.Module]:
        """The transformer blocks of stage ``name``."""
        self._check_stage(name)
        start, end = self._block_ranges[name]
        return [self.blocks[i] for i in range(start, end)]

    def stage_parameters(self, name: str) -> list[nn.Parameter]:
        """As :meth:`Backbone.stage_parameters`; ``layer1``'s include the class/register tokens
        and the position embedding."""
        own = list(self.parameters(recurse=False)) if name == self.stage_names[0] else []
        return own + super().stage_parameters(name)

    def remove_final_relu(self, name: str) -> TimmViTBackbone:
        """Nothing to remove: every stage ends in a LayerNorm, whose output can be negative."""
        self._check_stage(name)
        return self


def _timm_resnet_final_activation(block: nn.Module) -> str | None:
    """``"act2"`` / ``"act3"`` for a timm ResNet ``BasicBlock`` / ``Bottleneck`` that ends in a
    ReLU (applied to the residual sum), else None. timm is imported only for timm's modules."""
    if not type(block).__module__.startswith("timm."):
        return None
    from timm.models.resnet import BasicBlock, Bottleneck

    name = "act3" if isinstance(block, Bottleneck) else "act2" if isinstance(block, BasicBlock) else None
    return name if name is not None and isinstance(getattr(block, name), nn.ReLU) else None


# ---------------------------------------------------------------------- architectures
def _vgg16(network: torchvision.models.VGG) -> Backbone:
    """PANet's VGG-16 encoder (Wang et al., ICCV 2019) on torchvision's ``features`` module.

    ``features`` indices: convs at 0,2 | 5,7 | 10,12,14 | 17,19,21 | 24,26,28 with a ReLU after
    each; max-pools at 4, 9, 16, 23, 30. Changes, all parameter-free so ImageNet weights load:

    * pools 1-3: 3x3, stride 2, padding 1 (PANet's choice; an H x W input gives
      ``ceil(H / 8)`` at stride 8, e.g. 417 -> 53);
    * pool4: 3x3, stride 1, padding 1, so conv5 stays at stride 8;
    * conv5_x: dilation 2, padding 2, keeping conv5's receptive field after dropping the stride;
    * no ReLU after conv5_3 (index 29) and no pool5: cosine similarity needs features that can be
      negative.
    """
    features = network.features[:29]  # keeps torchvision's keys "0".."28"
    for index in (4, 9, 16):
        features[index] = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    features[23] = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
    for index in (24, 26, 28):
        features[index].dilation = (2, 2)
        features[index].padding = (2, 2)

    def span(first: int, last: int) -> list[str]:
        return [f"features.{i}" for i in range(first, last + 1)]

    return Backbone(
        modules={"features": features},
        layout={
            "layer1": span(0, 8),
            "layer2": span(9, 15),
            "layer3": span(16, 22),
            "layer4": span(23, 28),
        },
        out_channels={"layer1": 128, "layer2": 256, "layer3": 512, "layer4": 512},
        stride={"layer1": 2, "layer2": 4, "layer3": 8, "layer4": 8},
        head_prefixes=("classifier.",),
    )


def _resnet(network: torchvision.models.ResNet) -> Backbone:
    """A torchvision bottleneck ResNet with ``replace_stride_with_dilation=[False, True, True]``.

    The stem (conv1, bn1, relu, maxpool) is part of ``layer1`` so that every stage of every
    backbone is reachable by name.
    """
    names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    return Backbone(
        modules={name: getattr(network, name) for name in names},
        layout={
            "layer1": ["conv1", "bn1", "relu", "maxpool", "layer1"],
            "layer2": ["layer2"],
            "layer3": ["layer3"],
            "layer4": ["layer4"],
        },
        out_channels={"layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048},
        stride={"layer1": 4, "layer2": 8, "layer3": 8, "layer4": 8},
        head_prefixes=("fc.",),
    )


def _smallcnn() -> Backbone:
    """About 1.2M parameters: two 3x3 conv-BN-ReLU blocks per stage, for CPU experiments.

    The first conv of layer1-3 has stride 2; layer4 keeps stride 8 and uses dilation 2 instead,
    mirroring the dilated ResNets, so methods see the same geometry on every backbone.
    """
    plan = {  # stage: (in channels, out channels, stride of the first conv, dilation)
        "layer1": (3, 32, 2, 1),
        "layer2": (32, 64, 2, 1),
        "layer3": (64, 128, 2, 1),
        "layer4": (128, 256, 1, 2),
    }
    stages = {
        name: nn.Sequential(
            _conv_bn_relu(c_in, c_out, stride, dilation),
            _conv_bn_relu(c_out, c_out, 1, dilation),
        )
        for name, (c_in, c_out, stride, dilation) in plan.items()
    }
    backbone = Backbone(
        modules=stages,
        layout={name: [name] for name in stages},
        out_channels={name: c_out for name, (_, c_out, _, _) in plan.items()},
        stride={"layer1": 2, "layer2": 4, "layer3": 8, "layer4": 8},
    )
    _initialise(backbone)
    return backbone


def _initialise(module: nn.Module) -> None:
    """Random initialisation by torchvision's rule for its ResNets and VGGs.

    Convolutions: He-normal over fan-out, ``std = sqrt(2 / (k_h k_w C_out))``, zero bias;
    every other layer (BatchNorm: weight 1, bias 0, fresh running statistics) its own reset.
    """
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif hasattr(layer, "reset_parameters"):
            layer.reset_parameters()


def _conv_bn_relu(c_in: int, c_out: int, stride: int, dilation: int) -> nn.Sequential:
    return nn.Sequential(
        # No conv bias: BatchNorm's shift makes it redundant.
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


# ---------------------------------------------------------------------- building
class _TorchvisionSpec(NamedTuple):
    builder: Callable[..., nn.Module]  # torchvision.models.<name>
    imagenet: torchvision.models.WeightsEnum
    kwargs: dict
    wrap: Callable[[nn.Module], Backbone]


_DILATED = {"replace_stride_with_dilation": [False, True, True]}
_TORCHVISION = {
    "vgg16": _TorchvisionSpec(
        torchvision.models.vgg16, torchvision.models.VGG16_Weights.IMAGENET1K_V1, {}, _vgg16
    ),
    "resnet50": _TorchvisionSpec(
        torchvision.models.resnet50,
        torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
        _DILATED,
        _resnet,
    ),
    "resnet101": _TorchvisionSpec(
        torchvision.models.resnet101,
        torchvision.models.ResNet101_Weights.IMAGENET1K_V1,
        _DILATED,
        _resnet,
    ),
}


# ---------------------------------------------------------------------- timm
def _import_timm():
    """``timm``, imported on first use: fsslib runs without it."""
    try:
        import timm
    except ImportError as error:
        raise ImportError(
            f"'{TIMM_PREFIX}<model name>' backbones need the timm package: pip install timm ({error})"
        ) from error
    return timm


def _timm_backbone(model_name: str, pretrained: bool) -> Backbone:
    """Build ``timm:<model_name>``: a :class:`TimmViTBackbone` for a ``VisionTransformer``, else a
    :class:`Backbone` on timm's features-only network (see the module docstring)."""
    timm = _import_timm()
    _check_timm_name(timm, model_name, pretrained)
    # The classification network, built on the meta device (nothing allocated) where it can be:
    # its class, its module names and its state-dict keys.
    device = "meta"
    try:
        with torch.device(device):
            probe = timm.create_model(model_name, pretrained=False)
    except (RuntimeError, NotImplementedError):  # an initialisation that needs real tensors
        device = "cpu"
        probe = timm.create_model(model_name, pretrained=False)
    if isinstance(probe, timm.models.vision_transformer.VisionTransformer):
        return _timm_vit(timm, model_name, pretrained, probe, device)
    return _timm_cnn(timm, model_name, pretrained, probe, device)


def _check_timm_name(timm, model_name: str, pretrained: bool) -> None:
    """ValueError unless timm knows the name (and its pretrained tag, if any)."""
    pattern = f"*{model_name.split('.')[0].split('_')[0]}*"
    if not model_name or not timm.is_model(model_name):
        raise ValueError(
            f"unknown timm model '{model_name}'; list the names with "
            f"timm.list_models('{pattern}') (pretrained tags: timm.list_pretrained('{pattern}'))"
        )
    try:
        config = timm.models.get_pretrained_cfg(model_name)  # checks a tag such as ".lvd142m"
    except RuntimeError as error:
        raise ValueError(
            f"timm model '{model_name}': {error} List the tags with timm.list_pretrained('{pattern}')"
        ) from error
    if pretrained and not (config and (config.hf_hub_id or config.url or config.file or config.state_dict)):
        # timm itself would only warn and go on with random weights.
        raise ValueError(
            f"timm has no pretrained weights for '{model_name}'; see timm.list_pretrained('{pattern}')"
        )


def _timm_accepts(timm, model_name: str, device: str, **kwargs) -> bool:
    """Whether timm builds the model with these arguments (tried without weights)."""
    try:
        with torch.device(device):
            timm.create_model(model_name, pretrained=False, **kwargs)
    except (TypeError, ValueError, AssertionError, NotImplementedError, KeyError):
        return False
    return True


def _timm_create(timm, model_name: str, pretrained: bool, **kwargs) -> nn.Module:
    """``timm.create_model`` on the CPU; a failure to fetch the pretrained weights is explained."""
    if not pretrained:
        return timm.create_model(model_name, pretrained=False, **kwargs)
    try:
        return timm.create_model(model_name, pretrained=True, **kwargs)
    except (OSError, RuntimeError, ValueError) as error:  # no network (OSError), hub errors, bad file
        raise RuntimeError(
            f"could not load timm's pretrained weights of '{model_name}' ({error}). timm downloads "
            "them (Hugging Face Hub or a URL) into its cache, which needs a network connection. "
            "Offline, save them on a machine with a network, e.g. torch.save(timm.create_model("
            f"'{model_name}', pretrained=True).state_dict(), 'weights.pth'), and pass "
            "weights='/path/to/weights.pth' to build_backbone."
        ) from error


def _timm_cnn(timm, model_name: str, pretrained: bool, probe: nn.Module, device: str) -> Backbone:
    """A timm CNN: ``layer1`` .. ``layer4`` = its last four features-only levels."""
    levels = len(getattr(probe, "feature_info", None) or ())
    if levels < 4:
        raise ValueError(
            f"timm model '{model_name}' ({type(probe).__name__}) has {levels} feature levels "
            "(features_only); a backbone needs at least 4"
        )
    kwargs = {"features_only": True, "out_indices": tuple(range(levels - 4, levels))}
    if _timm_accepts(timm, model_name, device, output_stride=8, **kwargs):
        kwargs["output_stride"] = 8  # else the native strides, recorded below
    network = _timm_create(timm, model_name, pretrained, **kwargs)
    output_format = getattr(network, "output_fmt", "NCHW")
    output_format = getattr(output_format, "value", output_format)  # timm's Format enum
    # FeatureListNet derives from FeatureDictNet; other wrappers run the model by hooks or by its
    # own forward, so the modules alone do not say where a level ends.
    if not isinstance(network, timm.models.FeatureDictNet) or output_format != "NCHW":
        raise ValueError(
            f"timm model '{model_name}' is not supported: timm wraps it for features_only as "
            f"{type(network).__name__} with {output_format} outputs; fsslib splits into stages only "
            "a FeatureDictNet / FeatureListNet (an ordered dict of modules) with NCHW outputs"
        )
    children = [name for name, _ in network.named_children()]
    ends = [children.index(name) for name in network.return_layers]  # in execution order
    stage_names = ("layer1", "layer2", "layer3", "layer4")
    paths = _timm_original_paths(model_name, network, probe)
    layout = {
        stage: [paths[name] for name in children[start + 1 : end + 1]]
        for stage, start, end in zip(stage_names, [-1, *ends[:-1]], ends)
    }
    modules: dict[str, nn.Module] = {}
    for name, module in network.named_children():  # timm's paths: "stages.0" sits in "stages"
        parent, _, child = paths[name].rpartition(".")
        if parent:
            modules.setdefault(parent, nn.Sequential()).add_module(child, module)
        else:
            modules[child] = module
    backbone = Backbone(
        modules=modules,
        layout=layout,
        out_channels=dict(zip(stage_names, network.feature_info.channels())),
        stride=dict(zip(stage_names, network.feature_info.reduction())),
    )
    backbone.head_prefixes = _timm_head_prefixes(model_name, probe, backbone)
    backbone.spatially_local = False  # squeeze-excitation and attention blocks see the whole map
    return backbone


def _timm_original_paths(model_name: str, network: nn.Module, probe: nn.Module) -> dict[str, str]:
    """Each child of timm's features-only network -> its path in the classification network.

    timm flattens some networks one level for ``features_only``: ``stages.0`` becomes the child
    ``stages_0``. The classification network ``probe`` resolves the names; a candidate must hold
    the same parameter names and shapes.
    """
    top = dict(probe.named_children())
    candidates: dict[str, list[str]] = {}
    for name, module in top.items():
        candidates.setdefault(name, []).append(name)
        if isinstance(module, nn.Sequential):
            for child in dict(module.named_children()):
                candidates.setdefault(f"{name}_{child}", []).append(f"{name}.{child}")

    def shapes(module: nn.Module) -> dict[str, tuple]:
        return {key: tuple(value.shape) for key, value in module.state_dict().items()}

    paths = {}
    for name, module in network.named_children():
        fits = [path for path in candidates.get(name, []) if shapes(probe.get_submodule(path)) == shapes(module)]
        if len(fits) != 1:
            raise ValueError(
                f"timm model '{model_name}' is not supported: cannot tell which module of the "
                f"classification network its features_only module '{name}' is ({fits or 'none'})"
            )
        paths[name] = fits[0]
    return paths


def _timm_head_prefixes(model_name: str, probe: nn.Module, backbone: Backbone) -> tuple[str, ...]:
    """The key prefixes of what the classification network has beyond the backbone (its
    classifier), after checking that every backbone key is one of the network's."""
    full = {key: tuple(value.shape) for key, value in probe.state_dict().items()}
    own = {key: tuple(value.shape) for key, value in backbone.state_dict().items()}
    foreign = [key for key, shape in own.items() if full.get(key) != shape]
    if foreign:
        raise ValueError(
            f"timm model '{model_name}' is not supported: backbone keys {foreign[:5]} are not the "
            "classification network's, so its checkpoints would not load"
        )
    prefixes = set()
    for key in full.keys() - own.keys():  # the shortest prefix of the key that no kept key has
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            prefix = ".".join(parts[:n]) + ("." if n < len(parts) else "")
            if not any(k.startswith(prefix) for k in own):
                prefixes.add(prefix)
                break
    return tuple(sorted(prefixes))


def _timm_vit(timm, model_name: str, pretrained: bool, probe: nn.Module, device: str) -> TimmViTBackbone:
    """A timm ``VisionTransformer``: four stages of blocks, any input size (padded to patches)."""
    kwargs = {"num_classes": 0, "dynamic_img_size": True, "dynamic_img_pad": True}
    if not _timm_accepts(timm, model_name, device, **kwargs):
        del kwargs["dynamic_img_pad"]  # an older timm: the input must then be a multiple of p
    backbone = TimmViTBackbone(_timm_create(timm, model_name, pretrained, **kwargs))
    backbone.head_prefixes = _timm_head_prefixes(model_name, probe, backbone)
    return backbone


def build_backbone(
    name: str,
    weights: str | os.PathLike | None = None,
    frozen_stages: Iterable[str] | str = (),
    freeze_bn: bool = False,
) -> Backbone:
    """Build a backbone by name.

    Args:
        name: one of :data:`BACKBONE_NAMES`, or ``"timm:<model name>"`` for a timm model
            (``"timm:resnet50"``, ``"timm:vit_small_patch14_dinov2.lvd142m"``; see the module
            docstring for how its stages are cut).
        weights: ``None`` for random initialisation; ``"imagenet"`` for torchvision's ImageNet
            weights (downloaded once into the torch hub cache); or the path of a local
            checkpoint (see :meth:`Backbone.load_weights`; for a timm backbone, a timm state dict
            such as ``timm.create_model(name).state_dict()``). For a timm backbone,
            ``"pretrained"`` loads timm's weights of the name's pretrained tag (timm's default tag
            when the name has none) through timm's download cache; ``"imagenet"`` means the same,
            so recipes that say ``"imagenet"`` run unchanged; the tag decides what the weights
            were trained on (``.lvd142m``: DINOv2's LVD-142M images, not ImageNet).
        frozen_stages, freeze_bn: passed to :meth:`Backbone.freeze` (nothing is frozen by
            default).

    Raises:
        ValueError: unknown ``name`` (for a timm name, with the ``timm.list_models`` call that
            lists the names); a timm model fsslib cannot split into stages; ``"imagenet"`` for
            ``smallcnn``; ``"pretrained"`` for a timm model without pretrained weights, or for a
            built-in backbone; a checkpoint that does not fit.
        RuntimeError: the ImageNet weights are neither cached nor downloadable; the message
            names the file and where to put it. For a timm backbone: timm's pretrained weights
            could not be fetched (no network); the message says how to pass a local file.
        ImportError: a ``timm:`` name without the timm package installed.
        FileNotFoundError: ``weights`` is a path that does not exist.
    """
    if isinstance(name, str) and name.startswith(TIMM_PREFIX):
        pretrained = weights in ("pretrained", "imagenet")
        backbone = _timm_backbone(name[len(TIMM_PREFIX) :], pretrained)
        if weights is not None and not pretrained:
            backbone.load_weights(weights)
        if frozen_stages or freeze_bn:
            backbone.freeze(frozen_stages, freeze_bn)
        return backbone
    if name not in BACKBONE_NAMES:
        raise ValueError(
            f"unknown backbone '{name}'; valid names: {list(BACKBONE_NAMES)}, or "
            f"'{TIMM_PREFIX}<model name>' for any timm model (e.g. '{TIMM_PREFIX}resnet50')"
        )
    if weights == "pretrained":
        raise ValueError(
            f"weights='pretrained' is for '{TIMM_PREFIX}' backbones; '{name}' takes 'imagenet', "
            "None or a checkpoint path"
        )
    imagenet = weights == "imagenet"
    if name == "smallcnn":
        if imagenet:
            raise ValueError(
                "no ImageNet weights exist for 'smallcnn'; pass weights=None, or the path of a "
                "checkpoint from a pre-training run"
            )
        backbone = _smallcnn()
    else:
        spec = _TORCHVISION[name]
        # Build on the meta device, then allocate only the kept modules: VGG-16's classifier
        # alone holds 124M of its 138M parameters.
        with torch.device("meta"):
            network = spec.builder(weights=None, **spec.kwargs)
        backbone = spec.wrap(network).to_empty(device="cpu")
        _initialise(backbone)
        if imagenet:
            backbone.load_checkpoint(
                _imagenet_state_dict(name, spec.imagenet), source=f"'{spec.imagenet.url}'"
            )
    if weights is not None and not imagenet:
        backbone.load_weights(weights)
    if frozen_stages or freeze_bn:
        backbone.freeze(frozen_stages, freeze_bn)
    return backbone


def _imagenet_state_dict(
    name: str, imagenet_weights: torchvision.models.WeightsEnum
) -> dict[str, Tensor]:
    """Fetch torchvision's ImageNet state dict (cache or download), explaining failures."""
    try:
        return imagenet_weights.get_state_dict(progress=True, check_hash=True)
    except (OSError, RuntimeError) as error:  # no network (URLError is an OSError), bad hash
        filename = os.path.basename(urlparse(imagenet_weights.url).path)
        cache = os.path.join(torch.hub.get_dir(), "checkpoints")
        raise RuntimeError(
            f"could not load the ImageNet weights of '{name}' ({error}). Download "
            f"{imagenet_weights.url} elsewhere and copy the file '{filename}' into the torch hub "
            f"cache directory '{cache}', or pass weights='/path/to/{filename}' to "
            "build_backbone."
        ) from error
