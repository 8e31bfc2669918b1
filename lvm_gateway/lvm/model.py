"""The LVM project's memory-augmented GRU, state_dict-compatible with its checkpoints.

The layer names, shapes and the buffer/parameter split are part of the checkpoint format
(the LVM project's published format), so they must not change: with the default sizes the
module has exactly 11,292,160 trainable parameters and the documented state_dict keys.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MODEL_TYPE = "memory_gru"

# The reference implementation blends each training batch into the memory bank at this rate.
_MEMORY_WRITE_RATE = 0.1
_MEMORY_INIT_SCALE = 0.01


@dataclass(frozen=True)
class GRUSizes:
    d_model: int = 768
    hidden_dim: int = 512
    num_layers: int = 4
    memory_slots: int = 2048

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class SlotMemory(nn.Module):
    """A bank of slots read by cosine-similarity attention, written by a learned gate."""

    def __init__(self, num_slots: int, slot_dim: int, query_dim: int) -> None:
        super().__init__()
        # A buffer, not a parameter: the bank changes by writes, never by gradient descent.
        self.register_buffer("memory", torch.randn(num_slots, slot_dim) * _MEMORY_INIT_SCALE)
        self.query_proj = nn.Linear(query_dim, slot_dim)
        self.write_gate = nn.Linear(query_dim, num_slots)

    def read(self, query: torch.Tensor) -> torch.Tensor:
        """(batch, query_dim) -> (batch, slot_dim): softmax over cosine, sum of the raw slots."""
        q = F.normalize(self.query_proj(query), dim=-1)
        attention = torch.softmax(q @ F.normalize(self.memory, dim=-1).T, dim=-1)
        return attention @ self.memory

    @torch.no_grad()
    def write(self, query: torch.Tensor, value: torch.Tensor) -> None:
        """Blend the batch's mean value into the slots the gate picks (the reference's rule)."""
        where = torch.softmax(self.write_gate(query), dim=-1).mean(dim=0)
        update = torch.outer(where, value.mean(dim=0))
        # A new tensor rather than in place: the old bank is still saved for this step's backward.
        self.memory = (1.0 - _MEMORY_WRITE_RATE) * self.memory + _MEMORY_WRITE_RATE * update


class MemoryAugmentedGRU(nn.Module):
    def __init__(
        self,
        d_model: int = 768,
        hidden_dim: int = 512,
        num_layers: int = 4,
        memory_slots: int = 2048,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.sizes = GRUSizes(d_model, hidden_dim, num_layers, memory_slots)
        self.input_norm = nn.LayerNorm(d_model)
        self.memory = SlotMemory(memory_slots, d_model, hidden_dim)
        self.gru = nn.GRU(
            input_size=2 * d_model,  # each step also carries the memory content
            hidden_size=hidden_dim,
            num_layers=num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.fusion = nn.Sequential(
            nn.Linear(hidden_dim + d_model, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.LayerNorm(hidden_dim),
        )
        self.output_proj = nn.Sequential(
            nn.Linear(hidden_dim, 2 * hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(2 * hidden_dim, d_model),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, steps, d_model) -> (batch, d_model) unit vectors: the raw (non-delta) output."""
        _, hidden = self._encode(x)
        return self.head(hidden[-1])

    def forward_steps(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, steps, d_model) -> (batch, steps, d_model): the output after every prefix.

        The GRU is causal and the first memory read does not depend on the input, so step t
        equals `forward(x[:, : t + 1])`; training on every step gets `steps` targets per pass.
        In training mode each call also writes the batch into the memory bank.
        """
        outputs, hidden = self._encode(x)
        batch, steps, _ = outputs.shape
        raw = self.head(outputs.reshape(batch * steps, -1))
        if self.training:
            self.memory.write(hidden[-1], raw.reshape(batch, steps, -1)[:, -1])
        return raw.reshape(batch, steps, -1)

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, steps, _ = x.shape
        zero_query = x.new_zeros(batch, self.sizes.hidden_dim)
        content = self.memory.read(zero_query).unsqueeze(1).expand(-1, steps, -1)
        return self.gru(torch.cat([self.input_norm(x), content], dim=-1))

    def head(self, final_hidden: torch.Tensor) -> torch.Tensor:
        """(batch, hidden_dim) last-layer hidden state -> (batch, d_model) unit output."""
        fused = self.fusion(torch.cat([final_hidden, self.memory.read(final_hidden)], dim=-1))
        return F.normalize(self.output_proj(fused), dim=-1)


def delta_prediction(context: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
    """The LVM project's delta mode: normalize(last context vector + model output)."""
    return F.normalize(context + raw, dim=-1)


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class GRUPredictor:
    """A trained GRU behind the Predictor protocol: inference mode, delta prediction."""

    model_type = MODEL_TYPE

    def __init__(self, model: MemoryAugmentedGRU, context_length: int | None) -> None:
        self.model = model.eval()
        self.context_length = context_length  # None: read the whole context
        self._gru = fold_memory_read(self.model)

    def predict(self, context: np.ndarray, tmd: tuple[int, int, int] | None) -> np.ndarray:
        return self.predict_batch(context[None])[0]

    def predict_batch(self, contexts: np.ndarray) -> np.ndarray:
        """(batch, n, d_model) contexts of one length -> (batch, d_model) unit float32."""
        d_model = self.model.sizes.d_model
        if contexts.ndim != 3 or contexts.shape[1] == 0 or contexts.shape[2] != d_model:
            raise ValueError(f"contexts must be (batch, n >= 1, {d_model}), got {contexts.shape}")
        if self.context_length is not None:
            contexts = contexts[:, -self.context_length :]
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(contexts, dtype=np.float32))
            _, hidden = self._gru(self.model.input_norm(x))
            out = delta_prediction(x[:, -1], self.model.head(hidden[-1]))
        return out.numpy()


def fold_memory_read(model: MemoryAugmentedGRU) -> nn.GRU:
    """An inference-only copy of the GRU that reads the normalised context alone.

    Outside training the first memory read (zero query) is a constant, so its share of layer 0's
    input projection is a constant too and folds into that layer's input bias (which sits
    outside the reset gate, so the fold is exact): half of layer 0's input work saved per step.
    """
    s = model.sizes
    gru = nn.GRU(s.d_model, s.hidden_dim, s.num_layers, batch_first=True)
    with torch.no_grad():
        content = model.memory.read(torch.zeros(1, s.hidden_dim))[0]
        state = {k: v.clone() for k, v in model.gru.state_dict().items()}
        weight = state["weight_ih_l0"]
        state["bias_ih_l0"] += weight[:, s.d_model :] @ content
        state["weight_ih_l0"] = weight[:, : s.d_model].contiguous()
        gru.load_state_dict(state)
    return gru.eval()
