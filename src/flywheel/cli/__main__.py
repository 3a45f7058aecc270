"""``python -m flywheel.cli``: the ``flywheel`` command (engine and router containers run it this way)."""

from flywheel.cli import main

main()
