#!/usr/bin/python3
"""resnet_torch.py: torchvision-keyed ResNet of any width, stem and input channels (shared by the tools).

The module reproduces torchvision's ResNet state_dict layout exactly (conv1, bn1,
layer{1..4}.{i}.conv{1,2,3}, .bn{1,2,3}, layer{k}.0.downsample.{0,1}, fc) so that a
network trained here and one exported from torchvision load through the same code in
the C++ example. Differences from torchvision.models.resnet50() are shapes only:

  * base width W: stages have planes W, 2W, 4W, 8W (torchvision: 64, 128, 256, 512);
  * stem "small": conv1 is 3x3, stride 1, pad 1 and there is no max-pool (28x28 inputs);
    stem "imagenet": conv1 is 7x7, stride 2, pad 3, then max-pool 3/2/1 (torchvision);
  * any number of input channels and classes.

Bottleneck is torchvision's v1.5 block (stride on the 3x3 conv, expansion 4); BasicBlock
has expansion 1. All convolutions are bias-free; BatchNorm eps is 1e-5.

from_state_dict() infers the whole architecture from a state_dict's keys and shapes,
the same rule the C++ example uses, so eval_torch.py can load any exported .npz.
"""
import re

import numpy as np
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck


class ResNet(nn.Module):
    """torchvision-compatible ResNet; see the module docstring for what differs."""

    def __init__(self, block=Bottleneck, layers=(3, 4, 6, 3), width=64, in_channels=3,
                 num_classes=1000, stem="imagenet", zero_init_residual=False):
        super().__init__()
        if stem not in ("imagenet", "small"):
            raise ValueError(f"stem = {stem!r} is not 'imagenet' or 'small'")
        self.stem = stem
        self.inplanes = width
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, width, layers[0], 1)
        self.layer2 = self._make_layer(block, 2 * width, layers[1], 2)
        self.layer3 = self._make_layer(block, 4 * width, layers[2], 2)
        self.layer4 = self._make_layer(block, 8 * width, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * width * block.expansion, num_classes)

        # Same initialisation as torchvision.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.constant_(m.bn3.weight, 0)
                elif isinstance(m, BasicBlock):
                    nn.init.constant_(m.bn2.weight, 0)

    def _make_layer(self, block, planes, blocks, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        mods = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            mods.append(block(self.inplanes, planes))
        return nn.Sequential(*mods)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def fashion_resnet50(width):
    """The Fashion-MNIST network: Bottleneck [3,4,6,3], base width `width`, 3x3 stem, 10 classes."""
    return ResNet(Bottleneck, (3, 4, 6, 3), width=width, in_channels=1, num_classes=10,
                  stem="small", zero_init_residual=True)


def fashion_resnet18(width):
    """The Fashion-MNIST ResNet-18: BasicBlock [2,2,2,2], base width `width`, 3x3 stem, 10 classes."""
    return ResNet(BasicBlock, (2, 2, 2, 2), width=width, in_channels=1, num_classes=10,
                  stem="small", zero_init_residual=True)


def exportable_state_dict(model):
    """state_dict as float32 numpy arrays, keys unchanged, num_batches_tracked dropped."""
    out = {}
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked"):
            continue
        out[k] = v.detach().cpu().to(torch.float32).numpy().copy()
    return out


def from_state_dict(sd):
    """Build a ResNet whose architecture is read from `sd` (keys and shapes) and load `sd`.

    `sd` maps torchvision keys to numpy arrays or tensors (num_batches_tracked optional).
    Bottleneck if layer1.0.conv3.weight exists, else BasicBlock; blocks per stage from the
    layer{k}.{i} indices; base width from conv1's output channels; input channels from
    conv1; stem from conv1's kernel size (7 -> imagenet, 3 -> small); classes from fc.
    """
    sd = {k: torch.as_tensor(np.asarray(v)) for k, v in sd.items()}
    block = Bottleneck if "layer1.0.conv3.weight" in sd else BasicBlock
    layers = []
    for k in range(1, 5):
        idx = {int(m.group(1)) for key in sd
               for m in [re.match(rf"layer{k}\.(\d+)\.", key)] if m}
        if not idx or idx != set(range(len(idx))):
            raise ValueError(f"state_dict: layer{k} blocks {sorted(idx)} are not 0..n-1")
        layers.append(len(idx))
    w = sd["conv1.weight"]
    kernel = w.shape[-1]
    if kernel not in (3, 7):
        raise ValueError(f"state_dict: conv1.weight kernel = {kernel} is not 3 or 7")
    width = sd["layer1.0.conv1.weight"].shape[0]
    model = ResNet(block, layers, width=width, in_channels=w.shape[1],
                   num_classes=sd["fc.weight"].shape[0],
                   stem="imagenet" if kernel == 7 else "small")
    if model.conv1.weight.shape[0] != w.shape[0]:
        raise ValueError(f"state_dict: conv1 has {w.shape[0]} outputs, layer1 width is {width}")
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"state_dict: missing keys {missing}, unexpected keys {unexpected}")
    return model
