"""The torch module every backend runs: clips -> (logits, pooled features).

`ClipEmbedder` wraps any registry model. It is what the torch backend calls and what ONNX export
writes, so both backends compute exactly the same function.
"""

import torch
import torch.nn as nn

from ig65m.defaults import POOLINGS


def _pool(x, dims, how):
    return x.amax(dim=dims) if how == "max" else x.mean(dim=dims)


class ClipEmbedder(nn.Module):
    """(N, C, T, H, W) float32 clips -> logits (N, K) and features (N, D).

    Features pool the model's last feature map (N, D, T', H', W') over space (`pool_spatial`) and
    then time (`pool_temporal`), each "mean" or "max"; logits always come from the model's own head.
    """

    def __init__(self, model, *, pool_spatial="mean", pool_temporal="mean"):
        super().__init__()
        if pool_spatial not in POOLINGS or pool_temporal not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}")
        self.model = model
        self.pool_spatial = pool_spatial
        self.pool_temporal = pool_temporal

    def forward(self, clips):
        feature_map = self.model.forward_features(clips)
        logits = self.model.forward_head(feature_map)
        features = _pool(_pool(feature_map, (3, 4), self.pool_spatial), 2, self.pool_temporal)
        return logits, features


@torch.inference_mode()
def run_torch(embedder, clips, device):
    """Run a batch on `device` -> (logits, features) as float32 numpy arrays."""
    logits, features = embedder(clips.to(device, non_blocking=True))
    return logits.float().cpu().numpy(), features.float().cpu().numpy()
