"""Model families and their registry.

`list_models`, `get_spec` and `register_model` are torch-free (the registered models are data,
`ig65m.models.table`); `get_model` loads torch and the family's module when first used.
"""

from ig65m.defaults import DEFAULT_MODEL
from ig65m.models.registry import get_spec, list_models, register_model

__all__ = ["DEFAULT_MODEL", "get_model", "get_spec", "list_models", "register_model"]


def __getattr__(name):
    if name == "get_model":
        from ig65m.models.loading import get_model
        return get_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
