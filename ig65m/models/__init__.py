"""Model families; importing this package registers every model."""

from ig65m.models import r2plus1d  # noqa: F401  (registers the IG-65M R(2+1)D-34 models)
from ig65m.models import i3d_resnet  # noqa: F401  (I3D ResNet-50, video-nonlocal-net)
from ig65m.models import i3d_inception  # noqa: F401  (I3D Inception-v1 RGB and flow)
from ig65m.models import movinet  # noqa: F401  (MoViNet A0-A5 base, A0-A2 stream)
from ig65m.defaults import DEFAULT_MODEL
from ig65m.models.registry import get_model, get_spec, list_models, register_model

__all__ = ["DEFAULT_MODEL", "get_model", "get_spec", "list_models", "register_model"]
