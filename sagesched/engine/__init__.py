"""The engine model: an iteration-level model of a continuous-batching engine (vLLM v1 style).

Shared by the pod emulator (real time) and the cluster simulator (virtual clock).
"""
