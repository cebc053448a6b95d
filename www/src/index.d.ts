// Types of the shadowpeft-web package.

export type ShadowErrorCode =
  | 'no-webgpu' // navigator.gpu missing, or no adapter/device
  | 'unsupported-device' // the device's limits or features are too small for this model
  | 'not-found' // HTTP 404 for a required file (or a file missing from the chosen files)
  | 'network' // offline, or blocked by CORS
  | 'http' // another HTTP error status
  | 'quota' // Cache Storage quota exceeded (reported as a warning; the model still loads)
  | 'invalid-model' // a corrupt or unsupported file: the message names the file and field
  | 'aborted' // the AbortSignal fired (error.name is 'AbortError')
  | 'device-lost' // the GPU device was lost: load the model again
  | 'busy' // a generation is already running on this model
  | 'invalid-argument' // bad prompt or options (e.g. a token id out of vocabulary)
  | 'context-length' // the prompt and max_tokens exceed the model's positions (the message names both)
  | 'disposed' // the model was disposed
  | 'backbone' // the backbone server is unreachable, too slow, refused, or answered garbage
  | 'internal';

export class ShadowError extends Error {
  readonly code: ShadowErrorCode;
  readonly url?: string;
  readonly status?: number;
}

export interface Progress {
  phase: 'download' | 'warning' | 'upload' | 'ready';
  /** The file being downloaded (phase 'download'). */
  file?: string;
  /** Bytes of `file` so far, and its size when the server sent Content-Length. */
  loaded?: number;
  total?: number | null;
  /** Bytes of all files so far, and their total. */
  overallLoaded: number;
  overallTotal: number;
  /** Whether the bytes come from Cache Storage (no network). */
  cached?: boolean;
  /** phase 'warning': e.g. code 'quota' when the files could not be cached. */
  code?: ShadowErrorCode;
  message?: string;
}

export interface LoadOptions {
  onProgress?: (p: Progress) => void;
  /** Called once when the GPU device is lost (driver reset, out of memory); every later call
   * fails with code 'device-lost'. Load the model again to continue. */
  onDeviceLost?: (error: ShadowError) => void;
  signal?: AbortSignal;
  /** Keep downloaded files in Cache Storage so the next load works offline (default true). */
  cache?: boolean;
  /** Run the engine in a dedicated Web Worker (default true) or on the calling thread. */
  worker?: boolean;
  /** Longest prompt + generation, in tokens (default 2048, capped by the model's config). */
  maxSeq?: number;
  /** Storage of the projections, embeddings and heads: 'f32' (default), 'f16', or 'q8' / 'q4'
   * (int8 / int4 in blocks of 32 with f32 scales, decoded in the kernels; f32 accumulation).
   * Norms, biases and matrices whose rows are not whole blocks of 32 stay f32. */
  weights?: WeightFormat;
  /** Cap one GPU storage binding at this many bytes (larger tensors are split); for testing. */
  maxBinding?: number;
  /** URL of shadowpeft_bg.wasm when the bundler does not place it next to the module. */
  wasmUrl?: string;
}

export interface GenerateOptions {
  /** Default 64. */
  maxNewTokens?: number;
  /** 0 (default) = greedy. */
  temperature?: number;
  topK?: number;
  topP?: number;
  repetitionPenalty?: number;
  /** Same seed, same output. */
  seed?: number;
  /** Keep going past end-of-sequence tokens. */
  ignoreEos?: boolean;
  /** Extra token ids that end the generation. */
  eosIds?: number[];
  /** Stop when the text contains one of these; the stop string is not returned. */
  stop?: string | string[];
  /**
   * Attached models only: start detached (the shadow alone) and switch to attached for good
   * when the detached model emits `marker` (dropped from the output; the attached model
   * answers in its place) or its top probability falls below `minProb`. Each token reports
   * its `mode`.
   */
  escalate?: { marker?: string; minProb?: number };
  /**
   * Attached models only: speculative decoding. The shadow drafts up to `draft` tokens
   * (0 to 16) and the base checks them in one pass (one round trip across the network);
   * 'auto' picks the length from the measured round-trip time, costs and acceptance.
   * Greedy output is that of plain attached decoding; sampling keeps its distribution.
   */
  speculate?: 'auto' | { draft: number };
  signal?: AbortSignal;
}

export interface SpeculationReport {
  /** Verification passes of the base. */
  rounds: number;
  /** Draft tokens proposed, and how many stood. */
  drafted: number;
  accepted: number;
  acceptanceRate: number;
  /** Tokens from plain steps (the prompt's, and those 'auto' chose not to draft). */
  plainSteps: number;
  /** Rounds whose drafts were made while the previous verification was in flight. */
  pipelined: number;
  /** Tokens per base pass (verifications and plain steps). */
  tokensPerPass: number;
  /** Tokens per round trip to the backbone server (attached across the network). */
  tokensPerRoundTrip?: number;
}

export type Mode = 'attached' | 'detached';

export interface AttachOptions {
  /** URL of a backbone server (`shadowpeft serve`), e.g. 'http://localhost:8080'. */
  backbone: string;
  /** The shadow adapter directory, a URL or files: Hugging Face peft SHADOW (adapter_config.json,
   * adapter_model.safetensors) or official shadow-peft (shadow_config.json, shadow_adapter.safetensors). */
  adapter: string | URL | FileList | File[] | Map<string, Blob>;
  /** Bearer token, when the server requires one. */
  token?: string;
  /** 'fused' (default): one round trip per token, the injection/update weights are uploaded
   * once. 'stepped': one round trip per base layer, the adapter never leaves this device. */
  protocol?: 'fused' | 'stepped';
  /** Tensor encoding on the wire (default 'f32'; 'f16' halves the traffic). */
  wire?: 'f32' | 'f16';
  /** On a backbone failure: 'error' (default) fails the generation with code 'backbone';
   * 'detached' continues with the shadow alone (tokens report mode 'detached'). */
  fallback?: 'error' | 'detached';
  /** Longest wait for one request to the server, in ms (default 120000); then code 'backbone'. */
  timeoutMs?: number;
  /** Cache the adapter files (default true). */
  cache?: boolean;
  signal?: AbortSignal;
}

export interface BackboneTraffic {
  /** This generation's totals (the prompt, and a one-time adapter upload, included). */
  roundTrips: number;
  bytesSent: number;
  bytesReceived: number;
  /** Averages over the tokens after the first. */
  perDecodedToken: { roundTrips: number; bytesSent: number; bytesReceived: number };
  /** The failure that switched this conversation to detached ('detached' fallback). */
  fallbackError?: string;
}

export interface Token {
  /** The new token id (null for a final flush of held-back text). */
  token: number | null;
  /** The text this token completes (may be empty while a character is incomplete). */
  text: string;
  /** Which model produced the token. */
  mode: Mode;
}

export interface GenerationResult {
  tokens: number[];
  /** Which model produced each token. */
  modes: Mode[];
  /** Traffic with the backbone server during this generation (attached across the network). */
  backbone?: BackboneTraffic;
  /** How speculation went, with `speculate`. */
  speculation?: SpeculationReport;
  text: string;
  stopReason: 'eos' | 'length' | 'stop' | 'abort';
  promptTokens: number;
  /** Prompt positions reused from the session's KV caches (the common prefix with what it held). */
  cachedTokens: number;
  ttftMs: number | null;
  prefillTokS: number;
  decodeTokS: number;
}

export interface Generation extends AsyncIterableIterator<Token> {
  /** Resolves to the summary when the generation ends. */
  readonly done: Promise<GenerationResult>;
}

export type WeightFormat = 'f32' | 'f16' | 'q8' | 'q4';

export interface ModelInfo {
  vocabSize: number;
  eosIds: number[];
  maxSeq: number;
  /** The weight storage the model was loaded with. */
  weights: WeightFormat;
  hasTokenizer: boolean;
  hasChatTemplate: boolean;
  engine: { adapter: string; backend: string; shaderF16: boolean; maxBinding: number };
  bytes: number;
  fromCache: boolean;
  loadMs: number;
  source: string;
  /** 'attached' after attach(), else 'detached'. */
  mode?: Mode;
  backbone?: string;
  protocol?: 'fused' | 'stepped';
}

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant' | string;
  content: string;
}

export interface ChatCompletionParams extends Omit<GenerateOptions, 'maxNewTokens'> {
  messages: ChatMessage[];
  stream?: boolean;
  max_tokens?: number;
  maxNewTokens?: number;
  top_p?: number;
  model?: string;
  /** When the conversation and max_tokens outgrow the model's positions: 'disabled' (default;
   * the call fails with code 'context-length') or 'auto' (the oldest turns are dropped). */
  truncation?: 'auto' | 'disabled';
}

export interface ChatUsage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  /** `cached_tokens`: prompt positions reused from the KV caches. */
  prompt_tokens_details: { cached_tokens: number };
}

export interface ChatCompletion {
  id: string;
  object: 'chat.completion';
  created: number;
  model: string;
  choices: { index: number; message: ChatMessage; finish_reason: 'stop' | 'length' }[];
  usage: ChatUsage;
  /** Messages `truncation: 'auto'` dropped (the oldest turns). */
  dropped_messages: number;
  /** This turn's traffic with the backbone server (attached across the network): a
   * continued conversation sends only what the server does not hold. */
  backbone?: BackboneTraffic;
  /** How speculation went, with `speculate`. */
  speculation?: SpeculationReport;
}

export interface ChatCompletionChunk {
  id: string;
  object: 'chat.completion.chunk';
  created: number;
  model: string;
  choices: { index: number; delta: Partial<ChatMessage>; finish_reason: 'stop' | 'length' | null }[];
  /** On the last chunk. */
  usage?: ChatUsage;
  dropped_messages?: number;
  /** On the last chunk, attached across the network. */
  backbone?: BackboneTraffic;
  /** On the last chunk, with `speculate`. */
  speculation?: SpeculationReport;
}

export class ShadowModel {
  static load(source: string | URL | FileList | File[] | Map<string, Blob>, options?: LoadOptions): Promise<ShadowModel>;
  readonly info: ModelInfo;
  encode(text: string, addSpecial?: boolean): Promise<number[]>;
  decode(ids: number[]): Promise<string>;
  applyChatTemplate(messages: ChatMessage[], addGenerationPrompt?: boolean): Promise<string>;
  generate(prompt: string | number[], options?: GenerateOptions): Generation;
  /** Attached mode across the network; resolves to the updated info. */
  attach(options: AttachOptions): Promise<ModelInfo>;
  /** Back to detached mode. */
  detach(): Promise<ModelInfo>;
  readonly chat: {
    completions: {
      create(params: ChatCompletionParams & { stream: true }): Promise<AsyncIterable<ChatCompletionChunk>>;
      create(params: ChatCompletionParams & { stream?: false }): Promise<ChatCompletion>;
    };
  };
  dispose(): Promise<void>;
}

export const CACHE_NAME: string;
export function clearCache(): Promise<void>;
