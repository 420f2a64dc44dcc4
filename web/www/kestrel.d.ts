// Types of kestrel.js: Kestrel's browser engine (an OpenAI-shaped API over a Web Worker).

export type KestrelErrorName =
  | 'KestrelNoWebGpuError'
  | 'KestrelLimitsError'
  | 'KestrelDownloadError'
  | 'KestrelModelError'
  | 'KestrelGpuError'
  | 'KestrelRequestError'
  | 'KestrelBusyError'
  | 'KestrelStateError'
  | 'KestrelWorkerError'
  | 'KestrelDisposedError';

export class KestrelError extends Error {
  name: KestrelErrorName | string;
}

export interface Progress {
  phase: 'download' | 'cache' | 'read' | 'load' | 'compile' | 'warning';
  url?: string;
  loaded?: number;
  total?: number;
  message?: string;
}

/** A URL (a .gguf file, or a Hugging Face folder's base URL ending in '/'), a .gguf File,
 * or the files of a Hugging Face folder (config.json, *.safetensors, tokenizer.json,
 * tokenizer_config.json). */
export type ModelSource = string | URL | File | File[] | FileList;

export interface CreateEngineOptions {
  model: ModelSource;
  onProgress?: (p: Progress) => void;
  /** KV cache length in tokens; 0 (default) = the model's context, at most 2048. */
  ctx?: number;
  /** The decode matvec's arithmetic (the command line's --matvec-precision): 'f32' (default);
   * 'int8': x quantized per 32-value block, integer dot products, for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0
   * weights; 'f16': x, weights and products in f16, sums in f32, for f16 weights and those
   * formats, on adapters with shader-f16 only. Other weights keep f32. Another value, or
   * 'f16' without shader-f16, rejects with KestrelRequestError. */
  matvecPrecision?: MatvecPrecision;
  /** StreamingLLM (the command line's --attention-sinks / --kv-window; give both): keep the
   * first `attentionSinks` tokens and the last `kvWindow`, keys cached before RoPE with
   * positions counted inside the cache, so a conversation grows without bound in fixed
   * memory. A model without attention, or values past the context, reject with
   * KestrelRequestError naming the option. */
  attentionSinks?: number;
  kvWindow?: number;
  /** Block-sparse attention over 64x64 blocks (the command line's --block-sparse), e.g.
   * 'local=4,global=1,random=1,dilation=1,seed=0[@LAYERS];...'. */
  blockSparse?: string;
  /** Speculative decoding: 'ngram' drafts by prompt lookup (the tokens after the latest
   * earlier occurrence of the last few tokens) and verifies the drafts in one forward; the
   * reply is unchanged (token for token when greedy), faster where it repeats the prompt.
   * A recurrent model rejects with KestrelRequestError. */
  speculate?: 'ngram';
  /** Drafts per verification with `speculate`, 1 to 16 (default 6). */
  draftTokens?: number;
  /** Conversations whose KV caches are held at once, 1 to 64 (default 8; each holds a cache
   * of `ctx` tokens, info().model.stateBytes). A reply in a new conversation beyond it drops
   * the least recently used conversation's cache (that conversation, if it goes on,
   * prefills its whole history again). Another value rejects with KestrelRequestError
   * before anything downloads. */
  maxConversations?: number;
  workerUrl?: string | URL;
}

export type MatvecPrecision = 'f32' | 'int8' | 'f16';

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant' | string;
  content: string | { type: 'text'; text: string }[];
}

export interface ChatCompletionRequest {
  messages: ChatMessage[];
  stream?: boolean;
  max_tokens?: number;
  /** In [0, 2] (as OpenAI's); default 1; 0 is greedy. */
  temperature?: number;
  /** In (0, 1]; default 1. */
  top_p?: number;
  /** 0 (default) is off. */
  top_k?: number;
  seed?: number;
  /** Up to 4 non-empty strings: the reply ends before the first one (which it leaves out),
   * with finish_reason 'stop'. */
  stop?: string | string[];
  /** The conversation the reply belongs to: any non-empty string (default 'default'). Each
   * conversation keeps its own KV cache, made on its first reply, so its next turn prefills
   * only the new tokens whichever conversations ran in between. Replies generate one at a
   * time, queued first come, first served, whatever their conversations. */
  conversation?: string;
  /** A diffusion model's sampler (LLaDA; `kestrel diffuse`'s settings): the reply is
   * `max_tokens` (default 128) within the context, rounded down to whole blocks, and streams
   * a block at a time as each fills. Refused for autoregressive models. */
  diffusion?: DiffusionSettings;
  signal?: AbortSignal;
}

export interface DiffusionSettings {
  /** Tokens filled per block (default: the reply's length, at most 32). */
  block_length?: number;
  /** Steps over the whole reply, spread evenly over the blocks (default: one per token). */
  steps?: number;
  /** Fast-dLLM parallel decoding: commit every position at least this confident, in (0, 1]. */
  threshold?: number;
  /** Reuse the block-start forward's keys and values within a block (default 'none'). */
  cache?: 'none' | 'prefix' | 'dual';
  /** Classifier-free guidance scale (default 0, off; needs cache 'none'). */
  cfg_scale?: number;
  /** Which positions of a step's candidates stay masked (default 'low_confidence'). */
  remasking?: 'low_confidence' | 'random';
}

export type FinishReason = 'stop' | 'length' | 'abort' | null;

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

export interface Timings {
  /** Prompt tokens served from the KV cache of the conversation's previous turn. */
  reused_tokens: number;
  ttft_ms: number | null;
  decode_tokens_per_s: number | null;
  total_ms: number;
}

export interface ChatCompletion {
  id: string;
  object: 'chat.completion';
  created: number;
  model: string;
  choices: { index: 0; message: { role: 'assistant'; content: string }; finish_reason: FinishReason }[];
  usage: Usage;
  timings: Timings;
}

export interface ChatCompletionChunk {
  id: string;
  object: 'chat.completion.chunk';
  created: number;
  model: string;
  choices: { index: 0; delta: { role?: 'assistant'; content?: string }; finish_reason: FinishReason }[];
  /** On the last chunk only. */
  usage?: Usage;
  timings?: Timings;
}

export interface EngineInfo {
  adapter: string;
  backend: string;
  driver: string;
  /** Kernels and layouts chosen for a CPU driver: the browser calls its adapter a fallback
   * one (Chromium's SwiftShader). */
  runsOnCpu: boolean;
  features: { 'shader-f16': boolean; subgroups: boolean; 'timestamp-query': boolean };
  limits: {
    maxStorageBufferBindingSize: number;
    maxBufferSize: number;
    maxStorageBuffersPerShaderStage: number;
    maxComputeInvocationsPerWorkgroup: number;
    maxComputeWorkgroupStorageSize: number;
    maxComputeWorkgroupsPerDimension: number;
  };
  f16Kernels: boolean;
  /** The decode matvec's arithmetic the engine was created with (with a model loaded). */
  matvecPrecision?: MatvecPrecision;
  model?: {
    name: string;
    architecture: string;
    vocab: number;
    context: number;
    weightBytes: number;
    /** Weight bytes a decoded token reads (less than weightBytes for routed experts). */
    weightBytesReadPerDecodeToken: number;
    stateBytes: number;
    hasTokenizer: boolean;
    fallbackTemplate: boolean;
    /** A diffusion model (bidirectional, sampled by unmasking): requests take `diffusion`. */
    diffusion: boolean;
  };
  /** Load time, and the warm-up's (0 when the pipelines were created ahead instead). */
  timings?: { loadMs: number; pipelineMs: number };
  /** Pipelines created ahead of use from the list an earlier engine on this model, adapter
   * and Kestrel version kept (createEngine then skips the warm-up and resolves while the
   * browser compiles them): how many keys, and the device's refusal of one, if any. */
  pipelinesAhead?: { keys: number; refused: string | null };
  /** The speculative decoding the engine was created with (absent or null: none). */
  speculation?: { kind: 'ngram'; draftTokens: number } | null;
  /** What the engine's GPU device has done (with a model loaded). */
  counters?: EngineCounters;
  /** The engine's wasm memory in bytes (with a model loaded): it never shrinks, so this is its
   * peak, loading included. A GGUF file is read a tensor at a time, never held whole. */
  wasmMemoryBytes?: number;
  /** The conversations whose KV caches are held (with a model loaded): how many, the bound
   * (maxConversations) and their ids, least recently used first. 'default' is held from
   * the load on. */
  conversations?: { held: number; max: number; ids: string[] };
}

export interface EngineCounters {
  /** Tokens decoded in the last (or current) reply, the prompt's first token not counted. */
  decodeTokens: number;
  /** GPU work per decoded token of that reply; null before it has decoded one. */
  dispatchesPerDecodeToken: number | null;
  submitsPerDecodeToken: number | null;
  /** Readbacks the worker waited on, per decoded token. */
  hostRoundTripsPerDecodeToken: number | null;
  pipelinesCreated: number;
  /** Seconds creating pipelines. The browser compiles them after its calls return, so this
   * is the warm-up's time (first prefill and decode step, timings.pipelineMs). */
  pipelineCreationS: number | null;
  /** Bytes of the GPU buffers the runtime holds now, and at most so far. */
  gpuBytes: number;
  gpuPeakBytes: number;
  weightBytes: number;
  weightBytesReadPerDecodeToken: number;
  /** With speculate: draft tokens verified in the last reply, and those accepted. */
  draftTokens: number;
  acceptedDraftTokens: number;
}

export interface DecodeProfile {
  /** Kernel classes in the order the decode step first runs them. */
  classes: { name: string; dispatches: number; ms: number }[];
  /** First dispatch's start to the last one's end (gaps included), and the dispatches' sum. */
  spanMs: number;
  totalMs: number;
}

export interface Engine {
  chat: {
    completions: {
      create(req: ChatCompletionRequest & { stream: true }): Promise<AsyncIterable<ChatCompletionChunk>>;
      create(req: ChatCompletionRequest & { stream?: false }): Promise<ChatCompletion>;
    };
  };
  /** Logits after each token (a fresh sequence, one prefill): T×V row-major. */
  logits(tokens: ArrayLike<number>): Promise<Float32Array>;
  info(): Promise<EngineInfo>;
  /** A decode step's GPU time by kernel class from timestamp queries (as `kestrel bench`
   * prints it), on a scratch sequence of `promptTokens` tokens (default 32); the
   * conversation is untouched. null where the adapter has no timestamp queries. */
  decodeProfile(promptTokens?: number): Promise<DecodeProfile | null>;
  /** Stop the reply in progress; its stream ends with finish_reason 'abort'. */
  interrupt(): void;
  /** Forget conversation `conversation`'s history in its KV cache, or every conversation's
   * without it (after the replies queued before); the caches stay held. */
  reset(conversation?: string): Promise<void>;
  /** Drop a conversation and free its KV cache (after the replies queued before); resolves
   * to whether it was held. Its next reply, if any, starts afresh. */
  dropConversation(conversation: string): Promise<boolean>;
  dispose(): Promise<void>;
}

export function webgpuAvailable(): boolean;
export function createEngine(options: CreateEngineOptions): Promise<Engine>;

export interface KernelCheckReport {
  adapter: EngineInfo;
  ok: boolean;
  kernels: Record<string, { max_err: number | 'NaN'; cases: number; ok: boolean }>;
  cases: { kernel: string; what: string; err: number | 'NaN'; tol: number; ok: boolean }[];
}
export function runKernelChecks(options?: { workerUrl?: string | URL }): Promise<KernelCheckReport>;
export function adapterInfo(options?: { workerUrl?: string | URL }): Promise<EngineInfo>;
