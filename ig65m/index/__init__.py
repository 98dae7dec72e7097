"""Clip search: build an index directory from feature files, serve it over HTTP, query it.

The names below load on first use, so that `ig65m.index.client` (and the page's helpers) import
without Faiss or Flask.
"""

import importlib

_EXPORTS = {"build_index": "ig65m.index.build", "choose_index_key": "ig65m.index.build",
            "Searcher": "ig65m.index.search"}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
