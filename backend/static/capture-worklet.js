// The microphone side of the browser phone, on the audio thread: context rate → 8 kHz → μ-law,
// posted to the page as 20 ms frames (160 bytes), the size Twilio sends and the gateway expects.
import { Resampler, encodeUlaw } from "./audio.js";

const PHONE_RATE = 8000;
const FRAME_SAMPLES = 160;

class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.resampler = new Resampler(sampleRate, PHONE_RATE);
    this.frame = new Float32Array(FRAME_SAMPLES);
    this.filled = 0;
    this.silence = new Float32Array(128); // one render quantum
  }

  process(inputs) {
    // A phone line never pauses: with no input (a muted or ended track) the caller sends silence,
    // which is also what tells the gateway's turn detector that the caller has stopped talking.
    const channel = (inputs[0] && inputs[0][0]) || this.silence;
    const samples = this.resampler.push(channel);
    for (let i = 0; i < samples.length; i++) {
      this.frame[this.filled++] = samples[i];
      if (this.filled === FRAME_SAMPLES) {
        let energy = 0;
        for (const s of this.frame) energy += s * s;
        const ulaw = encodeUlaw(this.frame);
        this.port.postMessage({ ulaw, level: Math.sqrt(energy / FRAME_SAMPLES) }, [ulaw.buffer]);
        this.filled = 0;
      }
    }
    return true;
  }
}

registerProcessor("relayx-capture", CaptureProcessor);
