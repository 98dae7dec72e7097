"""TensorFlow "SAME" padding, the one helper both TF-ported families (I3D Inception, MoViNet) use."""


def tf_same_padding(size, kernel, stride):
    """(before, after) padding TensorFlow's "SAME" applies to a dimension of `size`.

    The output has ceil(size / stride) positions; the total padding is split with the extra
    element after, e.g. size 224, kernel 7, stride 2 -> (2, 3); size 7, kernel 3, stride 2 -> (1, 1).
    The ceiling avoids negative floor division: exported to ONNX, Div truncates toward zero.
    """
    out = (size + stride - 1) // stride
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2
