"""The one device resolver: `--device` as a torch device, CUDA checked before anything runs."""

import torch

from ig65m.errors import Ig65mError


def resolve_device(device=None):
    """The torch device to run on: `device` if given, else CUDA when present, else CPU."""
    if device:
        try:
            device = torch.device(device)
        except RuntimeError as err:
            raise Ig65mError(f"bad --device {device!r}: {err}") from None
        if device.type not in ("cpu", "cuda"):  # mps, meta, xpu...: a traceback at the model
            raise Ig65mError(f"--device {device} is not supported: use cpu or cuda[:N]")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise Ig65mError(f"--device {device} asked for, but CUDA is not available here")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
