"""What the HTTP API accepts and answers, and the server's limits.

Request models are strict (a number where text is expected, an unknown key, a string for a number: 422 naming
the field). Generation settings are checked by :class:`explainrec.llm.decoding.GenerationConfig` itself (the same
ranges the command line has) and then against this server's limits; nothing out of range is clamped.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

# Bounds on what a request may put into a prompt (the body-size limit bounds the rest).
ID_CHARS = 200
TITLE_CHARS = 500
PROFILE_CHARS = 4000
FEATURES = 32
FEATURE_CHARS = 64
SEED_LIMIT = 2**32  # torch.manual_seed takes 64 bits; 32 is plenty and portable
DEFAULT_NEW_TOKENS = 60


@dataclass(frozen=True)
class ServeSettings:
    """How the server batches and what it accepts (``/v1/model`` reports all but the key)."""

    max_batch: int = 16  # requests generated together in one explain call
    max_wait_ms: float = 20.0  # how long the oldest request waits for others to join its batch
    queue: int = 64  # requests waiting (not yet generating) before 429
    timeout_s: float = 120.0  # per request, queue + generation, before 504
    max_new_tokens: int = 128  # the most a request may ask for
    max_num_beams: int = 4
    max_pairs: int = 32  # pairs in one /v1/explain/batch request
    max_body_bytes: int = 64 * 1024
    max_search: int = 50  # results of /v1/items and /v1/users
    api_key: str | None = None  # required in X-API-Key on /v1/* when set

    def check(self) -> None:
        """Refuse settings the server cannot work with (the CLI turns this into a usage error)."""
        from explainrec.config import ConfigError

        rules = [("max_batch", self.max_batch >= 1), ("max_wait_ms", self.max_wait_ms >= 0),
                 ("queue", self.queue >= 1), ("timeout_s", self.timeout_s > 0),
                 ("max_new_tokens", 1 <= self.max_new_tokens <= 4096), ("max_num_beams", self.max_num_beams >= 1),
                 ("max_pairs", self.max_pairs >= 1), ("max_body_bytes", self.max_body_bytes >= 1024)]
        for name, ok in rules:
            if not ok:
                raise ConfigError(f"serve: {name} {getattr(self, name)!r} is out of range")

    def limits(self) -> dict:
        return {"max_new_tokens": self.max_new_tokens, "default_new_tokens": min(DEFAULT_NEW_TOKENS, self.max_new_tokens),
                "max_num_beams": self.max_num_beams, "max_pairs": self.max_pairs,
                "max_body_bytes": self.max_body_bytes, "max_search": self.max_search, "id_chars": ID_CHARS,
                "title_chars": TITLE_CHARS, "profile_chars": PROFILE_CHARS, "features": FEATURES,
                "timeout_s": self.timeout_s, "queue": self.queue, "max_batch": self.max_batch,
                "max_wait_ms": self.max_wait_ms}


class FieldError(ValueError):
    """A request value the server refuses; ``field`` names it (dotted for nested values)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


_STRICT = ConfigDict(extra="forbid", strict=True)
Feature = Annotated[str, Field(max_length=FEATURE_CHARS)]


class PairFields(BaseModel):
    """One pair by raw ids; the text fields override what ``--data`` knows about it."""

    model_config = _STRICT
    user: str = Field(min_length=1, max_length=ID_CHARS, description="raw user id (unknown ids: cold start)")
    item: str = Field(min_length=1, max_length=ID_CHARS, description="raw item id (unknown ids: cold start)")
    title: str | None = Field(None, max_length=TITLE_CHARS, description="item title (overrides --data)")
    user_profile: str | None = Field(None, max_length=PROFILE_CHARS, description="user profile text")
    item_profile: str | None = Field(None, max_length=PROFILE_CHARS, description="item profile text")
    features: list[Feature] | None = Field(None, max_length=FEATURES, description="item feature words")


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
    pairs: list[PairFields] = Field(min_length=1, description="the pairs (at most the server's max_pairs)")


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
    total_ms: float = Field(description="from arrival to answer")
    batch_size: int = Field(description="requests generated together in that call")


class PromptUsed(BaseModel):
    source: str = Field(description="example | profiles | request | example+request | profiles+request | none")
    note: str
    title: str | None = None
    user_profile: str | None = None
    item_profile: str | None = None
    features: list[str] = []


class ExplainResponse(BaseModel):
    user: str
    item: str
    explanation: str
    method: str
    cold_start: bool = Field(description="the model never saw the user or the item (it took the cold-start path)")
    known: dict[str, bool | None] = Field(description="whether the model saw the user / the item (null: no id maps)")
    note: str | None = None
    extras: dict[str, Any] = Field(description="what the method reports about the pair (cluster, top_experts, ...)")
    prompt: PromptUsed
    generation: dict[str, Any]
    timing: Timing


class BatchResponse(BaseModel):
    results: list[ExplainResponse]


class ErrorBody(BaseModel):
    error: str
    error_type: str = Field(description="validation | bad_json | too_large | queue_full | timeout | auth | "
                                        "not_found | method_not_allowed | unavailable | generation | internal")
    field: str | None = None


class SearchHit(BaseModel):
    id: str
    text: str | None = Field(None, description="the item's title or the user's profile, where --data has it")


class SearchResponse(BaseModel):
    query: str
    source: str = Field(description="data (from --data) | model (its id maps) | none")
    results: list[SearchHit]


class Health(BaseModel):
    status: str
    waiting: int
    generating: int
    batches: int
    explained: int
    auth: bool
