"""The Flywheel operator (kopf): ModelDeployment -> ServingPools -> ModelInstances -> engine Pods.

One controller per kind (``modeldeployment``, ``servingpool``, ``modelinstance``, ``gpunode``,
``incident``) over a shared ``context``; fault handling in ``faults/``. Importing this package
registers nothing: ``flywheel.operator.main.register`` is the one place handlers are registered
(``flywheel operator`` runs it through ``runner``; ``kopf run -m flywheel.operator.kopf_entry`` with
kopf's default registry).
"""
