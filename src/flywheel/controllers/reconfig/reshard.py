"""Former home of the resharding planner, now split into ``geometry``, ``assignment``, ``plan``,
``validate`` and ``rollout``. Kept only as a re-export for importers in ``sim`` and ``operator``
(being restructured in parallel); new code imports ``flywheel.controllers.reconfig``."""

from flywheel.controllers.reconfig import *  # noqa: F403
from flywheel.controllers.reconfig import __all__  # noqa: F401
