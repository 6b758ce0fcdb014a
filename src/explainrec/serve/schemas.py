"""What the HTTP API accepts and answers, and the server's limits.

Request models are strict about types (a number where text is expected, an unknown key, a string for a number:
422 naming the field). Ids are the exception: XRec's ids are numeric, so ``"user": 1903`` is read as ``"1903"``
(answers always give ids as strings). Lengths are checked against this server's limits (:func:`check_pair`, set
by command-line flags), generation settings by :class:`explainrec.llm.decoding.GenerationConfig` itself (the
ranges the command line has) and then against the limits; nothing out of range is clamped.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, create_model

SEED_LIMIT = 2**32  # torch.manual_seed takes 64 bits; 32 is plenty and portable
DEFAULT_NEW_TOKENS = 60
PHASES = ("loading", "ready", "draining")


@dataclass(frozen=True)
class ServeSettings:
    """How the server batches, what it accepts and how it stops (``/v1/model`` reports all but the key)."""

    max_batch: int = 16  # requests generated together in one explain call
    max_wait_ms: float = 20.0  # how long the oldest request waits for others to join its batch
    queue: int = 64  # pairs waiting (not yet generating) before 429
    timeout_s: float = 120.0  # per request, queue + generation, before 504
    max_new_tokens: int = 128  # the most a request may ask for
    max_num_beams: int = 4
    max_pairs: int = 32  # pairs in one /v1/explain/batch request (and never more than the queue holds)
    max_body_bytes: int = 64 * 1024
    body_timeout_s: float = 30.0  # the whole body must arrive within this, else 408 (a stalled client frees its slot)
    max_id_chars: int = 200
    max_title_chars: int = 500
    max_profile_chars: int = 4000
    max_features: int = 32
    max_feature_chars: int = 64
    max_search: int = 50  # results of /v1/items and /v1/users
    grace_s: float = 30.0  # on SIGTERM: how long queued and running requests may still finish
    ungrounded: str = "explain"  # a pair nothing is known about: "explain" (and say so) or "refuse" (422)
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API ("*": any)
    api_key: str | None = None  # required on /v1/* (X-API-Key or Authorization: Bearer) when set

    def check(self) -> None:
        """Refuse settings the server cannot work with (the CLI turns this into a usage error)."""
        from explainrec.config import ConfigError

        rules = [("max_batch", self.max_batch >= 1), ("max_wait_ms", self.max_wait_ms >= 0),
                 ("queue", self.queue >= 1), ("timeout_s", self.timeout_s > 0),
                 ("max_new_tokens", 1 <= self.max_new_tokens <= 4096), ("max_num_beams", self.max_num_beams >= 1),
                 ("max_pairs", self.max_pairs >= 1), ("max_body_bytes", self.max_body_bytes >= 1024),
                 ("body_timeout_s", self.body_timeout_s > 0), ("max_id_chars", self.max_id_chars >= 1),
                 ("max_title_chars", self.max_title_chars >= 1), ("max_profile_chars", self.max_profile_chars >= 1),
                 ("max_features", self.max_features >= 0), ("max_feature_chars", self.max_feature_chars >= 1),
                 ("grace_s", self.grace_s >= 0), ("ungrounded", self.ungrounded in ("explain", "refuse"))]
        for name, ok in rules:
            if not ok:
                raise ConfigError(f"serve: {name} {getattr(self, name)!r} is out of range")

    @property
    def pairs_per_request(self) -> int:
        """A batch request larger than the queue could never be admitted: the queue bounds it too."""
        return min(self.max_pairs, self.queue)

    def limits(self) -> dict:
        return {"max_new_tokens": self.max_new_tokens, "default_new_tokens": min(DEFAULT_NEW_TOKENS, self.max_new_tokens),
                "max_num_beams": self.max_num_beams, "max_pairs": self.pairs_per_request,
                "max_body_bytes": self.max_body_bytes, "body_timeout_s": self.body_timeout_s,
                "max_search": self.max_search, "id_chars": self.max_id_chars, "title_chars": self.max_title_chars,
                "profile_chars": self.max_profile_chars, "features": self.max_features,
                "feature_chars": self.max_feature_chars, "timeout_s": self.timeout_s, "queue": self.queue,
                "max_batch": self.max_batch, "max_wait_ms": self.max_wait_ms, "grace_s": self.grace_s,
                "ungrounded": self.ungrounded}


class FieldError(ValueError):
    """A request value the server refuses; ``field`` names it (dotted for nested values)."""

    def __init__(self, field: str, message: str, error_type: str = "validation"):
        super().__init__(message)
        self.field = field
        self.error_type = error_type


def _raw_id(value: Any) -> Any:
    """Ids as strings or JSON integers (XRec's ids are numbers); never booleans or floats."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError("must be a string or an integer")
    return str(value)


_STRICT = ConfigDict(extra="forbid", strict=True)
RawId = Annotated[str, BeforeValidator(_raw_id), Field(min_length=1),
                  WithJsonSchema({"anyOf": [{"type": "string", "minLength": 1}, {"type": "integer"}]})]


class PairFields(BaseModel):
    """One pair by raw ids; the text fields describe a new user or item, or override what ``--data`` knows."""

    model_config = _STRICT
    user: RawId = Field(description="raw user id, a string or an integer (unknown ids: cold start)")
    item: RawId = Field(description="raw item id, a string or an integer (unknown ids: cold start)")
    title: str | None = Field(None, description="item title (overrides --data; at most limits.title_chars)")
    user_profile: str | None = Field(None, description="user profile text (at most limits.profile_chars)")
    item_profile: str | None = Field(None, description="item profile text (at most limits.profile_chars)")
    features: list[str] | None = Field(None, description="item feature words (at most limits.features, each at "
                                                         "most limits.feature_chars)")


def check_pair(fields: PairFields, settings: ServeSettings, where: str = "") -> None:
    """Lengths against this server's limits; :class:`FieldError` names the first field over its limit."""
    texts = [("user", fields.user, settings.max_id_chars), ("item", fields.item, settings.max_id_chars),
             ("title", fields.title, settings.max_title_chars),
             ("user_profile", fields.user_profile, settings.max_profile_chars),
             ("item_profile", fields.item_profile, settings.max_profile_chars)]
    for name, value, limit in texts:
        if value is not None and len(value) > limit:
            raise FieldError(f"{where}{name}", f"at most {limit} characters, got {len(value)}")
    features = fields.features or []
    if len(features) > settings.max_features:
        raise FieldError(f"{where}features", f"at most {settings.max_features} features, got {len(features)}")
    for k, word in enumerate(features):
        if len(word) > settings.max_feature_chars:
            raise FieldError(f"{where}features.{k}", f"at most {settings.max_feature_chars} characters, got {len(word)}")


class GenerationFields(BaseModel):
    """Decoding settings; omitted ones take the defaults (greedy, the server's default length)."""

    model_config = _STRICT
    max_new_tokens: int | None = Field(None, description="longest explanation in tokens (<= the server's limit)")
    do_sample: bool | None = Field(None, description="sample instead of greedy decoding")
    temperature: float | None = Field(None, description="sampling temperature (> 0, <= 100)")
    top_p: float | None = Field(None, description="nucleus mass (> 0, <= 1)")
    num_beams: int | None = Field(None, description="beam width (>= 1, <= the server's limit)")
    repetition_penalty: float | None = Field(None, description="penalty on repeated tokens (> 0, <= 10; 1 = none)")
    no_repeat_ngram_size: int | None = Field(None, description="forbid repeating n-grams of this size (0 = off)")
    seed: int | None = Field(None, description=f"sampling seed (0 <= seed < {SEED_LIMIT})")


class ExplainRequest(PairFields, GenerationFields):
    """``POST /v1/explain`` and ``/v1/explain/stream``: one pair plus decoding settings."""

    model_config = _STRICT


class BatchRequest(GenerationFields):
    """``POST /v1/explain/batch``: several pairs, one set of decoding settings."""

    model_config = _STRICT
    pairs: list[PairFields] = Field(min_length=1, description="the pairs (at most limits.max_pairs)")


def generation_config(fields: GenerationFields, settings: ServeSettings):
    """The :class:`GenerationConfig` of a request, validated; :class:`FieldError` names the first bad setting."""
    from explainrec.config import ConfigError
    from explainrec.llm.decoding import GenerationConfig

    given = {k: v for k, v in fields.model_dump(include=set(GenerationFields.model_fields)).items() if v is not None}
    values = {"max_new_tokens": min(DEFAULT_NEW_TOKENS, settings.max_new_tokens), **given,
              "batch_size": settings.max_batch}
    try:
        config = GenerationConfig.from_dict(values, "generation")
    except ConfigError as err:  # "generation.<field>: <message>"
        text = str(err)
        head, _, message = text.partition(": ")
        raise FieldError(head.removeprefix("generation.").split(".")[0], message or text) from None
    if config.max_new_tokens > settings.max_new_tokens:
        raise FieldError("max_new_tokens", f"must be <= {settings.max_new_tokens} (this server's limit), "
                                           f"got {config.max_new_tokens}")
    if config.num_beams > settings.max_num_beams:
        raise FieldError("num_beams", f"must be <= {settings.max_num_beams} (this server's limit), got {config.num_beams}")
    if not 0 <= config.seed < SEED_LIMIT:
        raise FieldError("seed", f"must be >= 0 and < {SEED_LIMIT}, got {config.seed}")
    return config


# ---------------------------------------------------------------------------------------------------- answers


class Timing(BaseModel):
    queue_ms: float = Field(description="waiting for a batch to start")
    generation_ms: float = Field(description="the batch's explain call")
    first_token_ms: float | None = Field(description="from arrival to this pair's first generated token (null with "
                                                     "beam search, which returns the text at the end)")
    total_ms: float = Field(description="from arrival to answer")
    batch_size: int = Field(description="requests generated together in that call")


class Usage(BaseModel):
    """Token counts, as OpenAI-compatible servers (vLLM, TGI's Messages API) report them."""

    prompt_tokens: int | None = Field(description="tokens of the prompt the model read (null with beam search)")
    completion_tokens: int | None = Field(description="tokens generated, the end-of-text token included")
    total_tokens: int | None


class PromptUsed(BaseModel):
    source: str = Field(description="example | profiles | request | example+request | profiles+request | none")
    note: str
    title: str | None = None
    user_profile: str | None = None
    item_profile: str | None = None
    features: list[str] = []


class GenerationUsed(BaseModel):
    """The decoding settings the answer was generated with (the request's, the defaults filled in)."""

    max_new_tokens: int
    min_new_tokens: int
    do_sample: bool
    temperature: float
    top_p: float
    num_beams: int
    repetition_penalty: float
    no_repeat_ngram_size: int
    typical_p: float
    candidates: int
    seed: int


def method_extras() -> type[BaseModel]:
    """What the method reports about the pair: the fields every registered method declares
    (``Method.row_fields``), each described with the method's name; others pass through unchanged."""
    from explainrec.methods import registry

    fields: dict[str, Any] = {}
    for method in registry.all_methods():
        for name, (kind, meaning) in method.row_fields.items():
            if name not in fields:
                fields[name] = (kind | None, Field(None, description=f"{method.name}: {meaning}"))
    return create_model("MethodExtras", __config__=ConfigDict(extra="allow"), __doc__=method_extras.__doc__, **fields)


MethodExtras = method_extras()


FinishReason = Literal["stop", "length"]


class ExplainResponse(BaseModel):
    request_id: str = Field(description="the request's X-Request-Id (made up when the request had none)")
    user: str
    item: str
    explanation: str
    finish_reason: FinishReason | None = Field(
        description="stop: the model ended the text; length: cut at max_new_tokens (null with beam search)")
    usage: Usage
    method: str
    cold_start: bool = Field(description="the model never saw the user or the item (it took the cold-start path)")
    known: dict[str, bool | None] = Field(description="whether the model saw the user / the item (null: no id maps)")
    grounded: bool = Field(description="false: nothing was known about this pair (no text from --data or the "
                                       "request, ids the model never saw): the explanation rests on nothing")
    note: str | None = None
    extras: MethodExtras
    prompt: PromptUsed
    generation: GenerationUsed
    timing: Timing


class BatchResponse(BaseModel):
    request_id: str
    results: list[ExplainResponse]


class ErrorBody(BaseModel):
    error: str
    error_type: str = Field(description="validation | ungrounded | bad_json | too_large | body_timeout | queue_full | "
                                        "timeout | auth | not_found | method_not_allowed | unavailable | generation "
                                        "| internal")
    field: str | None = None


# ---------------------------------------------------------------------------------------------------- stream events


class MetaEvent(BaseModel):
    """``event: meta``, first: the request is queued; its prompt and which ids the model knows."""

    event: Literal["meta"] = "meta"
    request_id: str
    user: str
    item: str
    method: str
    known: dict[str, bool | None]
    grounded: bool
    prompt: PromptUsed


class StartEvent(BaseModel):
    """``event: start``: the request's batch has started generating (after ``meta``, before any ``delta``)."""

    event: Literal["start"] = "start"
    queue_ms: float
    batch_size: int


class DeltaEvent(BaseModel):
    """``event: delta``: the next piece of the text; the pieces concatenate to the final explanation."""

    event: Literal["delta"] = "delta"
    text: str


class DoneEvent(ExplainResponse):
    """``event: done``, last: the full answer, as ``/v1/explain`` gives it."""

    event: Literal["done"] = "done"


class ErrorEvent(ErrorBody):
    """``event: error``, last: the request failed after the stream began (timeout, shutdown, generation)."""

    event: Literal["error"] = "error"


STREAM_EVENTS = (MetaEvent, StartEvent, DeltaEvent, DoneEvent, ErrorEvent)


# ---------------------------------------------------------------------------------------------------- the server


class SearchHit(BaseModel):
    id: str
    text: str | None = Field(None, description="the item's title or the user's profile, where --data has it")


class SearchResponse(BaseModel):
    query: str
    source: str = Field(description="data (from --data) | model (its id maps) | none")
    results: list[SearchHit]


class KnownPair(BaseModel):
    user: str
    item: str
    title: str | None = None
    split: str


class Health(BaseModel):
    status: Literal["loading", "ready", "draining"] = Field(description="the server's phase (liveness: any "
                                                                        "answer means the process is alive)")
    waiting: int
    generating: int
    batches: int
    explained: int
    auth: bool


class Readiness(BaseModel):
    status: Literal["loading", "ready", "draining"]


class ServedData(BaseModel):
    name: str
    fingerprint: str
    matches_model: bool | None = Field(description="the model was trained on data with these id maps (null: "
                                                   "the model does not record it)")


class ModelInfo(BaseModel):
    method: str
    model: str | None = Field(description="the LLM")
    config: dict[str, Any] | None = Field(description="the run's resolved settings (config.yaml)")
    data: dict[str, Any] | None = Field(description="what the model was trained on (name, fingerprint, sizes)")
    served_data: ServedData | None = Field(description="the --data of this server")
    folder: str | None
    precision: str
    load_seconds: float | None
    started_at: float = Field(description="Unix time the server started")
    known_users: int | None
    known_items: int | None
    limits: dict[str, Any] = Field(description="this server's limits and batching settings")
    version: str
