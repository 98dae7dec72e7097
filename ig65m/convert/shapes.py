"""The one helper converters need from a model: its names and shapes, built on the meta device.

Converters never import a model module: the checkpoint filter is handed the registered builder.
"""


def on_meta(build, num_classes):
    """`build(num_classes=...)` on the meta device: names and shapes, no memory, no init time."""
    import torch

    with torch.device("meta"):
        return build(num_classes=num_classes)
