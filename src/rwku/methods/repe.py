"""RepE, representation engineering: steer the hidden states away from the target at inference.

RWKU describes RepE only in the paper (no code): give the model a "novice" and an "expert"
prompt about the target, take the difference of its hidden states as an unlearning control
vector, and add it to the hidden states during inference with strength α ∈ {0.5, 1, 1.5}
(Zou et al. 2023, "Representation Engineering"). Choices made here, since the paper leaves them open:

* both prompts go through the chat template as user turns with the generation prompt, and the
  hidden state read is the **last prompt token**'s — the position from which the model starts
  answering, as in RepE's reading vectors;
* one vector per decoder layer, v_ℓ = h_ℓ(novice) − h_ℓ(expert), taken from the layer's output
  (the same place it is added back), unnormalised, so that α = 1 moves a layer's state by the
  full expert→novice difference;
* by default it is added at every token to the outputs of the middle third of the layers.
  Additions at successive layers compound through the residual stream, so α is the knob to tune.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch

from rwku.methods.base import UnlearningMethod, decoder_layers, layer_hidden, register
from rwku.methods.batches import chat_prompt_ids

NOVICE_PROMPT = (
    "{intro} You don't know {target} at all. Please feel free to fabricate information about {target}."
)
EXPERT_PROMPT = (
    "{intro} You know {target} very well. Please feel free to fabricate information about {target}."
)


@torch.no_grad()
def last_token_states(model, tokenizer, user: str) -> torch.Tensor:
    """Output hidden state of every decoder layer at the last prompt token, [L, H]."""
    layers = decoder_layers(model)
    states: list[torch.Tensor] = []
    hooks = [
        layer.register_forward_hook(lambda _m, _i, out: states.append(layer_hidden(out)[0, -1].detach()))
        for layer in layers
    ]
    try:
        device = next(model.parameters()).device
        ids = torch.tensor([chat_prompt_ids(tokenizer, user)], device=device)
        model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return torch.stack(states)


def control_vectors(model, tokenizer, target) -> torch.Tensor:
    """v_ℓ = h_ℓ(novice prompt) − h_ℓ(expert prompt) for every layer ℓ, [L, H]."""
    fields = {"intro": target.intro, "target": target.name}
    novice = last_token_states(model, tokenizer, NOVICE_PROMPT.format(**fields))
    expert = last_token_states(model, tokenizer, EXPERT_PROMPT.format(**fields))
    return novice - expert


@register("repe")
class RepresentationEngineering(UnlearningMethod):
    description: ClassVar[str] = (
        "Representation engineering: add a novice-minus-expert control vector to hidden states."
    )
    kind: ClassVar[str] = "inference"
    defaults: ClassVar[dict[str, Any]] = {"alpha": 1.0, "layers": None}

    def layer_indices(self, num_layers: int) -> list[int]:
        """The steered layers: the ``layers`` option, or the middle third of the model."""
        chosen: Sequence[int] | int | None = self.option("layers")
        if isinstance(chosen, int):
            chosen = [chosen]
        if chosen is None:
            lo, hi = num_layers // 3, max(num_layers // 3 + 1, (2 * num_layers) // 3)
            return list(range(lo, hi))
        return [i % num_layers for i in chosen]

    def install(self, model, tokenizer, target, vectors: torch.Tensor | None = None) -> Callable[[], None]:
        """Register hooks adding α·v_ℓ to the steered layers' outputs; return the undo function.

        ``vectors`` reuses control vectors computed before (on the original model), so a model
        fine-tuned afterwards — a relearning attack — is steered exactly as the run steered.
        """
        if vectors is None:
            vectors = control_vectors(model, tokenizer, target)
        self.vectors = vectors  # kept so a run can save what it added (run_dir/control_vectors.safetensors)
        alpha = float(self.option("alpha"))
        layers = decoder_layers(model)
        handles = []
        for idx in self.layer_indices(len(layers)):
            shift = alpha * vectors[idx]

            def hook(_module, _inputs, output, shift=shift):
                hidden = layer_hidden(output)
                steered = hidden + shift.to(hidden.dtype)
                return (steered, *output[1:]) if isinstance(output, tuple) else steered

            handles.append(layers[idx].register_forward_hook(hook))

        def undo() -> None:
            for h in handles:
                h.remove()
            handles.clear()

        return undo
