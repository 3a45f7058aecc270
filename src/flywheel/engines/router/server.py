"""Runs a :class:`~flywheel.engines.router.app.Router` on ``host:port`` with its metrics refresh loop."""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from flywheel.engines.router.app import Router


class RouterServer:
    def __init__(
        self, router: Router, refresh_period_s: float = 1.0, *, cancel_on_disconnect: bool = True
    ) -> None:
        """``cancel_on_disconnect``: a client that disconnects cancels its handler, which closes the
        engine connection and releases the instance slot at once (else queued requests notice it by
        polling, and forwarded ones when the answer cannot be written)."""
        self.router = router
        self.cancel_on_disconnect = cancel_on_disconnect
        self.refresh_period_s = refresh_period_s
        self._runner: web.AppRunner | None = None
        self._refresher: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._runner = web.AppRunner(
            self.router.app(),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=0.5,
            handler_cancellation=self.cancel_on_disconnect,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else port
        await self.router.refresh()
        self._refresher = asyncio.get_running_loop().create_task(
            self.router.refresh_forever(self.refresh_period_s), name="router-refresh"
        )
        return self.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        if self._runner is not None:
            await self._runner.cleanup()
        await self.router.close()
