"""The optional speed-ups give the same results as the plain path, within tolerance.

- bf16 autocast (`sciformer.train.loop.autocast`) vs fp32: outputs, loss and gradients;
- `torch.compile`: Dynamo graph capture (aot_eager backend, fast) and Inductor (slow);
- activation checkpointing under dropout: the recomputation replays the same dropout masks
  (the no-dropout case is in tests/test_model.py);
- the bulk FASTA path (`read_fasta_batches` + `ProteinTokenizer.encode_concatenated`,
  `encode_many`) vs the record path, including errors and warnings;
- the benchmarks' analytic FLOP count (the MFU numerator) vs torch's FLOP counter.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sciformer.config import ModelConfig, load_config
from sciformer.errors import InputError
from sciformer.io import fasta as fasta_mod
from sciformer.io.fasta import read_fasta, read_fasta_batches
from sciformer.model import SciFormer
from sciformer.model.attention import KERNELS
from sciformer.tokenizers.protein import ProteinTokenizer
from sciformer.train.loop import autocast, pretrain
from tests.conftest import metrics_log

CPU = torch.device("cpu")
TOK = ProteinTokenizer()


def tiny(**overrides) -> ModelConfig:
    base = dict(d_model=32, n_heads=4, n_encoder_layers=2, n_decoder_layers=2, d_ff=64,
                dropout=0.0, window=4, vocab_size=24)
    base.update(overrides)
    return ModelConfig(**base)


def batch(b: int = 3, s: int = 14, t: int = 6, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    src, tgt = torch.randint(0, 24, (b, s), generator=g), torch.randint(0, 24, (b, t), generator=g)
    src_pad = torch.arange(s)[None, :] >= torch.tensor([s, s - 3, s - 5])[:b, None]
    return src, tgt, src_pad


def seq2seq_loss(model: SciFormer, src, tgt, src_pad) -> torch.Tensor:
    logits = model.token_logits(model(src, tgt, src_pad))
    return F.cross_entropy(logits.flatten(0, 1).float(), tgt.flatten())


# ---- bf16 autocast -------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(KERNELS))
def test_bf16_autocast_matches_fp32(kind: str) -> None:
    torch.manual_seed(0)
    model = SciFormer(tiny(attention=kind)).train()
    src, tgt, pad = batch()
    results = []
    for precision in ("fp32", "bf16"):
        model.zero_grad()
        with autocast(CPU, precision):
            h = model(src, tgt, pad)
            loss = F.cross_entropy(model.token_logits(h).flatten(0, 1).float(), tgt.flatten())
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results.append((h.float().detach(), loss.item(), grads))
    (h32, l32, g32), (h16, l16, g16) = results
    assert (h16 - h32).abs().max() < 0.1 * h32.abs().max()  # bf16 keeps ~3 significant digits
    assert abs(l16 - l32) < 0.02 * abs(l32)
    assert F.cosine_similarity(g16, g32, dim=0) > 0.99


def test_bf16_autocast_actually_runs_in_bf16() -> None:
    """The check above would pass trivially if autocast were a no-op: it is not."""
    model = SciFormer(tiny())
    seen = []
    model.encoder[0].ff.block.up.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    for precision in ("fp32", "bf16"):
        with autocast(CPU, precision):
            model.encode(batch()[0])
    assert seen == [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("native", [False, True])
def test_bf16_on_a_cpu_that_emulates_it_warns_once(tmp_path: Path, monkeypatch,
                                                   native: bool) -> None:
    from sciformer.train import loop
    from tests.conftest import TINY_MASKED, write_fasta

    monkeypatch.setattr(loop, "native_cpu_bf16", lambda: native)
    cfg = load_config(None, TINY_MASKED + ["train.precision=bf16", "train.max_steps=1",
                                           "train.device=cpu"])
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        pretrain([write_fasta(tmp_path / "p.fa")], cfg, tmp_path / "run", progress=False)
    slow = [w for w in seen if "no native bf16" in str(w.message)]
    assert len(slow) == (0 if native else 1)


# ---- torch.compile ---------------------------------------------------------------------------
def _compiled_matches(backend: str, train: bool) -> None:
    torch.manual_seed(0)
    model = SciFormer(tiny()).train(train)
    compiled = torch.compile(model, backend=backend)
    src, tgt, pad = batch()
    if not train:
        with torch.no_grad():
            assert (model(src, tgt, pad) - compiled(src, tgt, pad)).abs().max() < 1e-5
        return
    losses, grads = [], []
    for m in (model, compiled):
        model.zero_grad()
        loss = seq2seq_loss(m, src, tgt, pad)
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert abs(losses[0] - losses[1]) < 1e-5
    assert (grads[0] - grads[1]).abs().max() < 1e-5


def test_compile_graph_capture_gives_same_outputs() -> None:
    torch._dynamo.reset()
    _compiled_matches("eager", train=False)  # Dynamo tracing only: a few seconds


@pytest.mark.slow
def test_compile_training_step_gives_same_loss_and_gradients() -> None:
    torch._dynamo.reset()
    _compiled_matches("aot_eager", train=True)  # + AOTAutograd's traced backward


@pytest.mark.slow
@pytest.mark.parametrize("train", [False, True])
def test_compile_inductor_gives_same_results(train: bool) -> None:
    torch._dynamo.reset()
    _compiled_matches("inductor", train)  # generates and compiles C++: minutes on 2 cores


def _tiny_training(task: str, root: Path) -> tuple[Path, list[str], int]:
    """(data file, config overrides, attention calls a full trace holds) for a tiny run."""
    from tests.conftest import TINY_MASKED, write_fasta
    from tests.test_forecast import TINY as TINY_FORECAST

    if task == "masked":  # 2 encoder layers, the last one sparse (a separate code path)
        return (write_fasta(root / "p.fa"), TINY_MASKED + ["model.n_encoder_layers=2"], 2)
    from sciformer.simulate import simulate_to_file

    data = root / "l63.h5"
    simulate_to_file("lorenz63", data, n_traj=4, n_steps=80, seed=0)
    return data, TINY_FORECAST, 3  # encoder self, decoder self and cross attention


@pytest.mark.parametrize("task", ["masked", "forecast"])
def test_train_compile_compiles_the_whole_step(tmp_path: Path, monkeypatch, task: str) -> None:
    """`train.compile=true` compiles the training step itself: masked training reaches the
    model through `model.encode`, which compiling only the model's `forward` never traced
    (that was a silent no-op). Dynamo's captured graphs must hold every layer's attention,
    and the loss curve must equal the eager one."""
    graphs: list[str] = []

    def capture(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        graphs.append(gm.code)
        return gm.forward  # run the captured graph as traced: no code generation

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real_compile(fn, backend=capture))
    torch._dynamo.reset()
    data, base, n_attention = _tiny_training(task, tmp_path)
    base = base + ["train.max_steps=4", "train.log_every=1"]
    pretrain([data], load_config(None, base), tmp_path / "eager", progress=False)
    assert graphs == []  # nothing is compiled unless asked
    logged: list[logging.LogRecord] = []
    catcher = logging.Handler(logging.WARNING)
    catcher.emit = logged.append  # type: ignore[method-assign]
    logging.getLogger("torch._dynamo").addHandler(catcher)
    try:
        pretrain([data], load_config(None, base + ["train.compile=true"]),
                 tmp_path / "compiled", progress=False)
    finally:
        logging.getLogger("torch._dynamo").removeHandler(catcher)
        torch._dynamo.reset()
    # the data-dependent host work runs outside the graph on purpose: no graph-break warnings
    assert [r.getMessage() for r in logged if "Graph break" in r.getMessage()] == []
    assert sum(code.count("scaled_dot_product_attention") for code in graphs) >= n_attention
    eager, compiled = ([r["loss"] for r in metrics_log(tmp_path / name)]
                       for name in ("eager", "compiled"))
    assert len(eager) == 4 and np.allclose(eager, compiled, rtol=1e-5, atol=1e-6)


def test_commands_do_not_import_the_compiler() -> None:
    """Marking functions for compiled steps (`sciformer.compiling.eager`) must not import
    torch._dynamo (~2 s) into commands that never compile."""
    code = ("import sys, sciformer.cli, sciformer.predict, sciformer.embed, "
            "sciformer.evaluation.run; print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---- activation checkpointing with dropout -------------------------------------------------
def test_checkpointing_replays_dropout_masks() -> None:
    torch.manual_seed(0)
    model = SciFormer(tiny(dropout=0.3)).double().train()
    src, tgt, pad = batch()
    results = []
    for flag in (False, True):
        model.checkpointing = flag
        model.zero_grad()
        torch.manual_seed(123)  # the same dropout masks in both passes
        loss = seq2seq_loss(model, src, tgt, pad)
        loss.backward()
        results.append((loss.item(), [p.grad.clone() for p in model.parameters()]))
    (la, ga), (lb, gb) = results
    assert abs(la - lb) < 1e-12
    assert max((a - b).abs().max().item() for a, b in zip(ga, gb)) < 1e-10


# ---- bulk FASTA path -------------------------------------------------------------------------
def _read(reader, path: Path) -> tuple[list, str, list[str]]:
    """(records or batches, error message or '', warning messages) of one reader."""
    out, error = [], ""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            for item in reader(path):
                out.append(item)
        except InputError as exc:
            error = str(exc)
    return out, error, [str(w.message) for w in caught]


PIECES = [b">", b"\n>", b"\n>a ", b"\n>b d\r\n", b"\n> x\t y \n", b"MKV", b"acd", b"J", b"*",
          b"\n", b"\r\n", b" ", b"<mask>", b"<MASK>", b"<", b"-.", b"X", b"#"]


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.lists(st.sampled_from(PIECES), max_size=40).map(b"".join),
       chunk=st.sampled_from([1, 3, 7, 1 << 20]))
def test_batches_equal_records_and_tokens(tmp_path, monkeypatch, data, chunk):
    monkeypatch.setattr(fasta_mod, "_CHUNK", chunk)
    path = tmp_path / "fuzz.fa"
    path.write_bytes(data)
    records, rec_error, rec_warn = _read(read_fasta, path)
    batches, bat_error, bat_warn = _read(read_fasta_batches, path)
    assert (rec_error, rec_warn) == (bat_error, bat_warn)
    flat = [r for b in batches for r in b.records()]
    assert flat == records
    for b in batches:  # bulk tokenisation == per-record encode
        ids, offsets = TOK.encode_concatenated(b.residues, b.offsets)
        for i in range(len(b)):
            expected = TOK.encode(b.sequence(i), add_special=False)
            assert ids[offsets[i]:offsets[i + 1]].tolist() == expected.tolist()


def test_batches_known_answer(tmp_path):
    path = tmp_path / "a.fa"
    path.write_bytes(b">sp|P1 first protein\r\nmkv\nLL*\n>P2\nG<mask>A\n>P3\nw\n")
    batches = list(read_fasta_batches(path))  # a block ends where its last record is complete
    assert [i for b in batches for i in b.ids] == ["sp|P1", "P2", "P3"]
    assert [d for b in batches for d in b.descriptions] == ["first protein", "", ""]
    assert [line for b in batches for line in b.lines.tolist()] == [1, 4, 6]
    assert b"".join(b.residues for b in batches) == b"MKVLLG<mask>AW"
    first = batches[0]
    assert first.offsets.tolist() == [0, 5, 13] and first.sequence(1) == "G<mask>A"
    ids, offsets = TOK.encode_concatenated(first.residues, first.offsets)
    assert offsets.tolist() == [0, 5, 8] and ids.dtype == np.uint8
    assert ids.tolist() == [20, 15, 7, 4, 4, 6, TOK.mask_id, 5]


def test_batches_error_names_file_and_line(tmp_path):
    path = tmp_path / "bad.fa"
    path.write_bytes(b">a\nMK\n>a\nGG\n")
    got = []
    message = r"bad\.fa line 3: duplicate id 'a' \(first seen at line 1\)"
    with pytest.raises(InputError, match=message):
        for b in read_fasta_batches(path):
            got += b.ids
    assert got == ["a"]  # records before the bad one still come out


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(alphabet="ACDEFGHIKLMNPQRSTVWYacx*J#é<>mask", max_size=20), max_size=6),
       st.booleans())
def test_encode_many_equals_encode(seqs, add_special):
    got = TOK.encode_many(seqs, add_special=add_special)
    assert [g.tolist() for g in got] == [TOK.encode(s, add_special).tolist() for s in seqs]
    assert all(g.dtype == np.int64 for g in got)


# ---- benchmark FLOP counts (the MFU numerator) -------------------------------------------------
def test_benchmark_flop_counts_match_torch_counter():
    """`attention="dot"` runs every attention product as a counted matmul (SDPA's CPU
    kernel is not counted), so torch's counter sees all FLOPs the formulas claim."""
    from torch.utils.flop_counter import FlopCounterMode

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.train_throughput import Shape, encdec_flops, encoder_flops

    s = Shape(d_model=32, n_heads=4, n_layers=2, d_ff=64, batch=2, src_len=12, tgt_len=5, vocab=40)
    common = dict(d_model=s.d_model, n_heads=s.n_heads, n_encoder_layers=s.n_layers, d_ff=s.d_ff,
                  dropout=0.0, attention="dot")
    model = SciFormer(ModelConfig(vocab_size=s.vocab, n_decoder_layers=s.n_layers, **common))
    src, tgt = torch.randint(0, 40, (2, 12)), torch.randint(0, 40, (2, 5))
    with FlopCounterMode(display=False) as counter:
        seq2seq_loss(model, src, tgt, None).backward()
    assert counter.get_total_flops() == pytest.approx(encdec_flops(s), rel=1e-9)

    masked = SciFormer(ModelConfig(vocab_size=33, n_decoder_layers=0, lm_head="roberta", **common))
    chosen = torch.zeros(2, 12, dtype=torch.bool)
    chosen[0, 3] = chosen[1, 5] = chosen[1, 7] = True
    with FlopCounterMode(display=False) as counter:
        h = masked.encode(torch.randint(4, 24, (2, 12)))
        F.cross_entropy(masked.token_logits(h[chosen]), torch.tensor([5, 6, 7])).backward()
    assert counter.get_total_flops() == pytest.approx(encoder_flops(s, n_masked=3), rel=1e-9)
