"""The engine model: an iteration-level model of a continuous-batching engine (vLLM v1 style).

Shared by the pod emulator (real time) and the cluster simulator (virtual clock).
"""
from sagesched.engine.engine import Engine, EngineCounters, StepOutcome
from sagesched.engine.profile import DEFAULT_PROFILE, StepTimeProfile, available_profiles, load_profile
from sagesched.engine.request import EngineRequest, FinishReason, RequestStatus

__all__ = [
    "DEFAULT_PROFILE", "Engine", "EngineCounters", "EngineRequest", "FinishReason", "RequestStatus",
    "StepOutcome", "StepTimeProfile", "available_profiles", "load_profile",
]
