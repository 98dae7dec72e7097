"""torch.hub entry points, as the original project had:

    torch.hub.list("OWNER/ig65m")
    model = torch.hub.load("OWNER/ig65m", "r2plus1d_34_32_ig65m", num_classes=487, pretrained=True)

Each returns the R(2+1)D-34 `nn.Module` (input N C T H W, 112x112 crops normalised with the
IG-65M mean/std); `pretrained=True` downloads the released weights into the ig65m cache and checks
their sha256 prefix, which requires `num_classes` to be the released head's.
"""

dependencies = ["torch", "torchvision"]

from ig65m.models import get_model, get_spec  # noqa: E402


def _hub(name, num_classes, pretrained, progress):
    spec = get_spec(name)
    released = spec.weights.num_classes
    if pretrained and num_classes != released:
        raise ValueError(f"{name} was pre-trained with {released} classes, not {num_classes}")
    if pretrained:
        return get_model(name, progress=progress)[0]
    return spec.builder(num_classes=num_classes)


def r2plus1d_34_8_ig65m(num_classes=359, pretrained=False, progress=False):
    """R(2+1)D-34 for 8-frame clips, pre-trained on IG-65M (359 classes)."""
    return _hub("r2plus1d_34_8_ig65m", num_classes, pretrained, progress)


def r2plus1d_34_32_ig65m(num_classes=487, pretrained=False, progress=False):
    """R(2+1)D-34 for 32-frame clips, pre-trained on IG-65M (487 classes)."""
    return _hub("r2plus1d_34_32_ig65m", num_classes, pretrained, progress)


def r2plus1d_34_8_kinetics(num_classes=400, pretrained=False, progress=False):
    """R(2+1)D-34 for 8-frame clips, IG-65M fine-tuned on Kinetics-400 (400 classes)."""
    return _hub("r2plus1d_34_8_kinetics", num_classes, pretrained, progress)


def r2plus1d_34_32_kinetics(num_classes=400, pretrained=False, progress=False):
    """R(2+1)D-34 for 32-frame clips, IG-65M fine-tuned on Kinetics-400 (400 classes)."""
    return _hub("r2plus1d_34_32_kinetics", num_classes, pretrained, progress)
