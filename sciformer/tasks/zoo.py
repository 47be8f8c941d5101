"""Forecast pretraining on a dynamics-zoo corpus: many systems of different dimensions.

A corpus (`sciformer simulate zoo`, docs/zoo.md) holds one group per chaotic system,
`systems/<i>_<bases>/states (n_traj, n_time, n_fields)`, with n_fields from 3 to 12. One
model learns them all through channel-agnostic tokens (`tokenizers.agnostic`): every channel
is its own series of patch tokens, normalised per context (RevIN). Channel attention
(`model.channel_attention`, off by default: measured worse zero-shot, docs/zoo-model.md) lets
the channels of one window see each other, as in Panda (Lai, Bao & Gilpin 2025), which
pretrains on a zoo of perturbed and coupled chaotic flows the same way.

- **Batches.** Without channel attention a training example is one window of ONE channel of
  one trajectory of one system (rows (B, T, 1)). With it, an example is one window of ALL
  channels: windows of systems of different dimensions are packed channel row after channel
  row, (R, T, 1) with R the sum of their channel counts, and the batch's `channels` (G,)
  gives each window's count, so the model groups rows by window and never mixes channels of
  different windows. `train.batch_size` counts windows either way.

- **Own draws as decoder inputs.** `data.sampled_inputs` (a share of the batches, from
  `data.sampled_inputs_from` of the steps on) feeds the decoder the model's own sampled
  patches instead of the true ones, as for one system (scheduled sampling); pushforward is
  refused (a window holds one horizon).
- **Split by whole system.** `data.val_fraction` of the corpus GROUPS (seeded) are held out
  for validation; no window of a held-out group is ever in a training batch. The corpus never
  holds the library's held-out base systems (rossler, halvorsen, ...): those are for
  zero-shot evaluation (`sciformer evaluate RUN rossler.h5`).
- **Sampling.** Each training example draws a training system uniformly (so large and small
  systems weigh the same), then a trajectory, (without channel attention) a channel, and a
  start uniformly.
- **Provenance.** The run's task state records `base_systems` (the corpus's root attribute)
  and split.json names the training and validation groups.

The training states are read into memory once (a 100-system corpus is ~10 MB).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import Tensor, nn

from sciformer.config import RunConfig, explicit_keys
from sciformer.config_tasks import for_task
from sciformer.errors import ConfigError, InputError
from sciformer.model.analog import AnalogAnchor
from sciformer.runs import ForecastState
from sciformer.simulate.zoo_io import FORMAT, iter_zoo, read_zoo_attrs
from sciformer.splits import split_indices
from sciformer.tasks import micro_seed
from sciformer.tasks.anchors import check_analog_context
from sciformer.tasks.forecast import make_tokenizer, rollout_plan, teacher_forced_loss

VAL_WINDOWS = 256  # fixed validation windows of one channel each
VAL_STATES = 64  # ... of whole states each (channel attention)


def is_zoo_corpus(path: str | Path) -> bool:
    """Whether `path` is a zoo corpus (root attribute format, or a `systems/` group)."""
    try:
        with h5py.File(path, "r") as f:
            fmt = f.attrs.get("format", b"")
            fmt = fmt.decode() if isinstance(fmt, bytes) else str(np.asarray(fmt).reshape(-1)[0]
                                                                   if np.size(fmt) else "")
            return fmt == FORMAT or isinstance(f.get("systems"), h5py.Group)
    except OSError:
        return False


#: What a zoo model's settings must be: the first value is what `auto` (or no setting) gives.
AGNOSTIC = {"tokenizer": ("patch",), "channels": ("independent",), "scaling": ("instance",),
            "anchor": ("analog", "persistence")}


def require_agnostic(cfg: RunConfig, source: str) -> RunConfig:
    """`cfg` with channel-agnostic settings (patch tokens, independent channels, instance
    scaling, an analogue or persistence anchor); an explicit setting to the contrary is
    refused, naming it (`data.anchor: auto` resolves to analog: measured better zero-shot,
    docs/zoo-model.md)."""
    user = explicit_keys(cfg)
    for key, allowed in AGNOSTIC.items():
        have = getattr(cfg.data, key)
        if have not in (*allowed, "auto") and f"data.{key}" in user:
            need = " or ".join(repr(v) for v in allowed)
            raise ConfigError(f"{source}: a zoo corpus trains a channel-agnostic model; "
                              f"data.{key}={have!r} cannot be used (needs {need})")
        if have not in allowed:
            setattr(cfg.data, key, allowed[0])
    return cfg


class ZooTask:
    """Pretraining task over one zoo corpus; see the module docstring."""

    name = "forecast"

    def __init__(self, cfg: RunConfig, path: Path) -> None:
        self.path = Path(path)
        attrs = read_zoo_attrs(self.path)
        self.base_systems = [str(b) for b in np.atleast_1d(attrs.get("base_systems", []))]
        self.held_out_systems = [str(b) for b in np.atleast_1d(attrs.get("held_out_systems", []))]
        cfg = require_agnostic(cfg, str(self.path))
        d = cfg.data
        self.window_len = d.context + d.horizon
        self.analog = AnalogAnchor() if d.anchor == "analog" else None
        if self.analog:
            check_analog_context(d.context, str(self.path))
        if d.pushforward:
            raise ConfigError(f"{self.path}: data.pushforward is not supported on a zoo corpus "
                              "(its windows hold one horizon); use data.sampled_inputs")
        if d.context % d.patch_len or d.horizon % d.patch_len:
            raise InputError(f"data.context={d.context} and data.horizon={d.horizon} must be "
                             f"multiples of data.patch_len={d.patch_len}")
        self.names, self.entries, states = [], [], []
        for name, entry, ds in iter_zoo(self.path):
            self.names.append(name)
            self.entries.append(entry)
            states.append(ds)  # read below, only for the training and validation groups
            if entry.shape[1] < self.window_len:
                raise InputError(f"{self.path}: group systems/{name} has {entry.shape[1]} "
                                 f"steps, fewer than context {d.context} + horizon {d.horizon}")
        if len(self.names) < 2 and d.val_fraction > 0:
            raise InputError(f"{self.path}: a held-out split by whole system needs at least 2 "
                             "systems (or set data.val_fraction=0)")
        self.train_idx, self.val_idx = split_indices(len(self.names), d.val_fraction,
                                                     d.val_max, cfg.train.seed)
        self.states = self._read(sorted(self.train_idx + self.val_idx))
        self.tokenizer = make_tokenizer(cfg, 1)
        q = len(d.quantiles)
        self.cfg = for_task(cfg, self.name, vocab_size=0, input_dim=self.tokenizer.token_dim,
                            anchor_input=self.analog is not None,
                            output_dim=self.tokenizer.token_dim * q)

    def _read(self, groups: list[int]) -> dict[int, np.ndarray]:
        """States (n_traj, n_time, n_fields) float32 of `groups`, in memory."""
        out = {}
        with h5py.File(self.path, "r") as f:
            for g in groups:
                x = np.asarray(f["systems"][self.names[g]]["states"], dtype=np.float32)
                if not np.isfinite(x).all():
                    raise InputError(f"{self.path}: group systems/{self.names[g]} holds NaN "
                                     "or Inf states")
                out[g] = x
        return out

    def state(self) -> ForecastState:
        dts = [self.entries[i].dt for i in self.train_idx]
        return ForecastState(train_files=[str(self.path)], state_shape=[1], n_features=1,
                             dt=float(np.median(dts)) if dts else 1.0, lyapunov_time=None,
                             system="zoo", field_names=None,
                             tokenizer=self.tokenizer.to_config(), channel_agnostic=True,
                             base_systems=self.base_systems,
                             anchor=self.analog.describe() if self.analog else None)

    def init_model(self, model: nn.Module) -> None:
        """Give a new (or fine-tuned) model the analogue anchor, if this run has one."""
        if self.analog:
            model.anchor = self.analog

    def split(self) -> dict[str, Any]:
        return {"unit": "system", "files": [str(self.path)],
                "train": self.train_idx, "heldout": self.val_idx,
                "train_systems": [self.names[i] for i in self.train_idx],
                "heldout_systems": [self.names[i] for i in self.val_idx],
                "base_systems": self.base_systems,
                "held_out_base_systems": self.held_out_systems}

    def batch(self, index: int, rank: int = 0, world: int = 1) -> dict[str, Tensor]:
        """`batch_size` windows, seeded by the batch index: one random channel each, or with
        channel attention whole states; their channels as rows (R, C+H, 1), window after
        window, and each window's channel count (G,)."""
        rng = np.random.default_rng(micro_seed(self.cfg.train.seed, index * world + rank, 11))
        whole = self.cfg.model.channel_attention
        wins = []
        for g in rng.choice(self.train_idx, size=self.cfg.train.batch_size):
            x = self.states[int(g)]  # (n_traj, n_time, n_fields)
            t = rng.integers(x.shape[0])
            ch = None if whole else int(rng.integers(x.shape[2]))
            s = rng.integers(0, x.shape[1] - self.window_len + 1)
            cols = slice(None) if whole else slice(ch, ch + 1)
            wins.append((x[t, s:s + self.window_len], cols))  # whole state, channels used
        _, sampled, seed = rollout_plan(self.cfg, index, rng)  # nothing pushed (checked)
        return {**self._pack(wins), "plan": torch.tensor([sampled, seed], dtype=torch.int64)}

    def _pack(self, wins: list[tuple[np.ndarray, slice]]) -> dict[str, Tensor]:
        """Whole-state windows (C+H, n_fields) with the channels each example uses, packed
        (`pack_windows`), with the analogue anchor's forecast of each window computed on its
        whole state (`anchor`, rows as `window`) when the run has that anchor."""
        batch = pack_windows([w[:, cols] for w, cols in wins])
        if self.analog:
            c, h = self.cfg.data.context, self.cfg.data.horizon
            futures = [self.analog.forecast(torch.from_numpy(w[None, :c]), h)[0].numpy()
                       for w, _ in wins]  # (H, n_fields) each
            batch["anchor"] = pack_windows([f[:, cols] for f, (_, cols) in zip(futures, wins)]
                                           )["window"]  # (R, H, 1)
        return batch

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Any]]:
        x, d = batch["window"], self.cfg.data
        sampled, seed = (int(v) for v in batch.get("plan", (0, 0)))
        gen = torch.Generator(device=x.device).manual_seed(seed) if sampled else None
        loss = teacher_forced_loss(model, self.tokenizer, x[:, :d.context], x[:, d.context:],
                                   d.quantiles, sampled=bool(sampled), gen=gen, draws=d.draws,
                                   channels=batch["channels"], anchor_future=batch.get("anchor"))
        return loss, {"loss": loss.detach()}

    def validation_windows(self) -> list[tuple[np.ndarray, slice]]:
        """Fixed whole-state windows (C+H, n_fields) spread evenly over the validation
        systems, each with the channels it is scored on: all of them with channel attention,
        else one."""
        whole, wins = self.cfg.model.channel_attention, []
        per = max(1, (VAL_STATES if whole else VAL_WINDOWS) // max(1, len(self.val_idx)))
        for g in self.val_idx:
            x = self.states[g]
            n_tr, n_t, n_ch = x.shape
            for k in range(per):
                s = int(round(k * (n_t - self.window_len) / max(1, per - 1)))
                cols = slice(None) if whole else slice(k % n_ch, k % n_ch + 1)
                wins.append((x[k % n_tr, s:s + self.window_len], cols))
        return wins

    @torch.no_grad()
    def validate(self, model: nn.Module) -> dict[str, float]:
        """Mean loss per channel row on the fixed validation windows."""
        if not self.val_idx:
            return {}
        if not hasattr(self, "_val"):
            wins, size = self.validation_windows(), self.cfg.train.batch_size
            self._val = [self._pack(wins[i:i + size]) for i in range(0, len(wins), size)]
        device = next(model.parameters()).device
        c, total, n = self.cfg.data.context, 0.0, 0
        for chunk in self._val:
            x = chunk["window"].to(device)
            anchor = chunk.get("anchor")
            anchor = None if anchor is None else anchor.to(device)
            loss = teacher_forced_loss(model, self.tokenizer, x[:, :c], x[:, c:],
                                       self.cfg.data.quantiles, channels=chunk["channels"],
                                       anchor_future=anchor)
            total, n = total + loss.item() * len(x), n + len(x)
        return {"val_loss": total / n}


def pack_windows(wins: list[np.ndarray]) -> dict[str, Tensor]:
    """Windows (T, C_g) of any channel counts -> their channels as one-channel rows
    (sum C_g, T, 1), window after window, and the counts (G,) (`model.channels.Groups`)."""
    rows = np.concatenate([w.T for w in wins])[:, :, None]
    return {"window": torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32)),
            "channels": torch.tensor([w.shape[1] for w in wins], dtype=torch.int64)}
