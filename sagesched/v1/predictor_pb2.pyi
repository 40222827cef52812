from sagesched.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LengthDistribution(_message.Message):
    __slots__ = ("grid", "probs")
    GRID_FIELD_NUMBER: _ClassVar[int]
    PROBS_FIELD_NUMBER: _ClassVar[int]
    grid: _common_pb2.LengthGrid
    probs: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, grid: _Optional[_Union[_common_pb2.LengthGrid, _Mapping]] = ..., probs: _Optional[_Iterable[float]] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("request_id", "model", "prompt", "prompt_token_ids", "prompt_tokens", "params")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    prompt: str
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    prompt_tokens: int
    params: _common_pb2.RequestParams
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., prompt: _Optional[str] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., prompt_tokens: _Optional[int] = ..., params: _Optional[_Union[_common_pb2.RequestParams, _Mapping]] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("request_id", "distribution", "source", "mean", "p50", "p90")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DISTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    P50_FIELD_NUMBER: _ClassVar[int]
    P90_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    distribution: LengthDistribution
    source: str
    mean: float
    p50: float
    p90: float
    def __init__(self, request_id: _Optional[str] = ..., distribution: _Optional[_Union[LengthDistribution, _Mapping]] = ..., source: _Optional[str] = ..., mean: _Optional[float] = ..., p50: _Optional[float] = ..., p90: _Optional[float] = ...) -> None: ...

class PredictBatchRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[PredictRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[PredictRequest, _Mapping]]] = ...) -> None: ...

class PredictBatchResponse(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[PredictResponse]
    def __init__(self, responses: _Optional[_Iterable[_Union[PredictResponse, _Mapping]]] = ...) -> None: ...

class Completion(_message.Message):
    __slots__ = ("request_id", "model", "prompt", "prompt_tokens", "params", "output_tokens", "finish_reason", "pod", "ttft_seconds", "e2e_seconds", "completed_at_unix")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    POD_FIELD_NUMBER: _ClassVar[int]
    TTFT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    E2E_SECONDS_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_AT_UNIX_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    prompt: str
    prompt_tokens: int
    params: _common_pb2.RequestParams
    output_tokens: int
    finish_reason: str
    pod: str
    ttft_seconds: float
    e2e_seconds: float
    completed_at_unix: float
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., prompt: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., params: _Optional[_Union[_common_pb2.RequestParams, _Mapping]] = ..., output_tokens: _Optional[int] = ..., finish_reason: _Optional[str] = ..., pod: _Optional[str] = ..., ttft_seconds: _Optional[float] = ..., e2e_seconds: _Optional[float] = ..., completed_at_unix: _Optional[float] = ...) -> None: ...

class ReportRequest(_message.Message):
    __slots__ = ("completions",)
    COMPLETIONS_FIELD_NUMBER: _ClassVar[int]
    completions: _containers.RepeatedCompositeFieldContainer[Completion]
    def __init__(self, completions: _Optional[_Iterable[_Union[Completion, _Mapping]]] = ...) -> None: ...

class ReportResponse(_message.Message):
    __slots__ = ("accepted",)
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    def __init__(self, accepted: _Optional[int] = ...) -> None: ...
