"""Clip search: build an index directory from feature files, serve it over HTTP, query it."""

from ig65m.index.build import build_index, choose_index_key
from ig65m.index.search import Searcher

__all__ = ["build_index", "choose_index_key", "Searcher"]
