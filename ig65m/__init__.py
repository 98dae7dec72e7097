"""ig65m: video clip embeddings with pretrained 3D CNNs, searchable with Faiss."""

from ig65m.errors import Ig65mError

__version__ = "0.1.0"
__all__ = ["Ig65mError", "__version__"]
