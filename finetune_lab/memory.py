"""Module 04's memory arithmetic as code: full fine-tuning vs LoRA vs QLoRA for a model and a batch.

For the preflight (`python -m finetune_lab.doctor`), the notebook's memory cell and the GPU checks of these estimates
against real peaks (docs/gpu). Bytes per parameter as modules/04_Fine_Tuning_LLMs/README.md explains them: frozen
base weights 2 (16-bit), 4 (fp32) or ~0.52 (NF4); trained weights their own bytes + gradient + Adam's two moments;
activations ~34 x hidden_size bytes per token and layer in 16-bit (Korthikanti et al., 2022), plus the logits.
"""

from dataclasses import dataclass

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# NF4: 4 bits per weight, one fp8 scale per 64 weights, and an fp32 scale per 256 of those (double quantization).
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
ACTIVATION_BYTES_PER_HIDDEN = 34
LOGIT_BYTES = 10  # per logit: the 16-bit logits, their fp32 copy for the loss, its gradient
MB = 2**20


@dataclass(frozen=True)
class ModelShape:
    """What the arithmetic needs to know about a model, read from its config without loading weights."""

    params: int  # all parameters
    quantizable: int  # parameters in the blocks' linear layers (what a 4-bit base stores in NF4)
    lora_per_rank: int  # LoRA parameters per unit of rank on the target layers: sum of (d_in + d_out)
    hidden: int
    layers: int
    vocab: int


def shape_of(config, target_modules) -> ModelShape:
    """Count parameters on the meta device: exact for any architecture, no memory, no download."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    params = sum(p.numel() for p in model.parameters())
    linear = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and name.startswith(("model.layers", "model.decoder.layers", "transformer.h"))
    ]
    lora = sum(m.in_features + m.out_features for name, m in linear if name.rsplit(".", 1)[-1] in target_modules)
    return ModelShape(
        params=params,
        quantizable=sum(m.weight.numel() for _, m in linear),
        lora_per_rank=lora,
        hidden=text.hidden_size,
        layers=text.num_hidden_layers,
        vocab=text.vocab_size,
    )


@dataclass(frozen=True)
class MemoryEstimate:
    weights_mb: float  # the model's weights as stored (frozen base, or everything for full fine-tuning)
    training_state_mb: float  # what trains: its gradients and Adam's moments (and LoRA's own weights)
    activations_mb: float
    trainable_params: int

    @property
    def total_mb(self) -> float:
        return self.weights_mb + self.training_state_mb + self.activations_mb


def estimate(shape: ModelShape, cfg, dtype: str, gradient_checkpointing: bool) -> MemoryEstimate:
    """Peak training memory (torch's allocated) of one step of `cfg` (method, rank, batch x length) in `dtype`."""
    half, method = BYTES[dtype], cfg.method
    if method == "full":
        # fp16 keeps fp32 master weights (the loss scaler cannot step fp16 weights); bf16 trains in bf16.
        stored = 4 if dtype != "bfloat16" else half
        weights, trainable = shape.params * stored, shape.params
        state = shape.params * stored * 3  # gradient + Adam's two moments
    else:
        trainable = shape.lora_per_rank * cfg.rank
        quantized = shape.quantizable if method == "qlora" else 0  # the NF4 layers of a 4-bit base
        weights = quantized * NF4_BYTES + (shape.params - quantized) * half
        state = trainable * 16  # fp32 adapter weight, gradient, two moments
    tokens = cfg.batch_size * cfg.max_seq_length
    per_layer = tokens * shape.hidden * ACTIVATION_BYTES_PER_HIDDEN * half / 2
    if gradient_checkpointing:  # every layer keeps its input; one layer at a time is recomputed in full
        activations = tokens * shape.hidden * half * shape.layers + per_layer
    else:
        activations = per_layer * shape.layers
    activations += tokens * shape.vocab * LOGIT_BYTES
    return MemoryEstimate(weights / MB, state / MB, activations / MB, trainable)
