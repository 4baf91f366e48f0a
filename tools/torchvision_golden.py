#!/usr/bin/python3
# torchvision_golden.py: reference weights, inputs and logits of torchvision ResNets for the C++ ResNet tests.
#
# Usage: /usr/bin/python3 tools/torchvision_golden.py OUTDIR
#
# Builds, with seeded random weights and randomized BatchNorm statistics (eval mode):
#   resnet18        torchvision.models.resnet18()                          (BasicBlock, 7x7 stem)
#   resnet50        torchvision.models.resnet50()                          (Bottleneck, 7x7 stem)
#   small_bottleneck ResNet(Bottleneck, [1, 2, 1, 1]), base width 16, 1 input channel,
#                   10 classes, 3x3/1/1 stem and no max-pool               (small-image stem)
#   small_basic     ResNet(BasicBlock, [1, 1, 1, 1]), base width 8, 3x3/1/1 stem, no max-pool
# and writes into OUTDIR, for each NAME:
#   NAME.npz             the state_dict, float32, without num_batches_tracked
#   NAME_input{i}.npy    float32 NCHW inputs
#   NAME_logits{i}.npy   float32 logits of input i
# plus, for resnet18 input 0:
#   resnet18_features0.npy       the pooled features (fc input)
#   resnet18_hooked_logits0.npy  the logits when every BatchNorm output (= the folded
#                                conv's output, before residual add and ReLU) goes through
#                                clamp(x, -0.5, 1.5) - 0.1 and the fc input through 2 x - 0.25.
# BatchNorm parameters: gamma ~ U(0.5, 1.5), beta ~ N(0, 0.1), running_mean ~ N(0, 0.1),
# running_var ~ U(0.5, 1.5). Other parameters: torchvision's default (seeded) init.
import os
import sys

# Idle OpenMP threads sleep instead of spinning: on a busy machine spinning makes
# torch's CPU forward several times slower. libgomp reads this when torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from torchvision.models import resnet as tvr  # noqa: E402


def randomize_bn(model, gen):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = torch.rand(c, generator=gen) + 0.5
            m.bias.data = torch.randn(c, generator=gen) * 0.1
            m.running_mean.data = torch.randn(c, generator=gen) * 0.1
            m.running_var.data = torch.rand(c, generator=gen) + 0.5
    return model.eval()


def small_resnet(block, layers, width, in_channels, classes):
    # torchvision's ResNet with base width `width` (planes width, 2 width, 4 width, 8 width)
    # and the small-image stem: conv1 3x3 / stride 1 / pad 1, no max-pool.
    m = tvr.ResNet(block, layers, num_classes=classes)
    m.inplanes = width
    m.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
    m.bn1 = nn.BatchNorm2d(width)
    m.maxpool = nn.Identity()
    m.layer1 = m._make_layer(block, width, layers[0])
    m.layer2 = m._make_layer(block, 2 * width, layers[1], stride=2)
    m.layer3 = m._make_layer(block, 4 * width, layers[2], stride=2)
    m.layer4 = m._make_layer(block, 8 * width, layers[3], stride=2)
    m.fc = nn.Linear(8 * width * block.expansion, classes)
    for mod in m.modules():
        if isinstance(mod, nn.Conv2d):
            nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
    return m


def save_weights(model, path):
    sd = {k: v.detach().cpu().numpy().astype(np.float32)
          for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    np.savez(path, **sd)


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: torchvision_golden.py OUTDIR")
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    torch.set_grad_enabled(False)
    torch.set_num_threads(2)
    torch.manual_seed(2019)
    gen = torch.Generator().manual_seed(1810)

    models = {
        "resnet18": (tvr.resnet18(), [(2, 3, 64, 64), (1, 3, 45, 37)]),
        "resnet50": (tvr.resnet50(), [(2, 3, 64, 64), (1, 3, 224, 224)]),
        "small_bottleneck": (small_resnet(tvr.Bottleneck, [1, 2, 1, 1], 16, 1, 10), [(3, 1, 28, 28)]),
        "small_basic": (small_resnet(tvr.BasicBlock, [1, 1, 1, 1], 8, 3, 10), [(2, 3, 32, 32), (1, 3, 17, 23)]),
    }
    for name, (model, shapes) in models.items():
        randomize_bn(model, gen)
        save_weights(model, os.path.join(out, name + ".npz"))
        for i, shape in enumerate(shapes):
            x = torch.randn(*shape, generator=gen)
            np.save(os.path.join(out, "%s_input%d.npy" % (name, i)), x.numpy().astype(np.float32))
            np.save(os.path.join(out, "%s_logits%d.npy" % (name, i)), model(x).numpy().astype(np.float32))

    # resnet18 with hooks on every BatchNorm output and on the fc input.
    model = models["resnet18"][0]
    x = torch.from_numpy(np.load(os.path.join(out, "resnet18_input0.npy")))
    feats = []
    model.fc.register_forward_pre_hook(lambda m, inp: feats.append(inp[0].clone()))
    model(x)
    np.save(os.path.join(out, "resnet18_features0.npy"), feats[0].numpy().astype(np.float32))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.register_forward_hook(lambda m, inp, outp: torch.clamp(outp, -0.5, 1.5) - 0.1)
    model.fc.register_forward_pre_hook(lambda m, inp: (2.0 * inp[0] - 0.25,))
    np.save(os.path.join(out, "resnet18_hooked_logits0.npy"), model(x).numpy().astype(np.float32))


if __name__ == "__main__":
    main()
