"""Reconfiguration: tensor-parallel resharding plans and their rollout order."""
