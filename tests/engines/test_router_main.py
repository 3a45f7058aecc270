"""``flywheel router`` options: API keys from a Secret file and/or the environment, fixed backends."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import httpx
import pytest
from engine_fakes import MODEL, EngineFactory

from flywheel.cli import router_options
from flywheel.engines.openai import CompletionRequest
from flywheel.engines.router import RouterServer
from flywheel.engines.router.main import (
    API_KEYS_ENV,
    RouterOptions,
    api_keys,
    build_router,
    serve,
    static_pools,
    token_counter,
)


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
    assert (options.max_attempts, options.first_byte_timeout_factor) == (3, 5.0)
    tuned = router_options(
        ["--backend", "e=http://x:1", "--max-attempts", "2", "--first-byte-timeout-factor", "0"]
    )
    router = build_router(dataclasses.replace(tuned, model="m"), None)
    assert (router.retry.max_attempts, router.retry.first_byte_factor) == (2, 0.0)


def _word_tokenizer(path: Path) -> Path:
    """A tokenizer.json that makes one token of every whitespace-separated word."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    tokenizer = Tokenizer(WordLevel({"[UNK]": 0, "x": 1}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()
    file = path / "tokenizer.json"
    tokenizer.save(str(file))
    return file


def test_prompt_tokens_come_from_the_models_tokenizer_where_it_is_mounted(tmp_path: Path) -> None:
    count = token_counter(_word_tokenizer(tmp_path))
    assert count("x " * 100) == 100  # the 4-characters estimate would say 50
    assert token_counter(None)("x " * 100) == 50
    assert token_counter(tmp_path / "missing.json")("x " * 100) == 50  # not mounted: the estimate
    router = build_router(RouterOptions(model="m", tokenizer=tmp_path / "tokenizer.json"), None)
    chat = CompletionRequest.parse(
        {"messages": [{"role": "user", "content": "x x x"}]}, chat=True, count=router.token_counter
    )
    assert chat.prompt_tokens == 3 + 3 + 3  # words + per message + reply priming


async def test_the_context_check_uses_the_real_count(tmp_path: Path, engine_server: EngineFactory) -> None:
    engine = await engine_server(name="e")
    options = RouterOptions(
        model=MODEL, tokenizer=_word_tokenizer(tmp_path), max_context_tokens=80, backends=[f"e={engine.url}"]
    )
    router = build_router(options, None)
    router.set_pools(static_pools(options.backends))
    server = RouterServer(router, refresh_period_s=3600)
    await server.start()
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            url = f"{server.url}/v1/completions"
            long = await client.post(url, json={"prompt": "x " * 100, "max_tokens": 1})  # 50 by estimate
            short = await client.post(url, json={"prompt": "x " * 70, "max_tokens": 1})
    finally:
        await server.stop()
    assert long.status_code == 400 and long.json()["error"]["code"] == "context_length_exceeded"
    assert short.status_code == 200
