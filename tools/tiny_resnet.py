"""tiny_resnet.py: a torchvision-style BasicBlock ResNet state_dict with one block (layer1.0), for tests and fuzz seeds."""
import numpy as np


def tiny_resnet(width=2, in_channels=1, classes=10, seed=5, weight_scale=1.0):
    """conv1/bn1, layer1.0.{conv1,bn1,conv2,bn2}, fc: float32 arrays keyed as torchvision names them."""
    rng = np.random.default_rng(seed)
    sd = {}

    def conv(name, bn, k, c, r):
        sd[name + ".weight"] = (rng.standard_normal((k, c, r, r)) * weight_scale).astype("f4")
        sd[bn + ".weight"] = (1 + 0.1 * rng.standard_normal(k)).astype("f4")
        sd[bn + ".bias"] = (0.1 * rng.standard_normal(k)).astype("f4")
        sd[bn + ".running_mean"] = (0.1 * rng.standard_normal(k)).astype("f4")
        sd[bn + ".running_var"] = (1 + 0.1 * rng.random(k)).astype("f4")

    conv("conv1", "bn1", width, in_channels, 3)
    conv("layer1.0.conv1", "layer1.0.bn1", width, width, 3)
    conv("layer1.0.conv2", "layer1.0.bn2", width, width, 3)
    sd["fc.weight"] = rng.standard_normal((classes, width)).astype("f4")
    sd["fc.bias"] = np.zeros(classes, "f4")
    return sd
