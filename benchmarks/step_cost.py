"""What a training step costs: plain gradient, Jacobian, J6 and baselines.

SmolLM2-135M-Instruct, prompt parameters ``{"h", "w"}`` (4 soft vectors, ``h``
after layer 15), a batch of 8 sequences (2 TruthfulQA questions x 4 answers)
padded to 48 tokens, float32 on the CPU, the job's own objectives (MC
contrastive loss, choice entropy). Measured side by side in one run, as the
minimum over interleaved rounds (medians recorded too), with the compiled
temporary memory of each program (``memory_analysis``):

- (a) ``grad``: ``jax.grad`` of the summed objectives and an Adam update;
- (b) ``jacobian``: ``objective_jacobian`` alone;
- (c) a full J6 step, soft and hard (Jacobian, J6, Adam, update);
- (d) a full step of every baseline;

with each ratio to (a) in a markdown table. Then the same workload in
PyTorch with TorchJD (when ``torch``, ``transformers`` and ``torchjd``, the
test extras, are installed): transformers' Llama loaded from the same GGUF
file, frozen, the soft prompt ``w`` inserted after BOS in the input
embeddings, ``h`` added to the output of layer 15 by a forward hook, the same
objectives; a plain backward of their sum with an Adam step, and TorchJD's
UPGrad and MGDA steps (``torchjd.autojac.backward`` of both objectives, then
``jac_to_grad``, then Adam). Each library's steps are compared with its own
plain step; the absolute times stand side by side in the table.

Usage: ``python benchmarks/step_cost.py [--csv ../shared/data/TruthfulQA.csv]
[--repeats 5] [--no-torch] [--mesh data=2,model=4]
[--out benchmarks/results/step_cost.json]``
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

import j6jax
from j6jax import models, sharding
from j6jax._src import data
from j6jax._src import train as tr


def _setup(csv: str, mesh_shape: str = ""):
  lm = models.load_default()
  cfg = tr.TrainConfig(max_true=1, max_false=3, n_soft=4, h_layers=(15,))
  items = data.load_truthfulqa(csv)[:2]
  enc = tr.encode_items(lm.tokenizer, items, max_true=1, max_false=3, length=48)
  batch = tr.MCBatch(*map(jnp.asarray, enc))
  prompt = tr.initial_prompt(lm, cfg)
  model_fn = tr.make_model_fn(lm.config, cfg.h_layers)
  if mesh_shape:
    mesh = sharding.make_mesh(mesh_shape)
    weights = sharding.shard_weights(lm.weights, mesh, lm.config)
    lm = models.LlamaModel(lm.config, weights, lm.tokenizer)
    batch = sharding.shard_batch(batch, mesh)
    prompt = sharding.shard_prompt(prompt, mesh)
  return lm, cfg, batch, prompt, model_fn


def _init(tx, prompt):
  """``tx.init``, with the state on the prompt's mesh when it has one."""
  state = tx.init(prompt)
  where = jax.tree.leaves(prompt)[0].sharding
  return (
    sharding.on_mesh(state, where.mesh) if hasattr(where, "mesh") else state
  )


def _programs(lm, cfg, batch, prompt, model_fn) -> dict:
  def objectives(p, weights, b):
    ll, ent = tr.answer_scores(model_fn, p, weights, b)
    return tr.objective_values(ll, ent, b)

  adam = optax.adam(1e-2)

  @jax.jit
  def grad_step(p, s, weights, b):
    g = jax.grad(lambda q: jnp.sum(objectives(q, weights, b)))(p)
    u, s = adam.update(g, s, p)
    return optax.apply_updates(p, u), s

  @jax.jit
  def jacobian(p, weights, b):
    return j6jax.objective_jacobian(objectives, p, weights, b)

  progs = {
    "grad": (grad_step, (prompt, _init(adam, prompt), lm.weights, batch)),
    "jacobian": (jacobian, (prompt, lm.weights, batch)),
  }
  for name in tr.METHODS:
    tx = optax.chain(tr.make_method(name), optax.adam(1e-2))
    step = tr.make_train_step(model_fn, tx, cfg)
    label = "j6 soft" if name == "j6" else name.replace("j6-hard", "j6 hard")
    progs[label] = (step, (prompt, _init(tx, prompt), lm.weights, batch))
  return progs


def _temp_mb(fn, args) -> float | None:
  analysis = fn.lower(*args).compile().memory_analysis()
  if analysis is None:
    return None
  return analysis.temp_size_in_bytes / 2**20


def _torch_programs(lm, cfg, batch) -> tuple[dict, list[float]]:
  """The PyTorch + TorchJD steps on the same batch (``{}`` without them) and
  the objective values the PyTorch side computes at the initial prompt."""
  try:
    import torch
    import transformers
    from torchjd.aggregation import MGDA, UPGrad
    from torchjd.autojac import backward, jac_to_grad
  except ImportError:
    return {}, []
  import numpy as np

  transformers.logging.set_verbosity_error()
  path = models.default_gguf_path()
  model = transformers.AutoModelForCausalLM.from_pretrained(
    str(path.parent), gguf_file=path.name, dtype=torch.float32
  )
  model.eval().requires_grad_(False)
  Q, A, T = batch.tokens.shape
  flat = lambda x: torch.from_numpy(np.array(x).reshape(Q * A, T))
  tokens, attn = flat(batch.tokens).long(), flat(batch.attention_mask)
  ans = flat(batch.answer_mask)
  true, choice = (torch.from_numpy(np.array(x)) for x in batch[3:])
  prompt = tr.initial_prompt(lm, cfg)
  w = torch.tensor(np.asarray(prompt["w"]), requires_grad=True)
  h = torch.tensor(np.asarray(prompt["h"])[0], requires_grad=True)
  n = w.shape[0]

  def hook(module, inputs, output):
    if isinstance(output, tuple):
      return (output[0] + h, *output[1:])
    return output + h

  model.model.layers[cfg.h_layers[0]].register_forward_hook(hook)
  neg = -1e30

  # As in j6jax.models.forward: w after a leading BOS, else before all.
  i = int(
    lm.config.bos_token_id is not None
    and bool((tokens[:, 0] == lm.config.bos_token_id).all())
  )

  def objectives():
    emb = model.model.embed_tokens(tokens)
    x = torch.cat([emb[:, :i], w.expand(Q * A, n, -1), emb[:, i:]], 1)
    ones = torch.ones(Q * A, n, dtype=attn.dtype)
    m = torch.cat([attn[:, :i], ones, attn[:, i:]], 1).long()
    logits = model(inputs_embeds=x, attention_mask=m).logits
    logits = torch.cat([logits[:, :i], logits[:, i + n :]], 1)
    logp = torch.log_softmax(logits[:, :-1], -1)
    lp = logp.gather(-1, tokens[:, 1:, None])[..., 0]
    ll = (lp * ans[:, 1:]).sum(-1).reshape(Q, A)
    z = torch.where(
      choice,
      ll - ll.masked_fill(~choice, neg).amax(-1, True).detach(),
      torch.tensor(neg),
    )
    f = z.logsumexp(-1) - z.masked_fill(~(true & choice), neg).logsumexp(-1)
    p = torch.softmax(z, -1) * choice
    c = -(p * torch.log(torch.where(p > 0, p, 1.0))).sum(-1)
    return f.mean(), c.mean()

  def plain(opt):
    opt.zero_grad()
    f, c = objectives()
    (f + c).backward()
    opt.step()

  def jd(aggregator):
    def step(opt):
      opt.zero_grad()
      backward(list(objectives()), inputs=[w, h])
      jac_to_grad([w, h], aggregator)
      opt.step()

    return step

  with torch.no_grad():
    values = [float(v) for v in objectives()]
  progs = {}
  for name, fn in (
    ("torch plain", plain),
    ("torchjd upgrad", jd(UPGrad())),
    ("torchjd mgda", jd(MGDA())),
  ):
    opt = torch.optim.Adam([w, h], lr=1e-2)
    progs[name] = (lambda fn=fn, opt=opt: fn(opt), ())
  return progs, values


def objective_check(lm, cfg, batch, prompt, model_fn, torch_values) -> dict:
  """Both libraries' objective values at the initial prompt: the PyTorch
  side measures the same workload only if they agree."""
  ll, ent = tr.answer_scores(model_fn, prompt, lm.weights, batch)
  jax_values = [float(v) for v in tr.objective_values(ll, ent, batch)]
  diff = max(
    (abs(a - b) for a, b in zip(jax_values, torch_values, strict=True)),
    default=None,
  )
  return {"jax": jax_values, "torch": torch_values, "max_abs_diff": diff}


def run(
  csv: str, repeats: int, use_torch: bool = True, mesh: str = ""
) -> tuple[dict, dict]:
  setup = _setup(csv, mesh)
  progs = _programs(*setup)
  check = {}
  if use_torch:
    torch_progs, torch_values = _torch_programs(*setup[:3])
    progs.update(torch_progs)
    if torch_values:
      check = objective_check(*setup, torch_values)
  rows = {}
  for name, (fn, args) in progs.items():
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    rows[name] = {
      "first_call_s": time.perf_counter() - t0,
      "temp_mb": _temp_mb(fn, args) if hasattr(fn, "lower") else None,
      "times": [],
    }
  for _ in range(repeats):
    for name, (fn, args) in progs.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn(*args))
      rows[name]["times"].append(time.perf_counter() - t0)
  for name, r in rows.items():
    plain = "torch plain" if name.startswith("torch") else "grad"
    r["min_s"] = min(r["times"])
    r["median_s"] = statistics.median(r["times"])
    r["ratio_to_plain"] = r["min_s"] / min(rows[plain]["times"])
    r["plain"] = plain
  return rows, check


def table(rows: dict) -> str:
  lines = [
    "| step | min s | median s | x own plain step | temp MB |",
    "|---|---|---|---|---|",
  ]
  for name, r in rows.items():
    mb = "n/a" if r["temp_mb"] is None else f"{r['temp_mb']:.0f}"
    lines.append(
      f"| {name} | {r['min_s']:.2f} | {r['median_s']:.2f} | "
      f"{r['ratio_to_plain']:.2f} | {mb} |"
    )
  return "\n".join(lines)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--csv", default="../shared/data/TruthfulQA.csv")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--out", default="benchmarks/results/step_cost.json")
  p.add_argument("--no-torch", action="store_true", help="JAX steps only")
  p.add_argument(
    "--mesh",
    default="",
    help="JAX steps on a device mesh, e.g. 'data=2' (the batch has 2 "
    "questions) or 'data=2,model=4'; the PyTorch side stays on one device",
  )
  args = p.parse_args()
  rows, check = run(args.csv, args.repeats, not args.no_torch, args.mesh)
  meta = {
    "date": date.today().isoformat(),
    "machine": f"{platform.machine()}, {jax.devices()[0].device_kind}",
    "backend": jax.default_backend(),
    "jax": jax.__version__,
    "workload": "SmolLM2-135M f32, 8 x 48 tokens, w 4 x 576, h after 15",
    "objective_values_at_start": check,
    "mesh": args.mesh or None,
  }
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
  md = table(rows)
  out.with_suffix(".md").write_text(md + "\n")
  print(md)
  print(f"\nwritten: {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
  main()
