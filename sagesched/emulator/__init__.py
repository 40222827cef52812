"""The pod emulator: a vLLM-compatible OpenAI server driven by the engine model in real time."""
from sagesched.emulator.pod import EmulatedClock, EmulatedPod, PodConfig, running_pods, start_pods

__all__ = ["EmulatedClock", "EmulatedPod", "PodConfig", "running_pods", "start_pods"]
