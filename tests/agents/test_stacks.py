from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from flywheel.agents.stacks import dump, parse_dump


def _thread(frames: list[tuple[str, str, int]], active: bool = True) -> dict[str, object]:
    return {
        "pid": 1,
        "thread_id": 99,
        "thread_name": "MainThread",
        "active": active,
        "owns_gil": False,
        "frames": [
            {"name": n, "filename": f"/x/{f}", "short_filename": f, "module": None, "line": ln}
            for n, f, ln in frames
        ],
    }


def test_signature_ignores_lines_thread_ids_and_order() -> None:
    a = [
        _thread([("wait", "nccl.py", 10), ("step", "engine.py", 5)]),
        _thread([("sleep", "idle.py", 1)], False),
    ]
    b = [
        _thread([("sleep", "idle.py", 77)], False),
        _thread([("wait", "nccl.py", 11), ("step", "engine.py", 6)]),
    ]
    c = [_thread([("forward", "model.py", 3), ("step", "engine.py", 5)])]
    da, db, dc = parse_dump(1, json.dumps(a)), parse_dump(2, json.dumps(b)), parse_dump(3, json.dumps(c))
    assert da.signature == db.signature != dc.signature
    assert da.threads[0].frames == ("engine.py:step", "nccl.py:wait")  # outermost first
    assert set(da.innermost) == {"nccl.py:wait", "idle.py:sleep"}


def test_missing_py_spy_is_an_error_not_an_exception() -> None:
    d = dump(1, py_spy="/nonexistent/py-spy")
    assert d.signature == "" and "py-spy" in d.error


def test_real_py_spy_on_a_stuck_process(tmp_path: Path) -> None:
    script = tmp_path / "stuck.py"
    script.write_text(
        textwrap.dedent(
            """
            import time
            def all_reduce():
                time.sleep(60)
            def decode_step():
                all_reduce()
            print("ready", flush=True)
            decode_step()
            """
        )
    )
    procs = [
        subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True) for _ in range(2)
    ]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        time.sleep(0.1)
        py_spy = str(Path(sys.executable).with_name("py-spy"))
        dumps = [dump(p.pid, py_spy=py_spy) for p in procs]
        assert all(d.error == "" for d in dumps), [d.error for d in dumps]
        assert dumps[0].signature == dumps[1].signature
        assert dumps[0].threads[0].frames[-2:] == ("stuck.py:decode_step", "stuck.py:all_reduce")
    finally:
        for p in procs:
            p.kill()
            p.wait()
