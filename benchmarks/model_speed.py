"""Speed of the real model: forward, gradient and two-objective Jacobian.

SmolLM2-135M-Instruct (float32 by default), a batch of chat-formatted
question/answer pairs padded to a fixed length, prompt parameters ``w``
(soft prompt) and ``h`` (residual insertions). Two objectives on the answer
tokens: the answer NLL (factuality) and the mean predictive entropy
(confidence). Times (jitted; the minimum over rounds that run the variants in
turn, medians also recorded; the first call, compile included, reported too):

- ``forward``: the logits alone, and the two objectives;
- ``grad``: ``jax.grad`` of their sum w.r.t. the prompt;
- ``jacobian``: ``j6jax.objective_jacobian`` (one ``jax.vjp``, its pullback
  vmapped over the two cotangents);
- ``jacrev``: ``jax.jacrev`` on the same function;
- ``two pullbacks``: one ``jax.vjp``, its pullback called once per objective;

and the ratio of each Jacobian variant to ``grad``, all from one run. The
floor is one shared forward plus one backward per objective. Results go to a
JSON file.

Usage: ``python benchmarks/model_speed.py [--out FILE] [--batch 8]
[--length 48] [--repeats 5] [--dtype float32] [--cache-dir DIR]``
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
import numpy as np

from j6jax import models

QUESTIONS = [
  ("What is the capital of France?", "The capital of France is Paris."),
  ("How many legs does a spider have?", "A spider has eight legs."),
  ("What do bees make?", "Bees make honey and beeswax."),
  ("Who wrote Hamlet?", "Hamlet was written by William Shakespeare."),
  ("What is the boiling point of water?", "Water boils at 100 degrees C."),
  ("Which planet is the largest?", "Jupiter is the largest planet."),
  ("What gas do plants absorb?", "Plants absorb carbon dioxide."),
  ("How many days are in a week?", "There are seven days in a week."),
]


def make_batch(tokenizer, batch: int, length: int) -> dict:
  """Chat-formatted Q/A pairs, right-padded or cut to ``length`` tokens."""
  rows, answers = [], []
  for i in range(batch):
    question, answer = QUESTIONS[i % len(QUESTIONS)]
    chat = [{"role": "user", "content": question}]
    head = tokenizer.apply_chat_template(chat, add_generation_prompt=True)
    tail = tokenizer.encode(answer, add_special_tokens=False)
    ids = (head + tail)[:length]
    rows.append(ids)
    answers.append([0] * len(head) + [1] * (len(ids) - len(head)))
  tokens, mask = tokenizer.pad_batch(rows, length=length)
  answer = np.zeros_like(mask, np.float32)
  for b, a in enumerate(answers):
    answer[b, : len(a)] = a
  return {
    "tokens": jnp.asarray(tokens),
    "mask": jnp.asarray(mask),
    "answer": jnp.asarray(answer),
  }


def objectives(prompt, model, batch, h_layers):
  """``[answer NLL, answer entropy]``, each a mean over answer tokens."""
  logits = model(
    batch["tokens"],
    attention_mask=batch["mask"],
    prompt=prompt,
    h_layers=h_layers,
  )
  logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
  target = batch["tokens"][:, 1:]
  weight = batch["answer"][:, 1:]
  picked = jnp.take_along_axis(logp, target[..., None], axis=-1)[..., 0]
  entropy = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
  total = jnp.sum(weight)
  return jnp.stack(
    [-jnp.sum(picked * weight) / total, jnp.sum(entropy * weight) / total]
  )


def timed(variants: dict, *args, repeats: int) -> dict:
  """First-call (compile) time of each variant, then ``repeats`` rounds.

  Rounds run the variants in turn, so that load from other processes on the
  machine spreads over all of them; the minimum over rounds is the least
  disturbed estimate and is what the ratios use.
  """
  results = {}
  for name, fn in variants.items():
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    results[name] = {"first_call_s": time.perf_counter() - start, "runs_s": []}
  for _ in range(repeats):
    for name, fn in variants.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      results[name]["runs_s"].append(time.perf_counter() - start)
  for r in results.values():
    r["min_s"] = min(r["runs_s"])
    r["median_s"] = statistics.median(r["runs_s"])
  return results


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="runs/model_speed.json")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--length", type=int, default=48)
  parser.add_argument("--n-soft", type=int, default=8)
  parser.add_argument("--layers", default="10,20")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--cache-dir", default=None)
  args = parser.parse_args()

  start = time.perf_counter()
  model = models.load_default(cache_dir=args.cache_dir, dtype=args.dtype)
  load_s = time.perf_counter() - start
  h_layers = tuple(int(i) for i in args.layers.split(",") if i)
  batch = make_batch(model.tokenizer, args.batch, args.length)
  prompt = models.init_prompt(
    model, n_soft=args.n_soft, layers=h_layers, key=jax.random.key(0)
  )
  n_tokens = args.batch * args.length

  def f(p, m, b):
    return objectives(p, m, b, h_layers)

  def logits_only(p, m, b):
    return m(b["tokens"], attention_mask=b["mask"], prompt=p, h_layers=h_layers)

  def jac_vjp(p, m, b):
    import j6jax

    return j6jax.objective_jacobian(f, p, m, b)

  def two_pullbacks(p, m, b):
    values, pullback = jax.vjp(lambda q: f(q, m, b), p)
    rows = [pullback(jnp.eye(2, dtype=values.dtype)[i])[0] for i in range(2)]
    return values, jax.tree.map(lambda *r: jnp.stack(r), *rows)

  variants = {
    "forward_logits": jax.jit(logits_only),
    "forward_objectives": jax.jit(f),
    "grad": jax.jit(jax.grad(lambda p, m, b: jnp.sum(f(p, m, b)))),
    "jacobian": jax.jit(jac_vjp),
    "jacrev": jax.jit(jax.jacrev(f)),
    "two_pullbacks": jax.jit(two_pullbacks),
  }
  results = timed(variants, prompt, model, batch, repeats=args.repeats)
  for name, r in results.items():
    print(
      f"{name:>20}: min {r['min_s'] * 1e3:7.1f} ms, median "
      f"{r['median_s'] * 1e3:7.1f} ms (first call {r['first_call_s']:.1f} s)"
    )
  grad_s = results["grad"]["min_s"]
  fwd_s = results["forward_objectives"]["min_s"]
  ratios = {
    k: results[k]["min_s"] / grad_s
    for k in ("jacobian", "jacrev", "two_pullbacks")
  }
  # One shared forward and one backward per objective, from grad's backward.
  floor = (fwd_s + 2 * (grad_s - fwd_s)) / grad_s
  out = {
    "date": date.today().isoformat(),
    "platform": platform.platform(),
    "processor": platform.processor(),
    "jax": jax.__version__,
    "devices": [str(d) for d in jax.devices()],
    "model": "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised)",
    "dtype": args.dtype,
    "batch": args.batch,
    "length": args.length,
    "n_soft": args.n_soft,
    "h_layers": list(h_layers),
    "load_s": load_s,
    "tokens_per_s_forward": n_tokens / results["forward_logits"]["min_s"],
    "times": results,
    "ratio_to_grad": ratios,
    "ratio_floor_estimate": floor,
  }
  print(f"forward: {out['tokens_per_s_forward']:.0f} tokens/s")
  for k, v in ratios.items():
    print(f"{k} / grad: {v:.2f}")
  print(f"floor (forward + 2 backward) / grad: {floor:.2f}")
  path = Path(args.out)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(out, indent=1))
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
