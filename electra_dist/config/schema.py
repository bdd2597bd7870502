"""The config sections: typed dataclasses whose fields carry their help text and allowed values."""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """Raised once with every problem found in a config, one per line."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = problems
        where = f" in {source}" if source else ""
        super().__init__(f"{len(problems)} problem(s) in the config{where}:\n  - " + "\n  - ".join(problems))


def _f(default: Any, help: str, choices: tuple | None = None, bounds: str | None = None) -> Any:
    """A field with its help text and what it accepts: `choices`, or `bounds` — ">=1" (for an int: a positive
    integer), ">=0", ">0", or an interval such as "(0, 1)" or "[0, 1)"."""
    meta = {"help": help, "choices": choices, "bounds": bounds}
    if isinstance(default, (dict, list)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


class Section:
    """A config section: set freely while the config is built and resolved, read-only once its Config is
    frozen (after the one validation of the resolved config: what a run is built from never changes)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if self.__dict__.get("_frozen"):
            raise AttributeError(
                f"{type(self).__name__}.{name}: the config is frozen once resolved and validated; "
                "derive a changed copy with dataclasses.replace"
            )
        object.__setattr__(self, name, value)

    def problems(self, prefix: str = "") -> list[str]:
        """Every problem of this section and those under it, each naming its dotted key: a value outside its
        field's choices or bounds, a NaN or infinity; then, when its own fields are sound, the section's
        checks across fields (`check`)."""
        own: list[str] = []
        nested: list[str] = []
        for f in dataclasses.fields(self):
            value, key = getattr(self, f.name), prefix + f.name
            if isinstance(value, Section):
                nested += value.problems(key + ".")
            elif (problem := _field_problem(value, f.metadata)) is not None:
                own.append(f"{key}: {problem}")
        return own + nested + ([] if own else self.check(prefix))

    def check(self, prefix: str) -> list[str]:
        """Problems across this section's fields (their keys under `prefix`); none by default."""
        return []

    def _freeze(self) -> None:
        for value in vars(self).values():
            if isinstance(value, Section):
                value._freeze()
        object.__setattr__(self, "_frozen", True)


def _field_problem(value: Any, meta: Any) -> str | None:
    """What is wrong with one field's value, or None (a NaN fails every comparison: each bound rejects it)."""
    choices, bounds = meta.get("choices"), meta.get("bounds")
    if choices and value not in choices:
        return f"{value!r} is not one of {list(choices)}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value!r} must be a finite number"
    if bounds is None:
        return None
    if bounds == ">=1":
        return None if isinstance(value, int) and value >= 1 else f"{value!r} must be a positive integer"
    if bounds in (">=0", ">0"):
        ok = value >= 0 if bounds == ">=0" else value > 0
        return None if ok else f"{value} must be {bounds[:-1]} 0"
    lo_open, lo, hi, hi_open = re.fullmatch(r"([(\[])(\S+), (\S+)([)\]])", bounds).groups()
    above = value > float(lo) if lo_open == "(" else value >= float(lo)
    below = value < float(hi) if hi_open == ")" else value <= float(hi)
    return None if above and below else f"{value} must lie in {bounds}"


def _divides(n: int, d: int) -> bool:
    """d divides n, or d is itself unsound (its own field names that problem)."""
    return not isinstance(d, int) or d < 1 or n % d == 0


@dataclass
class EncoderConfig(Section):
    """A post-LN BERT encoder stack."""

    num_layers: int = _f(12, "transformer blocks", bounds=">=1")
    hidden_size: int = _f(256, "width of the residual stream", bounds=">=1")
    num_heads: int = _f(4, "attention heads (hidden_size must divide evenly)", bounds=">=1")
    intermediate_size: int = _f(1024, "feed-forward inner width", bounds=">=1")

    def check(self, prefix: str) -> list[str]:
        if self.hidden_size % self.num_heads:
            return [f"{prefix}hidden_size: {self.hidden_size} is not divisible by {prefix}num_heads={self.num_heads}"]
        return []


@dataclass
class ModelConfig(Section):
    """Shared embeddings + generator + discriminator."""

    vocab_size: int = _f(30522, "tokenizer vocabulary size (taken from the tokenizer when one is given)", bounds=">=1")
    pad_vocab_multiple: int = _f(
        128, "pad the embedding rows to a multiple of this × tensor_parallel_size (1: no padding)", bounds=">=1"
    )
    embedding_size: int = _f(
        128, "token/position/type embedding width, projected to each encoder's hidden size", bounds=">=1"
    )
    max_position_embeddings: int = _f(512, "longest sequence the position table holds", bounds=">=1")
    type_vocab_size: int = _f(2, "token-type (segment) ids", bounds=">=1")
    dropout: float = _f(0.1, "hidden dropout probability", bounds="[0, 1)")
    attention_dropout: float = _f(0.1, "attention-probability dropout", bounds="[0, 1)")
    layer_norm_eps: float = _f(1e-12, "LayerNorm epsilon (BERT/ELECTRA use 1e-12)")
    initializer_range: float = _f(0.02, "std of the normal weight init")
    architecture: str = _f(
        "bert",
        "bert: BERT/ELECTRA's post-LN block, learned absolute positions; modern: ModernBERT's — pre-norm without "
        "biases, rotary positions, GeGLU, local attention with a global layer every model.global_every, a final "
        "norm, no position table (long sequences)",
        ("bert", "modern"),
    )
    global_every: int = _f(
        3, "modern: every n-th layer (0, n, 2n, ...) attends globally, the rest locally", bounds=">=1"
    )
    local_window: int = _f(128, "modern: a local layer's window; each token sees those within half of it", bounds=">=1")
    rope_theta_global: float = _f(160_000.0, "modern: rotary θ of the global layers", bounds=">0")
    rope_theta_local: float = _f(10_000.0, "modern: rotary θ of the local layers", bounds=">0")
    discriminator: EncoderConfig = _f(EncoderConfig(), "the discriminator encoder (the model we keep)")
    generator: EncoderConfig = _f(
        EncoderConfig(12, 64, 1, 256), "the generator encoder (a small MLM; a frozen one's shape is its weights')"
    )
    generator_from: str = _f(
        "",
        "objective.generator=frozen: the masked LM that corrupts the input, frozen — a Hugging Face *ForMaskedLM "
        "directory (BERT, ELECTRA generator, RoBERTa-style; the same vocabulary), our export's generator/, or one "
        "of our runs (an MLM-objective run, an ELECTRA run's generator)",
    )

    def check(self, prefix: str) -> list[str]:
        gen, disc = self.generator.hidden_size, self.discriminator.hidden_size
        # a frozen generator may be as wide as it is: it is not trained against the discriminator
        if self.generator_from:
            return []
        if isinstance(gen, int) and isinstance(disc, int) and gen > disc:
            return [
                f"{prefix}generator.hidden_size: {gen} is wider than {prefix}discriminator.hidden_size={disc}; "
                "ELECTRA needs a smaller generator (the paper uses 1/4 to 1/2 of the discriminator's width)"
            ]
        return []

    def padded_vocab_size(self, tensor_parallel_size: int = 1) -> int:
        m = max(1, self.pad_vocab_multiple) * tensor_parallel_size
        return int(math.ceil(self.vocab_size / m) * m)


@dataclass
class ObjectiveConfig(Section):
    """What is learned: ELECTRA replaced-token detection, or BERT-style MLM as a baseline."""

    kind: str = _f("electra", "pre-training objective", ("electra", "mlm"))
    mask_prob: float = _f(0.15, "fraction of non-pad tokens masked per sequence", bounds="(0, 1)")
    mask_token_fraction: float = _f(
        0.85, "of the masked positions, the fraction shown as [MASK] (the rest keep their token)", bounds="[0, 1]"
    )
    generator_weight: float = _f(1.0, "weight of the generator MLM loss", bounds=">=0")
    discriminator_weight: float = _f(50.0, "λ: weight of the discriminator loss", bounds=">=0")
    generator: str = _f(
        "joint",
        "joint: the generator trains with the discriminator (the paper's); frozen: a published or earlier masked "
        "LM (model.generator_from) corrupts the input without training — no generator backward nor optimizer "
        "state (Fast-ELECTRA, with objective.temperature_schedule)",
        ("joint", "frozen"),
    )
    temperature: float = _f(
        1.0, "Gumbel sampling temperature (with a schedule: the one it ends at, on the last step)", bounds=">0"
    )
    temperature_schedule: str = _f(
        "constant",
        "how the sampling temperature goes from objective.temperature_start to objective.temperature over "
        "train.max_steps (Fast-ELECTRA anneals from high to 1: easy replacements first)",
        ("constant", "linear", "cosine", "exponential"),
    )
    temperature_start: float = _f(1.0, "the sampling temperature at step 1 under a schedule", bounds=">0")
    embedding_sharing: str = _f(
        "tied",
        "how the two models share embeddings: 'tied' (one table, both losses move "
        "it: the paper's) or 'gdes' (DeBERTa-v3: the discriminator reads stop-gradient("
        "shared) + its own residual, so RTD never pulls on the generator's embeddings)",
        ("tied", "gdes"),
    )


@dataclass
class OptimConfig(Section):
    """AdamW with linear warm-up and linear decay to zero, as the official recipe."""

    lr: float = _f(5e-4, "peak learning rate", bounds=">0")
    weight_decay: float = _f(0.01, "decoupled weight decay (not on LayerNorm or biases)")
    beta1: float = _f(0.9, "Adam β1", bounds="[0, 1)")
    beta2: float = _f(0.999, "Adam β2", bounds="[0, 1)")
    eps: float = _f(1e-6, "Adam ε")
    warmup_steps: int = _f(10000, "linear warm-up steps", bounds=">=0")
    grad_clip: float = _f(1.0, "global gradient-norm clip (0: off)", bounds=">=0")
    implementation: str = _f(
        "torch",
        "torch: torch.optim.AdamW, fused=True on GPU (no build; ZeRO accepts it); "
        "deepspeed: DeepSpeed's FusedAdam (prebuilt, or built just in time by nvcc; torch's "
        "if it cannot be had, said once)",
        ("torch", "deepspeed"),
    )


@dataclass
class TrainConfig(Section):
    """Batch, length, steps and precision of the run."""

    seq_len: int = _f(128, "tokens per sequence (must match the shards)", bounds=">=1")
    global_batch_size: int = _f(128, "sequences per optimizer step, over all data-parallel ranks", bounds=">=1")
    micro_batch_size: int = _f(128, "sequences per rank per forward/backward", bounds=">=1")
    max_steps: int = _f(1_000_000, "optimizer steps", bounds=">=1")
    log_interval: int = _f(100, "steps between metric records", bounds=">=1")
    save_interval: int = _f(5000, "steps between checkpoints", bounds=">=1")
    keep_last: int = _f(3, "complete checkpoints kept", bounds=">=1")
    eval_interval: int = _f(1000, "steps between held-out evaluations (and at the last step); 0: never", bounds=">=0")
    eval_samples: int = _f(
        1024, "held-out sequences each evaluation reads (the same ones, the same corruption)", bounds=">=0"
    )
    seed: int = _f(1234, "seed for weights, data order, masking and sampling")
    init_from: str = _f(
        "",
        "start from these weights (our checkpoint or final/, or a Hugging Face ELECTRA/BERT "
        "directory): the model's shape is theirs; optimizer and schedule start fresh; a resume wins",
    )
    precision: str = _f("bf16", "compute precision", ("fp32", "bf16", "fp16"))
    compile: str = _f(
        "auto",
        "torch.compile each encoder block (fuses bias+GeLU, residual+LayerNorm): auto = on "
        "GPU, off on CPU where it does not pay",
        ("auto", "true", "false"),
    )
    fused_vocab_tail: str = _f(
        "auto",
        "the generator's vocabulary tail (MLM loss, argmax, Gumbel sample, the noise's "
        "keys) as one compiled function, no fp32 copy of its logits; TP=1 only: auto = where "
        "the blocks compile (GPU)",
        ("auto", "true", "false"),
    )
    attention_backends: str = _f(
        "torch",
        "SDPA kernels in order of preference, e.g. cudnn,flash,efficient,math (the "
        "first that supports the inputs runs); torch: torch's own choice",
    )
    compile_mode: str = _f(
        "default",
        "torch.compile mode of the blocks: reduce-overhead = CUDA graphs of the compiled "
        "blocks (static shapes; off unless gpu-check measures it faster), max-autotune, ...",
        ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
    )
    compile_backend: str = _f(
        "inductor",
        "torch.compile backend of the blocks: inductor (fused Triton/C++ kernels); "
        "aot_eager or eager to tell a compiler problem from a model one",
    )

    def check(self, prefix: str) -> list[str]:
        p = []
        if not _divides(self.global_batch_size, self.micro_batch_size):
            p.append(
                f"{prefix}global_batch_size: {self.global_batch_size} is not a multiple of "
                f"{prefix}micro_batch_size={self.micro_batch_size}"
            )
        if self.compile_mode != "default" and self.compile_backend != "inductor":
            p.append(
                f"{prefix}compile_mode: {self.compile_mode!r} is an Inductor mode; {prefix}compile_backend is "
                f"{self.compile_backend!r}"
            )
        kernels = {"cudnn", "flash", "efficient", "math"}  # model.layers.ATTENTION_BACKENDS
        names = [n.strip() for n in self.attention_backends.split(",")]
        if self.attention_backends != "torch" and (
            not all(names) or set(names) - kernels or len(set(names)) < len(names)
        ):
            p.append(
                f"{prefix}attention_backends: {self.attention_backends!r} is not 'torch' or a comma-separated "
                f"order of distinct SDPA kernels from {', '.join(sorted(kernels))}"
            )
        return p


@dataclass
class ParallelConfig(Section):
    """Tensor parallelism (megatron-core); data parallelism is whatever ranks remain."""

    tensor_parallel_size: int = _f(1, "ranks that split each layer", bounds=">=1")
    collective_timeout: float = _f(
        600.0,
        "seconds any collective may wait for the other ranks before the run "
        "stops, saying a rank is hung, stopped or gone (the last checkpoint is kept)",
        bounds=">0",
    )
    stop_timeout: float = _f(
        60.0,
        "seconds after SIGUSR1/SIGTERM for the ranks to agree to stop; a rank still "
        "blocked on a hung peer by then exits, saying so (a save in progress is waited for)",
        bounds=">0",
    )


@dataclass
class DataConfig(Section):
    """Where the shards and tokenizer are and how they are streamed."""

    shards: str = _f("", "shard directory (with manifest.json), glob, brace list or URL")
    tokenizer: str = _f("", "tokenizer directory (SentencePiece model + special ids)")
    num_workers: int = _f(2, "loader worker processes per rank", bounds=">=0")
    shuffle_buffer: int = _f(1000, "samples held for shuffling", bounds=">=0")
    on_corrupt: str = _f("error", "what a corrupt shard does", ("error", "skip"))
    eval_shards: str = _f(
        "",
        "held-out shards: empty = the eval split `shards build` wrote beside data.shards "
        "(if any); a directory/glob/list; 'none': no evaluation",
    )
    dp_split: str = _f(
        "batch",
        "how data-parallel ranks share the data: 'batch' (all read one stream of global "
        "batches and collate only their rows: the same data, order and dropout for any DP size, so a "
        "run resumes on more or fewer GPUs with the same curve; each rank reads every sample's bytes) "
        "or 'shards' (each reads its own shards; resume needs the same DP size)",
        ("batch", "shards"),
    )


@dataclass
class TrackingConfig(Section):
    """MLflow tracking."""

    enabled: bool = _f(True, "log to MLflow from global rank 0")
    uri: str = _f(
        "",
        "tracking URI; empty: $MLFLOW_TRACKING_URI, else ./mlflow.db (SQLite, in the directory you "
        "start from; artifacts in ./mlruns)",
    )
    experiment: str = _f("electra", "MLflow experiment name")
    run_name: str = _f("", "MLflow run name (empty: flavor + time)")
    tags: str = _f("", "extra MLflow tags, key=value separated by commas (team=nlp,ablation=no-gdes)")
    flush_timeout: float = _f(
        30.0,
        "seconds to keep trying to reach MLflow at the end before giving up (and saying what was not sent)",
        bounds=">=0",
    )
    log_hf_export: bool = _f(False, "at the end, export the model to Hugging Face format and log it as artifacts")

    def check(self, prefix: str) -> list[str]:
        p = []
        try:
            self.tag_dict()
        except ValueError as e:
            p.append(str(e))
        if self.uri and (problem := uri_problem(self.uri)):
            p.append(f"{prefix}uri: {problem}")
        elif self.enabled and not self.uri and (problem := uri_problem(os.environ.get("MLFLOW_TRACKING_URI", ""))):
            p.append(f"{prefix}uri: $MLFLOW_TRACKING_URI={problem}")
        return p

    def tag_dict(self) -> dict[str, str]:
        """`tags` ("team=nlp,ablation=no-gdes") as a dict; ValueError naming the key if it is not that."""
        pairs = [item.split("=", 1) for item in self.tags.split(",") if item.strip()]
        if any(len(pair) != 2 or not pair[0].strip() for pair in pairs):
            raise ValueError(f"tracking.tags: {self.tags!r} is not a list of key=value separated by commas")
        return {k.strip(): v.strip() for k, v in pairs}


# what MLflow's tracking stores accept (a plain path is a file store)
URI_SCHEMES = ("http", "https", "sqlite", "file", "postgresql", "mysql", "mssql", "databricks", "databricks-uc", "uc")


def uri_problem(uri: str) -> str | None:
    """Why `uri` cannot be a tracking URI (a misspelled scheme is not an outage), else None."""
    if "://" not in uri and not uri.startswith("databricks"):
        return None  # a path
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme not in URI_SCHEMES:
        return (
            f"{uri!r} has the scheme {scheme!r}, which MLflow does not know (one of: {', '.join(URI_SCHEMES)}; "
            "or a path)"
        )
    return None
