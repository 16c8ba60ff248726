"""Shared test setup.

Exact Q tables are cached on disk; every test session gets its own empty cache folder so that the
suite never reads or writes the user's cache (and never reads a stale table).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_iapo_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IAPO_CACHE_DIR", str(tmp_path_factory.mktemp("iapo-cache")))
        yield
