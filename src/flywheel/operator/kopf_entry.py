"""``kopf run -m flywheel.operator.kopf_entry``: importing this module registers the operator's
handlers in kopf's default registry, configured from ``FLYWHEEL_*`` environment variables
(``OperatorConfig.from_env``). Nothing else imports it; ``flywheel operator`` builds its own registry."""

from __future__ import annotations

import kopf

from flywheel.operator.config import OperatorConfig
from flywheel.operator.main import register

operator = register(kopf.get_default_registry(), OperatorConfig.from_env())
