"""Where the agent decides the caller has stopped talking: a pure, VAD-driven turn detector.

No I/O and no clock: the detector is fed 16 kHz float32 audio in chunks of any size and counts time
in samples, so the session (and the tests) can replay audio faster than real time and still compute
end-of-turn latency exactly.

Turn-taking in these thresholds:
- `onset_ms` of voiced audio: VoiceOnset, so the session can pause an agent that is talking at once
  (the caller may only be saying "mm-hm": SpeechAbandoned or a short turn lets it resume);
- `min_speech_ms` of voiced audio before a turn starts, so clicks, line noise and short bursts are
  ignored (no SpeechStarted, no barge-in);
- `listen_ahead_from_ms` of speech without a pause, then every `listen_ahead_ms`: SpeechGoingOn
  hands the utterance so far to the session, which reads its first words into the LLM's KV cache
  (`voice_gateway.read_ahead`);
- `speculate_ms` of silence: PauseBegan hands the utterance so far to the session, which can start
  STT (and even the LLM) speculatively while the pause is confirmed;
- `early_pause_ms` of silence: PauseDetected hands it over again, for an end-of-turn model to say how
  long this pause should be (`set_end_silence`);
- `end_of_turn_silence_ms` of silence (or what `set_end_silence` said): TurnEnded. If speech comes
  back after PauseBegan, SpeechResumed tells the session to throw the speculative work away.

A turn stays open after TurnEnded while the session says so (`keep_open`: the reply to it has not been
heard yet): speech that comes back then continues the same utterance, with every sample since its
start, so a caller who paused between two sentences is one turn, transcribed as one.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum

import numpy as np

from shared.agent_config import AgentSettings
from shared.vad.base import VAD

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class VoiceOnset:
    """`onset_ms` of voice: perhaps speech, perhaps a click. Talking agents pause here."""

    onset_sample: int
    at_sample: int


@dataclass(frozen=True)
class SpeechAbandoned:
    """The voice after a VoiceOnset stopped before `min_speech_ms`: it was noise, not a turn."""

    at_sample: int


@dataclass(frozen=True)
class SpeechStarted:
    """The caller has been speaking for `min_speech_ms`: a real turn (and a barge-in) began."""

    onset_sample: int
    """Where the first voiced window began."""
    at_sample: int
    """Where the detector was when it became sure (onset + at least min_speech_ms)."""
    continues: bool = False
    """It reopened the turn that ended last (`keep_open`): the utterance holds that turn's audio too."""


@dataclass(frozen=True)
class PauseBegan:
    """The first sign of a pause: the utterance so far, for speculative STT and LLM work."""

    audio: np.ndarray
    speech_end_sample: int
    at_sample: int


@dataclass(frozen=True)
class PauseDetected:
    """A short pause: the utterance so far, for the end-of-turn model (and speculation, if not begun)."""

    audio: np.ndarray
    speech_end_sample: int
    """End of the last voiced window; equal to a later TurnEnded's if the caller did not resume."""
    at_sample: int


@dataclass(frozen=True)
class SpeechGoingOn:
    """`listen_ahead_from_ms` of the caller's speech without a pause, or another `listen_ahead_ms` after
    that: the utterance so far, so that its first words can be read and put into the LLM's KV cache
    while the caller is still talking."""

    audio: np.ndarray
    at_sample: int


@dataclass(frozen=True)
class SpeechResumed:
    """The caller went on after a PauseBegan: speculative work on that audio is stale."""

    at_sample: int


@dataclass(frozen=True)
class TurnEnded:
    """The caller's turn is over; `audio` is the whole utterance (pre-roll included)."""

    audio: np.ndarray
    speech_end_sample: int
    at_sample: int

    @property
    def end_of_turn_ms(self) -> float:
        """Silence waited between the end of speech and this decision."""
        return (self.at_sample - self.speech_end_sample) * 1000.0 / SAMPLE_RATE


TurnEvent = (VoiceOnset | SpeechAbandoned | SpeechStarted | SpeechGoingOn | PauseBegan | PauseDetected
             | SpeechResumed | TurnEnded)


_AGENT_DEFAULTS = AgentSettings()


@dataclass(frozen=True)
class TurnConfig:
    """Turn-taking parameters (milliseconds, at 16 kHz); the per-agent ones default to `AgentSettings`'s."""

    min_speech_ms: int = _AGENT_DEFAULTS.min_speech_ms
    onset_ms: int = 64
    """Voiced audio that raises VoiceOnset: two Silero windows, so one noisy window does not pause the
    agent, and the pause still lands within ~100 ms of the caller's first syllable."""
    end_of_turn_silence_ms: int = _AGENT_DEFAULTS.end_of_turn_silence_ms
    early_pause_ms: int = 150
    """The end-of-turn model hears the turn at this pause (its bands were measured on this audio)."""
    speculate_ms: int = 64
    """Speculative STT/LLM may start at this pause (the session does so for a call alone on the
    machine); the reply is only heard once the end of turn confirms it. A reply waits on this much
    silence plus STT, the LLM's first clause and its audio, and the end-of-turn model, at the later
    pause, no longer shares the cores with STT's encoder. Phone set, one call, back to back:
    voice-to-voice p50 879 ms speculating at 150 ms, 801 ms at 96 ms, 732 ms at 64 ms (later runs at
    64 ms: 838, 909 and 794 ms; this machine's speed moves by ±100 ms from hour to hour). Shorter
    means more work thrown away when the caller goes on."""
    listen_ahead_from_ms: int = 1200
    """After this much of an utterance spoken without a pause, SpeechGoingOn hands it to the session,
    which reads the words so far and evaluates them into the LLM's KV cache while the machine is idle
    (`voice_gateway.read_ahead`); sooner there are too few words to be worth it. 0: never. The turn's
    own prompt then holds only its last few words: on 2 cores with four callers ending together,
    about 20 tokens a turn were evaluated after the turn ended, ~150 ms each on two threads and ~350 ms
    on one, one after another."""
    listen_ahead_ms: int = 800
    """Then again every this much speech, so that less is left when the caller stops. 4 calls together,
    five interleaved runs each way: p50 1744, 1579, 1413, 1444 and 1958 ms every 0.8 s, against 2220,
    1690, 1592, 1822 and 1850 ms every 1.2 s."""
    pre_roll_ms: int = 300
    """Audio kept before the onset: VADs fire a little late and Whisper needs the first phoneme."""
    post_roll_ms: int = 200
    """Silence kept after the last voiced window (soft word endings score low on the VAD)."""
    resume_ms: int = 64
    """Voiced audio needed after a pause to count as resumed speech (one blip is not a resume)."""
    max_utterance_ms: int = 25_000
    """Whisper sees 30 s at most: a turn this long is ended even without a pause."""
    threshold: float = 0.5
    """Speech probability at which a window is voiced."""
    neg_threshold: float = 0.35
    """Below this a window is silent; in between, the previous state holds (hysteresis)."""
    vad_reset_ms: int = 1000
    """Idle silence after which the VAD's recurrent state is reset. Silero's scores sink the longer
    it has run on silence (0.8 fresh, under 0.5 after a minute of a quiet line), so a caller who
    speaks after a long pause would go unheard; Pipecat resets its Silero state for the same reason."""

    def __post_init__(self) -> None:
        if self.early_pause_ms > self.end_of_turn_silence_ms:
            raise ValueError("early_pause_ms must not exceed end_of_turn_silence_ms")
        if self.speculate_ms > self.early_pause_ms:
            raise ValueError("speculate_ms must not exceed early_pause_ms")

    @classmethod
    def for_agent(cls, settings: AgentSettings) -> TurnConfig:
        """The agent's timing; the speculative pause never waits longer than the end of turn itself."""
        early = min(cls.early_pause_ms, settings.end_of_turn_silence_ms)
        return cls(
            min_speech_ms=settings.min_speech_ms,
            end_of_turn_silence_ms=settings.end_of_turn_silence_ms,
            early_pause_ms=early,
            speculate_ms=min(cls.speculate_ms, early),
        )


class _State(Enum):
    IDLE = "idle"
    CANDIDATE = "candidate"
    SPEAKING = "speaking"


def _samples(ms: int) -> int:
    return ms * SAMPLE_RATE // 1000


class TurnDetector:
    """Tracks one call's caller audio and emits turn events; one instance per call."""

    def __init__(self, vad: VAD, config: TurnConfig | None = None) -> None:
        self.vad = vad
        self.config = config or TurnConfig()
        self._window = vad.window_samples
        self._pending = np.zeros(0, dtype=np.float32)
        self._position = 0  # samples scored so far (end of the last window)
        self._pre_roll: deque[np.ndarray] = deque(
            maxlen=max(1, -(-_samples(self.config.pre_roll_ms) // self._window))
        )
        # The last ended turn, kept while the session holds it open: its audio and every window since.
        self._open = False
        self._last: tuple[list[np.ndarray], int] | None = None
        self._since: list[np.ndarray] = []
        self._reset_utterance()

    @property
    def speech_end(self) -> int:
        """End of the last voiced window of the current utterance (its onset when none yet)."""
        return self._speech_end

    @property
    def speaking(self) -> bool:
        """True between SpeechStarted and TurnEnded."""
        return self._state is _State.SPEAKING

    @property
    def voice_since(self) -> int | None:
        """Where the voice heard now began (a candidate, or a turn under way); None in silence."""
        return None if self._state is _State.IDLE else self._onset

    @property
    def position(self) -> int:
        """Samples scored so far: the detector's clock."""
        return self._position

    def keep_open(self, open_: bool) -> None:
        """Hold the last ended turn open (its reply is not heard yet) or let it close for good.

        While open, speech that starts continues that turn: SpeechStarted(continues=True), and the
        utterance runs from the ended turn's first sample. Closing forgets the kept audio.
        """
        self._open = open_
        if not open_:
            self._last = None
            self._since = []

    def set_end_silence(self, ms: int) -> list[TurnEvent]:
        """This pause ends the turn after `ms` of silence (an end-of-turn model's verdict), instead of
        `end_of_turn_silence_ms`; returns TurnEnded at once if that much silence has already passed.
        Ignored unless the caller is in a pause; speech that resumes restores the default."""
        if self._state is not _State.SPEAKING or not self._paused:
            return []
        self._end_silence = _samples(ms)
        events: list[TurnEvent] = []
        if self._silence >= self._end_silence:
            self._end_turn(events)
        return events

    def feed(self, audio: np.ndarray) -> list[TurnEvent]:
        """Add 16 kHz float32 audio of any length; return the events it caused, in order."""
        self._pending = np.concatenate([self._pending, np.asarray(audio, dtype=np.float32)])
        events: list[TurnEvent] = []
        n_windows = self._pending.shape[0] // self._window
        for i in range(n_windows):
            window = self._pending[i * self._window : (i + 1) * self._window]
            self._step(window, events)
        self._pending = self._pending[n_windows * self._window :].copy()
        return events

    # --- internals ------------------------------------------------------------------------------

    def _reset_utterance(self) -> None:
        self._state = _State.IDLE
        self._idle_silence = 0
        self._chunks: list[np.ndarray] = []
        self._start_sample = 0  # stream position of the utterance buffer's first sample
        self._onset = 0
        self._voiced = False
        self._voiced_samples = 0
        self._speech_end = 0
        self._silence = 0
        self._pause_began = False
        self._paused = False
        self._resume_voiced = 0
        self._onset_told = False
        self._continues = False
        self._next_ahead = _samples(self.config.listen_ahead_from_ms)
        self._end_silence = _samples(self.config.end_of_turn_silence_ms)

    def _classify(self, window: np.ndarray) -> bool:
        prob = self.vad.speech_prob(window)
        if prob >= self.config.threshold:
            self._voiced = True
        elif prob < self.config.neg_threshold:
            self._voiced = False
        return self._voiced

    def _step(self, window: np.ndarray, events: list[TurnEvent]) -> None:
        start = self._position
        self._position += self._window
        voiced = self._classify(window)
        if self._state is _State.IDLE:
            if voiced:
                self._idle_silence = 0
                self._begin_candidate(window, start, events)
            else:
                self._pre_roll.append(window)
                if self._last is not None:
                    self._since.append(window)
                    if (len(self._since) + 1) * self._window > _samples(self.config.max_utterance_ms):
                        self._last, self._since = None, []  # held open too long to be one utterance
                self._idle_silence += self._window
                if self._idle_silence >= _samples(self.config.vad_reset_ms):
                    self.vad.reset()
                    self._voiced = False
                    self._idle_silence = 0
            return
        self._chunks.append(window)
        if self._state is _State.CANDIDATE:
            self._step_candidate(voiced, events)
        else:
            self._step_speaking(voiced, events)

    def _begin_candidate(self, window: np.ndarray, start: int, events: list[TurnEvent]) -> None:
        pre = list(self._pre_roll)
        self._pre_roll.clear()
        self._state = _State.CANDIDATE
        if self._open and self._last is not None:
            # The turn that ended is still open: this speech continues it, every sample in between kept.
            chunks, first = self._last
            self._chunks = [*chunks, *self._since, window]
            self._start_sample = first
            self._continues = True
        else:
            self._chunks = [*pre, window]
            self._start_sample = start - sum(c.shape[0] for c in pre)
        self._onset = start
        self._voiced_samples = self._window
        self._speech_end = self._position
        self._silence = 0
        self._step_candidate(True, events, counted=True)

    def _step_candidate(self, voiced: bool, events: list[TurnEvent], *, counted: bool = False) -> None:
        if voiced:
            if not counted:
                self._voiced_samples += self._window
            self._speech_end = self._position
            self._silence = 0
        else:
            self._silence += self._window
            # A burst that falls silent for a short pause before reaching min_speech_ms was noise.
            if self._silence >= _samples(self.config.early_pause_ms):
                told = self._onset_told
                if self._continues:  # the open turn's kept audio runs on through the noise
                    assert self._last is not None
                    self._since = self._chunks[len(self._last[0]) :]
                tail = self._chunks[-self._pre_roll.maxlen :] if self._pre_roll.maxlen else []
                self._reset_utterance()
                self._pre_roll.extend(tail)
                if told:
                    events.append(SpeechAbandoned(at_sample=self._position))
                return
        if not self._onset_told and self._voiced_samples >= _samples(self.config.onset_ms):
            self._onset_told = True
            events.append(VoiceOnset(onset_sample=self._onset, at_sample=self._position))
        if self._voiced_samples >= _samples(self.config.min_speech_ms):
            self._state = _State.SPEAKING
            if self._continues:
                self._last, self._since = None, []
            events.append(SpeechStarted(onset_sample=self._onset, at_sample=self._position,
                                        continues=self._continues))

    def _step_speaking(self, voiced: bool, events: list[TurnEvent]) -> None:
        cfg = self.config
        if voiced:
            if self._pause_began:
                self._resume_voiced += self._window
                if self._resume_voiced >= _samples(cfg.resume_ms):
                    self._pause_began = self._paused = False
                    self._resume_voiced = 0
                    self._silence = 0
                    self._speech_end = self._position
                    self._end_silence = _samples(cfg.end_of_turn_silence_ms)
                    events.append(SpeechResumed(at_sample=self._position))
                else:
                    self._silence += self._window
            else:
                self._silence = 0
                self._speech_end = self._position
                self._listen_ahead(events)
        else:
            self._resume_voiced = 0
            self._silence += self._window
        if not self._pause_began and self._silence >= _samples(cfg.speculate_ms):
            self._pause_began = True
            events.append(
                PauseBegan(self._utterance(), speech_end_sample=self._speech_end, at_sample=self._position)
            )
        if not self._paused and self._silence >= _samples(cfg.early_pause_ms):
            self._paused = True
            events.append(
                PauseDetected(self._utterance(), speech_end_sample=self._speech_end, at_sample=self._position)
            )
        too_long = self._position - self._start_sample >= _samples(cfg.max_utterance_ms)
        if (self._paused and self._silence >= self._end_silence) or too_long:
            self._end_turn(events)

    def _listen_ahead(self, events: list[TurnEvent]) -> None:
        spoken = self._position - self._onset
        if self.config.listen_ahead_from_ms <= 0 or spoken < self._next_ahead:
            return
        self._next_ahead = spoken + _samples(max(self.config.listen_ahead_ms, 1))
        events.append(SpeechGoingOn(self._utterance(), at_sample=self._position))

    def _end_turn(self, events: list[TurnEvent]) -> None:
        events.append(TurnEnded(self._utterance(), speech_end_sample=self._speech_end, at_sample=self._position))
        # Kept for `keep_open`: the session decides, once it has seen this event, whether it stays open
        # (windows that follow are kept meanwhile, so a continuation misses none).
        self._last, self._since = (self._chunks, self._start_sample), []
        self._open = False
        self._reset_utterance()

    def _utterance(self) -> np.ndarray:
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)
        keep = self._speech_end - self._start_sample + _samples(self.config.post_roll_ms)
        return audio[: max(0, keep)].copy()
