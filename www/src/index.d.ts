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
  | 'disposed' // the model was disposed
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
  signal?: AbortSignal;
}

export interface Token {
  /** The new token id (null for a final flush of held-back text). */
  token: number | null;
  /** The text this token completes (may be empty while a character is incomplete). */
  text: string;
}

export interface GenerationResult {
  tokens: number[];
  text: string;
  stopReason: 'eos' | 'length' | 'stop' | 'abort';
  promptTokens: number;
  ttftMs: number | null;
  prefillTokS: number;
  decodeTokS: number;
}

export interface Generation extends AsyncIterableIterator<Token> {
  /** Resolves to the summary when the generation ends. */
  readonly done: Promise<GenerationResult>;
}

export interface ModelInfo {
  vocabSize: number;
  eosIds: number[];
  maxSeq: number;
  hasTokenizer: boolean;
  hasChatTemplate: boolean;
  engine: { adapter: string; backend: string; shaderF16: boolean; maxBinding: number };
  bytes: number;
  fromCache: boolean;
  loadMs: number;
  source: string;
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
}

export interface ChatCompletion {
  id: string;
  object: 'chat.completion';
  created: number;
  model: string;
  choices: { index: number; message: ChatMessage; finish_reason: 'stop' | 'length' }[];
  usage: { prompt_tokens: number; completion_tokens: number; total_tokens: number };
}

export interface ChatCompletionChunk {
  id: string;
  object: 'chat.completion.chunk';
  created: number;
  model: string;
  choices: { index: number; delta: Partial<ChatMessage>; finish_reason: 'stop' | 'length' | null }[];
}

export class ShadowModel {
  static load(source: string | URL | FileList | File[] | Map<string, Blob>, options?: LoadOptions): Promise<ShadowModel>;
  readonly info: ModelInfo;
  encode(text: string, addSpecial?: boolean): Promise<number[]>;
  decode(ids: number[]): Promise<string>;
  applyChatTemplate(messages: ChatMessage[], addGenerationPrompt?: boolean): Promise<string>;
  generate(prompt: string | number[], options?: GenerateOptions): Generation;
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
