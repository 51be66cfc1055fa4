from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Array(_message.Message):
    __slots__ = ("dtype", "shape", "data", "compression")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    compression: str
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ..., compression: _Optional[str] = ...) -> None: ...

class ArraySpec(_message.Message):
    __slots__ = ("name", "dtype", "shape", "low", "high")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    low: _containers.RepeatedScalarFieldContainer[float]
    high: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., low: _Optional[_Iterable[float]] = ..., high: _Optional[_Iterable[float]] = ...) -> None: ...

class Capabilities(_message.Message):
    __slots__ = ("observation", "action", "control_hz", "cameras", "embodiment")
    OBSERVATION_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    CONTROL_HZ_FIELD_NUMBER: _ClassVar[int]
    CAMERAS_FIELD_NUMBER: _ClassVar[int]
    EMBODIMENT_FIELD_NUMBER: _ClassVar[int]
    observation: _containers.RepeatedCompositeFieldContainer[ArraySpec]
    action: ArraySpec
    control_hz: float
    cameras: _containers.RepeatedScalarFieldContainer[str]
    embodiment: str
    def __init__(self, observation: _Optional[_Iterable[_Union[ArraySpec, _Mapping]]] = ..., action: _Optional[_Union[ArraySpec, _Mapping]] = ..., control_hz: _Optional[float] = ..., cameras: _Optional[_Iterable[str]] = ..., embodiment: _Optional[str] = ...) -> None: ...

class Resource(_message.Message):
    __slots__ = ("id", "kind", "capabilities", "source")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: str
    capabilities: Capabilities
    source: str
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[str] = ..., capabilities: _Optional[_Union[Capabilities, _Mapping]] = ..., source: _Optional[str] = ...) -> None: ...

class EpisodeProgress(_message.Message):
    __slots__ = ("episode_id", "next_seq")
    EPISODE_ID_FIELD_NUMBER: _ClassVar[int]
    NEXT_SEQ_FIELD_NUMBER: _ClassVar[int]
    episode_id: str
    next_seq: int
    def __init__(self, episode_id: _Optional[str] = ..., next_seq: _Optional[int] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("resource", "token", "policy_name", "policy_version", "held", "protocol_version", "remote_inference", "outcome_policy", "outcome_version", "uplink_codec")
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    POLICY_NAME_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    REMOTE_INFERENCE_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_POLICY_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_VERSION_FIELD_NUMBER: _ClassVar[int]
    UPLINK_CODEC_FIELD_NUMBER: _ClassVar[int]
    resource: Resource
    token: str
    policy_name: str
    policy_version: int
    held: _containers.RepeatedCompositeFieldContainer[EpisodeProgress]
    protocol_version: int
    remote_inference: bool
    outcome_policy: str
    outcome_version: int
    uplink_codec: str
    def __init__(self, resource: _Optional[_Union[Resource, _Mapping]] = ..., token: _Optional[str] = ..., policy_name: _Optional[str] = ..., policy_version: _Optional[int] = ..., held: _Optional[_Iterable[_Union[EpisodeProgress, _Mapping]]] = ..., protocol_version: _Optional[int] = ..., remote_inference: _Optional[bool] = ..., outcome_policy: _Optional[str] = ..., outcome_version: _Optional[int] = ..., uplink_codec: _Optional[str] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("session_id", "stored", "max_batch_bytes", "assignment", "learner_key", "store_codecs")
    class StoreCodecsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_BYTES_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    LEARNER_KEY_FIELD_NUMBER: _ClassVar[int]
    STORE_CODECS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    stored: _containers.RepeatedCompositeFieldContainer[EpisodeProgress]
    max_batch_bytes: int
    assignment: Assignment
    learner_key: bytes
    store_codecs: _containers.ScalarMap[str, str]
    def __init__(self, session_id: _Optional[str] = ..., stored: _Optional[_Iterable[_Union[EpisodeProgress, _Mapping]]] = ..., max_batch_bytes: _Optional[int] = ..., assignment: _Optional[_Union[Assignment, _Mapping]] = ..., learner_key: _Optional[bytes] = ..., store_codecs: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("task", "policy_name", "instruction", "paused")
    TASK_FIELD_NUMBER: _ClassVar[int]
    POLICY_NAME_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    task: str
    policy_name: str
    instruction: str
    paused: bool
    def __init__(self, task: _Optional[str] = ..., policy_name: _Optional[str] = ..., instruction: _Optional[str] = ..., paused: _Optional[bool] = ...) -> None: ...

class EmergencyStop(_message.Message):
    __slots__ = ("reason", "release")
    REASON_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    reason: str
    release: bool
    def __init__(self, reason: _Optional[str] = ..., release: _Optional[bool] = ...) -> None: ...

class StepBatch(_message.Message):
    __slots__ = ("batch_id", "episode_id", "first_seq", "num_steps", "columns", "task", "operators", "label", "video")
    class ColumnsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Array
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Array, _Mapping]] = ...) -> None: ...
    class VideoEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: EncodedFrames
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[EncodedFrames, _Mapping]] = ...) -> None: ...
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    EPISODE_ID_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    NUM_STEPS_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    OPERATORS_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    VIDEO_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    episode_id: str
    first_seq: int
    num_steps: int
    columns: _containers.MessageMap[str, Array]
    task: str
    operators: _containers.RepeatedScalarFieldContainer[str]
    label: EpisodeLabel
    video: _containers.MessageMap[str, EncodedFrames]
    def __init__(self, batch_id: _Optional[int] = ..., episode_id: _Optional[str] = ..., first_seq: _Optional[int] = ..., num_steps: _Optional[int] = ..., columns: _Optional[_Mapping[str, Array]] = ..., task: _Optional[str] = ..., operators: _Optional[_Iterable[str]] = ..., label: _Optional[_Union[EpisodeLabel, _Mapping]] = ..., video: _Optional[_Mapping[str, EncodedFrames]] = ...) -> None: ...

class EncodedFrames(_message.Message):
    __slots__ = ("codec", "packets", "keyframe")
    CODEC_FIELD_NUMBER: _ClassVar[int]
    PACKETS_FIELD_NUMBER: _ClassVar[int]
    KEYFRAME_FIELD_NUMBER: _ClassVar[int]
    codec: str
    packets: _containers.RepeatedScalarFieldContainer[bytes]
    keyframe: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, codec: _Optional[str] = ..., packets: _Optional[_Iterable[bytes]] = ..., keyframe: _Optional[_Iterable[bool]] = ...) -> None: ...

class EpisodeLabel(_message.Message):
    __slots__ = ("outcome", "by")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    BY_FIELD_NUMBER: _ClassVar[int]
    outcome: str
    by: str
    def __init__(self, outcome: _Optional[str] = ..., by: _Optional[str] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("batch_id", "episode_id", "next_seq")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    EPISODE_ID_FIELD_NUMBER: _ClassVar[int]
    NEXT_SEQ_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    episode_id: str
    next_seq: int
    def __init__(self, batch_id: _Optional[int] = ..., episode_id: _Optional[str] = ..., next_seq: _Optional[int] = ...) -> None: ...

class PolicyChunk(_message.Message):
    __slots__ = ("policy_name", "version", "sha256", "total_bytes", "offset", "data", "published_mono_ns", "kind", "base_version")
    POLICY_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_MONO_NS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    policy_name: str
    version: int
    sha256: str
    total_bytes: int
    offset: int
    data: bytes
    published_mono_ns: int
    kind: str
    base_version: int
    def __init__(self, policy_name: _Optional[str] = ..., version: _Optional[int] = ..., sha256: _Optional[str] = ..., total_bytes: _Optional[int] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., published_mono_ns: _Optional[int] = ..., kind: _Optional[str] = ..., base_version: _Optional[int] = ...) -> None: ...

class PolicyApplied(_message.Message):
    __slots__ = ("policy_name", "version", "applied_mono_ns", "received_bytes")
    POLICY_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    APPLIED_MONO_NS_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    policy_name: str
    version: int
    applied_mono_ns: int
    received_bytes: int
    def __init__(self, policy_name: _Optional[str] = ..., version: _Optional[int] = ..., applied_mono_ns: _Optional[int] = ..., received_bytes: _Optional[int] = ...) -> None: ...

class PolicyRejected(_message.Message):
    __slots__ = ("policy_name", "version", "reason", "bad")
    POLICY_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    BAD_FIELD_NUMBER: _ClassVar[int]
    policy_name: str
    version: int
    reason: str
    bad: bool
    def __init__(self, policy_name: _Optional[str] = ..., version: _Optional[int] = ..., reason: _Optional[str] = ..., bad: _Optional[bool] = ...) -> None: ...

class InferenceRequest(_message.Message):
    __slots__ = ("request_id", "observation", "observed_mono_ns")
    class ObservationEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Array
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Array, _Mapping]] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OBSERVATION_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_MONO_NS_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    observation: _containers.MessageMap[str, Array]
    observed_mono_ns: int
    def __init__(self, request_id: _Optional[int] = ..., observation: _Optional[_Mapping[str, Array]] = ..., observed_mono_ns: _Optional[int] = ...) -> None: ...

class InferenceReply(_message.Message):
    __slots__ = ("request_id", "policy_version", "actions", "error", "batch_size")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    policy_version: int
    actions: Array
    error: str
    batch_size: int
    def __init__(self, request_id: _Optional[int] = ..., policy_version: _Optional[int] = ..., actions: _Optional[_Union[Array, _Mapping]] = ..., error: _Optional[str] = ..., batch_size: _Optional[int] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("mono_ns", "state", "backlog_steps", "backlog_bytes", "backlog_oldest_s")
    MONO_NS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    BACKLOG_STEPS_FIELD_NUMBER: _ClassVar[int]
    BACKLOG_BYTES_FIELD_NUMBER: _ClassVar[int]
    BACKLOG_OLDEST_S_FIELD_NUMBER: _ClassVar[int]
    mono_ns: int
    state: str
    backlog_steps: int
    backlog_bytes: int
    backlog_oldest_s: float
    def __init__(self, mono_ns: _Optional[int] = ..., state: _Optional[str] = ..., backlog_steps: _Optional[int] = ..., backlog_bytes: _Optional[int] = ..., backlog_oldest_s: _Optional[float] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "field", "message", "batch_id")
    CODE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    code: str
    field: str
    message: str
    batch_id: int
    def __init__(self, code: _Optional[str] = ..., field: _Optional[str] = ..., message: _Optional[str] = ..., batch_id: _Optional[int] = ...) -> None: ...

class PersonCommand(_message.Message):
    __slots__ = ("who", "session", "seq", "signals", "action", "left", "sent_mono_ns")
    WHO_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SIGNALS_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    LEFT_FIELD_NUMBER: _ClassVar[int]
    SENT_MONO_NS_FIELD_NUMBER: _ClassVar[int]
    who: str
    session: str
    seq: int
    signals: _containers.RepeatedScalarFieldContainer[str]
    action: _containers.RepeatedScalarFieldContainer[float]
    left: bool
    sent_mono_ns: int
    def __init__(self, who: _Optional[str] = ..., session: _Optional[str] = ..., seq: _Optional[int] = ..., signals: _Optional[_Iterable[str]] = ..., action: _Optional[_Iterable[float]] = ..., left: _Optional[bool] = ..., sent_mono_ns: _Optional[int] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("watchers", "rate_hz", "max_image_side")
    WATCHERS_FIELD_NUMBER: _ClassVar[int]
    RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_SIDE_FIELD_NUMBER: _ClassVar[int]
    watchers: int
    rate_hz: float
    max_image_side: int
    def __init__(self, watchers: _Optional[int] = ..., rate_hz: _Optional[float] = ..., max_image_side: _Optional[int] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("camera", "format", "data", "width", "height")
    CAMERA_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    camera: str
    format: str
    data: bytes
    width: int
    height: int
    def __init__(self, camera: _Optional[str] = ..., format: _Optional[str] = ..., data: _Optional[bytes] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class LiveView(_message.Message):
    __slots__ = ("mono_ns", "episode", "step", "state", "frames", "intended", "intended_step", "applied", "controller", "note", "policy_version", "command_seq")
    class StateEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Array
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Array, _Mapping]] = ...) -> None: ...
    MONO_NS_FIELD_NUMBER: _ClassVar[int]
    EPISODE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    INTENDED_FIELD_NUMBER: _ClassVar[int]
    INTENDED_STEP_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    CONTROLLER_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    COMMAND_SEQ_FIELD_NUMBER: _ClassVar[int]
    mono_ns: int
    episode: int
    step: int
    state: _containers.MessageMap[str, Array]
    frames: _containers.RepeatedCompositeFieldContainer[Frame]
    intended: Array
    intended_step: int
    applied: Array
    controller: str
    note: str
    policy_version: int
    command_seq: int
    def __init__(self, mono_ns: _Optional[int] = ..., episode: _Optional[int] = ..., step: _Optional[int] = ..., state: _Optional[_Mapping[str, Array]] = ..., frames: _Optional[_Iterable[_Union[Frame, _Mapping]]] = ..., intended: _Optional[_Union[Array, _Mapping]] = ..., intended_step: _Optional[int] = ..., applied: _Optional[_Union[Array, _Mapping]] = ..., controller: _Optional[str] = ..., note: _Optional[str] = ..., policy_version: _Optional[int] = ..., command_seq: _Optional[int] = ...) -> None: ...

class PersonRefused(_message.Message):
    __slots__ = ("who", "session", "seq", "reason")
    WHO_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    who: str
    session: str
    seq: int
    reason: str
    def __init__(self, who: _Optional[str] = ..., session: _Optional[str] = ..., seq: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class EdgeMessage(_message.Message):
    __slots__ = ("hello", "steps", "applied", "heartbeat", "rejected", "infer", "live_view", "person_refused")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    INFER_FIELD_NUMBER: _ClassVar[int]
    LIVE_VIEW_FIELD_NUMBER: _ClassVar[int]
    PERSON_REFUSED_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    steps: StepBatch
    applied: PolicyApplied
    heartbeat: Heartbeat
    rejected: PolicyRejected
    infer: InferenceRequest
    live_view: LiveView
    person_refused: PersonRefused
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., steps: _Optional[_Union[StepBatch, _Mapping]] = ..., applied: _Optional[_Union[PolicyApplied, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., rejected: _Optional[_Union[PolicyRejected, _Mapping]] = ..., infer: _Optional[_Union[InferenceRequest, _Mapping]] = ..., live_view: _Optional[_Union[LiveView, _Mapping]] = ..., person_refused: _Optional[_Union[PersonRefused, _Mapping]] = ...) -> None: ...

class CloudMessage(_message.Message):
    __slots__ = ("welcome", "ack", "policy", "assignment", "heartbeat", "error", "emergency_stop", "actions", "person", "watch", "rollback")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    EMERGENCY_STOP_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    PERSON_FIELD_NUMBER: _ClassVar[int]
    WATCH_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    ack: Ack
    policy: PolicyChunk
    assignment: Assignment
    heartbeat: Heartbeat
    error: Error
    emergency_stop: EmergencyStop
    actions: InferenceReply
    person: PersonCommand
    watch: WatchRequest
    rollback: PolicyRollback
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., policy: _Optional[_Union[PolicyChunk, _Mapping]] = ..., assignment: _Optional[_Union[Assignment, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., emergency_stop: _Optional[_Union[EmergencyStop, _Mapping]] = ..., actions: _Optional[_Union[InferenceReply, _Mapping]] = ..., person: _Optional[_Union[PersonCommand, _Mapping]] = ..., watch: _Optional[_Union[WatchRequest, _Mapping]] = ..., rollback: _Optional[_Union[PolicyRollback, _Mapping]] = ...) -> None: ...

class PolicyRollback(_message.Message):
    __slots__ = ("policy_name", "version", "to_version", "reason")
    POLICY_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    policy_name: str
    version: int
    to_version: int
    reason: str
    def __init__(self, policy_name: _Optional[str] = ..., version: _Optional[int] = ..., to_version: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class FleetMember(_message.Message):
    __slots__ = ("resource", "state", "task", "policy_version", "steps", "interventions", "seconds_since_seen", "refused", "backlog_steps", "backlog_bytes", "backlog_oldest_s", "canary_version")
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    INTERVENTIONS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_SINCE_SEEN_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    BACKLOG_STEPS_FIELD_NUMBER: _ClassVar[int]
    BACKLOG_BYTES_FIELD_NUMBER: _ClassVar[int]
    BACKLOG_OLDEST_S_FIELD_NUMBER: _ClassVar[int]
    CANARY_VERSION_FIELD_NUMBER: _ClassVar[int]
    resource: Resource
    state: str
    task: str
    policy_version: int
    steps: int
    interventions: int
    seconds_since_seen: float
    refused: str
    backlog_steps: int
    backlog_bytes: int
    backlog_oldest_s: float
    canary_version: int
    def __init__(self, resource: _Optional[_Union[Resource, _Mapping]] = ..., state: _Optional[str] = ..., task: _Optional[str] = ..., policy_version: _Optional[int] = ..., steps: _Optional[int] = ..., interventions: _Optional[int] = ..., seconds_since_seen: _Optional[float] = ..., refused: _Optional[str] = ..., backlog_steps: _Optional[int] = ..., backlog_bytes: _Optional[int] = ..., backlog_oldest_s: _Optional[float] = ..., canary_version: _Optional[int] = ...) -> None: ...

class FleetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FleetStatus(_message.Message):
    __slots__ = ("members",)
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    members: _containers.RepeatedCompositeFieldContainer[FleetMember]
    def __init__(self, members: _Optional[_Iterable[_Union[FleetMember, _Mapping]]] = ...) -> None: ...

class FleetCommand(_message.Message):
    __slots__ = ("resource_id", "action", "reason")
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    resource_id: str
    action: str
    reason: str
    def __init__(self, resource_id: _Optional[str] = ..., action: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class FleetCommandReply(_message.Message):
    __slots__ = ("ok", "message")
    OK_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    message: str
    def __init__(self, ok: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

class RolloutCommand(_message.Message):
    __slots__ = ("policy_name", "version", "action", "reason")
    POLICY_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    policy_name: str
    version: int
    action: str
    reason: str
    def __init__(self, policy_name: _Optional[str] = ..., version: _Optional[int] = ..., action: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...
