"""How the operator reaches the API server: explicit server, in-cluster service account or kubeconfig."""

from __future__ import annotations

import ssl
import tempfile
from typing import Any

import kopf

from flywheel.operator.config import OperatorConfig


def ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext | None:
    if info.insecure:
        return None
    cadata = info.ca_data.decode() if isinstance(info.ca_data, bytes) else info.ca_data
    context = ssl.create_default_context(cafile=info.ca_path, cadata=cadata)
    cert, key = info.certificate_path, info.private_key_path
    if info.certificate_data and info.private_key_data:
        files = []
        for data in (info.certificate_data, info.private_key_data):
            handle = tempfile.NamedTemporaryFile(delete=False, suffix=".pem")  # noqa: SIM115
            handle.write(data if isinstance(data, bytes) else data.encode())
            handle.close()
            files.append(handle.name)
        cert, key = files
    if cert:
        context.load_cert_chain(cert, key)
    return context


def login(config: OperatorConfig, logger: Any, settings: kopf.OperatorSettings) -> kopf.ConnectionInfo:
    """Explicit server from the config, else the in-cluster service account, else kubeconfig."""
    if config.server:
        return kopf.ConnectionInfo(server=config.server, token=config.token, insecure=config.insecure)
    info = kopf.login_with_service_account(logger=logger, settings=settings) or kopf.login_with_kubeconfig(
        logger=logger, settings=settings
    )
    if info is None:
        raise kopf.LoginError("no API server: set --server, a kubeconfig, or run in-cluster")
    return info
