"""Desired Kubernetes resources of a ModelDeployment: pools, instances, placement, router objects."""
