"""Kubelet device plugin (API v1beta1) advertising ``flywheel.dev/gpu`` with per-device health."""
