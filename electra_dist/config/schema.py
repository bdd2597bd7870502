"""The config sections: typed dataclasses whose fields carry their help text and allowed values."""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """Raised once with every problem found in a config, one per line."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = problems
        where = f" in {source}" if source else ""
        super().__init__(f"{len(problems)} problem(s) in the config{where}:\n  - " + "\n  - ".join(problems))


def _f(default: Any, help: str, choices: tuple | None = None) -> Any:
    meta = {"help": help, "choices": choices}
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

    def _freeze(self) -> None:
        for value in vars(self).values():
            if isinstance(value, Section):
                value._freeze()
        object.__setattr__(self, "_frozen", True)


@dataclass
class EncoderConfig(Section):
    """A post-LN BERT encoder stack."""

    num_layers: int = _f(12, "transformer blocks")
    hidden_size: int = _f(256, "width of the residual stream")
    num_heads: int = _f(4, "attention heads (hidden_size must divide evenly)")
    intermediate_size: int = _f(1024, "feed-forward inner width")


@dataclass
class ModelConfig(Section):
    """Shared embeddings + generator + discriminator."""

    vocab_size: int = _f(30522, "tokenizer vocabulary size (taken from the tokenizer when one is given)")
    pad_vocab_multiple: int = _f(
        128, "pad the embedding rows to a multiple of this × tensor_parallel_size (1: no padding)"
    )
    embedding_size: int = _f(128, "token/position/type embedding width, projected to each encoder's hidden size")
    max_position_embeddings: int = _f(512, "longest sequence the position table holds")
    type_vocab_size: int = _f(2, "token-type (segment) ids")
    dropout: float = _f(0.1, "hidden dropout probability")
    attention_dropout: float = _f(0.1, "attention-probability dropout")
    layer_norm_eps: float = _f(1e-12, "LayerNorm epsilon (BERT/ELECTRA use 1e-12)")
    initializer_range: float = _f(0.02, "std of the normal weight init")
    discriminator: EncoderConfig = _f(EncoderConfig(), "the discriminator encoder (the model we keep)")
    generator: EncoderConfig = _f(EncoderConfig(12, 64, 1, 256), "the generator encoder (a small MLM)")

    def padded_vocab_size(self, tensor_parallel_size: int = 1) -> int:
        m = max(1, self.pad_vocab_multiple) * tensor_parallel_size
        return int(math.ceil(self.vocab_size / m) * m)


@dataclass
class ObjectiveConfig(Section):
    """What is learned: ELECTRA replaced-token detection, or BERT-style MLM as a baseline."""

    kind: str = _f("electra", "pre-training objective", ("electra", "mlm"))
    mask_prob: float = _f(0.15, "fraction of non-pad tokens masked per sequence")
    mask_token_fraction: float = _f(
        0.85, "of the masked positions, the fraction shown as [MASK] (the rest keep their token)"
    )
    generator_weight: float = _f(1.0, "weight of the generator MLM loss")
    discriminator_weight: float = _f(50.0, "λ: weight of the discriminator loss")
    temperature: float = _f(1.0, "Gumbel sampling temperature")
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

    lr: float = _f(5e-4, "peak learning rate")
    weight_decay: float = _f(0.01, "decoupled weight decay (not on LayerNorm or biases)")
    beta1: float = _f(0.9, "Adam β1")
    beta2: float = _f(0.999, "Adam β2")
    eps: float = _f(1e-6, "Adam ε")
    warmup_steps: int = _f(10000, "linear warm-up steps")
    grad_clip: float = _f(1.0, "global gradient-norm clip (0: off)")
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

    seq_len: int = _f(128, "tokens per sequence (must match the shards)")
    global_batch_size: int = _f(128, "sequences per optimizer step, over all data-parallel ranks")
    micro_batch_size: int = _f(128, "sequences per rank per forward/backward")
    max_steps: int = _f(1_000_000, "optimizer steps")
    log_interval: int = _f(100, "steps between metric records")
    save_interval: int = _f(5000, "steps between checkpoints")
    keep_last: int = _f(3, "complete checkpoints kept")
    eval_interval: int = _f(1000, "steps between held-out evaluations (and at the last step); 0: never")
    eval_samples: int = _f(1024, "held-out sequences each evaluation reads (the same ones, the same corruption)")
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


@dataclass
class ParallelConfig(Section):
    """Tensor parallelism (megatron-core); data parallelism is whatever ranks remain."""

    tensor_parallel_size: int = _f(1, "ranks that split each layer")
    collective_timeout: float = _f(
        600.0,
        "seconds any collective may wait for the other ranks before the run "
        "stops, saying a rank is hung, stopped or gone (the last checkpoint is kept)",
    )
    stop_timeout: float = _f(
        60.0,
        "seconds after SIGUSR1/SIGTERM for the ranks to agree to stop; a rank still "
        "blocked on a hung peer by then exits, saying so (a save in progress is waited for)",
    )


@dataclass
class DataConfig(Section):
    """Where the shards and tokenizer are and how they are streamed."""

    shards: str = _f("", "shard directory (with manifest.json), glob, brace list or URL")
    tokenizer: str = _f("", "tokenizer directory (SentencePiece model + special ids)")
    num_workers: int = _f(2, "loader worker processes per rank")
    shuffle_buffer: int = _f(1000, "samples held for shuffling")
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
        30.0, "seconds to keep trying to reach MLflow at the end before giving up (and saying what was not sent)"
    )
    log_hf_export: bool = _f(False, "at the end, export the model to Hugging Face format and log it as artifacts")

    def tag_dict(self) -> dict[str, str]:
        """`tags` ("team=nlp,ablation=no-gdes") as a dict; ValueError naming the key if it is not that."""
        pairs = [item.split("=", 1) for item in self.tags.split(",") if item.strip()]
        if any(len(pair) != 2 or not pair[0].strip() for pair in pairs):
            raise ValueError(f"tracking.tags: {self.tags!r} is not a list of key=value separated by commas")
        return {k.strip(): v.strip() for k, v in pairs}
