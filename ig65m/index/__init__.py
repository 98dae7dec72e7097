"""Clip search: build an index directory from feature files, serve it over HTTP, query it.

Importing the package loads nothing heavy: `ig65m.index.client` needs neither Faiss nor Flask.
`build_index`, `choose_index_key` and `Searcher` load Faiss when first used.
"""

__all__ = ["build_index", "choose_index_key", "Searcher"]


def __getattr__(name):
    if name in ("build_index", "choose_index_key"):
        from ig65m.index import build
        return getattr(build, name)
    if name == "Searcher":
        from ig65m.index.search import Searcher
        return Searcher
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
