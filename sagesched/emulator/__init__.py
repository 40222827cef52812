"""The pod emulator: a vLLM-compatible OpenAI server driven by the engine model in real time."""
from .pod import EmulatedPod, PodConfig, running_pods, start_pods

__all__ = ["EmulatedPod", "PodConfig", "running_pods", "start_pods"]
