"""The main job: tune prompt parameters on multiple-choice data, evaluate.

A run folder holds ``config.json``, ``steps.jsonl`` (one line per step: the
objective values and the method's state, e.g. J6's components, scores,
weights and chosen component), ``eval.jsonl`` (validation metrics every
``eval_every`` steps), ``checkpoints/`` (orbax: prompt parameters, optimiser
state, step and data order) and ``summary.json`` at the end.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax

from j6jax._src import metrics, prompts
from j6jax._src import objectives as obj
from j6jax._src import sharding as shd
from j6jax._src.data import DataError, MCItem
from j6jax._src.decomposition import component_names, decompose
from j6jax._src.gramian import group_gramians
from j6jax._src.jacobian import objective_jacobian
from j6jax._src.transform import j6

log = logging.getLogger("j6jax")

FACTUALITY = ("mc", "nll")
CONFIDENCE = ("choice_entropy", "answer_entropy")
H_POSITIONS = ("all", "answer", "question")


class TokenizerLike(Protocol):
  """What the job needs of a tokenizer (:class:`j6jax.models.Tokenizer`)."""

  pad_token_id: int | None

  def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
    """Token ids of ``text``."""
    ...

  def render_chat(self, messages, add_generation_prompt: bool = False) -> str:
    """The chat template applied to ``messages``."""
    ...


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything that defines a run (saved as ``config.json``).

  Attributes:
    method: ``"j6"`` (soft), ``"j6-hard"`` or a baseline of
      :mod:`j6jax.aggregators` (``"linear"``, ``"mean"``, ``"mgda"``,
      ``"pcgrad"``, ``"cagrad"``, ``"upgrad"``, ``"imtl_g"``,
      ``"nash_mtl"``, ``"dualproj"``, ``"aligned_mtl"``).
    method_kwargs: keyword arguments of the method's factory (e.g.
      ``{"temperature": 0.5}`` or ``{"weights": [1.0, 0.5]}``).
    steps: optimisation steps.
    learning_rate: Adam's learning rate.
    batch_questions: questions per step.
    max_true: true answers per training question (the best one first).
    max_false: false answers per training question.
    n_soft: soft-prompt vectors ``w``.
    h_layers: layers after which an ``h`` vector is added.
    h_positions: where ``h`` acts: ``"all"``, ``"answer"`` or
      ``"question"`` positions.
    w_init: ``"text"`` (embeddings of ``w_init_text``) or ``"random"``.
    w_init_text: the text whose token embeddings start ``w``.
    factuality: ``"mc"`` (contrastive loss over the answers) or ``"nll"``
      (per-token NLL of the best answer).
    confidence: ``"choice_entropy"`` (over a question's answers) or
      ``"answer_entropy"`` (next-token entropy on the best answer).
    style: prompt format, ``"plain"`` or ``"chat"``.
    max_len: longest allowed sequence in tokens (error beyond it).
    seed: seed of the data order and the random initialisation.
    eval_every: validation every this many steps (0: only at the end).
    eval_questions: validation questions used (0: all).
    checkpoint_every: checkpoint every this many steps.
  """

  method: str = "j6"
  method_kwargs: dict = dataclasses.field(default_factory=dict)
  steps: int = 20
  learning_rate: float = 1e-2
  batch_questions: int = 4
  max_true: int = 2
  max_false: int = 3
  n_soft: int = 4
  h_layers: tuple[int, ...] = (15,)
  h_positions: str = "all"
  w_init: str = "text"
  w_init_text: str = "Answer truthfully and with confidence."
  factuality: str = "mc"
  confidence: str = "choice_entropy"
  style: str = "plain"
  max_len: int = 256
  seed: int = 0
  eval_every: int = 10
  eval_questions: int = 0
  checkpoint_every: int = 10

  def __post_init__(self):
    object.__setattr__(self, "h_layers", tuple(int(x) for x in self.h_layers))
    checks = [
      ("factuality", self.factuality, FACTUALITY),
      ("confidence", self.confidence, CONFIDENCE),
      ("h_positions", self.h_positions, H_POSITIONS),
      ("style", self.style, ("plain", "chat")),
      ("w_init", self.w_init, ("text", "random")),
    ]
    for name, value, allowed in checks:
      if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}.")
    for name in ("steps", "batch_questions", "max_true", "max_len"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
    if self.max_false < 1:
      raise ValueError(f"max_false must be >= 1, got {self.max_false}.")
    if not self.learning_rate > 0:
      raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}.")
    make_method(self.method, self.method_kwargs)  # validates both

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["h_layers"] = list(self.h_layers)
    return d

  @classmethod
  def from_dict(cls, d: dict) -> TrainConfig:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(
        f"Unknown config key(s) {unknown}; the keys are {sorted(known)}."
      )
    return cls(**d)

  def identity(self) -> dict:
    """The fields that define the run (all but lengths and cadences)."""
    d = self.to_dict()
    for k in ("steps", "eval_every", "checkpoint_every", "eval_questions"):
      d.pop(k)
    return d


METHODS = (
  "j6",
  "j6-hard",
  "linear",
  "mean",
  "mgda",
  "pcgrad",
  "cagrad",
  "upgrad",
  "imtl_g",
  "nash_mtl",
  "dualproj",
  "aligned_mtl",
)
"""The names :func:`make_method` takes (``"j6-soft"`` is ``"j6"`` too)."""


def make_method(
  name: str, kwargs: dict | None = None
) -> optax.GradientTransformationExtraArgs:
  """The transform that turns the Jacobian into an update, by name.

  Raises:
    ValueError: an unknown name (the message lists :data:`METHODS`) or
      keyword arguments the method's factory does not take.
  """
  kwargs = dict(kwargs or {})
  if name not in (*METHODS, "j6-soft"):
    raise ValueError(
      f"Unknown method {name!r}; known methods: {list(METHODS)}."
    )
  try:
    if name in ("j6", "j6-soft", "j6-hard"):
      if "mode" in kwargs:
        raise TypeError("give the mode by the method name, not 'mode'")
      mode = "hard" if name == "j6-hard" else "soft"
      return j6(mode=mode, **kwargs)
    from j6jax import aggregators

    if name == "linear" and "weights" not in kwargs:
      kwargs["weights"] = [1.0, 1.0]
    return getattr(aggregators, name)(**kwargs)
  except TypeError as e:
    raise ValueError(
      f"method_kwargs {kwargs} do not fit method {name!r}: {e}."
    ) from e


# Encoding -------------------------------------------------------------------


class MCBatch(NamedTuple):
  """Encoded questions, ``Q`` questions by ``A`` answers by ``T`` tokens.

  Attributes:
    tokens: ``[Q, A, T]`` int32, context then answer, right-padded.
    attention_mask: ``[Q, A, T]`` bool, real tokens.
    answer_mask: ``[Q, A, T]`` bool, the answer's tokens.
    true_mask: ``[Q, A]`` bool, true answers (index 0: the best one).
    choice_mask: ``[Q, A]`` bool, real (non-padding) answers.
  """

  tokens: Any
  attention_mask: Any
  answer_mask: Any
  true_mask: Any
  choice_mask: Any


def _chat_fn(tokenizer) -> Callable[[str], str]:
  def render(question: str) -> str:
    return tokenizer.render_chat(
      [{"role": "user", "content": question}], add_generation_prompt=True
    )

  return render


def encode_answer(
  tokenizer: TokenizerLike, question: str, answer: str, style: str
) -> tuple[list[int], list[int]]:
  """``(context_ids, answer_ids)`` of one question and answer.

  The context gets the tokenizer's own special tokens (a BOS where the
  checkpoint asks for one) and the answer none; see
  :func:`j6jax._src.prompts.encode_pair` for the boundary rule.
  """
  chat = _chat_fn(tokenizer) if style == "chat" else None
  ctx, cont = prompts.context_and_continuation(
    question, answer, style=style, chat_template=chat
  )
  plain = style == "plain"
  ctx_ids, cont_ids = prompts.encode_pair(
    lambda s: tokenizer.encode(s, add_special_tokens=False),
    ctx,
    cont,
    move_whitespace=plain,
  )
  if plain:
    ctx_ids = tokenizer.encode(ctx.rstrip(), add_special_tokens=True)
  return ctx_ids, cont_ids


def _pick_answers(item: MCItem, max_true: int, max_false: int):
  true = list(item.correct[:max_true])
  false = list(item.incorrect[:max_false])
  return true, false


def encode_items(
  tokenizer: TokenizerLike,
  items: Sequence[MCItem],
  *,
  max_true: int,
  max_false: int,
  style: str = "plain",
  max_len: int = 256,
  length: int | None = None,
) -> MCBatch:
  """Encodes questions with up to ``max_true + max_false`` answers each.

  Args:
    tokenizer: a :class:`TokenizerLike`.
    items: the questions.
    max_true: true answers kept per question (best first).
    max_false: false answers kept per question.
    style: ``"plain"`` or ``"chat"``.
    max_len: a longer sequence raises :class:`DataError` naming the item.
    length: pad to this many tokens (default: the longest, rounded up to a
      multiple of 8).

  Returns:
    An :class:`MCBatch` of NumPy arrays, ``A = max_true + max_false``.
  """
  if not items:
    raise DataError("No questions to encode (an empty split?).")
  A = max_true + max_false
  pad = tokenizer.pad_token_id or 0
  seqs = []
  for item in items:
    true, false = _pick_answers(item, max_true, max_false)
    row = []
    for a in true + false:
      ctx, cont = encode_answer(tokenizer, item.question, a, style)
      n = len(ctx) + len(cont)
      if n > max_len:
        raise DataError(
          f"{item.origin or item.question!r}: question and answer {a!r} "
          f"take {n} tokens, more than max_len={max_len} (the model's "
          "context or the configured limit)."
        )
      row.append((ctx, cont))
    seqs.append((row, len(true)))
  longest = max(len(c) + len(a) for row, _ in seqs for c, a in row)
  T = length or int(math.ceil(longest / 8) * 8)
  if longest > T:
    raise DataError(f"length={T} is shorter than the longest {longest}.")
  Q = len(items)
  tokens = np.full((Q, A, T), pad, np.int32)
  attn = np.zeros((Q, A, T), bool)
  ans = np.zeros((Q, A, T), bool)
  true_mask = np.zeros((Q, A), bool)
  choice = np.zeros((Q, A), bool)
  for q, (row, n_true) in enumerate(seqs):
    n_true_slots = max_true
    slots = list(range(n_true)) + list(
      range(n_true_slots, n_true_slots + len(row) - n_true)
    )
    for slot, (ctx, cont) in zip(slots, row, strict=True):
      ids = ctx + cont
      tokens[q, slot, : len(ids)] = ids
      attn[q, slot, : len(ids)] = True
      ans[q, slot, len(ctx) : len(ids)] = True
      choice[q, slot] = True
      true_mask[q, slot] = slot < n_true_slots
    # Padding answers copy the best one (finite logits); masked out.
    for slot in range(A):
      if not choice[q, slot]:
        tokens[q, slot] = tokens[q, 0]
        attn[q, slot] = attn[q, 0]
  return MCBatch(tokens, attn, ans, true_mask, choice)


# Objectives -----------------------------------------------------------------


def _h_mask(batch: MCBatch, where: str):
  if where == "all":
    return None
  if where == "answer":
    return batch.answer_mask
  return batch.attention_mask & ~batch.answer_mask


def answer_scores(
  model_fn: Callable[..., jax.Array],
  prompt: Any,
  weights: Any,
  batch: MCBatch,
  h_positions: str = "all",
) -> tuple[jax.Array, jax.Array]:
  """Summed answer log-likelihoods and answer entropies, both ``[Q, A]``.

  ``model_fn(weights, tokens [B, T], attention_mask, prompt, h_mask)``
  returns logits ``[B, T, V]`` at the original token positions.
  """
  Q, A, T = batch.tokens.shape
  flat = lambda x: jnp.reshape(x, (Q * A, T))
  hm = _h_mask(batch, h_positions)
  logits = model_fn(
    weights,
    flat(batch.tokens),
    flat(batch.attention_mask),
    prompt,
    None if hm is None else flat(hm).astype(jnp.float32),
  )
  ans = flat(batch.answer_mask)
  ll = obj.answer_loglik(logits, flat(batch.tokens), ans).reshape(Q, A)
  ent = obj.answer_entropy(logits, ans).reshape(Q, A)
  return ll, ent


def objective_values(
  ll: jax.Array,
  ent: jax.Array,
  batch: MCBatch,
  factuality: str = "mc",
  confidence: str = "choice_entropy",
) -> jax.Array:
  """The objective vector ``[2] = (factuality, confidence)``, batch means."""
  if factuality == "mc":
    f = obj.mc_contrastive_loss(ll, batch.true_mask, batch.choice_mask)
  else:
    n_tok = jnp.sum(batch.answer_mask, -1)
    f = obj.best_answer_nll(ll, n_tok)
  if confidence == "choice_entropy":
    c = obj.choice_entropy(ll, batch.choice_mask)
  else:
    c = ent[:, 0]
  return jnp.stack([jnp.mean(f), jnp.mean(c)])


def make_model_fn(config: Any, h_layers: Sequence[int]) -> Callable:
  """``model_fn`` of :func:`answer_scores` from ``j6jax.models.forward``.

  Cached on ``(config, h_layers)``, so that the jitted programs built on it
  (e.g. the evaluation scorer) are compiled once per model and layers.
  """
  return _model_fn(config, tuple(int(x) for x in h_layers))


@functools.lru_cache(maxsize=16)
def _model_fn(config: Any, h_layers: tuple[int, ...]) -> Callable:
  from j6jax.models import forward

  def model_fn(weights, tokens, attention_mask, prompt, h_mask):
    return forward(
      config,
      weights,
      tokens,
      attention_mask=attention_mask,
      prompt=prompt,
      h_layers=h_layers,
      h_mask=h_mask,
    )

  return model_fn


def make_train_step(
  model_fn: Callable, tx: optax.GradientTransformation, cfg: TrainConfig
) -> Callable:
  """The jitted step: Jacobian of the objectives, ``tx``, update.

  ``step(prompt, opt_state, weights, batch)`` returns the new prompt and
  optimiser state, the objective values ``[2]`` before the update and the
  J6 components ``[6]`` of the step's Jacobian (for every method, so that
  any run can be explained the same way).
  """

  def objectives(prompt, weights, batch):
    ll, ent = answer_scores(model_fn, prompt, weights, batch, cfg.h_positions)
    return objective_values(ll, ent, batch, cfg.factuality, cfg.confidence)

  @jax.jit
  def step(prompt, opt_state, weights, batch):
    values, jac = objective_jacobian(objectives, prompt, weights, batch)
    components = decompose(group_gramians(jac)).values
    updates, opt_state = tx.update(jac, opt_state, prompt)
    new_prompt = optax.apply_updates(prompt, updates)
    return new_prompt, opt_state, values, components

  return step


# Evaluation -----------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _scorer(model_fn: Callable, h_positions: str) -> Callable:
  """The jitted per-sequence scorer, built once per ``model_fn`` (so the
  evaluations during a run reuse one compilation)."""

  @jax.jit
  def score(weights, prompt, tokens, attn, ans):
    batch = MCBatch(tokens[:, None], attn[:, None], ans[:, None], None, None)
    ll, ent = answer_scores(model_fn, prompt, weights, batch, h_positions)
    return ll[:, 0], ent[:, 0]

  return score


def evaluate(
  model_fn: Callable,
  prompt: Any,
  weights: Any,
  tokenizer: TokenizerLike,
  items: Sequence[MCItem],
  *,
  style: str = "plain",
  h_positions: str = "all",
  max_len: int = 256,
  batch_size: int = 16,
  progress: Callable | None = None,
) -> dict:
  """TruthfulQA-style metrics of the model with ``prompt`` on ``items``.

  Every answer of every question is scored (summed log-likelihood of its
  tokens after the context), in sequence batches of ``batch_size``. Returns
  MC1, MC2, choice entropy, answer entropy (mean next-token entropy on the
  best answer), ECE and Brier (over MC1's choices), and the two objective
  values, averaged over questions.
  """
  if not items:
    raise DataError("No questions to evaluate (an empty split?).")
  rows = []  # (question index, answer slot, ctx, cont)
  A = max(len(i.answers) for i in items)
  for q, item in enumerate(items):
    for a, text in enumerate(item.answers):
      ctx, cont = encode_answer(tokenizer, item.question, text, style)
      if len(ctx) + len(cont) > max_len:
        raise DataError(
          f"{item.origin or item.question!r}: answer {text!r} takes "
          f"{len(ctx) + len(cont)} tokens, more than max_len={max_len}."
        )
      rows.append((q, a, ctx, cont))
  longest = max(len(c) + len(x) for _, _, c, x in rows)
  T = int(math.ceil(longest / 8) * 8)
  pad = tokenizer.pad_token_id or 0

  score = _scorer(model_fn, h_positions)
  ll = np.full((len(items), A), -np.inf)
  ent = np.zeros((len(items), A))
  ntok = np.ones((len(items), A))
  chunks = range(0, len(rows), batch_size)
  if progress is not None:
    chunks = progress(chunks)
  for start in chunks:
    part = rows[start : start + batch_size]
    n = len(part)
    tokens = np.full((batch_size, T), pad, np.int32)
    attn = np.zeros((batch_size, T), bool)
    ans = np.zeros((batch_size, T), bool)
    for r, (_, _, ctx, cont) in enumerate(part):
      ids = ctx + cont
      tokens[r, : len(ids)] = ids
      attn[r, : len(ids)] = True
      ans[r, len(ctx) : len(ids)] = True
    attn[n:, 0] = True  # padding rows: one real token, finite logits
    ans[n:, 0] = False
    lik, e = score(weights, prompt, tokens, attn, ans)
    lik = shd.to_host(lik).astype(np.float64)
    e = shd.to_host(e).astype(np.float64)
    for r, (q, a, _, cont) in enumerate(part):
      ll[q, a], ent[q, a], ntok[q, a] = lik[r], e[r], len(cont)
  true = np.zeros((len(items), A), bool)
  valid = np.zeros((len(items), A), bool)
  for q, item in enumerate(items):
    true[q, : len(item.correct)] = True
    valid[q, : len(item.answers)] = True
  out = metrics.summarize(ll, true, valid)
  out["answer_entropy"] = float(ent[:, 0].mean())
  mc = obj.mc_contrastive_loss(
    jnp.asarray(np.where(valid, ll, -1e30)),
    jnp.asarray(true),
    jnp.asarray(valid),
  )
  out["factuality_mc"] = float(jnp.mean(mc))
  out["factuality_nll"] = float(np.mean(-ll[:, 0] / ntok[:, 0]))
  out["loglik"] = ll.tolist()
  return out


def evaluate_prompt(
  lm: Any,
  prompt: Any,
  cfg: TrainConfig,
  items: Sequence[MCItem],
  *,
  progress: Callable | None = None,
  weights: Any = None,
) -> dict:
  """:func:`evaluate` with the model, format and limits of a run's config;
  the per-answer log-likelihoods are left out of the result. ``weights``
  replaces ``lm.weights`` (e.g. the same weights placed on a mesh)."""
  res = evaluate(
    make_model_fn(lm.config, cfg.h_layers),
    prompt,
    lm.weights if weights is None else weights,
    lm.tokenizer,
    items,
    style=cfg.style,
    h_positions=cfg.h_positions,
    max_len=context_limit(lm, cfg),
    progress=progress,
  )
  res.pop("loglik")
  return res


# Prompt initialisation ------------------------------------------------------


def initial_prompt(lm: Any, cfg: TrainConfig) -> dict:
  """The starting ``{"h", "w"}``: zeros for ``h``; ``w`` from text or noise."""
  from j6jax.models import init_prompt

  key = jax.random.PRNGKey(cfg.seed)
  if cfg.w_init == "text":
    return init_prompt(
      lm.config,
      n_soft=cfg.n_soft,
      layers=cfg.h_layers,
      key=key,
      init_text=cfg.w_init_text,
      tokenizer=lm.tokenizer,
      weights=lm.weights,
    )
  return init_prompt(lm.config, n_soft=cfg.n_soft, layers=cfg.h_layers, key=key)


# Run folder -----------------------------------------------------------------


class RunDirError(ValueError):
  """The run folder holds a different run."""


def _json_default(x):
  if isinstance(x, (np.generic, jax.Array)):
    return np.asarray(x).tolist()
  if isinstance(x, np.ndarray):
    return x.tolist()
  raise TypeError(type(x))


def _append(path: Path, record: dict) -> None:
  with path.open("a", encoding="utf-8") as f:
    f.write(json.dumps(record, default=_json_default) + "\n")


def _truncate_jsonl(path: Path, max_step: int) -> None:
  """Drops lines past ``max_step`` (written after the last checkpoint)."""
  if not path.exists():
    return
  keep = [
    line
    for line in path.read_text().splitlines()
    if line.strip() and json.loads(line).get("step", 0) <= max_step
  ]
  path.write_text("".join(line + "\n" for line in keep))


def prepare_run_dir(run_dir: Path, cfg: TrainConfig, overwrite: bool) -> bool:
  """Creates or checks the run folder; returns whether it holds this run.

  Raises:
    RunDirError: if it holds a run with a different configuration (the
      message lists the differing keys) and ``overwrite`` is false.
  """
  cfg_path = run_dir / "config.json"
  if cfg_path.exists() and overwrite:
    shutil.rmtree(run_dir)
  if cfg_path.exists():
    old = json.loads(cfg_path.read_text())
    old_id = {k: v for k, v in old.items() if k in cfg.identity()}
    new_id = json.loads(json.dumps(cfg.identity()))
    diff = sorted(k for k in new_id if old_id.get(k) != new_id[k])
    if diff:
      raise RunDirError(
        f"{run_dir} already holds a different run (keys {diff} differ: "
        f"{ {k: old_id.get(k) for k in diff} } vs "
        f"{ {k: new_id[k] for k in diff} }); choose another folder or "
        "pass overwrite=True (--overwrite)."
      )
    cfg_path.write_text(json.dumps(cfg.to_dict(), indent=2))
    return True
  run_dir.mkdir(parents=True, exist_ok=True)
  cfg_path.write_text(json.dumps(cfg.to_dict(), indent=2))
  return False


def _checkpointer(run_dir: Path):
  import orbax.checkpoint as ocp

  return ocp.CheckpointManager(
    (run_dir / "checkpoints").absolute(),
    options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True),
  )


def _save(mgr, step: int, prompt, opt_state, cfg: TrainConfig) -> None:
  import orbax.checkpoint as ocp

  meta = {
    "step": step,
    "config": cfg.to_dict(),
    "data_order": {"seed": cfg.seed, "rule": "permutation per epoch"},
  }
  mgr.save(
    step,
    args=ocp.args.Composite(
      state=ocp.args.StandardSave({"prompt": prompt, "opt_state": opt_state}),
      meta=ocp.args.JsonSave(meta),
    ),
    force=True,
  )
  mgr.wait_until_finished()


def _restore(mgr, prompt, opt_state):
  import orbax.checkpoint as ocp

  step = mgr.latest_step()
  if step is None:
    return None
  target = jax.tree.map(
    ocp.utils.to_shape_dtype_struct, {"prompt": prompt, "opt_state": opt_state}
  )
  out = mgr.restore(
    step,
    args=ocp.args.Composite(
      state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
    ),
  )
  state = jax.tree.unflatten(
    jax.tree.structure(target), jax.tree.leaves(out.state)
  )
  return step, state["prompt"], state["opt_state"]


def context_limit(lm: Any, cfg: TrainConfig) -> int:
  """Longest allowed question + answer: ``max_len``, and never more than the
  model's context less the soft-prompt vectors."""
  ctx = getattr(lm.config, "max_positions", None)
  return cfg.max_len if ctx is None else min(cfg.max_len, ctx - cfg.n_soft)


def batch_indices(n_items: int, cfg: TrainConfig, step: int) -> np.ndarray:
  """Question indices of ``step``: a seeded permutation per epoch."""
  per_epoch = max(1, n_items // cfg.batch_questions)
  epoch, b = divmod(step, per_epoch)
  perm = np.random.default_rng([cfg.seed, epoch]).permutation(n_items)
  if n_items < cfg.batch_questions:
    perm = np.resize(perm, cfg.batch_questions)
  return perm[b * cfg.batch_questions : (b + 1) * cfg.batch_questions]


def _method_record(opt_state) -> dict:
  first = opt_state[0] if isinstance(opt_state, tuple) else opt_state
  if hasattr(first, "_asdict"):
    return {
      k: shd.to_host(v).tolist()
      for k, v in first._asdict().items()
      if k != "count"
    }
  return {}


def train(
  lm: Any,
  train_items: Sequence[MCItem],
  val_items: Sequence[MCItem],
  cfg: TrainConfig,
  run_dir: str | Path,
  *,
  overwrite: bool = False,
  progress: Callable | None = None,
  stop_after: int | None = None,
  mesh: Any = None,
) -> dict:
  """Tunes ``{"h", "w"}`` with ``cfg.method``, resuming where a run stopped.

  Args:
    lm: the frozen model: anything with ``config``, ``weights`` and
      ``tokenizer`` (a :class:`j6jax.models.LlamaModel`).
    train_items: training questions.
    val_items: validation questions (may be empty: no validation).
    cfg: the run configuration.
    run_dir: the run folder (created; resumed if it holds this run).
    overwrite: wipe a run folder that holds a different run.
    progress: optional wrapper of the step range (e.g. ``tqdm``).
    stop_after: stop (with a checkpoint) after this many steps of this
      call, for tests of resumption.
    mesh: an optional ``jax.sharding.Mesh`` with axes ``("data", "model")``
      (:func:`j6jax.sharding.make_mesh`): each step's questions are split
      over ``"data"``, the model weights and the prompt's hidden axis over
      ``"model"``. The results equal the single-device ones to float
      tolerance; ``batch_questions`` must divide by the ``"data"`` size. With
      several processes (``jax.distributed.initialize``) only process 0
      writes the logs; all of them take part in the checkpoints.

  Returns:
    The summary (also written to ``summary.json``).

  An interrupt (``KeyboardInterrupt``) writes a checkpoint of the last
  finished step before it propagates.
  """
  run_dir = Path(run_dir)
  if not train_items:
    raise DataError("The training split is empty.")
  # Everything that can fail on the inputs fails before the folder is used.
  model_fn = make_model_fn(lm.config, cfg.h_layers)
  tx = optax.chain(
    make_method(cfg.method, cfg.method_kwargs), optax.adam(cfg.learning_rate)
  )
  prompt = initial_prompt(lm, cfg)
  weights = lm.weights
  place_batch = lambda b: b
  if mesh is not None:
    shd.batch_shardings(  # fails early on an indivisible batch
      np.zeros((cfg.batch_questions,)), mesh
    )
    weights = shd.shard_weights(weights, mesh, lm.config)
    prompt = shd.shard_prompt(prompt, mesh)
    place_batch = lambda b: shd.shard_batch(b, mesh)
  opt_state = tx.init(prompt)
  if mesh is not None:
    opt_state = shd.on_mesh(opt_state, mesh)
  encoded = encode_items(
    lm.tokenizer,
    train_items,
    max_true=cfg.max_true,
    max_false=cfg.max_false,
    style=cfg.style,
    max_len=context_limit(lm, cfg),
  )
  main = jax.process_index() == 0
  # Process 0 sets the folder up; the others wait, then restore from it.
  resumed = prepare_run_dir(run_dir, cfg, overwrite) if main else True
  shd.barrier("j6jax run folder")
  start = 0
  mgr = _checkpointer(run_dir)
  if resumed:
    got = _restore(mgr, prompt, opt_state)
    if got is not None:
      start, prompt, opt_state = got
      log.info("resumed %s at step %d", run_dir, start)
  if main:
    _truncate_jsonl(run_dir / "steps.jsonl", start)
    _truncate_jsonl(run_dir / "eval.jsonl", start)
  step_fn = make_train_step(model_fn, tx, cfg)
  val = list(val_items)[: cfg.eval_questions or None]
  write = _append if main else (lambda path, record: None)

  def run_eval(step):
    res = evaluate_prompt(lm, prompt, cfg, val, weights=weights)
    write(run_dir / "eval.jsonl", {"step": step, **res})
    return res

  if main:
    (run_dir / "components.json").write_text(
      json.dumps({"names": component_names(("h", "w"), ("F", "C"))})
    )
  if val and start == 0 and shd.agree(not (run_dir / "eval.jsonl").exists()):
    run_eval(0)
  end = cfg.steps if stop_after is None else min(cfg.steps, start + stop_after)
  steps = range(start, end)
  if progress is not None:
    steps = progress(steps)
  done = start
  t0 = time.perf_counter()
  try:
    for step in steps:
      idx = batch_indices(len(train_items), cfg, step)
      batch = place_batch(MCBatch(*(x[idx] for x in encoded)))
      prompt, opt_state, values, comps = step_fn(
        prompt, opt_state, weights, batch
      )
      done = step + 1
      values = shd.to_host(values)
      write(
        run_dir / "steps.jsonl",
        {
          "step": done,
          "factuality": float(values[0]),
          "confidence": float(values[1]),
          "questions": idx.tolist(),
          "j6_components": shd.to_host(comps).tolist(),
          **_method_record(opt_state),
        },
      )
      if val and cfg.eval_every and done % cfg.eval_every == 0:
        run_eval(done)
      if cfg.checkpoint_every and done % cfg.checkpoint_every == 0:
        _save(mgr, done, prompt, opt_state, cfg)
  except KeyboardInterrupt:
    _save(mgr, done, prompt, opt_state, cfg)
    log.warning("interrupted: checkpoint of step %d in %s", done, run_dir)
    raise
  if mgr.latest_step() != done:
    _save(mgr, done, prompt, opt_state, cfg)
  summary = {
    "run_dir": str(run_dir),
    "method": cfg.method,
    "steps_done": done,
    "seconds_this_call": time.perf_counter() - t0,
    "passes_per_step": {"forward": 1, "backward": 2},
  }
  if val and done == cfg.steps:
    last = _last_eval(run_dir) if main else None
    if shd.agree(last is None or last.get("step") != done):
      last = {"step": done, **run_eval(done)}
    summary["validation"] = last
  if mesh is not None:
    summary["mesh"] = dict(
      zip(mesh.axis_names, map(int, mesh.devices.shape), strict=True)
    )
  if main:
    (run_dir / "summary.json").write_text(
      json.dumps(summary, indent=2, default=_json_default)
    )
  return summary


def _last_eval(run_dir: Path) -> dict | None:
  path = run_dir / "eval.jsonl"
  if not path.exists():
    return None
  lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
  return json.loads(lines[-1]) if lines else None


def load_run_prompt(lm: Any, run_dir: str | Path) -> tuple[Any, TrainConfig]:
  """The tuned prompt of the latest checkpoint in ``run_dir`` and its config."""
  run_dir = Path(run_dir)
  cfg_path = run_dir / "config.json"
  if not cfg_path.exists():
    raise RunDirError(f"{run_dir}: no config.json; is this a run folder?")
  cfg = TrainConfig.from_dict(json.loads(cfg_path.read_text()))
  tx = optax.chain(
    make_method(cfg.method, cfg.method_kwargs), optax.adam(cfg.learning_rate)
  )
  prompt = initial_prompt(lm, cfg)
  got = _restore(_checkpointer(run_dir), prompt, tx.init(prompt))
  if got is None:
    raise RunDirError(f"{run_dir}: no checkpoint to load.")
  return got[1], cfg
