"""The operator harness closes kopf's orphaned coroutines so no "never awaited" warning fires later."""

from __future__ import annotations

import gc
import warnings

from opharness import close_unawaited_coroutines


async def stop_daemon() -> None:  # the name kopf's orphans carry
    return None


def test_orphaned_coroutines_are_closed_and_finalise_silently() -> None:
    orphan = stop_daemon()
    assert close_unawaited_coroutines("stop_daemon") >= 1
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        del orphan
        gc.collect()
    assert not [w for w in seen if "never awaited" in str(w.message)]
