"""Training FLOPs per token and model FLOPs utilization (MFU).

Per encoder and token: 6 · N_matmul (forward + backward of every weight matrix) + 12 · L · h · s
for attention scores and values (bidirectional, so not halved). The generator's output layer
counts only at masked positions; of a frozen generator (objective.generator=frozen) its forward
only. Embedding look-ups are free. ELECTRA-Large at s = 512 comes to ≈ 2.17 GFLOP per token, the
generator ≈ 9 % of it.
"""

from __future__ import annotations

import os

from electra_dist.config import EncoderConfig, ModelConfig

# dense (non-sparse) peak TFLOP/s by device-name fragment and precision
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
    "H100 SXM": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
    "H100 80GB HBM3": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
    "H100 NVL": {"bf16": 835.0, "fp16": 835.0, "fp32": 60.0},
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "fp32": 51.0},
    "H100": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5},
    "L40S": {"bf16": 362.0, "fp16": 362.0, "fp32": 91.6},
    "A10G": {"bf16": 70.0, "fp16": 70.0, "fp32": 31.2},
    "V100": {"bf16": 0.0, "fp16": 125.0, "fp32": 15.7},
}


def encoder_matmul_params(enc: EncoderConfig, architecture: str = "bert") -> int:
    h, f = enc.hidden_size, enc.intermediate_size
    ffn = 3 * h * f if architecture == "modern" else 2 * h * f  # GeGLU: value and gate in, one out
    return enc.num_layers * (4 * h * h + ffn)  # QKV + output, the FFN matrices


def flops_per_sequence(
    cfg: ModelConfig, seq_len: int, masked: float, objective: str = "electra", frozen: ModelConfig | None = None
) -> float:
    """Training FLOPs for one sequence of `seq_len` tokens with `masked` masked positions; with a `frozen`
    generator (its own shape and embedding width) only its forward counts: a third of forward + backward."""
    s, v = seq_len, cfg.vocab_size
    d, g = cfg.discriminator, cfg.generator

    def encoder(enc: EncoderConfig, e: int, arch: str) -> float:
        proj = e * enc.hidden_size if e != enc.hidden_size else 0
        # attention: every layer's S × S scores, local ones too (SDPA computes them all under the window mask)
        matmul = encoder_matmul_params(enc, arch)
        return 6 * (matmul + proj) * s + 12 * enc.num_layers * enc.hidden_size * s * s

    def mlm(enc: EncoderConfig, e: int, arch: str = cfg.architecture) -> float:
        return encoder(enc, e, arch) + 6 * masked * (enc.hidden_size * e + e * v)

    if objective == "mlm":  # one encoder of discriminator size with an MLM head
        return mlm(d, cfg.embedding_size)
    disc = encoder(d, cfg.embedding_size, cfg.architecture) + 6 * (d.hidden_size * d.hidden_size + d.hidden_size) * s
    if frozen is not None:
        return disc + mlm(frozen.generator, frozen.embedding_size, frozen.architecture) / 3
    return disc + mlm(g, cfg.embedding_size)


def flops_per_token(cfg: ModelConfig, seq_len: int, mask_prob: float, objective: str = "electra") -> float:
    return flops_per_sequence(cfg, seq_len, mask_prob * seq_len, objective) / seq_len


def peak_tflops(device_name: str, precision: str) -> float | None:
    """Peak dense TFLOP/s for a device, from $ELECTRA_DIST_PEAK_TFLOPS or the table; None if unknown."""
    override = os.environ.get("ELECTRA_DIST_PEAK_TFLOPS")
    if override:
        return float(override)
    for fragment, peaks in PEAK_TFLOPS.items():
        if fragment.lower() in device_name.lower():
            return peaks.get(precision) or None
    return None
