"""The one settings object for every RelayX process.

Values come from the environment and from a `.env` file; every field is listed in `.env.example`.
Services receive a `Settings` instance (never a global) so that tests can build their own.
"""

from __future__ import annotations

import secrets
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Configuration shared by the backend, the voice gateway, the worker and the CLI."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    # --- storage -------------------------------------------------------------------------------
    database_url: str = Field(default="sqlite:///./data/relayx.db", alias="DATABASE_URL")
    supabase_url: str | None = Field(default=None, alias="SUPABASE_URL")
    supabase_service_role_key: str | None = Field(default=None, alias="SUPABASE_SERVICE_ROLE_KEY")
    data_dir: Path = Field(default=Path("./data"), alias="RELAYX_DATA_DIR")

    # --- API ------------------------------------------------------------------------------------
    relayx_api_key: str | None = Field(default=None, alias="RELAYX_API_KEY")

    # --- rate limits (shared.rate_limit) ---------------------------------------------------------
    # Per API key on the REST API (per address when the key is missing or wrong); 0 disables.
    api_rate_limit_per_minute: int = Field(default=600, ge=0, alias="API_RATE_LIMIT_PER_MINUTE")
    api_rate_limit_burst: int = Field(default=60, ge=1, alias="API_RATE_LIMIT_BURST")
    # Media Streams opened per source address on the gateway (Twilio's media servers are few and many
    # calls share one address: generous); 0 disables.
    stream_rate_limit_per_minute: int = Field(default=300, ge=0, alias="STREAM_RATE_LIMIT_PER_MINUTE")
    stream_rate_limit_burst: int = Field(default=60, ge=1, alias="STREAM_RATE_LIMIT_BURST")

    # --- telephony ------------------------------------------------------------------------------
    telephony_provider: Literal["twilio", "simulator"] = Field(default="simulator", alias="TELEPHONY_PROVIDER")
    twilio_account_sid: str | None = Field(default=None, alias="TWILIO_ACCOUNT_SID")
    twilio_auth_token: str | None = Field(default=None, alias="TWILIO_AUTH_TOKEN")
    twilio_from_number: str | None = Field(default=None, alias="TWILIO_FROM_NUMBER")
    twilio_api_base_url: str = Field(default="https://api.twilio.com", alias="TWILIO_API_BASE_URL")
    public_base_url: str = Field(default="http://127.0.0.1:8000", alias="PUBLIC_BASE_URL")
    public_gateway_url: str = Field(default="ws://127.0.0.1:8001", alias="PUBLIC_GATEWAY_URL")
    backend_port: int = Field(default=8000, alias="BACKEND_PORT")
    gateway_port: int = Field(default=8001, alias="GATEWAY_PORT")
    backend_internal_url: str | None = Field(default=None, alias="BACKEND_INTERNAL_URL")

    # --- speech-to-text -------------------------------------------------------------------------
    stt_engine: Literal["faster-whisper", "openai-whisper"] = Field(default="faster-whisper", alias="STT_ENGINE")
    # faster-whisper: unset or "tiny.en" is the bundled tiny.en; "base" the bundled Whisper base (better
    # on phone lines, about twice the time per turn; joined into MODEL_CACHE_DIR by scripts/setup.sh);
    # anything else a CTranslate2 model folder. openai-whisper: a model name or a .pt checkpoint.
    stt_model: str | None = Field(default=None, alias="STT_MODEL")
    stt_compute_type: str = Field(default="int8", alias="STT_COMPUTE_TYPE")
    stt_threads: int = Field(default=2, alias="STT_THREADS")
    # The short window's token-by-token decode: its steps are too small to gain from a second thread.
    stt_decode_threads: int = Field(default=1, ge=1, alias="STT_DECODE_THREADS")
    # Beams of the decode; unset: the measured default (shared.stt.decoding.DecodeOptions.beam_size).
    stt_beam_size: int | None = Field(default=None, ge=1, le=10, alias="STT_BEAM_SIZE")

    # --- language model -------------------------------------------------------------------------
    llm_engine: Literal["llama-cpp", "ollama", "openai"] = Field(default="llama-cpp", alias="LLM_ENGINE")
    llm_model_path: Path | None = Field(default=None, alias="LLM_MODEL_PATH")
    # Ollama/OpenAI: the server's model name. llama-cpp: ignored (the bundled 0.5B), except
    # "qwen2.5-coder-1.5b", the optional 1.5B that scripts/get_llm_1_5b.sh fetches into MODEL_CACHE_DIR
    # (better replies, about twice the time per token). LLM_MODEL_PATH, when set, wins.
    llm_model: str = Field(default="llama3:8b", alias="LLM_MODEL")
    # llama-cpp, live calls: the bundled model's weights requantized once into MODEL_CACHE_DIR. q4_0 runs
    # about a third faster than the shipped Q4_K_M on AVX2 with no measured loss (shared.llm.llama_cpp.
    # requantized); "none" loads the file as shipped. Post-call analysis always uses the shipped file.
    llm_quant: Literal["q4_0", "q8_0", "none"] = Field(default="q4_0", alias="LLM_QUANT")
    llm_threads: int = Field(default=2, alias="LLM_THREADS")
    # Cores the gateway's model work (STT, LLM, TTS steps) shares out, most urgent first
    # (shared.urgency); unset: the cores this process may run on.
    compute_cores: int | None = Field(default=None, ge=1, alias="COMPUTE_CORES")
    llm_context_tokens: int = Field(default=2048, alias="LLM_CONTEXT_TOKENS")
    # Sequences the embedded model generates at once (continuous batching, one KV cache each); a call
    # holds one only while a reply is being made, so more calls than slots simply queue briefly.
    llm_slots: int = Field(default=4, ge=1, le=64, alias="LLM_SLOTS")
    llm_timeout_s: float = Field(default=8.0, alias="LLM_TIMEOUT_S")
    # Evaluate prompts ahead of need (the system prompt while the greeting plays, the caller's first
    # words while they talk) with one-token requests whose token is dropped. It pays where the engine
    # keeps the prompt's KV cache for the next request (the embedded engine, Ollama, a local llama.cpp
    # or vLLM server); a hosted API would bill each request. Unset: on, except for LLM_ENGINE=openai.
    llm_prefill: bool | None = Field(default=None, alias="LLM_PREFILL")
    ollama_base_url: str = Field(default="http://127.0.0.1:11434", alias="OLLAMA_BASE_URL")
    openai_base_url: str = Field(default="http://127.0.0.1:8080/v1", alias="OPENAI_BASE_URL")
    openai_api_key: str | None = Field(default=None, alias="OPENAI_API_KEY")
    model_cache_dir: Path = Field(default=Path("./data/models"), alias="MODEL_CACHE_DIR")

    # --- text-to-speech -------------------------------------------------------------------------
    tts_engine: Literal["piper", "coqui"] = Field(default="piper", alias="TTS_ENGINE")
    tts_voice_path: Path | None = Field(default=None, alias="TTS_VOICE_PATH")
    coqui_model_path: Path | None = Field(default=None, alias="COQUI_MODEL_PATH")

    # --- turn-taking ----------------------------------------------------------------------------
    vad_engine: Literal["silero", "energy"] = Field(default="silero", alias="VAD_ENGINE")

    # --- after the call: analysis, webhooks, recordings, jobs ------------------------------------
    analysis_llm_engine: Literal["llama-cpp", "ollama", "openai"] | None = Field(
        default=None, alias="ANALYSIS_LLM_ENGINE"
    )
    analysis_llm_model: str | None = Field(default=None, alias="ANALYSIS_LLM_MODEL")
    analysis_llm_model_path: Path | None = Field(default=None, alias="ANALYSIS_LLM_MODEL_PATH")
    analysis_llm_context_tokens: int = Field(default=4096, ge=512, alias="ANALYSIS_LLM_CONTEXT_TOKENS")
    analysis_llm_timeout_s: float = Field(default=180.0, gt=0, alias="ANALYSIS_LLM_TIMEOUT_S")
    webhook_url: str | None = Field(default=None, alias="WEBHOOK_URL")
    webhook_secret: str | None = Field(default=None, alias="WEBHOOK_SECRET")
    webhook_allow_private: bool = Field(default=False, alias="WEBHOOK_ALLOW_PRIVATE")
    webhook_timeout_s: float = Field(default=10.0, gt=0, alias="WEBHOOK_TIMEOUT_S")
    webhook_max_attempts: int = Field(default=8, ge=1, le=20, alias="WEBHOOK_MAX_ATTEMPTS")
    webhook_backoff_s: float = Field(default=30.0, gt=0, alias="WEBHOOK_BACKOFF_S")
    recordings_dir: Path | None = Field(default=None, alias="RECORDINGS_DIR")
    jobs_poll_s: float = Field(default=1.0, gt=0, alias="JOBS_POLL_S")
    worker_concurrency: int = Field(default=4, ge=1, alias="WORKER_CONCURRENCY")
    worker_heartbeat_s: float = Field(default=10.0, gt=0, alias="WORKER_HEARTBEAT_S")
    worker_stalled_after_s: float = Field(default=30.0, gt=0, alias="WORKER_STALLED_AFTER_S")
    # Campaigns (shared.campaigns.dispatch): how often due contacts are dispatched (whole seconds on
    # PostgreSQL, where it is a procrastinate periodic job), and how long a claimed contact may wait
    # for its dial before the sweep takes the dispatcher for dead and makes the contact due again.
    campaign_tick_s: float = Field(default=2.0, ge=1, le=60, alias="CAMPAIGN_TICK_S")
    campaign_undialed_after_s: float = Field(default=60.0, ge=5, alias="CAMPAIGN_UNDIALED_AFTER_S")

    # --- capacity: how many calls the gateway carries (voice_gateway.capacity, backend.capacity) -----
    # Streams one gateway carries at once; beyond it new streams are refused (503). Unset: 2 per core
    # (set it from `relayx bench`'s measured real-time concurrency); 0: no limit (benchmarks).
    gateway_max_calls: int | None = Field(default=None, ge=0, alias="GATEWAY_MAX_CALLS")
    # Where the backend reads the gateway's /health before dialing; unset: PUBLIC_GATEWAY_URL as http(s).
    gateway_internal_url: str | None = Field(default=None, alias="GATEWAY_INTERNAL_URL")
    # The Retry-After (seconds) of a refusal for capacity, by the gateway and by POST /calls/outbound.
    capacity_retry_after_s: int = Field(default=10, ge=1, le=3600, alias="CAPACITY_RETRY_AFTER_S")

    # --- drain and metrics (voice_gateway.drain, voice_gateway.metrics, backend.metrics) ------------
    # After SIGTERM a gateway takes no new stream and waits this long for its calls to end by
    # themselves; then the agent ends each remaining call politely (a line, a hang-up) and it exits.
    gateway_drain_timeout_s: float = Field(default=600.0, ge=0, alias="GATEWAY_DRAIN_TIMEOUT_S")
    # /metrics (Prometheus text) on both services: open when unset (scrape it on the private network;
    # keep it off the public proxy); set, a scraper must send `Authorization: Bearer <token>`.
    metrics_token: str | None = Field(default=None, alias="METRICS_TOKEN")
    worker_metrics_port: int | None = Field(default=None, ge=1, le=65535, alias="WORKER_METRICS_PORT")
    """`relayx worker` serves its job and webhook-delivery counts on this port (no port: not served)."""

    # --- durability: the gateway's spool ----------------------------------------------------------
    spool_dir: Path | None = Field(default=None, alias="SPOOL_DIR")
    spool_retry_s: float = Field(default=1.0, gt=0, le=60, alias="SPOOL_RETRY_S")

    log_level: str = Field(default="INFO", alias="LOG_LEVEL")

    @field_validator("public_base_url", "public_gateway_url", "twilio_api_base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @cached_property
    def api_key(self) -> str:
        """The API key: RELAYX_API_KEY, else one generated once and kept in the data directory.

        A generated key keeps the embedded default free of setup while never running the API open.
        """
        return self.relayx_api_key or self._generated_secret("api_key", "rx_", 24)

    @cached_property
    def webhook_signing_secret(self) -> str:
        """WEBHOOK_SECRET, else one generated once and kept in the data directory (like the API key)."""
        return self.webhook_secret or self._generated_secret("webhook_secret", "whsec_", 32)

    def _generated_secret(self, name: str, prefix: str, nbytes: int) -> str:
        """A secret made once and kept, owner-readable only, in the data directory (shared by every
        process started on it)."""
        path = self.data_dir / name
        if path.exists():
            return path.read_text().strip()
        path.parent.mkdir(parents=True, exist_ok=True)
        secret = prefix + secrets.token_urlsafe(nbytes)
        path.write_text(secret + "\n")
        path.chmod(0o600)
        return secret

    @property
    def spool_path(self) -> Path:
        """The gateway's spool file (writes the database could not take): SPOOL_DIR, else <data dir>/spool."""
        return (self.spool_dir or self.data_dir / "spool") / "gateway-spool.db"

    @property
    def recordings_path(self) -> Path:
        """Where call recordings are written: RECORDINGS_DIR, else <data dir>/recordings."""
        return self.recordings_dir or self.data_dir / "recordings"

    @property
    def gateway_http_url(self) -> str:
        """How the backend reaches the gateway's HTTP routes: GATEWAY_INTERNAL_URL, else the public
        WebSocket URL with its scheme made HTTP (ws -> http, wss -> https)."""
        if self.gateway_internal_url:
            return self.gateway_internal_url.rstrip("/")
        url = self.public_gateway_url
        for socket_scheme, http_scheme in (("wss://", "https://"), ("ws://", "http://")):
            if url.startswith(socket_scheme):
                return http_scheme + url[len(socket_scheme):]
        return url

    @property
    def backend_url(self) -> str:
        """How the gateway and the simulator reach the backend (loopback unless told otherwise)."""
        return (self.backend_internal_url or self.public_base_url).rstrip("/")
