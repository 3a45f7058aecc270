#!/bin/sh
# The long run of tests/api/test_emulator_agreement.py: 10,000 hypothesis-generated ModelDeployments
# POSTed to the dev cluster's API emulator (dryRun=All, fieldValidation=Strict) and parsed by the
# pydantic model; any disagreement on accept/reject fails. Usage: bench/emulator_fuzz.sh [EXAMPLES]
set -e
cd "$(dirname "$0")/.."
FLYWHEEL_FUZZ_EXAMPLES="${1:-10000}" exec "${PYTHON:-.venv/bin/python}" -m pytest -q -p no:cacheprovider -n 0 -s \
    tests/api/test_emulator_agreement.py
