"""Helpers shared by the I3D tests."""

import torch


def randomise_batch_norms(model):
    """Give every batch norm non-trivial statistics and offsets (scales stay 1, as TensorFlow's
    I3D has none), so conversions and exports are checked on more than identities -> `model`."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model
