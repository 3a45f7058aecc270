"""``flywheel router`` options: API keys from a Secret file and/or the environment, fixed backends."""

from __future__ import annotations

from pathlib import Path

import pytest

from flywheel.cli import router_options
from flywheel.engines.router.main import API_KEYS_ENV, RouterOptions, api_keys, serve, static_pools


def test_api_keys_from_file_and_env(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# router keys\nk1\n\n  k2  \n")
    assert api_keys(keys, {API_KEYS_ENV: "k3, ,k4"}) == ["k3", "k4", "k1", "k2"]
    assert api_keys(None, {}) == []


def test_static_backends() -> None:
    (pool,) = static_pools(["a=http://h:1/", "b=https://h:2"])
    assert [(b.name, b.url) for b in pool.backends] == [("a", "http://h:1"), ("b", "https://h:2")]
    assert len(pool.classes) == 9
    for bad in ("a", "=http://h", "a=h:1"):
        with pytest.raises(ValueError, match="NAME=http"):
            static_pools([bad])


async def test_serve_needs_exactly_one_way_to_find_engines() -> None:
    with pytest.raises(ValueError, match="either --deployment"):
        await serve(RouterOptions())
    with pytest.raises(ValueError, match="either --deployment"):
        await serve(RouterOptions(deployment="md", backends=["a=http://h:1"]))


def test_the_command_line_parses_into_router_options() -> None:
    """What ``flywheel dev`` uses to run the operator's router Deployment command line."""
    options = router_options(
        ["--deployment", "md", "--port", "9000", "--max-tokens-cap", "64", "--replica", "r-1"]
    )
    assert (options.deployment, options.port, options.max_tokens_cap, options.replica) == (
        "md",
        9000,
        64,
        "r-1",
    )
    assert options.backends == [] and options.max_context_tokens is None
