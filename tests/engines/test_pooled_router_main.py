"""The pooled router's command line: models from calibrated profiles, clear errors for bad arguments."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from flywheel.controllers.pooling import SwitchCost
from flywheel.engines.router.pooled_main import build, parser


async def test_build_from_arguments_uses_the_calibrated_profiles() -> None:
    args = parser().parse_args(
        [
            "--group", "g7", "--tp", "1", "--dialect", "sglang",
            "--model", "qwen3-8b=http://127.0.0.1:8001",
            "--model", "chat=http://127.0.0.1:8002/@llama3.1-8b",
        ]
    )  # fmt: skip
    router = build(args, CollectorRegistry())
    try:
        sched = router.scheduler
        assert sched.name == "g7" and sched.models == ["qwen3-8b", "chat"]
        assert router.engines["chat"].url == "http://127.0.0.1:8002"
        assert router.engines["chat"].sleep_path() == "/release_memory_occupation"
        assert sched.switch == SwitchCost()
        assert all(sched.state(m) == "asleep" for m in sched.models)
    finally:
        await router.stop()


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("qwen3-8b", "expected NAME=URL"),
        ("x=http://h:1@no-such-profile", "unknown profile"),
        ("qwen3-8b=ftp://h:1", "must start with http"),
    ],
)
def test_bad_model_arguments_are_refused(
    model: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["--model", model])
    assert message in capsys.readouterr().err


async def test_a_model_given_twice_is_refused() -> None:
    args = parser().parse_args(["--model", "qwen3-8b=http://a:1", "--model", "qwen3-8b=http://b:2"])
    with pytest.raises(ValueError, match="given twice"):
        build(args, CollectorRegistry())
