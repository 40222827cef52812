"""SageSched: an uncertainty-aware, memory-aware scheduler and router for LLM inference pods.

Shared code lives here (length distributions, the engine model, the scheduling policies, the pod
emulator, the cluster simulator); the deployable components are the subpackages `sagesched.router`,
`sagesched.operator` and `sagesched.predictor`, whose sources are the repository's top-level folders.
"""

__version__ = "0.1.0"
