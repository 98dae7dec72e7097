"""BatchNorm without PyTorch's `num_batches_tracked` counter, for models ported from Caffe2 or
TensorFlow.

Neither framework has that counter, and the published PyTorch ports of those models (Tushar-N's
I3D ResNet-50, hassony2's I3D Inception) saved state_dicts without it. Dropping the buffer keeps our
state_dict keys exactly the published ones, so those files load strictly, with no renaming.
"""

import torch.nn as nn


class FrozenCounterBatchNorm3d(nn.BatchNorm3d):
    """`nn.BatchNorm3d` (N, C, T, H, W) with `weight`, `bias`, `running_mean`, `running_var` only.

    Training still updates the running statistics with the fixed `momentum` (the counter only
    matters for `momentum=None`, which is refused here).
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        if momentum is None:
            raise ValueError("cumulative averaging (momentum=None) needs num_batches_tracked")
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.register_buffer("num_batches_tracked", None)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # Skip _NormBase's hook, which inserts a counter entry into state_dicts saved without one.
        nn.Module._load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                                        missing_keys, unexpected_keys, error_msgs)
