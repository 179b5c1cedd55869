// Sample formats for the browser phone: G.711 μ-law and a streaming low-pass resampler.
// Pure functions and one class, no DOM: the capture worklet and the page both import this module.
// The μ-law codec is bit-exact with CPython's audioop (what the gateway uses, see shared/audio.py).

const ULAW_BIAS = 0x84;
const ULAW_CLIP = 8159; // magnitude limit of the 14-bit value G.711 encodes
const SEGMENT_END = [0x3f, 0x7f, 0xff, 0x1ff, 0x3ff, 0x7ff, 0xfff, 0x1fff];

/** One int16 sample to its μ-law byte. */
export function linearToUlaw(sample) {
  let value = sample >> 2;
  let mask = 0xff;
  if (value < 0) {
    value = -value;
    mask = 0x7f;
  }
  value = Math.min(value, ULAW_CLIP) + (ULAW_BIAS >> 2);
  let segment = 0;
  while (segment < 8 && value > SEGMENT_END[segment]) segment++;
  if (segment === 8) return 0x7f ^ mask;
  return ((segment << 4) | ((value >> (segment + 1)) & 0x0f)) ^ mask;
}

/** μ-law byte → int16, as a 256-entry table. */
export const ULAW_TO_LINEAR = (() => {
  const table = new Int16Array(256);
  for (let byte = 0; byte < 256; byte++) {
    const u = ~byte & 0xff;
    const magnitude = (((u & 0x0f) << 3) + ULAW_BIAS) << ((u & 0x70) >> 4);
    table[byte] = u & 0x80 ? ULAW_BIAS - magnitude : magnitude - ULAW_BIAS;
  }
  return table;
})();

/** Float samples in [-1, 1] to μ-law bytes (clipping, so loud peaks saturate instead of wrapping). */
export function encodeUlaw(samples) {
  const out = new Uint8Array(samples.length);
  for (let i = 0; i < samples.length; i++) {
    const clipped = Math.max(-1, Math.min(1, samples[i]));
    out[i] = linearToUlaw(Math.round(clipped * 32767));
  }
  return out;
}

/** μ-law bytes to float samples in [-1, 1). */
export function decodeUlaw(bytes) {
  const out = new Float32Array(bytes.length);
  for (let i = 0; i < bytes.length; i++) out[i] = ULAW_TO_LINEAR[bytes[i]] / 32768;
  return out;
}

/**
 * A streaming windowed-sinc resampler for one direction of one call.
 *
 * Plain decimation (keeping every 6th sample of 48 kHz) folds everything above 4 kHz back into the
 * phone band, where the VAD and Whisper hear it as hiss; this low-passes first, at 85 % of the lower
 * Nyquist, with a Blackman-windowed sinc. State carries across `push` calls, so 128-sample worklet
 * blocks (or 160-byte network frames) join without clicks. Latency: `zeroCrossings` input samples
 * at the lower rate (2 ms for 16 at 8 kHz).
 */
export class Resampler {
  constructor(inRate, outRate, { zeroCrossings = 16, cutoff = 0.85 } = {}) {
    this.step = inRate / outRate; // input samples per output sample
    const band = cutoff * Math.min(1, outRate / inRate); // cutoff as a fraction of the input Nyquist
    this.halfWidth = zeroCrossings / band; // kernel half-width, in input samples
    this.resolution = 64; // kernel table entries per input sample (linear interpolation between)
    const size = Math.ceil(this.halfWidth * this.resolution) + 2;
    this.kernel = new Float32Array(size);
    for (let i = 0; i < size; i++) {
      const x = i / this.resolution;
      if (x >= this.halfWidth) break;
      const sinc = x === 0 ? 1 : Math.sin(Math.PI * band * x) / (Math.PI * band * x);
      const w = 0.5 + 0.5 * (x / this.halfWidth); // Blackman window: its peak (1) at x = 0, 0 at the edge
      const blackman = 0.42 - 0.5 * Math.cos(2 * Math.PI * w) + 0.08 * Math.cos(4 * Math.PI * w);
      this.kernel[i] = sinc * blackman;
    }
    // History: input index `this.start` sits at buffer[0]; silence precedes the first sample.
    const history = Math.ceil(this.halfWidth);
    this.buffer = new Float32Array(history);
    this.length = history;
    this.start = -history;
    this.position = 0; // input position (fractional) of the next output sample
  }

  /** Feed input samples; returns the output samples they complete. */
  push(input) {
    this._append(input);
    const last = this.start + this.length - 1; // newest input index held
    const count = Math.max(0, Math.floor((last - this.halfWidth - this.position) / this.step) + 1);
    const out = new Float32Array(count);
    for (let n = 0; n < count; n++) {
      out[n] = this._sampleAt(this.position);
      this.position += this.step;
    }
    this._dropBefore(Math.floor(this.position - this.halfWidth));
    return out;
  }

  _sampleAt(t) {
    const first = Math.ceil(t - this.halfWidth);
    const last = Math.floor(t + this.halfWidth);
    let sum = 0;
    let weight = 0;
    for (let k = first; k <= last; k++) {
      const x = Math.abs(t - k) * this.resolution;
      const i = Math.floor(x);
      const h = this.kernel[i] + (this.kernel[i + 1] - this.kernel[i]) * (x - i);
      sum += this.buffer[k - this.start] * h;
      weight += h;
    }
    return weight ? sum / weight : 0; // normalised: unity gain at DC whatever the phase
  }

  _append(input) {
    if (this.length + input.length > this.buffer.length) {
      const grown = new Float32Array(Math.max(this.buffer.length * 2, this.length + input.length));
      grown.set(this.buffer.subarray(0, this.length));
      this.buffer = grown;
    }
    this.buffer.set(input, this.length);
    this.length += input.length;
  }

  _dropBefore(index) {
    const drop = Math.min(this.length, index - this.start);
    if (drop <= 0) return;
    this.buffer.copyWithin(0, drop, this.length);
    this.length -= drop;
    this.start += drop;
  }
}
