"""The warm start's evaluation on the testbed's test split: both prompt formats, the image controls, greedy
decoding and the ideal observer, saved as <out>/base_eval.json (reused while the weights and settings are the same).

Every reader of a run's curves starts them at step 0 with this evaluation (`rlsd.runs.with_base_eval`).
"""

from __future__ import annotations

import json
from pathlib import Path


def base_eval_key(model_path: str, n_test: int, max_new_tokens: int, seed: int) -> dict | None:
    """What the base evaluation depends on: the weights' SHA-256 and the evaluation settings (None: not a local
    model directory, so nothing to check a saved evaluation against)."""
    import hashlib

    shards = sorted(Path(model_path).glob("*.safetensors")) if Path(model_path).is_dir() else []
    if not shards:
        return None
    digest = hashlib.sha256()
    for shard in shards:
        with shard.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return {"model_sha256": digest.hexdigest(), "n_test": n_test, "max_new_tokens": max_new_tokens, "seed": seed}


def evaluate_base(model_path: str, n_test: int, max_new_tokens: int, out: Path, seed: int = 0) -> dict:
    """Base-model test evaluation in both prompt formats and under both image controls. A saved evaluation of the
    same weights and settings (`out/base_eval.json`, its `key`) is reused: every invocation of the main job, and the
    ablation, would otherwise evaluate the same model again."""
    import dataclasses

    from rlsd.evaluate import evaluate
    from rlsd.model import ModelSpec, load_policy
    from rlsd.rollout import VALIDATION_SAMPLING
    from rlsd.testbed.scenes import ideal_observer_answer, load_splits

    key = base_eval_key(model_path, n_test, max_new_tokens, seed)
    saved_path = Path(out) / "base_eval.json"
    if key is not None and saved_path.exists():
        saved = json.loads(saved_path.read_text())
        if saved.get("key") == key:
            print(f"base evaluation: reusing {saved_path} (same weights and settings)")
            return saved
    model, processor = load_policy(ModelSpec(path=model_path))
    model.eval()
    _, _, test = load_splits(n_train=0, n_val=None, n_test=n_test)
    sampling = dataclasses.replace(VALIDATION_SAMPLING, max_new_tokens=max_new_tokens)
    results = {}
    for fmt, control in (("student", "none"), ("teacher", "none"), ("student", "blank"), ("student", "shuffled")):
        res = evaluate(model, processor, test, fmt=fmt, control=control, sampling=sampling, seed=seed)
        results[f"{fmt}/{control}"] = res.summary
    # Greedy decoding: what the student's most likely reading gives -- the headroom sharpening alone could reach.
    greedy = dataclasses.replace(sampling, temperature=0.0)
    results["student_greedy/none"] = evaluate(model, processor, test, fmt="student", sampling=greedy, seed=seed).summary
    results["ideal_observer_accuracy"] = sum(ideal_observer_answer(p) == p.answer for p in test) / len(test)
    if key is not None:
        results["key"] = key
    out.mkdir(parents=True, exist_ok=True)
    (out / "base_eval.json").write_text(json.dumps(results, indent=2))
    return results
